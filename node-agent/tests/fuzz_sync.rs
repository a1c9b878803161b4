//! Property-based fuzzing of what the agent decodes from route-svc and policy-svc (fuzzing proper
//! needs a nightly toolchain): real `Sync` messages — snapshot pieces (zstd) and deltas of a real
//! routing state and policy view — with random byte edits, and random bytes, applied in sequence to
//! a follower's mirror. Nothing panics: a message is applied or refused as unusable, and whatever
//! the mirror then holds is turned into routes and into iptables/ipset rules without panicking.

use std::collections::BTreeMap;
use std::sync::Arc;

use brindle_fanout::{Fanout, FanoutConfig, Mirror};
use brindle_grpc_server::sync::snapshot_pieces;
use brindle_proto::fuzzing::{damaged, decode};
use brindle_proto::policy::v1 as policy_pb;
use brindle_proto::route::v1 as route_pb;
use brindle_sync::SnapshotAssembler;
use node_agent::core::policy::{Family, render};
use node_agent::core::routing::desired_routes;
use node_agent::core::tunnels::Tunnels;
use policy_api::model::{Endpoint, EndpointKey, NamedPort, Namespace, Protocol};
use policy_svc::core::Calculator;
use policy_svc::core::resource::{Resource, parse_documents};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Messages of a routing state: its snapshot in pieces, and a delta.
fn route_messages() -> Vec<route_pb::SyncResponse> {
    let entry = |key: &str, value: route_pb::route_entry::Value| route_pb::RouteEntry {
        key: key.into(),
        value: Some(value),
    };
    let entries = vec![
        entry(
            "node/n2",
            route_pb::route_entry::Value::Node(route_pb::Node {
                name: "n2".into(),
                addresses: vec!["192.168.7.12".into()],
                ipv4_subnet: "192.168.7.0/24".into(),
                vtep_mac: "66:00:00:00:00:02".into(),
                vtep_ipv4: "10.244.1.0".into(),
                ..Default::default()
            }),
        ),
        entry(
            "block/10.244.1.0/26",
            route_pb::route_entry::Value::Block(route_pb::BlockRoute {
                cidr: "10.244.1.0/26".into(),
                node: "n2".into(),
                pool: "pods".into(),
            }),
        ),
        entry(
            "borrowed/10.244.2.9",
            route_pb::route_entry::Value::Borrowed(route_pb::BorrowedRoute {
                ip: "10.244.2.9".into(),
                node: "n2".into(),
                block: "10.244.2.0/26".into(),
            }),
        ),
        entry(
            "pool/pods",
            route_pb::route_entry::Value::Pool(route_pb::PoolRoute {
                name: "pods".into(),
                cidr: "10.244.0.0/16".into(),
                encapsulation: 2,
                nat_outgoing: true,
                disabled: false,
                disable_bgp_export: false,
            }),
        ),
    ];
    let state: BTreeMap<_, _> = entries
        .iter()
        .cloned()
        .map(|e| route_api::convert::entry_from_proto(e).expect("valid entry"))
        .map(|(key, item)| (key.into(), item))
        .collect();
    let snapshot = runtime().block_on(async {
        let fanout: Fanout<route_api::RouteItem> = Fanout::new(
            FanoutConfig::default(),
            Arc::new(|state| {
                brindle_sync::encode_state::<route_api::convert::RouteWire>(state.iter()).into()
            }),
        );
        fanout.reset(7, state);
        fanout.snapshot().await.expect("encoded")
    });
    let mut messages: Vec<route_pb::SyncResponse> = snapshot_pieces(snapshot)
        .map(|piece| route_pb::SyncResponse {
            revision: 7,
            payload: Some(route_pb::sync_response::Payload::Snapshot(piece)),
        })
        .collect();
    messages.push(route_pb::SyncResponse {
        revision: 8,
        payload: Some(route_pb::sync_response::Payload::Delta(route_pb::RouteDelta {
            upserts: entries,
            removed_keys: vec!["borrowed/10.244.2.9".into()],
        })),
    });
    messages
}

/// Messages of a node's policy view: its snapshot in pieces, and a delta.
fn policy_messages() -> Vec<policy_pb::SyncResponse> {
    let manifest = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}, {ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24]}}], ports: [{port: http}, {port: 9000, endPort: 9010}]}]
";
    let mut calc = Calculator::new();
    calc.put_namespace(Namespace::new("shop", BTreeMap::new()));
    for resource in parse_documents(manifest, "").expect("valid") {
        if let Resource::KubernetesPolicy(policy) = resource {
            calc.put_policy(policy.to_policy().expect("valid"));
        }
    }
    for (node, interface, pod, ip, label) in [
        ("n1", "brdaaaa", "web", "10.244.0.2", ("app", "web")),
        ("n2", "brdcccc", "client", "10.244.1.2", ("role", "client")),
    ] {
        calc.put_endpoint(Endpoint {
            key: EndpointKey {
                node: node.into(),
                interface: interface.into(),
            },
            namespace: "shop".into(),
            pod: pod.into(),
            container_id: format!("c-{pod}"),
            ips: vec![ip.parse().expect("ip")],
            labels: [(label.0.to_owned(), label.1.to_owned())].into(),
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
        });
    }
    let view = calc.view("n1");
    let snapshot = runtime().block_on(async {
        let fanout: Fanout<policy_api::view::ViewEntry> = Fanout::new(
            FanoutConfig::default(),
            Arc::new(|state| {
                brindle_sync::encode_state::<policy_api::convert::PolicyWire>(state.iter()).into()
            }),
        );
        fanout.reset(9, view.clone());
        fanout.snapshot().await.expect("encoded")
    });
    let mut messages: Vec<policy_pb::SyncResponse> = snapshot_pieces(snapshot)
        .map(|piece| policy_pb::SyncResponse {
            revision: 9,
            payload: Some(policy_pb::sync_response::Payload::Snapshot(piece)),
        })
        .collect();
    messages.push(policy_pb::SyncResponse {
        revision: 10,
        payload: Some(policy_pb::sync_response::Payload::Delta(policy_pb::PolicyDelta {
            upserts: view
                .iter()
                .map(|(key, entry)| policy_api::convert::entry_to_proto(key, entry))
                .collect(),
            removed_keys: view.keys().take(2).map(|key| key.to_string()).collect(),
        })),
    });
    messages
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn damaged_routing_messages_never_panic_the_follower(
        messages in prop::collection::vec(damaged(route_messages()), 1..5)
    ) {
        let mut mirror = Mirror::default();
        let mut pieces = SnapshotAssembler::default();
        for bytes in messages {
            if let Some(message) = decode::<route_pb::SyncResponse>(&bytes) {
                let _ = brindle_sync::apply_response::<route_api::convert::RouteWire>(&mut mirror, &mut pieces, message);
            }
        }
        let tunnels = Tunnels { vxlan: Some("vxlan.brindle".into()), ipip: None };
        desired_routes(mirror.state(), "n1", &tunnels);
    }

    #[test]
    fn damaged_policy_messages_never_panic_the_follower(
        messages in prop::collection::vec(damaged(policy_messages()), 1..5)
    ) {
        let mut mirror = Mirror::default();
        let mut pieces = SnapshotAssembler::default();
        for bytes in messages {
            if let Some(message) = decode::<policy_pb::SyncResponse>(&bytes) {
                let _ = brindle_sync::apply_response::<policy_api::convert::PolicyWire>(&mut mirror, &mut pieces, message);
            }
        }
        render(mirror.state(), Family::V4);
        render(mirror.state(), Family::V6);
    }
}
