//! Property test of the incremental calculation: after any sequence of namespace, endpoint and
//! policy changes, every node's view equals a from-scratch computation, and the changes the
//! calculation emitted, sent through its fan-out in batches of one or several, add up to exactly
//! that view.

mod support;

use std::collections::BTreeMap;

use brindle_selector::Selector;
use policy_api::model::{Action, EntityRule, Namespace, Policy, PolicyId, PortMatch, Protocol, Rule};
use proptest::prelude::*;
use support::{World, endpoint};

#[derive(Debug, Clone)]
enum Op {
    Namespace(String, Option<String>),
    Endpoint {
        ns: String,
        pod: String,
        labels: BTreeMap<String, String>,
    },
    RemoveEndpoint {
        ns: String,
        pod: String,
    },
    Policy(Box<Policy>),
    RemovePolicy(PolicyId),
}

fn label_value() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned)
}

fn selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::All),
        label_value().prop_map(|v| Selector::Equals("pod".into(), v)),
        label_value().prop_map(|v| Selector::Equals("role".into(), v)),
        Just(Selector::Has("role".into())),
        label_value().prop_map(|v| Selector::Not(Box::new(Selector::Equals("team".into(), v)))),
    ]
}

fn entity() -> impl Strategy<Value = EntityRule> {
    (
        prop::option::of(selector()),
        prop::option::of(selector()),
        prop::option::of(selector()),
        prop::sample::select(vec![None, Some("serve-80-tcp"), Some("serve-81-udp")]),
    )
        .prop_map(|(selector, not_selector, namespace_selector, named)| EntityRule {
            selector,
            not_selector,
            namespace_selector,
            ports: named
                .map(|n| vec![PortMatch::Named(n.into())])
                .unwrap_or_default(),
            ..EntityRule::default()
        })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::sample::select(vec![Action::Allow, Action::Deny, Action::Pass, Action::Log]),
        entity(),
        entity(),
    )
        .prop_map(|(action, source, mut destination)| {
            let protocol = (!destination.ports.is_empty()).then_some(Protocol::Tcp);
            if protocol.is_none() {
                destination.ports.clear();
            }
            Rule {
                action,
                protocol,
                not_protocol: None,
                icmp: None,
                not_icmp: None,
                source: EntityRule {
                    ports: Vec::new(),
                    ..source
                },
                destination,
                annotations: Default::default(),
            }
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::sample::select(vec!["p1", "p2", "p3"]),
        prop::sample::select(vec![Some("x"), Some("y"), None]),
        prop::option::of(prop::sample::select(vec![1.0, 5.0, 1000.0])),
        selector(),
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..3),
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(name, ns, order, selector, ingress, egress, (ingress_enabled, egress_enabled))| Policy {
                id: match ns {
                    Some(ns) => PolicyId::Namespaced {
                        namespace: ns.into(),
                        name: name.into(),
                    },
                    None => PolicyId::Global { name: name.into() },
                },
                order,
                selector,
                namespace_selector: None,
                service_account_selector: None,
                ingress_enabled,
                egress_enabled,
                ingress,
                egress,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let ns = prop::sample::select(vec!["x", "y", "z"]).prop_map(str::to_owned);
    let pod = prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_owned);
    prop_oneof![
        (ns.clone(), prop::option::of(label_value())).prop_map(|(n, t)| Op::Namespace(n, t)),
        (
            ns.clone(),
            pod.clone(),
            prop::collection::btree_map(
                prop::sample::select(vec!["pod", "role"]).prop_map(str::to_owned),
                label_value(),
                0..3
            )
        )
            .prop_map(|(ns, pod, labels)| Op::Endpoint { ns, pod, labels }),
        (ns.clone(), pod).prop_map(|(ns, pod)| Op::RemoveEndpoint { ns, pod }),
        policy().prop_map(|p| Op::Policy(Box::new(p))),
        policy().prop_map(|p| Op::RemovePolicy(p.id)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn incremental_views_equal_the_reference(ops in prop::collection::vec((op(), any::<bool>()), 1..40)) {
        let mut world = World::new();
        world.check_views("the world");
        for (index, (op, flush)) in ops.iter().enumerate() {
            let changes = match op.clone() {
                Op::Namespace(name, team) => {
                    let mut labels = BTreeMap::from([("ns".to_owned(), name.clone())]);
                    if let Some(team) = team {
                        labels.insert("team".into(), team);
                    }
                    world.calc.put_namespace(Namespace::new(name, labels))
                }
                Op::Endpoint { ns, pod, labels } => world.calc.put_endpoint(endpoint(&ns, &pod, labels)),
                Op::RemoveEndpoint { ns, pod } => world.calc.remove_endpoint(&endpoint(&ns, &pod, BTreeMap::new()).key),
                Op::Policy(policy) => world.calc.put_policy(*policy),
                Op::RemovePolicy(id) => world.calc.remove_policy(&id),
            };
            world.absorb(changes);
            // Flushed now and then: a node's batch then holds several changes (a set's members
            // changing more than once, sets leaving and coming back).
            let context = format!("after op {index} {op:?}");
            if *flush || index + 1 == ops.len() {
                world.check_views(&context);
            } else {
                world.check_calculation(&context);
            }
        }
    }
}
