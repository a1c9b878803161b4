//! bench-policy: the policy data plane at one node with 400 local endpoints, 10,000 remote
//! endpoints and 1,000 policies, on the real kernel inside a network namespace this benchmark
//! creates (the whole process moves into it first; the root namespace is never touched).
//! Reported: a full apply (render + ipset + iptables-restore into an empty kernel), the same with
//! a tenth of the remote endpoints (the rule count must not change: remote endpoints live in
//! ipsets), ipset sizes, and p50/p99 from a change written to the datastore to the node agent's
//! acknowledgement that the kernel holds it — through policy-svc (embedded store, loopback gRPC)
//! and the agent's real Sync follower — for a policy update, a remote endpoint relabel and a new
//! policy. Felix's published apply p90 is ≈ 1.7 s at ~400 pods/node (REFERENCE.md).
//!
//! `cargo build --release -p brindle-bench && target/release/bench-policy`

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use brindle_bench::{Latencies, ms, row};
use brindle_datastore::{EmbeddedStore, Store, Txn};
use brindle_fanout::FanoutConfig;
use brindle_selector::Selector;
use node_agent::core::policy::{Family, PolicyApplier, render};
use node_agent::dataplane::{IpsetCommands, Ipsets, Iptables, IptablesBackend, IptablesCommands};
use policy_api::model::{
    Action, Endpoint, EndpointKey, EntityRule, NamedPort, Namespace, Policy, PolicyId, PortMatch, Protocol,
    Rule,
};
use policy_svc::core::Calculator;
use policy_svc::core::records::{Record, encode};
use policy_svc::grpc::PolicyService;

const NODE: &str = "bench-node";
const NAMESPACES: usize = 20;
const APPS: usize = 50;
const ROLES: usize = 10;
const TEAMS: usize = 4;
const CHANGES: usize = 100;
/// Writes per datastore transaction while seeding.
const SEED_BATCH: usize = 64;

struct Sizes {
    local: usize,
    remote: usize,
    policies: usize,
}

fn namespace(index: usize) -> Namespace {
    Namespace::new(
        format!("ns-{index}"),
        BTreeMap::from([("team".to_owned(), format!("t-{}", index % TEAMS))]),
    )
}

