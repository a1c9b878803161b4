//! kube-sync: follows the Kubernetes API — Namespaces, Pods, `networking.k8s.io/v1`
//! NetworkPolicies and Nodes — with kube-rs watchers and writes what it sees into brindle's services over
//! their gRPC APIs (it has no datastore connection). Kubernetes is the source of truth for what
//! it writes: those objects carry the origin `kubernetes`, and after every list what Kubernetes no
//! longer has is removed; objects made with `brindle apply` are never touched.
//!
//! `translate` turns Kubernetes objects into brindle's (pure), `follow` runs one kind's watcher
//! into a `Target`, `targets` are the gRPC writers (`nodes` the Node lifecycle), `runtime` the
//! flags and wiring.

pub mod follow;
pub mod nodes;
pub mod runtime;
pub mod targets;
pub mod translate;
