//! bench-scale's cluster at 200 nodes in policy-svc's calculation: a pod relabelled and a policy
//! added change the views of only the nodes they affect. The changes, less values set to what
//! they already were (which each node's fan-out drops), sent as the wire's deltas (a set's
//! members as what changed of them), are exactly the differences between each node's view before
//! and after, they reach only nodes hosting pods of the namespace concerned, and the calculation
//! went through no other node. Counts, not timings.
//! The cluster loaded at once (as policy-svc does after a list) gives the same views as record by
//! record in another order.

use std::collections::{BTreeMap, BTreeSet};

use brindle_bench::scale::cluster::{Cluster, NAMESPACES};
use brindle_fanout::{Batch, Change, Key, Mirror, OwnKey};
use brindle_proto::policy::v1::PolicyDelta;
use brindle_sync::{Outgoing, delta_from_proto};
use policy_api::convert::PolicyWire;
use policy_api::slot::{SlotWire, ViewSlot};
use policy_api::view::ViewEntry;
use policy_svc::core::records::decode;
use policy_svc::core::{Calculator, NodeChanges};

const NODES: usize = 200;

type Views = Vec<BTreeMap<Key, ViewEntry>>;

fn views(calc: &Calculator) -> Views {
    (0..NODES).map(|n| calc.view(&Cluster::node_name(n))).collect()
}

/// Every node's view as its fan-out holds it.
fn slots(calc: &Calculator) -> Vec<BTreeMap<Key, ViewSlot>> {
    (0..NODES)
        .map(|n| {
            calc.shared_view(&Cluster::node_name(n))
                .map(|slot| (Key::clone(slot.own_key()), slot))
                .collect()
        })
        .collect()
}

/// What `list` sends a node whose fan-out holds `slots`: the changes the fan-out keeps (not those
/// setting what it has) as one batch's delta; `None` when it keeps none.
fn sent(slots: &BTreeMap<Key, ViewSlot>, list: &[Change<ViewSlot>]) -> Option<PolicyDelta> {
    let mut batch = Batch {
        from: 1,
        to: 2,
        upserts: Vec::new(),
        removed: Vec::new(),
        replaced: Vec::new(),
    };
    for change in list {
        match change {
            Change::Upsert(key, value) if slots.get(key) != Some(value) => {
                batch.upserts.push((key.clone(), value.clone()));
            }
            Change::Remove(key) if slots.contains_key(key) => batch.removed.push(key.clone()),
            Change::Upsert(..) | Change::Remove(_) => continue,
        }
        let key = match change {
            Change::Upsert(key, _) | Change::Remove(key) => key,
        };
        batch
            .replaced
            .extend(slots.get(key).map(|value| (key.clone(), value.clone())));
    }
    batch.replaced.sort_by(|a, b| a.0.cmp(&b.0));
    (!batch.is_empty()).then(|| SlotWire::delta(&batch))
}

fn put(calc: &mut Calculator, (key, value): &(String, Vec<u8>)) -> NodeChanges {
    calc.put_record(decode(key, value).expect("a record policy-svc reads"))
}

/// Nodes hosting a pod of namespace `namespace`.
fn hosts(cluster: &Cluster, namespace: usize) -> BTreeSet<String> {
    (0..cluster.pods())
        .filter(|k| k % NAMESPACES == namespace)
        .map(|k| cluster.endpoint(k, false).key.node)
        .collect()
}

/// Applies `record`; checks the changes against the views, and that the calculation went
/// through no node whose view did not change; returns the nodes the changes reached.
fn change(calc: &mut Calculator, record: &(String, Vec<u8>)) -> BTreeSet<String> {
    let before = views(calc);
    let held = slots(calc);
    let changes = put(calc, record);
    let after = views(calc);
    let differing: BTreeSet<String> = (0..NODES)
        .filter(|&n| before[n] != after[n])
        .map(Cluster::node_name)
        .collect();
    let index = |node: &str| -> usize {
        node.trim_start_matches("node-")
            .parse()
            .expect("a node of the cluster")
    };
    let deltas: BTreeMap<&String, PolicyDelta> = changes
        .iter()
        .filter_map(|(node, list)| sent(&held[index(node)], list).map(|delta| (node, delta)))
        .collect();
    let reached: BTreeSet<String> = deltas.keys().map(|node| (*node).clone()).collect();
    assert_eq!(
        reached, differing,
        "changes sent to nodes whose views did not change, or missing"
    );
    for (node, delta) in deltas {
        let index = index(node);
        let mut view = Mirror::default();
        view.apply_snapshot(1, before[index].clone());
        let mut skipped = Vec::new();
        view.apply_batch(
            &delta_from_proto::<PolicyWire>(2, delta, &mut skipped).expect("entries that convert"),
        );
        assert!(skipped.is_empty(), "entries of no known kind: {skipped:?}");
        assert_eq!(
            view.state(),
            &after[index],
            "{node}: the changes are not the difference"
        );
    }
    let work = calc.last_change_work();
    assert!(
        work.nodes <= reached.len(),
        "the calculation went through {} nodes and changed {}",
        work.nodes,
        reached.len()
    );
    reached
}

#[test]
fn relabels_and_new_policies_reach_only_the_nodes_they_affect() {
    let cluster = Cluster::new(NODES);
    let mut calc = Calculator::new();
    for record in cluster.policy_records().expect("the cluster") {
        put(&mut calc, &record);
    }
    let mut reached = 0;
    for i in 0..20 {
        let k = (i * 1_499 + 7) % cluster.pods();
        let nodes = change(&mut calc, &cluster.endpoint_record(k, true));
        assert!(
            nodes.is_subset(&hosts(&cluster, k % NAMESPACES)),
            "pod {k}'s relabel reached {nodes:?}"
        );
        assert!(!nodes.is_empty(), "pod {k}'s relabel changed nothing");
        reached += nodes.len();
    }
    assert!(
        reached < 20 * NODES / 10,
        "relabels reached {reached} nodes in all"
    );
    for n in 0..20 {
        let record = Cluster::added_policy(n).expect("a policy");
        let nodes = change(&mut calc, &record);
        assert!(
            nodes.is_subset(&hosts(&cluster, Cluster::added_policy_namespace(n))),
            "policy {n} reached {nodes:?}"
        );
        assert!(!nodes.is_empty(), "policy {n} changed nothing");
    }
}

#[test]
fn a_list_loaded_at_once_gives_the_views_of_its_records_put_one_by_one() {
    let cluster = Cluster::new(NODES);
    let records = cluster.policy_records().expect("the cluster");
    let mut one_by_one = Calculator::new();
    for record in records.iter().rev() {
        put(&mut one_by_one, record);
    }
    let decoded = records
        .iter()
        .map(|(key, value)| decode(key, value).expect("a record policy-svc reads"))
        .collect();
    let at_once = Calculator::from_records(decoded);
    let loaded = views(&at_once);
    assert!(
        loaded.iter().all(|view| !view.is_empty()),
        "a node without a view"
    );
    assert_eq!(loaded, views(&one_by_one), "loading at once changed a view");
}