/// Endpoint `k` (local ones on [`NODE`], remote ones spread over 100 nodes).
fn endpoint(k: usize, local: bool, role: usize) -> Endpoint {
    let address = Ipv4Addr::new(
        10,
        (k / 65_536) as u8 + if local { 200 } else { 100 },
        (k / 256 % 256) as u8,
        (k % 256) as u8,
    );
    Endpoint {
        key: EndpointKey {
            node: if local {
                NODE.to_owned()
            } else {
                format!("remote-{}", k % 100)
            },
            interface: format!("brd{k:08x}{}", if local { "l" } else { "r" }),
        },
        namespace: format!("ns-{}", k % NAMESPACES),
        pod: format!("pod-{k}"),
        container_id: format!("c{k}"),
        ips: vec![IpAddr::V4(address)],
        labels: BTreeMap::from([
            ("app".to_owned(), format!("app-{}", (k / NAMESPACES) % APPS)),
            ("role".to_owned(), format!("r-{role}")),
        ]),
        ports: vec![NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
    }
}

/// Policy `p`: pods of one app in one namespace admit one role of their namespace and every pod
/// of one team's namespaces, on TCP 80 and the named port `http`.
fn policy(p: usize, first_port: u16) -> Policy {
    let equals = |k: &str, v: String| Selector::Equals(k.to_owned(), v);
    let ports = vec![
        PortMatch::Range {
            first: first_port,
            last: first_port,
        },
        PortMatch::Named("http".into()),
    ];
    let rule = |source: EntityRule| Rule {
        action: Action::Allow,
        protocol: Some(Protocol::Tcp),
        not_protocol: None,
        icmp: None,
        not_icmp: None,
        source,
        destination: EntityRule {
            ports: ports.clone(),
            ..EntityRule::default()
        },
        annotations: Default::default(),
    };
    Policy {
        id: PolicyId::Namespaced {
            namespace: format!("ns-{}", p % NAMESPACES),
            name: format!("policy-{p}"),
        },
        order: None,
        selector: equals("app", format!("app-{}", (p / NAMESPACES) % APPS)),
        namespace_selector: None,
        service_account_selector: None,
        ingress_enabled: true,
        egress_enabled: false,
        ingress: vec![
            rule(EntityRule {
                selector: Some(equals("role", format!("r-{}", p % ROLES))),
                ..EntityRule::default()
            }),
            rule(EntityRule {
                selector: Some(Selector::All),
                namespace_selector: Some(equals("team", format!("t-{}", p % TEAMS))),
                ..EntityRule::default()
            }),
        ],
        egress: Vec::new(),
    }
}

fn records(sizes: &Sizes) -> Vec<Record> {
    let mut records: Vec<Record> = (0..NAMESPACES).map(|i| Record::Namespace(namespace(i))).collect();
    records.extend((0..sizes.policies).map(|p| Record::Policy(policy(p, 80), None)));
    records.extend((0..sizes.local).map(|k| Record::Endpoint(endpoint(k, true, k % ROLES))));
    records.extend((0..sizes.remote).map(|k| Record::Endpoint(endpoint(k, false, k % ROLES))));
    records
}

/// Removes every brd chain and set (between full-apply runs).
fn clear(iptables: &dyn Iptables, ipsets: &dyn Ipsets) -> anyhow::Result<()> {
    let mut applier = PolicyApplier::new(Family::V4);
    applier.apply(iptables, ipsets, &Default::default())?;
    Ok(())
}

fn rule_count(iptables: &dyn Iptables) -> anyhow::Result<usize> {
    Ok(iptables
        .save("filter")?
        .lines()
        .filter(|l| l.starts_with("-A brd-"))
        .count())
}

/// Renders and applies the view of `sizes` into an empty kernel; returns (render, apply, rules).
fn full_apply(
    sizes: &Sizes,
    iptables: &dyn Iptables,
    ipsets: &dyn Ipsets,
) -> anyhow::Result<(Duration, Duration, usize, Vec<usize>)> {
    let mut calc = Calculator::new();
    for record in records(sizes) {
        calc.put_record(record);
    }
    clear(iptables, ipsets)?;
    let started = Instant::now();
    let rendered = render(&calc.view(NODE), Family::V4);
    let rendered_in = started.elapsed();
    let started = Instant::now();
    PolicyApplier::new(Family::V4).apply(iptables, ipsets, &rendered)?;
    let applied_in = started.elapsed();
    let mut set_sizes: Vec<usize> = rendered.sets.values().map(|s| s.members.len()).collect();
    set_sizes.sort_unstable();
    Ok((rendered_in, applied_in, rule_count(iptables)?, set_sizes))
}

/// Seeds the store in batched transactions.
async fn seed(store: &dyn Store, records: Vec<Record>) -> anyhow::Result<()> {
    for chunk in records.chunks(SEED_BATCH) {
        let mut txn = Txn::new();
        for record in chunk {
            let (key, value) = encode(record);
            txn = txn.put(key, value);
        }
        store.txn(txn).await?;
    }
    Ok(())
}

/// Writes `record`, then waits until the agent acknowledged a revision at least as new.
async fn change(store: &dyn Store, service: &PolicyService, record: Record) -> anyhow::Result<Duration> {
    let (key, value) = encode(&record);
    let record_text = format!("{record:?}");
    let started = Instant::now();
    let revision = store.txn(Txn::new().put(key, value)).await?;
    let fanout = service.hub().fanout(NODE);
    loop {
        let acked = fanout
            .subscribers()
            .iter()
            .find(|s| s.node == NODE)
            .map_or(0, |s| s.acked_revision);
        if acked >= revision {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!(
                "the agent never acknowledged revision {revision} ({record_text}): node view at {}, hub at {}, subscriber {:?}",
                fanout.revision(),
                service.hub().revision(),
                fanout.subscribers()
            );
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn main() -> anyhow::Result<()> {
    brindle_grpc::LogArgs {
        log_format: brindle_grpc::LogFormat::Text,
    }
    .init()
    .map_err(anyhow::Error::msg)?;
    let _namespace = brindle_bench::BenchNamespace::enter("policy")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let sizes = Sizes {
        local: 400,
        remote: 10_000,
        policies: 1_000,
    };
    let iptables = IptablesCommands::new(IptablesBackend::detect());
    let ipsets = IpsetCommands;
    println!(
        "bench-policy: {} local endpoints, {} remote endpoints, {} policies, {NAMESPACES} namespaces",
        sizes.local, sizes.remote, sizes.policies
    );

    println!("\n== full apply (render + ipset restore + iptables-restore into an empty kernel)");
    for remote in [sizes.remote / 10, sizes.remote] {
        let (rendered, applied, rules, set_sizes) = full_apply(
            &Sizes {
                remote,
                ..Sizes {
                    local: sizes.local,
                    remote: 0,
                    policies: sizes.policies,
                }
            },
            &iptables,
            &ipsets,
        )?;
        let members: usize = set_sizes.iter().sum();
        println!(
            "remote {remote:>6}: render {:>8} ms   apply {:>8} ms   total {:>8} ms   iptables rules {rules:>6}   ipsets {:>4} ({members} members, largest {})",
            ms(rendered),
            ms(applied),
            ms(rendered + applied),
            set_sizes.len(),
            set_sizes.last().copied().unwrap_or(0),
        );
    }
    clear(&iptables, &ipsets)?;

    println!("\n== change in the datastore → rules in the kernel (policy-svc + the agent's Sync follower)");
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path().join("store.redb")).await?);
    let started = Instant::now();
    seed(store.as_ref(), records(&sizes)).await?;
    println!(
        "seeded {} objects in {} ms",
        NAMESPACES + sizes.policies + sizes.local + sizes.remote,
        ms(started.elapsed())
    );
    let service = PolicyService::start(Arc::clone(&store), FanoutConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(service.clone().into_server());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let started = Instant::now();
    brindle_bench::spawn_policy_agent(&format!("http://{address}"), NODE)?;
    let fanout = service.hub().fanout(NODE);
    while fanout
        .subscribers()
        .iter()
        .find(|s| s.node == NODE)
        .is_none_or(|s| s.acked_revision == 0)
    {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the agent never applied its first view");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "first view: listed, computed, streamed and applied {} ms after the agent started ({} iptables rules)",
        ms(started.elapsed()),
        rule_count(&iptables)?
    );

    let mut updates = Vec::new();
    let mut relabels = Vec::new();
    let mut additions = Vec::new();
    let wall = Instant::now();
    for i in 0..CHANGES {
        // A policy that applies on this node gets another port.
        let p = (i % 20) * NAMESPACES + i % NAMESPACES;
        updates.push(
            change(
                store.as_ref(),
                &service,
                Record::Policy(policy(p, 1000 + i as u16), None),
            )
            .await?,
        );
        // A remote endpoint changes role: it leaves the set of its namespace's referenced role
        // (policies of namespace n refer to role n % ROLES, which is k % ROLES), held here.
        let k = i * 97 % sizes.remote;
        relabels.push(
            change(
                store.as_ref(),
                &service,
                Record::Endpoint(endpoint(k, false, (k + 1) % ROLES)),
            )
            .await?,
        );
        // A new policy for pods of this node.
        let mut added = policy(i % 20 * NAMESPACES + (i / 20) % NAMESPACES, 2000 + i as u16);
        added.id = PolicyId::Namespaced {
            namespace: added.id.namespace().unwrap_or_default().to_owned(),
            name: format!("added-{i}"),
        };
        additions.push(change(store.as_ref(), &service, Record::Policy(added, None)).await?);
    }
    let wall = wall.elapsed();
    row("policy update → kernel", &Latencies::new(updates, wall / 3));
    row(
        "remote endpoint relabel → kernel",
        &Latencies::new(relabels, wall / 3),
    );
    row("new policy → kernel", &Latencies::new(additions, wall / 3));
    println!("iptables rules now: {}", rule_count(&iptables)?);
    println!("\ngoals: full apply ≤ 1 s (Felix p90 ≈ 1.7 s at ~400 pods/node); change → kernel p99 ≤ 100 ms");
    Ok(())
}
