//! bench-kube-sync: the real `kube-sync` binary between a Kubernetes API (kube-standin, the
//! tests' stand-in speaking the real list/watch protocol) and brindle's services (in this
//! process, embedded store on disk).
//!
//! 1. Initial sync of 10,000 pods, 1,000 NetworkPolicies, 100 namespaces and 100 nodes: time
//!    until policy-svc holds every pod and policy, beside the floor — the real kube-rs client
//!    only listing the same objects (what any controller pays before writing anything) — and
//!    kube-sync's peak RSS.
//! 2. Label changes: 1,000 pods with endpoints on 10 nodes, 100 policies whose selectors and
//!    peers name the pods' labels; node-0 is followed by the agent's real policy follower, which
//!    writes iptables rules and ipsets (in a network namespace of the benchmark's own) and
//!    acknowledges once the kernel holds them; the other nodes by plain Sync subscribers. A pod
//!    relabelled in the API → every node whose view changes has it (node-0: in its kernel),
//!    p50/p99 over 100 changes.
//!
//! Build the binaries first: `cargo build --release -p kube-sync -p brindle-bench`, then
//! `target/release/bench-kube-sync`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use brindle_bench::{Latencies, ms, proc_status_kib, row};
use brindle_fanout::FanoutConfig;
use brindle_proto::common::v1 as common;
use brindle_proto::policy::v1 as pb;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use futures_util::StreamExt;
use ipam_svc::core::Ipam;
use ipam_svc::grpc::IpamService;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use kube::Api;
use kube_standin::StandIn;
use kube_standin::objects::{meta, namespace, node, pod, selector};

use policy_svc::grpc::PolicyService;
use route_svc::grpc::RoutesService;
use tonic::transport::Channel;

/// The node whose agent programs a kernel.
const KERNEL_NODE: &str = "node-0";
/// Label values the pods are spread over; policy `i` guards `app=web-(i % APPS)`.
const APPS: usize = 50;

/// `app=web-<to>` admits `app=web-<from>`.
fn policy(namespace: &str, index: usize) -> NetworkPolicy {
    let guarded = format!("web-{}", index % APPS);
    let admitted = format!("web-{}", (index + 1) % APPS);
    NetworkPolicy {
        metadata: meta(Some(namespace), &format!("p{index}"), &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(&[("app", &guarded)]),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: selector(&[("app", &admitted)]),
                    ..NetworkPolicyPeer::default()
                }]),
                ..NetworkPolicyIngressRule::default()
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// brindle's services on a loopback port; their URL and policy-svc.
async fn services(dir: &std::path::Path) -> anyhow::Result<(String, PolicyService)> {
    let store: Arc<dyn brindle_datastore::Store> =
        Arc::new(brindle_datastore::EmbeddedStore::open(dir.join("store.redb")).await?);
    let mut routes = tonic::service::RoutesBuilder::default();
    let policy = PolicyService::start(store.clone(), FanoutConfig::default());
    routes.add_service(policy.clone().into_server());
    routes.add_service(RoutesService::start(store.clone(), FanoutConfig::default()).into_server());
    routes.add_service(IpamService::new(Arc::new(Ipam::new(store))).into_server());
    let address = brindle_bench::serve_on_loopback(routes.routes()).await?;
    Ok((format!("http://{address}"), policy))
}

/// The `kube-sync` binary beside this one, following `kubeconfig` into `services`.
fn start_kube_sync(kubeconfig: &std::path::Path, services: &str) -> anyhow::Result<std::process::Child> {
    let binary = std::env::current_exe()?
        .parent()
        .context("the benchmark's directory")?
        .join("kube-sync");
    std::process::Command::new(&binary)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--policy-endpoint",
            services,
            "--route-endpoint",
            services,
            "--ipam-endpoint",
            services,
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (cargo build --release -p kube-sync)",
                binary.display()
            )
        })
}

