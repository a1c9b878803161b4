//! What callers name does not pile up in the control plane: 10,000 `Sync` hellos naming made-up
//! nodes, to route-svc and to policy-svc, and 10,000 address requests for made-up nodes leave the
//! per-node fan-outs, subscriber statuses, IPAM writers and tokio tasks where they were, and the
//! memory close to it; a stream that never says hello is ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::testing::{embedded_store, serve_on_loopback};
use brindle_proto::common::v1 as common;
use brindle_proto::ipam::v1 as ipam;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use brindle_proto::route::v1::routes_client::RoutesClient;
use futures_util::StreamExt;
use ipam_svc::core::Ipam;
use ipam_svc::grpc::IpamService;
use policy_svc::grpc::PolicyService;
use route_svc::grpc::RoutesService;
use tonic::transport::Channel;

const HELLOS: usize = 10_000;
/// Streams open at once.
const AT_ONCE: usize = 100;

fn hello(node: String) -> common::SyncClientMessage {
    common::SyncClientMessage {
        message: Some(common::sync_client_message::Message::Hello(common::SyncHello {
            node,
            resume_revision: 0,
        })),
    }
}

/// A stream that says hello and ends (the client's half-close) when `end` is dropped.
fn hello_until(
    node: String,
    end: tokio::sync::oneshot::Receiver<()>,
) -> impl futures_util::Stream<Item = common::SyncClientMessage> + Send + 'static {
    let ended = futures_util::stream::once(end).filter_map(|_| async { None });
    futures_util::stream::once(async move { hello(node) }).chain(ended)
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split(' ')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

/// Opens `count` Sync streams for made-up nodes, each until its first message.
async fn hellos(channel: &Channel, count: usize, policy: bool) {
    let names: Vec<String> = (0..count)
        .map(|i| format!("stranger-{i}-{:x}", rand_u64()))
        .collect();
    for chunk in names.chunks(AT_ONCE) {
        let calls = chunk.iter().cloned().map(|node| {
            let channel = channel.clone();
            async move {
                let (end, ended) = tokio::sync::oneshot::channel();
                let first = if policy {
                    let mut stream = PolicyClient::new(channel)
                        .sync(hello_until(node, ended))
                        .await
                        .expect("policy sync")
                        .into_inner();
                    stream.next().await.map(|m| m.map(drop))
                } else {
                    let mut stream = RoutesClient::new(channel)
                        .sync(hello_until(node, ended))
                        .await
                        .expect("route sync")
                        .into_inner();
                    stream.next().await.map(|m| m.map(drop))
                };
                first.expect("a first message").expect("served");
                drop(end);
            }
        });
        futures_util::future::join_all(calls).await;
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// Waits (up to 30 s) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_node_names_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = embedded_store(dir.path()).await;
    let ipam = Arc::new(Ipam::new(Arc::clone(&store)).with_writer_idle(Duration::from_millis(300)));
    let routes_service = RoutesService::start(Arc::clone(&store), FanoutConfig::default());
    let policy_service = PolicyService::start(Arc::clone(&store), FanoutConfig::default());
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(IpamService::new(Arc::clone(&ipam)).into_server());
    routes.add_service(routes_service.clone().into_server());
    routes.add_service(policy_service.clone().into_server());
    let address = serve_on_loopback(routes, &[]).await;
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    // Something for each service to stream (a fan-out has no first state before its first
    // write), and a pool that takes no allocation.
    let pool = ipam_api::model::Pool {
        name: "closed".into(),
        cidr: "10.244.0.0/16".parse().expect("cidr"),
        block_size: 26,
        vxlan_mode: Default::default(),
        ipip_mode: Default::default(),
        nat_outgoing: false,
        disabled: true,
        node_selector: Default::default(),
        allowed_uses: vec![ipam_api::model::AllowedUse::Workload],
        disable_bgp_export: false,
    };
    ipam.create_pool(pool).await.expect("pool");
    PolicyClient::new(channel.clone())
        .apply(brindle_proto::policy::v1::ApplyRequest {
            manifest: "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n".into(),
            ..Default::default()
        })
        .await
        .expect("a namespace");

    // A stream that never says hello is ended after HELLO_TIMEOUT.
    let (_silent_sender, silent_messages) = tokio::sync::mpsc::channel::<common::SyncClientMessage>(1);
    let silent = tokio::spawn({
        let channel = channel.clone();
        async move {
            PolicyClient::new(channel)
                .sync(tokio_stream_of(silent_messages))
                .await
                .map(drop)
        }
    });

    // Warm up (connection buffers, allocator arenas), then take the baseline.
    hellos(&channel, 200, true).await;
    hellos(&channel, 200, false).await;
    let settle = || {
        policy_service.hub().drop_idle();
    };
    eventually("the warm-up streams end", || {
        settle();
        policy_service.hub().fanout_count() == 0
    })
    .await;
    let (tasks_before, rss_before) = (alive_tasks(), rss());

    hellos(&channel, HELLOS, true).await;
    hellos(&channel, HELLOS, false).await;
    let mut client = brindle_proto::ipam::v1::ipam_client::IpamClient::new(channel.clone());
    for i in 0..HELLOS {
        // The only pool is disabled: each request is refused inside its node's writer.
        let refused = client
            .auto_assign(ipam::AutoAssignRequest {
                handle_id: format!("net.c{i}"),
                node: format!("stranger-{i}"),
                num_ipv4: 1,
                ..Default::default()
            })
            .await
            .expect_err("no pool");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    }

    eventually("every made-up node's fan-out is dropped", || {
        settle();
        policy_service.hub().fanout_count() == 0
    })
    .await;
    eventually(
        "route-svc forgets subscribers of nodes that are not registered",
        || routes_service.fanout().subscribers().len() <= AT_ONCE,
    )
    .await;
    eventually("IPAM writers of made-up nodes stop", || {
        ipam.active_writers() == 0
    })
    .await;
    eventually("the sessions' tasks end", || alive_tasks() <= tasks_before + 5).await;
    let grown = rss().saturating_sub(rss_before);
    assert!(
        grown < 64 << 20,
        "resident memory grew by {} MiB over {HELLOS} made-up nodes per service",
        grown >> 20
    );

    let ended = tokio::time::timeout(Duration::from_secs(20), silent)
        .await
        .expect("the silent stream is ended")
        .expect("task");
    let status = ended.expect_err("a stream without a hello is not served");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
}

fn tokio_stream_of(
    mut messages: tokio::sync::mpsc::Receiver<common::SyncClientMessage>,
) -> impl futures_util::Stream<Item = common::SyncClientMessage> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| messages.poll_recv(cx))
}
