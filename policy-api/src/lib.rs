//! policy-api: what a client of policy-svc needs — the policy model (`model`: policies, rules,
//! workload endpoints, namespaces), flow logs (`flow`), host endpoints (`host_endpoint`), service accounts' labels (`service_account`), a node's view as its agent renders it (`view`) and as policy-svc shares its entries between views (`shared`) and holds a set's members as one value (`slot`), what of a
//! view may reach the kernel's rule text (`rule_text`), and the messages of both (`convert`,
//! with the `Sync` wire format of a view). No server, no datastore.

pub mod convert;
pub mod flow;
pub mod host_endpoint;
pub mod model;
pub mod rule_text;
pub mod service_account;
pub mod shared;
pub mod slot;
pub mod view;
