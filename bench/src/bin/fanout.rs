//! bench-fanout: route-svc's fan-out at 1,000 and 5,000 subscribers. The benchmark process
//! serves route-svc (embedded store seeded with 5,000 nodes and their blocks) on loopback; a child
//! process (this binary with `--clients`) opens one gRPC connection and Sync stream per
//! subscriber, as agents do. Reported: time from a block claim written to the datastore until
//! every subscriber has it (p50/p99), snapshot size raw and compressed, the server's memory per
//! subscriber, and a reconnect of every subscriber with resume versus a full snapshot.
//!
//! `cargo build --release -p brindle-bench && target/release/bench-fanout`

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use brindle_bench::proc_status_kib;
use brindle_datastore::{EmbeddedStore, Store, Txn};
use brindle_fanout::FanoutConfig;
use brindle_proto::common::v1 as common;
use brindle_proto::route::v1 as pb;
use brindle_proto::route::v1::routes_client::RoutesClient;
use futures_util::StreamExt;
use ipam_api::keys;
use ipam_api::model::Block;
use prost::Message;
use route_api::Node;
use route_svc::grpc::RoutesService;

const NODES: usize = 5_000;
const PROBES: usize = 5;

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn raise_fd_limit() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard)?;
    Ok(())
}

fn block(index: usize) -> Block {
    let cidr = format!("10.{}.{}.0/26", 100 + index / 256, index % 256)
        .parse()
        .expect("cidr");
    Block::new(cidr, "bench", Some(&format!("node-{index}")), 1)
}

async fn seed(store: &dyn Store) -> anyhow::Result<()> {
    let mut txn = Txn::new();
    for index in 0..NODES {
        let node = Node {
            name: format!("node-{index}"),
            addresses: vec![format!("172.16.{}.{}", index / 250, index % 250 + 1).parse()?],
            ipv4_subnet: None,
            ipv6_subnet: None,
            labels: [(
                "topology.kubernetes.io/zone".to_owned(),
                format!("zone-{}", index % 3),
            )]
            .into(),
            vtep_mac: None,
            vtep_ipv4: None,
            vtep_ipv6: None,
            ipip_tunnel_ipv4: None,
            bgp: None,
            lease: 0,
        };
        txn = txn.put(keys::node(&node.name), serde_json::to_vec(&node)?);
        let block = block(index);
        txn = txn.put(keys::block(&block.cidr), serde_json::to_vec(&block)?);
        if (index + 1) % 60 == 0 {
            store.txn(std::mem::take(&mut txn)).await?;
        }
    }
    store.txn(txn).await?;
    Ok(())
}

