//! Every truth-table case evaluated by the policy trace (the reference the data plane is held to),
//! with the incremental per-node views checked against a from-scratch computation at every step,
//! and each node's snapshot, encoded from shared entries, equal to its messages' encoding.

mod support;

use brindle_fanout::{Change, OwnKey};
use policy_api::convert::PolicyWire;
use policy_api::model::{Endpoint, Namespace};
use policy_svc::core::trace::{Flow, Verdict, trace};
use policy_svc::truth_table::{Matrix, PROBES, Step, load_cases, pairs};
use support::{World, address};

fn apply_step(world: &mut World, step: &Step) {
    for resource in step.resources(&address).expect("case resources") {
        let changes = world.calc.put_record(resource.into_record().expect("valid"));
        world.absorb(changes);
    }
    for reference in &step.delete {
        let changes = world.calc.remove_policy(&reference.id().expect("policy ref"));
        world.absorb(changes);
    }
    for (name, labels) in &step.namespace_labels {
        let changes = world
            .calc
            .put_namespace(Namespace::new(name.clone(), labels.clone()));
        world.absorb(changes);
    }
    for (pod, labels) in &step.pod_labels {
        let ip = address(pod).expect("known pod");
        let mut endpoint: Endpoint = world.calc.state().endpoint_by_ip(ip).expect("endpoint").clone();
        endpoint.labels = labels.clone();
        let changes = world.calc.put_endpoint(endpoint);
        world.absorb(changes);
    }
}

fn observed(world: &World) -> Matrix {
    let mut matrix = Matrix::default();
    for (from, to) in pairs() {
        for probe in PROBES {
            let flow = Flow {
                source_ip: address(&from).expect("pod"),
                destination_ip: address(&to).expect("pod"),
                protocol: probe.protocol,
                source_port: None,
                destination_port: Some(probe.port),
                icmp: None,
            };
            let verdict = trace(world.calc.state(), &flow).verdict;
            matrix.set(&from, &to, probe, verdict == Verdict::Allow);
        }
    }
    matrix
}

