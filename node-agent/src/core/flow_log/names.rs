//! Names of logged decisions, from the node's policy view: a policy's view id → its name, an
//! endpoint's interface → the policies governing it (the last one names an end-of-policies drop,
//! as trace does).

use std::collections::{BTreeMap, HashMap};

use brindle_fanout::Key;
use policy_api::flow::Decision;
use policy_api::model::Direction;
use policy_api::view::ViewEntry;

use super::{Decider, LoggedDecision};

/// Policy and endpoint names of a view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyNames {
    policies: HashMap<String, String>,
    /// Interface (`*`: a host endpoint of every interface) → (ingress policy ids, egress policy
    /// ids).
    endpoints: HashMap<String, (Vec<String>, Vec<String>)>,
}

impl PolicyNames {
    /// The names in `view`.
    pub fn of(view: &BTreeMap<Key, ViewEntry>) -> Self {
        let mut names = Self::default();
        for entry in view.values() {
            match entry {
                ViewEntry::Policy(policy) => {
                    names.policies.insert(policy.id.clone(), policy.name.clone());
                }
                ViewEntry::Endpoint(endpoint) => {
                    names.endpoints.insert(
                        endpoint.interface.clone(),
                        (endpoint.ingress.clone(), endpoint.egress.clone()),
                    );
                }
                ViewEntry::HostEndpoint(host) => {
                    let subject = host.interface.clone().unwrap_or_else(|| "*".into());
                    names
                        .endpoints
                        .insert(subject, (host.ingress.clone(), host.egress.clone()));
                }
                ViewEntry::IpSet(_) | ViewEntry::Member(_) => {}
            }
        }
        names
    }

    /// The decision with its policy named (by its id when the view no longer holds it).
    pub fn name(&self, logged: &LoggedDecision) -> Decision {
        let policy_name = |id: &str| self.policies.get(id).cloned().unwrap_or_else(|| id.to_owned());
        let (policy, rule) = match &logged.decider {
            Decider::Rule { policy, rule } => (Some(policy_name(policy)), Some(*rule)),
            Decider::EndOfPolicies(interface) => {
                let last =
                    self.endpoints
                        .get(interface)
                        .and_then(|(ingress, egress)| match logged.direction {
                            Direction::Ingress => ingress.last(),
                            Direction::Egress => egress.last(),
                        });
                (last.map(|id| policy_name(id)), None)
            }
            Decider::NoPolicy(_) => (None, None),
        };
        Decision {
            direction: logged.direction,
            verdict: logged.verdict,
            policy,
            rule,
        }
    }
}

#[cfg(test)]
mod tests {
    use policy_api::flow::Verdict;
    use policy_api::view::{EndpointView, PolicyView};

    use super::*;

    #[test]
    fn decisions_are_named_as_trace_names_them() {
        let policy = |id: &str, name: &str| {
            ViewEntry::Policy(PolicyView {
                id: id.into(),
                name: name.into(),
                ingress: Vec::new(),
                egress: Vec::new(),
            })
        };
        let view = BTreeMap::from([
            (Key::from("p/a"), policy("aaaa", "default/knp.first")),
            (Key::from("p/b"), policy("bbbb", "global/last")),
            (
                Key::from("e/web"),
                ViewEntry::Endpoint(EndpointView {
                    interface: "brdweb".into(),
                    name: "default/web".into(),
                    ingress: vec!["aaaa".into(), "bbbb".into()],
                    egress: Vec::new(),
                }),
            ),
        ]);
        let names = PolicyNames::of(&view);
        let named = |prefix: &str| names.name(&LoggedDecision::parse(prefix).expect("test input"));
        let by_rule = named("DR aaaa i3");
        assert_eq!(
            (by_rule.policy.as_deref(), by_rule.rule, by_rule.verdict),
            (Some("default/knp.first"), Some(3), Verdict::Deny)
        );
        let at_end = named("DX brdweb i");
        assert_eq!(
            (at_end.policy.as_deref(), at_end.rule),
            (Some("global/last"), None)
        );
        assert_eq!(named("AX brdweb e").policy, None);
        assert_eq!(named("DR cccc e0").policy.as_deref(), Some("cccc"));
    }
}
