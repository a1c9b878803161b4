//! bench-scale: brindle's control plane on a synthetic cluster of 1,000, 2,000 and 5,000 nodes
//! (30 pods each, 500 namespaces, 2,000 policies) written straight into Debian's etcd (fsync on).
//! For each size it starts ipam-svc, route-svc and policy-svc as processes on that etcd and a
//! second process holding every node's route and policy Sync stream (see
//! `brindle_bench::scale::subscribers`), then measures: IPAM allocations through the API,
//! `Check` and `Show` (median of 5 calls); start-up until every stream has its first state, each
//! service's CPU for it and memory; a pod relabelled and a policy added until every affected
//! node has its new view; a block claimed until every subscriber has it; etcd's size. The last
//! table gives each figure's growth from the smallest size to the largest.
//!
//! `cargo build --release -p brindle-bench --bin bench-scale && cargo build --release -p ipam-svc
//! -p route-svc -p policy-svc && target/release/bench-scale [--sizes 1000,2000,5000]`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_bench::Latencies;
use brindle_bench::scale::cluster::{Cluster, NAMESPACES, PODS_PER_NODE};
use brindle_bench::scale::now_nanos;
use brindle_bench::scale::services::ServiceProcess;
use brindle_bench::scale::subscribers;
use brindle_datastore::testing::EtcdServer;
use brindle_datastore::{EtcdStore, Store, Txn};
use brindle_proto::ipam::v1 as ipam_pb;
use brindle_proto::ipam::v1::ipam_client::IpamClient;
use std::io::{BufRead, BufReader, Write};
use tonic::transport::{Channel, Endpoint};

/// Relabels and policies added per size.
const CHANGES: usize = 100;
/// Block claims per size.
const CLAIMS: usize = 20;
/// Concurrent IPAM callers (each its own connection and source address).
const IPAM_CALLERS: usize = 64;
/// etcd's limit on operations per transaction.
const TXN_OPS: usize = 128;
/// How long start-up may take before the size is reported as not started.
const START_LIMIT: Duration = Duration::from_secs(900);
/// A service above this much memory stops the size (the machine has 24 GiB; the goal is 2).
const MEMORY_LIMIT: u64 = 12 << 30;

/// One figure of one size.
struct Figure {
    label: &'static str,
    unit: &'static str,
    value: f64,
}

#[derive(Default)]
struct Figures(Vec<Figure>);

impl Figures {
    fn add(&mut self, label: &'static str, unit: &'static str, value: f64) {
        println!("  {label:<52} {value:>12.2} {unit}");
        self.0.push(Figure { label, unit, value });
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Writes `records` in transactions of [`TXN_OPS`].
async fn write_all(store: &dyn Store, records: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    for chunk in records.chunks(TXN_OPS) {
        let mut txn = Txn::new();
        for (key, value) in chunk {
            txn = txn.put(key.clone(), value.clone());
        }
        store.txn(txn).await?;
    }
    Ok(())
}

/// The child process holding every node's streams, spoken to line by line.
struct Subscribers {
    child: Child,
    to: ChildStdin,
    from: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Subscribers {
    fn spawn(nodes: usize, route: SocketAddr, policy: SocketAddr) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--subscribers",
                &nodes.to_string(),
                &route.to_string(),
                &policy.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let to = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (lines_tx, from) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, to, from })
    }

    async fn ask(&mut self, command: &str, answer: &str) -> anyhow::Result<Vec<f64>> {
        writeln!(self.to, "{command}")?;
        self.read(answer, Duration::from_secs(120)).await
    }

