//! bench-ipam: 20 nodes × 110 pods allocated concurrently through the ipam-svc gRPC API, then
//! released, on etcd (fsync on) and on the embedded store; etcd's own single-client write rate is
//! measured in the same run as the ceiling a one-write-per-pod design would hit.
//!
//! Two load shapes: a burst (all 2,200 requests in flight at once: throughput; latency there is
//! mostly queueing, at least 2,200 ÷ rate) and paced (each node keeps 4 requests in flight, as a
//! kubelet starting pods: latency).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use brindle_bench::{Latencies, row};
use brindle_datastore::testing::EtcdServer;
use brindle_datastore::{EmbeddedStore, EtcdStore, Store, Txn};
use brindle_proto::ipam::v1 as pb;
use ipam_svc::core::Ipam;
use ipam_svc::grpc::IpamService;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

const NODES: usize = 20;
const PODS_PER_NODE: usize = 110;
const ETCD_WRITES: usize = 1000;
/// Requests each node keeps in flight in the paced shape.
const PACED_IN_FLIGHT: usize = 4;

/// etcd's sequential single-client write rate: one put at a time, as calico-ipam's per-pod writes.
async fn etcd_ceiling(store: &dyn Store) -> anyhow::Result<Latencies> {
    let mut samples = Vec::with_capacity(ETCD_WRITES);
    let start = Instant::now();
    for n in 0..ETCD_WRITES {
        let began = Instant::now();
        store
            .txn(Txn::new().put(format!("/bench/ceiling/{n}"), vec![b'x'; 200]))
            .await?;
        samples.push(began.elapsed());
    }
    Ok(Latencies::new(samples, start.elapsed()))
}

/// Serves ipam-svc's gRPC service on a loopback port; returns its address.
async fn serve(store: Arc<dyn Store>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let service = IpamService::new(Arc::new(Ipam::new(store))).into_server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(format!("http://{address}"))
}

/// Runs `call(node, pod)` for every pod of every node, each node keeping at most `in_flight`
/// calls running; returns per-call latencies.
async fn load<F, Fut>(channels: &[Channel], in_flight: usize, call: F) -> anyhow::Result<Latencies>
where
    F: Fn(pb::ipam_client::IpamClient<Channel>, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(NODES * PODS_PER_NODE);
    for (node, channel) in channels.iter().enumerate() {
        let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
        for pod in 0..PODS_PER_NODE {
            let client = pb::ipam_client::IpamClient::new(channel.clone());
            let (call, slots) = (call.clone(), Arc::clone(&slots));
            tasks.push(tokio::spawn(async move {
                let _slot = slots
                    .acquire_owned()
                    .await
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                let began = Instant::now();
                call(client, node, pod).await.map(|()| began.elapsed())
            }));
        }
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await?.context("IPAM call failed")?);
    }
    Ok(Latencies::new(samples, start.elapsed()))
}

/// Assign then release every pod with `in_flight` requests per node; checks IPAM after each.
async fn cycle(
    label: &str,
    channels: &[Channel],
    in_flight: usize,
    round: usize,
) -> anyhow::Result<(Latencies, Latencies)> {
    let mut admin = pb::ipam_client::IpamClient::new(channels[0].clone());
    let assign = load(channels, in_flight, move |mut client, node, pod| async move {
        let request = pb::AutoAssignRequest {
            handle_id: format!("k8s-pod-network.r{round}-n{node}-p{pod}"),
            node: format!("node-{node}"),
            num_ipv4: 1,
            ..Default::default()
        };
        let response = client.auto_assign(request).await?.into_inner();
        if response.allocations.len() == 1 {
            Ok(())
        } else {
            Err(tonic::Status::internal("no address"))
        }
    })
    .await?;
    let report = admin.check(pb::CheckRequest::default()).await?.into_inner();
    anyhow::ensure!(
        report.clean && report.allocations == (NODES * PODS_PER_NODE) as u64,
        "{label}: {report:?}"
    );
    let release = load(channels, in_flight, move |mut client, node, pod| async move {
        let request = pb::ReleaseByHandleRequest {
            handle_id: format!("k8s-pod-network.r{round}-n{node}-p{pod}"),
        };
        let response = client.release_by_handle(request).await?.into_inner();
        if response.released_ips.len() == 1 {
            Ok(())
        } else {
            Err(tonic::Status::internal("not released"))
        }
    })
    .await?;
    let report = admin.check(pb::CheckRequest::default()).await?.into_inner();
    anyhow::ensure!(
        report.clean && report.allocations == 0,
        "{label}: leaked {report:?}"
    );
    Ok((assign, release))
}

/// What the goals are judged on.
struct Judged {
    /// Burst AutoAssign: throughput.
    burst_assign: Latencies,
    /// Paced AutoAssign: latency.
    paced_assign: Latencies,
}

/// Burst and paced cycles against one backend; prints their rows.
async fn run(label: &str, store: Arc<dyn Store>) -> anyhow::Result<Judged> {
    let address = serve(Arc::clone(&store)).await?;
    let mut channels = Vec::with_capacity(NODES);
    for _ in 0..NODES {
        channels.push(Channel::from_shared(address.clone())?.connect().await?);
    }
    let pool = pb::IpPool {
        name: "bench".into(),
        cidr: "10.0.0.0/16".into(),
        block_size: 26,
        ..Default::default()
    };
    pb::ipam_client::IpamClient::new(channels[0].clone())
        .create_pool(pb::CreatePoolRequest { pool: Some(pool) })
        .await?;
    let (burst_assign, burst_release) = cycle(label, &channels, PODS_PER_NODE, 0).await?;
    let (paced_assign, paced_release) = cycle(label, &channels, PACED_IN_FLIGHT, 1).await?;
    row(&format!("{label}: AutoAssign, burst"), &burst_assign);
    row(&format!("{label}: ReleaseByHandle, burst"), &burst_release);
    row(
        &format!("{label}: AutoAssign, paced ({PACED_IN_FLIGHT}/node)"),
        &paced_assign,
    );
    row(&format!("{label}: ReleaseByHandle, paced"), &paced_release);
    Ok(Judged {
        burst_assign,
        paced_assign,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("bench-ipam: {NODES} nodes × {PODS_PER_NODE} pods, every request in flight at once, via gRPC");
    let etcd = EtcdServer::start()
        .await
        .context("starting Debian's etcd (fsync on)")?;
    let etcd_store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&etcd.config()).await?);
    let ceiling = etcd_ceiling(etcd_store.as_ref()).await?;
    row("etcd: 1 client, sequential puts", &ceiling);
    let etcd = run("ipam on etcd", Arc::clone(&etcd_store)).await?;
    let dir = tempfile::tempdir()?;
    let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path().join("bench.redb")).await?);
    run("ipam on embedded", embedded).await?;
    println!();
    let rate = etcd.burst_assign.rate();
    let p99 = etcd.paced_assign.percentile(99.0);
    println!(
        "burst allocations/s on etcd ÷ etcd single-client writes/s: {:.1}× (group commit packs many pods per write)",
        rate / ceiling.rate()
    );
    println!(
        "burst allocations/s on etcd ÷ calico-ipam's published 8.6 pods/s: {:.0}×",
        rate / 8.6
    );
    println!(
        "goal on etcd: ≥ 500 allocations/s → {rate:.0} ({}); paced p99 ≤ 50 ms → {} ms ({})",
        if rate >= 500.0 { "met" } else { "NOT met" },
        brindle_bench::ms(p99),
        if p99 <= Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        },
    );
    Ok(())
}