#[test]
fn trace_agrees_with_every_truth_table_case() {
    let cases = load_cases().expect("cases");
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut world = World::new();
        for (index, step) in case.steps.iter().enumerate() {
            apply_step(&mut world, step);
            let context = format!("{} step {index}", case.name);
            world.check_views(&context);
            if let Some(diff) = step.expected().diff(&observed(&world)) {
                failures.push(format!("{context} ({}):\n{diff}", case.description));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `node`'s view encoded entry by entry from its shared entries (as a snapshot's parts are, a
/// set's members as their entries), of the length the entries announce.
fn encode_fields(calc: &policy_svc::core::calc::Calculator, node: &str) -> Vec<u8> {
    let mut encoded = Vec::new();
    for slot in calc.shared_view(node) {
        for entry in slot.entries() {
            let before = encoded.len();
            entry.encode_field(&mut encoded);
            assert_eq!(
                encoded.len() - before,
                entry.encoded_field_len(),
                "{:?}",
                entry.key()
            );
        }
    }
    encoded
}

#[test]
fn snapshots_encoded_from_shared_entries_are_the_messages_encoding() {
    for case in load_cases().expect("cases") {
        let mut world = World::new();
        for step in &case.steps {
            apply_step(&mut world, step);
        }
        for node in ["node-1", "node-2", "node-3"] {
            assert!(
                world
                    .calc
                    .shared_view(node)
                    .is_sorted_by(|a, b| a.own_key() < b.own_key()),
                "{}: {node}'s view in strictly ascending key order",
                case.name
            );
            let encoded = encode_fields(&world.calc, node);
            assert_eq!(
                encoded,
                brindle_sync::encode_state::<PolicyWire>(world.calc.view(node).iter()),
                "{}: {node}",
                case.name
            );
            // A second encoding (from the encodings made by the first) is the same.
            assert_eq!(encoded, encode_fields(&world.calc, node));
        }
    }
}

#[test]
fn a_label_change_touches_only_the_affected_entries() {
    let mut world = World::new();
    let step: Step = yaml_serde::from_str(
        r#"
apply:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: clients, namespace: x}
    spec:
      podSelector: {matchLabels: {pod: a}}
      ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]
"#,
    )
    .expect("step");
    apply_step(&mut world, &step);
    world.check_views("the policy applied");
    // y/b is in no set and selected by no policy: relabelling it changes nothing anywhere.
    let ip = address("y/b").expect("pod");
    let mut endpoint = world.calc.state().endpoint_by_ip(ip).expect("endpoint").clone();
    endpoint.labels.insert("tier".into(), "web".into());
    let changes = world.calc.put_endpoint(endpoint);
    assert!(changes.values().all(Vec::is_empty), "{changes:?}");
    // x/c becoming a client adds exactly its address to the client set on node-1 (where x/a
    // is): one new version of the set's members in that node's view, sent as that address.
    let ip = address("x/c").expect("pod");
    let mut endpoint = world.calc.state().endpoint_by_ip(ip).expect("endpoint").clone();
    endpoint.labels.insert("role".into(), "client".into());
    let changes = world.calc.put_endpoint(endpoint);
    let flat: Vec<(&String, &Change<_>)> = changes
        .iter()
        .flat_map(|(n, c)| c.iter().map(move |c| (n, c)))
        .collect();
    assert_eq!(flat.len(), 1, "{flat:?}");
    let (node, Change::Upsert(key, _)) = flat[0] else {
        panic!("{flat:?}")
    };
    assert_eq!(node, "node-1");
    assert!(key.starts_with("member/s") && key.ends_with('/'), "{key}");
    let key = key.clone();
    world.absorb(changes);
    let sent = world.flush();
    assert_eq!(sent.keys().collect::<Vec<_>>(), ["node-1"]);
    let [delta] = sent["node-1"].as_slice() else {
        panic!("one batch: {sent:?}")
    };
    let upserted: Vec<&str> = delta.upserts.iter().map(|entry| entry.key.as_str()).collect();
    assert!(
        matches!(upserted.as_slice(), [member] if member.starts_with(key.as_ref()) && member.ends_with("/10.0.1.3")),
        "{upserted:?}"
    );
    assert!(delta.removed_keys.is_empty(), "{:?}", delta.removed_keys);
    world.check_views("after relabel");
}

#[test]
fn icmp_rules_decide_by_type_and_code() {
    let case = load_cases()
        .expect("cases")
        .into_iter()
        .find(|c| c.name == "42-calico-icmp")
        .expect("case 42");
    let mut world = World::new();
    apply_step(&mut world, &case.steps[0]);
    let ping = |from: &str, to: &str, icmp_type: u8, code: Option<u8>| {
        let flow = Flow {
            source_ip: address(from).expect("pod"),
            destination_ip: address(to).expect("pod"),
            protocol: policy_api::model::Protocol::Icmp,
            source_port: None,
            destination_port: None,
            icmp: Some(policy_api::model::IcmpMatch { icmp_type, code }),
        };
        trace(world.calc.state(), &flow).verdict
    };
    assert_eq!(ping("x/a", "y/c", 8, None), Verdict::Allow, "echo request");
    assert_eq!(
        ping("x/a", "y/c", 0, None),
        Verdict::Deny,
        "notICMP 3/4: anything else denied"
    );
    assert_eq!(
        ping("z/a", "y/c", 3, Some(4)),
        Verdict::Allow,
        "3/4 passes the deny, z's rule allows"
    );
    assert_eq!(
        ping("z/a", "y/c", 3, Some(1)),
        Verdict::Deny,
        "denied before z's rule"
    );
    assert_eq!(ping("x/a", "y/b", 0, None), Verdict::Allow, "b is not selected");
}