async fn counts(policy: &mut PolicyClient<Channel>) -> anyhow::Result<(usize, usize)> {
    let pods = policy
        .list_pods(pb::ListPodsRequest {})
        .await?
        .into_inner()
        .pods
        .len();
    let policies = policy
        .list(pb::ListRequest {
            kind: "KubernetesNetworkPolicy".into(),
            origin: "kubernetes".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .objects
        .len();
    Ok((pods, policies))
}

async fn initial_sync(pods: usize, policies: usize, nodes: usize, namespaces: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (url, _service) = services(dir.path()).await?;
    let api = StandIn::start(Duration::from_secs(60)).await?;
    for n in 0..namespaces {
        api.put(&namespace(
            &format!("ns-{n}"),
            &[("team", &format!("t{}", n % 10))],
        ));
    }
    for n in 0..nodes {
        api.put(&node(&format!("node-{n}"), &[("zone", &format!("z{}", n % 3))]));
    }
    for p in 0..pods {
        let app = format!("web-{}", p % APPS);
        api.put(&pod(
            &format!("ns-{}", p % namespaces),
            &format!("pod-{p}"),
            &format!("node-{}", p % nodes),
            &[("app", &app)],
        ));
    }
    for p in 0..policies {
        api.put(&policy(&format!("ns-{}", p % namespaces), p));
    }
    let kubeconfig = api.write_kubeconfig(dir.path())?;

    // The floor: the real client listing everything kube-sync lists (pages of 500, as its watcher).
    let client = kube_sync::runtime::kubernetes_client(Some(&kubeconfig)).await?;
    let started = Instant::now();
    let listed = list_all::<Pod>(&client).await? + list_all::<NetworkPolicy>(&client).await?;
    let floor = started.elapsed();

    let mut policy = PolicyClient::connect(url.clone()).await?;
    let mut child = start_kube_sync(&kubeconfig, &url)?;
    let started = Instant::now();
    loop {
        let (have_pods, have_policies) = counts(&mut policy).await?;
        if have_pods == pods && have_policies == policies {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "not synced: {have_pods} pods, {have_policies} policies"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let synced = started.elapsed();
    let rss = proc_status_kib(child.id(), "VmHWM:") as f64 / 1024.0;
    child.kill()?;
    child.wait()?;
    println!("initial sync: {pods} pods, {policies} policies, {namespaces} namespaces, {nodes} nodes");
    println!(
        "  kube-rs only listing them (the floor, {listed} objects): {} ms",
        ms(floor)
    );
    println!(
        "  kube-sync until policy-svc holds every pod and policy:      {} ms (goal ≤ 5 s; {:.1}× the floor)",
        ms(synced),
        synced.as_secs_f64() / floor.as_secs_f64()
    );
    println!("  kube-sync peak RSS: {rss:.1} MiB (goal ≤ 100 MiB)");
    Ok(())
}

/// Lists every object of `K` in pages of 500 (as kube-sync's watcher lists); how many there are.
async fn list_all<K>(client: &kube::Client) -> anyhow::Result<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let page = kube::api::ListParams::default().limit(500);
    let mut params = page.clone();
    let mut listed = 0;
    loop {
        let list = Api::<K>::all(client.clone()).list(&params).await?;
        listed += list.items.len();
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = page.clone().continue_token(&token),
            None => return Ok(listed),
        }
    }
}

/// Arrival times of deltas, per node, of one Sync stream each.
type Arrivals = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

async fn follow(
    mut client: PolicyClient<Channel>,
    node: String,
    arrivals: Arrivals,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let hello = common::SyncClientMessage {
        message: Some(common::sync_client_message::Message::Hello(common::SyncHello {
            node: node.clone(),
            resume_revision: 0,
        })),
    };
    // Keepalives every 10 s, as agents send them (a silent subscriber is evicted after 30 s).
    let keepalives = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let keepalive = common::SyncClientMessage {
            message: Some(common::sync_client_message::Message::Keepalive(
                common::Keepalive::default(),
            )),
        };
        Some((keepalive, ()))
    });
    let mut incoming = client
        .sync(futures_util::stream::iter([hello]).chain(keepalives))
        .await?
        .into_inner();
    let mut first = true;
    while let Some(message) = incoming.next().await {
        match message?.payload {
            Some(pb::sync_response::Payload::Delta(_)) => {
                arrivals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(node.clone())
                    .or_default()
                    .push(Instant::now());
            }
            Some(pb::sync_response::Payload::Snapshot(piece))
                if first && piece.offset + piece.data.len() as u64 >= piece.total_bytes =>
            {
                first = false;
                ready.send(()).await.ok();
            }
            _ => {}
        }
    }
    Ok(())
}

