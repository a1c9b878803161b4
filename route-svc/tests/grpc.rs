//! route-svc over gRPC: the real grpcurl lists, describes and calls it (bad input gets
//! INVALID_ARGUMENT naming the field); a tonic subscriber gets a snapshot, then deltas, and on
//! reconnecting with its revision only what changed meanwhile; a large snapshot arrives in pieces.

use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Store;
use brindle_fanout::{FanoutConfig, Mirror};
use brindle_grpc_server::testing::{embedded_store, grpcurl, serve_on_loopback};
use brindle_proto::common::v1 as common;
use brindle_proto::route::v1 as pb;
use brindle_proto::route::v1::routes_client::RoutesClient;
use brindle_sync::SnapshotAssembler;
use futures_util::StreamExt;
use route_api::RouteItem;
use route_api::convert;
use route_svc::grpc::{RoutesService, SERVICE_NAME};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Serves route-svc (with health and reflection) on a loopback port; returns its address.
async fn serve(store: Arc<dyn Store>) -> String {
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(RoutesService::start(store, FanoutConfig::default()).into_server());
    serve_on_loopback(routes, &[SERVICE_NAME]).await
}

fn register(address: &str, name: &str, ip: &str) -> (bool, String) {
    let body = format!(
        r#"{{"node":{{"name":"{name}","addresses":["{ip}"],"ipv4Subnet":"192.168.7.0/24"}},"ttlSeconds":60}}"#
    );
    grpcurl(&[
        "-plaintext",
        "-d",
        &body,
        address,
        "brindle.route.v1.Routes/RegisterNode",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_registers_and_lists_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = embedded_store(dir.path()).await;
    let address = serve(store).await;
    let addr = address.as_str();
    let (ok, list) = grpcurl(&["-plaintext", addr, "list"]);
    assert!(ok && list.lines().any(|l| l == SERVICE_NAME), "{list}");
    let (ok, describe) = grpcurl(&["-plaintext", addr, "describe", SERVICE_NAME]);
    assert!(
        ok && describe.contains("rpc Sync") && describe.contains("rpc RegisterNode"),
        "{describe}"
    );

    let (ok, registered) = register(addr, "node-a", "192.168.7.2");
    assert!(ok && registered.contains(r#""ttlSeconds": 60"#), "{registered}");
    let (ok, renewed) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"name":"node-a"}"#,
        addr,
        "brindle.route.v1.Routes/RenewNode",
    ]);
    assert!(ok && renewed.contains("ttlSeconds"), "{renewed}");
    let mut listed = String::new();
    for _ in 0..100 {
        let (ok, text) = grpcurl(&[
            "-plaintext",
            "-d",
            "{}",
            addr,
            "brindle.route.v1.Routes/ListNodes",
        ]);
        assert!(ok, "{text}");
        listed = text;
        if listed.contains("node-a") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed.contains("192.168.7.2"), "{listed}");

    for (body, field) in [
        (
            r#"{"node":{"name":"UPPER","addresses":["192.168.7.3"]}}"#,
            "node.name",
        ),
        (
            r#"{"node":{"name":"b","addresses":["not-an-ip"]}}"#,
            "node.addresses",
        ),
        (
            r#"{"node":{"name":"b","addresses":["192.168.7.3"],"vtepMac":"zz"}}"#,
            "node.vtep_mac",
        ),
        (r#"{}"#, "node"),
    ] {
        let (ok, text) = grpcurl(&[
            "-plaintext",
            "-d",
            body,
            addr,
            "brindle.route.v1.Routes/RegisterNode",
        ]);
        assert!(
            !ok && text.contains("InvalidArgument") && text.contains(field),
            "{body}: {text}"
        );
    }
    let (ok, text) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"name":"nobody"}"#,
        addr,
        "brindle.route.v1.Routes/RenewNode",
    ]);
    assert!(!ok && text.contains("NotFound"), "{text}");
}

