//! bench-flow-log: what flow logs cost, in one run on two labs side by side — one whose agents log
//! denied packets only (the default), one whose agents also log allowed connections
//! (`--flow-log-allowed`) and every denied packet up to iptables' limit (`--flow-log-rate 10000`).
//!
//! 1. Pod-to-pod TCP throughput across two nodes (Debian's iperf3), rounds alternating between the
//!    labs; prints the medians and the median per-round ratio (goal: logging on ≥ 95 % of off).
//! 2. The agent's CPU while 10,000 denied packets a second arrive at its node for a pod behind a
//!    deny-all policy, in each lab (1,000 and 10,000 of them logged a second), against the same
//!    agent idle.
//!
//! Needs root, iperf3 and the workspace's release binaries:
//! `cargo build --release --workspace --bins && target/release/bench-flow-log`.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle::lab::{Lab, LabSpec, Workload};
use brindle_bench::iperf::{IperfArgs, iperf3, median};
use brindle_bench::proc_cpu_time;

/// Denied packets a second sent at the node.
const DENIED_PER_SECOND: u32 = 10_000;

/// A lab of two nodes, a pod on each, and a pod `sink` on the second behind a deny-all policy.
fn lab(args: &IperfArgs, name: &str, agent_flags: &[&str]) -> anyhow::Result<(Lab, usize)> {
    let mut lab = Lab::up(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        policy: true,
        agent_flags: agent_flags.iter().map(|f| (*f).to_owned()).collect(),
        ..LabSpec::new(format!("brdl{}{name}", std::process::id()), args.binaries.clone())
    })?;
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        bail!("{error}\n{}", lab.logs());
    }
    let sink = lab.add_workload(
        1,
        &Workload {
            namespace: "default".into(),
            pod: "sink".into(),
            labels: vec![("app".into(), "sink".into())],
            ..Workload::default()
        },
    )?;
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sink-deny-all, namespace: default}\n\
         spec: {podSelector: {matchLabels: {app: sink}}, policyTypes: [Ingress]}\n",
    )?;
    Ok((lab, sink))
}

/// The agent of the lab's second node: its CPU share (1.0: one core) over `seconds` while
/// `denied_per_second` datagrams (0: none) go from the first pod to the sink.
fn agent_cpu(lab: &Lab, sink: usize, denied_per_second: u32, seconds: u32) -> anyhow::Result<f64> {
    let agent = lab
        .pids()
        .into_iter()
        .find(|(name, _)| *name == lab.nodes[1].name)
        .map(|(_, pid)| pid)
        .context("the second node's agent")?;
    let destination = std::net::IpAddr::from(lab.pods[sink].ip);
    let sender = lab.pods[0].namespace.spawn(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let count = u64::from(denied_per_second) * u64::from(seconds);
        let started = Instant::now();
        for index in 0..count {
            let due = Duration::from_secs_f64(index as f64 / f64::from(denied_per_second));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            // Distinct ports: distinct flows, as a scan would make.
            let port = 1024 + u16::try_from(index % 60_000)?;
            let _ = socket.send_to(b"x", (destination, port));
        }
        anyhow::Ok(())
    });
    let (before, started) = (proc_cpu_time(agent)?.total(), Instant::now());
    if denied_per_second == 0 {
        std::thread::sleep(Duration::from_secs(seconds.into()));
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    Ok((proc_cpu_time(agent)?.total() - before) / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = IperfArgs::parse()?;
    let (off, off_sink) = lab(&args, "o", &[])?;
    let (on, on_sink) = lab(&args, "a", &["--flow-log-allowed", "--flow-log-rate", "10000"])?;
    println!(
        "pod-to-pod TCP throughput across two nodes, iperf3 {} s × {} rounds, medians (ratio: of each round's pair)\n",
        args.seconds, args.rounds
    );
    let (mut with_logs, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let measure = |lab: &Lab| {
            iperf3(
                &lab.pods[0].namespace,
                &lab.pods[1].namespace,
                &lab.pods[1].ip.to_string(),
                args.seconds,
            )
        };
        let logged = measure(&on)?;
        let plain = measure(&off)?;
        with_logs.push(logged);
        without.push(plain);
        ratios.push(logged / plain);
    }
    let ratio = median(ratios);
    println!(
        "{:<34} {:>10.2} Gbit/s\n{:<34} {:>10.2} Gbit/s\nratio {:>39.1} %   {} ≥ 95 %\n",
        "flow logs of allowed flows on",
        median(with_logs) / 1e9,
        "flow logs of allowed flows off",
        median(without) / 1e9,
        ratio * 100.0,
        if ratio >= 0.95 { "✓" } else { "✗" },
    );
    let seconds = args.seconds.max(5);
    println!("agent CPU on the receiving node ({seconds} s each; 100 %: one core)");
    for (name, lab, sink) in [
        ("default (1,000 logged/s per rule)", &off, off_sink),
        ("--flow-log-rate 10000", &on, on_sink),
    ] {
        let idle = agent_cpu(lab, sink, 0, seconds)?;
        let busy = agent_cpu(lab, sink, DENIED_PER_SECOND, seconds)?;
        let flows = lab.agent_metrics(1)?;
        let unrecorded = flows
            .lines()
            .find_map(|l| l.strip_prefix("brindle_flow_log_unrecorded_packets_total{} "))
            .unwrap_or("0")
            .to_owned();
        println!(
            "  {name:<34} idle {:>5.1} %   at {DENIED_PER_SECOND} denied pkt/s {:>5.1} %   (unrecorded packets so far: {unrecorded})",
            idle * 100.0,
            busy * 100.0
        );
    }
    Ok(())
}