async fn label_changes(pods: usize, policies: usize, nodes: usize, changes: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (url, service) = services(dir.path()).await?;
    let api = StandIn::start(Duration::from_secs(60)).await?;
    api.put(&namespace("bench", &[]));
    let mut labels: Vec<usize> = (0..pods).map(|p| p % APPS).collect();
    for (p, app) in labels.iter().enumerate() {
        api.put(&pod(
            "bench",
            &format!("pod-{p}"),
            &format!("node-{}", p % nodes),
            &[("app", &format!("web-{app}"))],
        ));
    }
    for p in 0..policies {
        api.put(&policy("bench", p));
    }
    let kubeconfig = api.write_kubeconfig(dir.path())?;
    let mut child = start_kube_sync(&kubeconfig, &url)?;
    let mut policy_client = PolicyClient::connect(url.clone()).await?;
    let started = Instant::now();
    while counts(&mut policy_client).await? != (pods, policies) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "kube-sync did not sync"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in 0..pods {
        let ip = format!("10.{}.{}.{}", 100 + p / 65536, (p / 256) % 256, p % 256);
        policy_client
            .register_endpoint(pb::RegisterEndpointRequest {
                endpoint: Some(pb::WorkloadEndpoint {
                    node: format!("node-{}", p % nodes),
                    interface: format!("brd{p:011x}"),
                    namespace: "bench".into(),
                    pod: format!("pod-{p}"),
                    ips: vec![ip],
                    ..Default::default()
                }),
            })
            .await?;
    }
    let arrivals: Arrivals = Arc::default();
    let (ready, mut readied) = tokio::sync::mpsc::channel(nodes);
    for n in 1..nodes {
        tokio::spawn(follow(
            policy_client.clone(),
            format!("node-{n}"),
            arrivals.clone(),
            ready.clone(),
        ));
    }
    for _ in 1..nodes {
        readied.recv().await.context("a subscriber ended")?;
    }
    // node-0: the agent's real follower, into this namespace's kernel.
    brindle_bench::spawn_policy_agent(&url, KERNEL_NODE)?;
    let kernel_node = service.hub().fanout(KERNEL_NODE);
    let acked = || {
        kernel_node
            .subscribers()
            .iter()
            .find(|s| s.node == KERNEL_NODE)
            .map_or((0, 0), |s| (s.sent_revision, s.acked_revision))
    };
    let started = Instant::now();
    while acked().1 == 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the agent never applied its first view"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::new();
    let mut kernel_samples = Vec::new();
    let mut reached = Vec::new();
    let wall = Instant::now();
    for change in 0..changes {
        arrivals.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let p = (change * 37) % pods;
        labels[p] = (labels[p] + 7) % APPS;
        let changed_at = Instant::now();
        api.put(&pod(
            "bench",
            &format!("pod-{p}"),
            &format!("node-{}", p % nodes),
            &[("app", &format!("web-{}", labels[p]))],
        ));
        // The revision that holds the change, once policy-svc computed it.
        let wanted = format!("web-{}", labels[p]);
        let name = format!("pod-{p}");
        let revision = loop {
            let seen = service.hub().with_state(|state, revision| {
                let app = state
                    .pod("bench", &name)
                    .and_then(|pod| pod.labels.get("app").cloned());
                (app.as_deref() == Some(wanted.as_str())).then_some(revision)
            });
            if let Some(revision) = seen {
                break revision;
            }
            anyhow::ensure!(
                changed_at.elapsed() < Duration::from_secs(10),
                "change {change} never reached policy-svc"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // Every affected node has it once no further node receives anything for 300 ms and
        // node-0's agent, when the change is in its view, acknowledged it (its kernel holds it).
        let mut last_count = 0;
        let mut quiet_since = Instant::now();
        let mut in_kernel = None;
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let (sent, acked_revision) = acked();
            let kernel_affected = sent >= revision;
            if kernel_affected && acked_revision >= revision && in_kernel.is_none() {
                in_kernel = Some(Instant::now());
            }
            let count = arrivals.lock().unwrap_or_else(|p| p.into_inner()).len();
            if count != last_count {
                last_count = count;
                quiet_since = Instant::now();
            } else if (count > 0 || kernel_affected)
                && quiet_since.elapsed() > Duration::from_millis(300)
                && (!kernel_affected || in_kernel.is_some())
            {
                break;
            }
            anyhow::ensure!(
                changed_at.elapsed() < Duration::from_secs(10),
                "change {change} reached no node"
            );
        }
        let arrived: BTreeMap<String, Instant> = arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(node, times)| Some((node.clone(), *times.first()?)))
            .collect();
        let last = arrived
            .values()
            .copied()
            .chain(in_kernel)
            .max()
            .unwrap_or(changed_at);
        samples.push(last - changed_at);
        if let Some(at) = in_kernel {
            kernel_samples.push(at - changed_at);
        }
        reached.push(arrived.len() + usize::from(in_kernel.is_some()));
    }
    let rss = proc_status_kib(child.id(), "VmHWM:") as f64 / 1024.0;
    child.kill()?;
    child.wait()?;
    let wall = wall.elapsed();
    println!(
        "label changes: {pods} pods with endpoints on {nodes} nodes, {policies} policies, {changes} relabels in the API"
    );
    row(
        "API → every affected node (node-0: its kernel)",
        &Latencies::new(samples, wall),
    );
    row(
        "API → node-0's kernel, when affected",
        &Latencies::new(kernel_samples, wall),
    );
    println!(
        "  affected nodes per change: {:.1} on average (of {nodes}); kube-sync peak RSS {rss:.1} MiB",
        reached.iter().sum::<usize>() as f64 / reached.len().max(1) as f64
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // node-0's agent writes iptables rules and ipsets: into a namespace of the benchmark's own.
    let _namespace = brindle_bench::BenchNamespace::enter("kube-sync")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        initial_sync(10_000, 1_000, 100, 100).await?;
        label_changes(1_000, 100, 10, 100).await
    })
}