/// One Sync call: applies what arrives to `mirror` until `until` holds; returns the kinds of
/// messages received ("snapshot", "delta").
async fn sync_until(
    client: &mut RoutesClient<Channel>,
    mirror: &mut Mirror<RouteItem>,
    until: impl Fn(&Mirror<RouteItem>) -> bool,
) -> Vec<&'static str> {
    let (hello, outgoing) = mpsc::channel(4);
    hello
        .send(common::SyncClientMessage {
            message: Some(common::sync_client_message::Message::Hello(common::SyncHello {
                node: "watcher".into(),
                resume_revision: mirror.revision(),
            })),
        })
        .await
        .expect("hello");
    let outgoing = futures_util::stream::poll_fn({
        let mut outgoing = outgoing;
        move |cx| outgoing.poll_recv(cx)
    });
    let mut incoming = tokio::time::timeout(Duration::from_secs(20), client.sync(outgoing))
        .await
        .expect("sync answered in time")
        .expect("sync")
        .into_inner();
    let mut kinds = Vec::new();
    let mut pieces = SnapshotAssembler::default();
    while !until(mirror) {
        let message = tokio::time::timeout(Duration::from_secs(20), incoming.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("message");
        match &message.payload {
            Some(pb::sync_response::Payload::Snapshot(_)) => kinds.push("snapshot"),
            Some(pb::sync_response::Payload::Delta(_)) => kinds.push("delta"),
            _ => {}
        }
        let applied = brindle_sync::apply_response::<convert::RouteWire>(mirror, &mut pieces, message)
            .expect("a usable message");
        assert!(applied.skipped.is_empty(), "{:?}", applied.skipped);
        hello
            .send(common::SyncClientMessage {
                message: Some(common::sync_client_message::Message::Ack(common::SyncAck {
                    revision: mirror.revision(),
                    programmed: 0,
                })),
            })
            .await
            .expect("ack");
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_a_snapshot_then_deltas_and_resumes_after_a_reconnect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = embedded_store(dir.path()).await;
    let address = serve(store).await;
    assert!(register(&address, "node-a", "192.168.7.2").0);
    let mut client = RoutesClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let mut mirror = Mirror::default();
    let kinds = sync_until(&mut client, &mut mirror, |m| {
        m.state().contains_key("node/node-a")
    })
    .await;
    assert_eq!(kinds, vec!["snapshot"]);
    // While connected: a delta.
    let resumed_from = mirror.revision();
    let registering = tokio::spawn({
        let address = address.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // grpcurl blocks: off the runtime's workers, which serve it.
            tokio::task::spawn_blocking(move || register(&address, "node-b", "192.168.7.3"))
                .await
                .expect("grpcurl")
        }
    });
    let kinds = sync_until(&mut client, &mut mirror, |m| {
        m.state().contains_key("node/node-b")
    })
    .await;
    assert!(registering.await.expect("task").0);
    assert_eq!(
        kinds.first(),
        Some(&"delta"),
        "resumed from {resumed_from}: {kinds:?}"
    );
    // Disconnected while node-c registers; reconnecting with the revision gets only the change.
    assert!(register(&address, "node-c", "192.168.7.4").0);
    let kinds = sync_until(&mut client, &mut mirror, |m| {
        m.state().contains_key("node/node-c")
    })
    .await;
    assert!(kinds.iter().all(|k| *k == "delta"), "{kinds:?}");
    assert_eq!(mirror.state().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_one_piece_arrives_in_pieces_and_is_applied_whole() {
    const NODES: u32 = 1_500;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = embedded_store(dir.path()).await;
    // Labels that do not compress away, so the snapshot is tens of KiB even compressed.
    let registry = route_svc::core::Registry::new(Arc::clone(&store));
    let mut noise: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..NODES {
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        let node = route_api::Node {
            name: format!("node-{n}"),
            addresses: vec![std::net::Ipv4Addr::from(0x0a00_0000 + n).into()],
            ipv4_subnet: None,
            ipv6_subnet: None,
            labels: [("id".to_owned(), format!("{noise:016x}"))].into(),
            vtep_mac: None,
            vtep_ipv4: None,
            vtep_ipv6: None,
            ipip_tunnel_ipv4: None,
            bgp: None,
            lease: 0,
        };
        registry
            .register(node, Some(Duration::from_secs(600)))
            .await
            .expect("register");
    }
    let address = serve(store).await;
    let mut client = RoutesClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let mut mirror = Mirror::default();
    let kinds = sync_until(&mut client, &mut mirror, |m| m.state().len() == NODES as usize).await;
    assert!(
        kinds.len() > 2 && kinds.iter().all(|k| *k == "snapshot"),
        "pieces of one snapshot: {kinds:?}"
    );
}