/// The server side: returns after printing the report.
async fn orchestrate() -> anyhow::Result<()> {
    raise_fd_limit()?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path().join("store.redb")).await?);
    seed(store.as_ref()).await?;
    let service = RoutesService::start(Arc::clone(&store), FanoutConfig::default());
    let fanout = service.fanout().clone();
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(service.into_server());
    let address = brindle_bench::serve_on_loopback(routes.routes()).await?;
    while fanout.state().len() < 2 * NODES {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot = fanout.snapshot().await?;
    println!("bench-fanout: route-svc on loopback, embedded store, {NODES} nodes + {NODES} blocks");
    println!(
        "snapshot of {} entries: {} KiB raw, {} KiB zstd ({:.1}×); {:.0} bytes/entry raw, {:.0} compressed",
        snapshot.entries,
        snapshot.raw_bytes / 1024,
        snapshot.data.len() / 1024,
        snapshot.raw_bytes as f64 / snapshot.data.len() as f64,
        snapshot.raw_bytes as f64 / snapshot.entries as f64,
        snapshot.data.len() as f64 / snapshot.entries as f64,
    );
    let mut probe = 0;
    for subscribers in [1_000usize, 5_000] {
        let before = proc_status_kib(std::process::id(), "VmRSS:");
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args([
                "--clients",
                &subscribers.to_string(),
                "--address",
                &address.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut to_child = child.stdin.take().context("stdin")?;
        let mut from_child = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut expect = |prefix: &str| -> anyhow::Result<String> {
            let line = from_child.next().context("child ended")??;
            if !line.starts_with(prefix) {
                bail!("child said {line:?}, expected {prefix}");
            }
            Ok(line)
        };
        let started = Instant::now();
        expect("synced")?;
        let synced_in = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let per_subscriber = (proc_status_kib(std::process::id(), "VmRSS:").saturating_sub(before)) as f64
            * 1024.0
            / subscribers as f64;
        println!(
            "\n{subscribers} subscribers: all synced (snapshot each) in {:.2} s; server memory per subscriber {:.1} KB",
            synced_in.as_secs_f64(),
            per_subscriber / 1000.0
        );
        let mut samples = Vec::new();
        for _ in 0..PROBES {
            probe += 1;
            let claim = block(NODES + probe);
            let key = format!("block/{}", claim.cidr);
            let t0 = now_nanos();
            store
                .txn(Txn::new().put(keys::block(&claim.cidr), serde_json::to_vec(&claim)?))
                .await?;
            writeln!(to_child, "report {key} {t0}")?;
            let line = expect("latency")?;
            let values: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            samples.extend(values);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        samples.sort_by(f64::total_cmp);
        let pct = |p: f64| samples[((p / 100.0) * (samples.len() - 1) as f64).round() as usize];
        println!(
            "block claim → every subscriber has it ({} deliveries): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms (goal p99 ≤ 250 ms)",
            samples.len(),
            pct(50.0),
            pct(99.0),
            pct(100.0)
        );
        for mode in ["resume", "snapshot"] {
            writeln!(to_child, "reconnect {mode}")?;
            println!(
                "reconnect all with {mode}: {}",
                expect("reconnected")?.trim_start_matches("reconnected ")
            );
        }
        drop(to_child);
        child.wait()?;
    }
    Ok(())
}

/// One subscriber's stream: hello, then every message; arrival times of block keys and byte
/// counts go to `log`.
struct Shared {
    arrivals: Mutex<HashMap<String, Vec<u128>>>,
    revisions: Mutex<Vec<u64>>,
    bytes: std::sync::atomic::AtomicU64,
    first_messages: std::sync::atomic::AtomicUsize,
}

async fn subscribe(
    mut client: RoutesClient<tonic::transport::Channel>,
    index: usize,
    resume: u64,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let hello = common::SyncClientMessage {
        message: Some(common::sync_client_message::Message::Hello(common::SyncHello {
            node: format!("node-{index}"),
            resume_revision: resume,
        })),
    };
    let mut incoming = client
        .sync(futures_util::stream::iter([hello]).chain(futures_util::stream::pending()))
        .await?
        .into_inner();
    let mut first = true;
    while let Some(message) = incoming.next().await {
        let message = message?;
        shared
            .bytes
            .fetch_add(message.encoded_len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(pb::sync_response::Payload::Delta(delta)) = &message.payload {
            let now = now_nanos();
            let mut arrivals = shared.arrivals.lock().unwrap_or_else(|p| p.into_inner());
            for entry in &delta.upserts {
                arrivals.entry(entry.key.clone()).or_default().push(now);
            }
        }
        if message.revision > 0 {
            shared.revisions.lock().unwrap_or_else(|p| p.into_inner())[index] = message.revision;
        }
        let applied = match &message.payload {
            Some(pb::sync_response::Payload::Keepalive(_)) | None => false,
            // A snapshot counts once its last piece arrived.
            Some(pb::sync_response::Payload::Snapshot(piece)) => {
                piece.offset + piece.data.len() as u64 >= piece.total_bytes
            }
            Some(pb::sync_response::Payload::Delta(_)) => true,
        };
        if first && applied {
            first = false;
            shared
                .first_messages
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    Ok(())
}

async fn clients(count: usize, address: String) -> anyhow::Result<()> {
    raise_fd_limit()?;
    let shared = Arc::new(Shared {
        arrivals: Mutex::new(HashMap::new()),
        revisions: Mutex::new(vec![0; count]),
        bytes: Default::default(),
        first_messages: Default::default(),
    });
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?.connect_lazy();
        channels.push(RoutesClient::new(channel).max_decoding_message_size(brindle_grpc::MAX_RESPONSE_BYTES));
    }
    let start_all = |resume: Vec<u64>| -> Vec<tokio::task::JoinHandle<()>> {
        channels
            .iter()
            .enumerate()
            .map(|(index, client)| {
                let (client, shared, resume) = (client.clone(), Arc::clone(&shared), resume[index]);
                tokio::spawn(async move {
                    if let Err(error) = subscribe(client, index, resume, shared).await {
                        eprintln!("subscriber {index}: {error}");
                    }
                })
            })
            .collect()
    };
    let wait_first = |target: usize| {
        let shared = Arc::clone(&shared);
        async move {
            while shared.first_messages.load(std::sync::atomic::Ordering::SeqCst) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let mut tasks = start_all(vec![0; count]);
    wait_first(count).await;
    println!("synced");
    let mut lines = BufReader::new(std::io::stdin()).lines();
    while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["report", key, t0] => {
                let t0: u128 = t0.parse()?;
                let arrivals = loop {
                    let arrivals = shared
                        .arrivals
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(*key)
                        .cloned();
                    if let Some(arrivals) = arrivals.filter(|a| a.len() >= count) {
                        break arrivals;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                };
                let millis: Vec<String> = arrivals
                    .iter()
                    .map(|a| format!("{:.3}", (a.saturating_sub(t0)) as f64 / 1e6))
                    .collect();
                println!("latency {}", millis.join(" "));
            }
            ["reconnect", mode] => {
                for task in tasks.drain(..) {
                    task.abort();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let resume = match *mode {
                    "resume" => shared.revisions.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                    _ => vec![0; count],
                };
                shared.bytes.store(0, std::sync::atomic::Ordering::SeqCst);
                let before = shared.first_messages.load(std::sync::atomic::Ordering::SeqCst);
                let started = Instant::now();
                tasks = start_all(resume);
                wait_first(before + count).await;
                println!(
                    "reconnected {count} streams in {:.2} s, {:.1} KiB received in all",
                    started.elapsed().as_secs_f64(),
                    shared.bytes.load(std::sync::atomic::Ordering::SeqCst) as f64 / 1024.0
                );
            }
            _ => bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => orchestrate().await,
        [clients_flag, count, address_flag, address]
            if clients_flag == "--clients" && address_flag == "--address" =>
        {
            clients(count.parse()?, address.clone()).await
        }
        _ => bail!("usage: bench-fanout"),
    }
}