    async fn read(&mut self, answer: &str, limit: Duration) -> anyhow::Result<Vec<f64>> {
        let line = tokio::time::timeout(limit, self.from.recv())
            .await
            .with_context(|| format!("no {answer:?} from the subscribers in {limit:?}"))?
            .context("the subscribers exited")?;
        let mut words = line.split_whitespace();
        if words.next() != Some(answer) {
            bail!("the subscribers said {line:?}, expected {answer}");
        }
        Ok(words.filter_map(|w| w.parse().ok()).collect())
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to `address` from the loopback address `source`.
fn channel(address: SocketAddr, source: IpAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?
        .local_address(Some(source))
        .connect_lazy())
}

/// 30 allocations per node through ipam-svc's API, [`IPAM_CALLERS`] callers at once.
async fn allocate(address: SocketAddr, cluster: Cluster) -> anyhow::Result<Latencies> {
    let started = Instant::now();
    let mut callers = Vec::new();
    for caller in 0..IPAM_CALLERS {
        let mut client = IpamClient::new(channel(
            address,
            IpAddr::V4(Ipv4Addr::new(127, 2, 0, caller as u8 + 1)),
        )?);
        callers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for node in (caller..cluster.nodes()).step_by(IPAM_CALLERS) {
                for pod in 0..PODS_PER_NODE {
                    let request = ipam_pb::AutoAssignRequest {
                        handle_id: format!("k8s-pod-network.n{node}-p{pod}"),
                        node: Cluster::node_name(node),
                        num_ipv4: 1,
                        ..Default::default()
                    };
                    let began = Instant::now();
                    let response = client.auto_assign(request).await?.into_inner();
                    anyhow::ensure!(response.allocations.len() == 1, "node {node}: no address");
                    samples.push(began.elapsed());
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut samples = Vec::new();
    for caller in callers {
        samples.extend(caller.await??);
    }
    Ok(Latencies::new(samples, started.elapsed()))
}

/// Calls of each IPAM report timed; the median is reported (one call's time varies by half
/// from run to run on the development VM).
const REPORT_RUNS: usize = 5;

/// The median time of [`REPORT_RUNS`] calls of `call`, in milliseconds, and the last answer.
async fn median_time<T, F: Future<Output = anyhow::Result<T>>>(
    mut call: impl FnMut() -> F,
) -> anyhow::Result<(f64, T)> {
    let mut times = Vec::with_capacity(REPORT_RUNS);
    let mut answer = None;
    for _ in 0..REPORT_RUNS {
        let started = Instant::now();
        answer = Some(call().await?);
        times.push(started.elapsed());
    }
    times.sort();
    let answer = answer.context("no call was made")?;
    Ok((millis(times[REPORT_RUNS / 2]), answer))
}

/// The IPAM figures: pool creation (once ipam-svc answers), allocations, Check and Show.
async fn measure_ipam(figures: &mut Figures, ipam: &ServiceProcess, cluster: Cluster) -> anyhow::Result<()> {
    let mut admin = IpamClient::new(channel(ipam.address(), IpAddr::V4(Ipv4Addr::LOCALHOST))?);
    let started = Instant::now();
    let pool = ipam_pb::IpPool {
        name: "scale".into(),
        cidr: "10.64.0.0/12".into(),
        block_size: 26,
        ..Default::default()
    };
    while let Err(status) = admin
        .create_pool(ipam_pb::CreatePoolRequest {
            pool: Some(pool.clone()),
        })
        .await
    {
        anyhow::ensure!(
            started.elapsed() < START_LIMIT,
            "ipam-svc never answered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    figures.add("ipam-svc: start → first answer", "ms", millis(started.elapsed()));
    let assigned = allocate(ipam.address(), cluster).await?;
    figures.add("ipam: AutoAssign rate", "ops/s", assigned.rate());
    figures.add("ipam: AutoAssign p99", "ms", millis(assigned.percentile(99.0)));
    let (check_ms, report) = median_time(|| {
        let mut admin = admin.clone();
        async move { Ok(admin.check(ipam_pb::CheckRequest::default()).await?.into_inner()) }
    })
    .await?;
    figures.add("ipam check (median of 5)", "ms", check_ms);
    anyhow::ensure!(
        report.clean && report.allocations == cluster.pods() as u64,
        "ipam check: {} allocations, clean {}",
        report.allocations,
        report.clean
    );
    let (show_ms, _) = median_time(|| {
        let mut admin = admin.clone();
        async move { Ok(admin.show(ipam_pb::ShowRequest::default()).await?) }
    })
    .await?;
    figures.add("ipam show (median of 5)", "ms", show_ms);
    let (blocks_ms, shown) = median_time(|| {
        let mut admin = admin.clone();
        async move {
            let request = ipam_pb::ShowRequest {
                blocks: true,
                ..Default::default()
            };
            Ok(admin.show(request).await?.into_inner())
        }
    })
    .await?;
    figures.add("ipam show --blocks (median of 5)", "ms", blocks_ms);
    let blocks = shown.blocks.len();
    println!("  ({blocks} blocks)");
    Ok(())
}

/// Waits for every stream's first state while watching the services' memory.
async fn start_up(
    figures: &mut Figures,
    subscribers: &mut Subscribers,
    services: &mut [&mut ServiceProcess],
    nodes: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let synced = loop {
        match subscribers.read("synced", Duration::from_secs(1)).await {
            Ok(synced) => break synced,
            Err(error) if !error.to_string().contains("no \"synced\"") => return Err(error),
            Err(_) => {}
        }
        for service in services.iter_mut() {
            service.ensure_running()?;
            if service.rss() > MEMORY_LIMIT || started.elapsed() > START_LIMIT {
                bail!(
                    "not started after {:.0} s: {} holds {:.0} MiB",
                    started.elapsed().as_secs_f64(),
                    service.name(),
                    mib(service.rss())
                );
            }
        }
    };
    let [route_s, policy_s, route_bytes, policy_bytes, _, policy_entries] = synced[..] else {
        bail!("synced: {synced:?}");
    };
    figures.add("start-up: every node has its routes", "s", route_s);
    figures.add("start-up: every node has its policy view", "s", policy_s);
    figures.add(
        "route snapshot per node",
        "KiB",
        route_bytes / nodes as f64 / 1024.0,
    );
    figures.add(
        "policy view per node",
        "KiB",
        policy_bytes / nodes as f64 / 1024.0,
    );
    figures.add("policy view per node", "entries", policy_entries / nodes as f64);
    for service in services.iter() {
        let (label, cpu, kernel) = match service.name() {
            "route-svc" => (
                "route-svc RSS after start-up",
                "route-svc CPU for start-up",
                "route-svc CPU for start-up, in the kernel",
            ),
            _ => (
                "policy-svc RSS after start-up",
                "policy-svc CPU for start-up",
                "policy-svc CPU for start-up, in the kernel",
            ),
        };
        // Started just before: all the CPU it used is start-up's (less noisy than wall time).
        let time = service.cpu_time();
        figures.add(cpu, "s", time.total());
        figures.add(kernel, "s", time.system);
        figures.add(label, "MiB", mib(service.rss()));
        if service.name() == "policy-svc" {
            figures.add(
                "policy-svc RSS per view entry",
                "bytes",
                service.rss() as f64 / policy_entries,
            );
        }
    }
    Ok(())
}

/// Writes each change, waits for it to settle, then reads when every affected node had it.
async fn changes(
    figures: &mut Figures,
    store: &dyn Store,
    subscribers: &mut Subscribers,
    label: [&'static str; 4],
    records: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let mut written = Vec::new();
    for (key, value) in records {
        let t0 = now_nanos();
        let revision = store.txn(Txn::new().put(key, value)).await?;
        subscribers
            .ask(&format!("wait policy {revision} some"), "waited")
            .await?;
        written.push((revision, t0));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut every, mut nodes, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for (revision, t0) in written {
        let stats = subscribers
            .ask(&format!("stats policy {revision} {t0}"), "stats")
            .await?;
        let [count, sent, _, max] = stats[..] else {
            bail!("stats: {stats:?}");
        };
        every.push(Duration::from_secs_f64(max / 1000.0));
        nodes.push(count);
        bytes.push(sent);
    }
    let every = Latencies::new(every, Duration::from_secs(1));
    figures.add(label[0], "ms", millis(every.percentile(50.0)));
    figures.add(label[1], "ms", millis(every.percentile(99.0)));
    figures.add(label[2], "nodes", nodes.iter().sum::<f64>() / nodes.len() as f64);
    figures.add(
        label[3],
        "KiB",
        bytes.iter().sum::<f64>() / bytes.len() as f64 / 1024.0,
    );
    Ok(())
}

/// Block claims until every node has them.
async fn claims(
    figures: &mut Figures,
    store: &dyn Store,
    subscribers: &mut Subscribers,
    nodes: usize,
) -> anyhow::Result<()> {
    let mut every = Vec::new();
    for probe in 0..CLAIMS {
        let (key, value) = Cluster::claimed_block(probe, probe * 37 % nodes)?;
        let t0 = now_nanos();
        let revision = store.txn(Txn::new().put(key, value)).await?;
        let count = subscribers
            .ask(&format!("wait route {revision} all"), "waited")
            .await?;
        anyhow::ensure!(
            count.first() == Some(&(nodes as f64)),
            "claim {probe} reached {count:?}"
        );
        let stats = subscribers
            .ask(&format!("stats route {revision} {t0}"), "stats")
            .await?;
        every.push(Duration::from_secs_f64(
            stats.get(3).copied().unwrap_or(0.0) / 1000.0,
        ));
    }
    let every = Latencies::new(every, Duration::from_secs(1));
    figures.add(
        "block claim → every node p50",
        "ms",
        millis(every.percentile(50.0)),
    );
    figures.add(
        "block claim → every node p99",
        "ms",
        millis(every.percentile(99.0)),
    );
    Ok(())
}

/// One cluster size, start to finish.
async fn measure(nodes: usize) -> anyhow::Result<Figures> {
    let cluster = Cluster::new(nodes);
    println!(
        "\n{nodes} nodes, {} pods, {NAMESPACES} namespaces, {} policies",
        cluster.pods(),
        Cluster::policy_count()
    );
    let mut figures = Figures::default();
    let etcd = EtcdServer::start().await?;
    let store = EtcdStore::connect(&etcd.config()).await?;
    let logs = tempfile::Builder::new().prefix("bench-scale-").tempdir()?;
    let started = Instant::now();
    write_all(&store, cluster.node_records()?).await?;
    write_all(&store, cluster.policy_records()?).await?;
    figures.add("cluster written to etcd", "s", started.elapsed().as_secs_f64());

    let ipam = ServiceProcess::spawn("ipam-svc", &etcd.endpoint(), logs.path())?;
    measure_ipam(&mut figures, &ipam, cluster).await?;

    let mut route = ServiceProcess::spawn("route-svc", &etcd.endpoint(), logs.path())?;
    let mut policy = ServiceProcess::spawn("policy-svc", &etcd.endpoint(), logs.path())?;
    let mut subscribers = Subscribers::spawn(nodes, route.address(), policy.address())?;
    let outcome = async {
        start_up(
            &mut figures,
            &mut subscribers,
            &mut [&mut route, &mut policy],
            nodes,
        )
        .await?;
        let relabels = (0..CHANGES)
            .map(|i| cluster.endpoint_record((i * 1_499 + 7) % cluster.pods(), true))
            .collect();
        changes(
            &mut figures,
            &store,
            &mut subscribers,
            [
                "relabel → every affected node p50",
                "relabel → every affected node p99",
                "relabel: nodes updated (mean)",
                "relabel: bytes sent (mean)",
            ],
            relabels,
        )
        .await?;
        let added = (0..CHANGES)
            .map(Cluster::added_policy)
            .collect::<anyhow::Result<_>>()?;
        changes(
            &mut figures,
            &store,
            &mut subscribers,
            [
                "policy added → every affected node p50",
                "policy added → every affected node p99",
                "policy added: nodes updated (mean)",
                "policy added: bytes sent (mean)",
            ],
            added,
        )
        .await?;
        claims(&mut figures, &store, &mut subscribers, nodes).await
    }
    .await;
    if let Err(error) = outcome {
        report_logs(logs.path());
        return Err(error);
    }
    for (label, service) in [
        ("ipam-svc peak RSS", &ipam),
        ("route-svc peak RSS", &route),
        ("policy-svc peak RSS", &policy),
    ] {
        figures.add(label, "MiB", mib(service.peak_rss()));
    }
    let keys = store.list("/").await?.kvs.len();
    figures.add("etcd keys", "keys", keys as f64);
    let database = std::fs::metadata(etcd.data_dir().join("member/snap/db"))?.len();
    figures.add("etcd database", "MiB", mib(database));
    Ok(figures)
}

/// The last lines each service logged (when a size fails).
fn report_logs(dir: &Path) {
    for name in ["ipam-svc", "route-svc", "policy-svc"] {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        eprintln!("{name}: {}", tail.join("\n  "));
    }
}

fn growth(sizes: &[usize], results: &[Figures]) {
    let (Some(first), Some(last)) = (results.first(), results.last()) else {
        return;
    };
    let nodes = sizes[results.len() - 1] as f64 / sizes[0] as f64;
    println!(
        "\ngrowth from {} to {} nodes (×{nodes:.1} nodes; linear growth would be ×{nodes:.1})",
        sizes[0],
        sizes[results.len() - 1]
    );
    for (from, to) in first.0.iter().zip(&last.0) {
        let factor = if from.value > 0.0 {
            to.value / from.value
        } else {
            f64::NAN
        };
        println!(
            "  {:<52} {:>12.2} → {:>12.2} {:<6} ×{factor:.2}",
            from.label, from.value, to.value, from.unit
        );
    }
}

async fn orchestrate(sizes: Vec<usize>) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    println!("bench-scale: Debian etcd (fsync on), services as processes, one subscriber process");
    let mut results = Vec::new();
    for &nodes in &sizes {
        match measure(nodes).await {
            Ok(figures) => results.push(figures),
            Err(error) => {
                println!("  {nodes} nodes: stopped: {error:#}");
                break;
            }
        }
    }
    growth(&sizes, &results);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.as_slice() {
        [] => runtime.block_on(orchestrate(vec![1_000, 2_000, 5_000])),
        [flag, sizes] if flag == "--sizes" => {
            let sizes = sizes.split(',').map(str::parse).collect::<Result<_, _>>()?;
            runtime.block_on(orchestrate(sizes))
        }
        [flag, nodes, route, policy] if flag == "--subscribers" => {
            runtime.block_on(subscribers::run(nodes.parse()?, route.parse()?, policy.parse()?))
        }
        _ => bail!("usage: bench-scale [--sizes 1000,2000,5000]"),
    }
}
