//! bench-churn: a soak of pod churn. A 3-node namespace lab (`brindle server` on the embedded store,
//! a real agent per node) takes 10,000 ADD/DEL cycles through the real shim from 4 workers per
//! node, each reusing one pod namespace; then the same number of cycles of Debian's ptp +
//! host-local in one node namespace with the same number of workers. Prints pods/s, ADD p50/p99
//! per 1,000 cycles (over time), DEL percentiles, the RSS of the server and every agent at start
//! and end, and the addresses left allocated afterwards (must be 0 for both).
//!
//! Needs root, Debian's containernetworking-plugins and release binaries:
//! `cargo build --release --workspace --bins && target/release/bench-churn [--cycles N]`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle::lab::{Lab, LabSpec, Namespace};
use brindle_bench::cni::{PEER_DIR, Plugin, invoke, release_binary};
use brindle_bench::{Latencies, ms, proc_status_kib, row};

const NODES: usize = 3;
const WORKERS_PER_NODE: usize = 4;
const WINDOW: usize = 1000;

/// One finished cycle: when it ended (since the start) and its ADD and DEL latencies.
type Sample = (Duration, Duration, Duration);

fn cycles() -> anyhow::Result<usize> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(10_000),
        (Some("--cycles"), Some(n)) => n.parse().context("--cycles takes a number"),
        _ => bail!("usage: bench-churn [--cycles N]"),
    }
}

/// Runs `cycles` ADD/DEL cycles spread over `workers` (plugin, pod namespace) pairs.
fn churn(workers: &[(Plugin, Namespace)], cycles: usize, prefix: &str) -> anyhow::Result<Vec<Sample>> {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(cycles));
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = workers
            .iter()
            .map(|(plugin, pod)| {
                let (next, samples) = (&next, &samples);
                scope.spawn(move || -> anyhow::Result<()> {
                    loop {
                        let cycle = next.fetch_add(1, Ordering::Relaxed);
                        if cycle >= cycles {
                            return Ok(());
                        }
                        let container = format!("{prefix}-{cycle}");
                        let add = invoke(plugin, "ADD", &container, &pod.path())?;
                        let del = invoke(plugin, "DEL", &container, &pod.path())?;
                        samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((
                            started.elapsed(),
                            add,
                            del,
                        ));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
    })?;
    let mut samples = samples.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    samples.sort_by_key(|s| s.0);
    Ok(samples)
}

/// Prints the rate, ADD percentiles per window and overall ADD/DEL rows.
fn report(label: &str, samples: &[Sample]) {
    let wall = samples.last().map_or(Duration::ZERO, |s| s.0);
    println!(
        "\n{label}: {} cycles in {:.1} s = {:.0} pods/s (ADD+DEL each)",
        samples.len(),
        wall.as_secs_f64(),
        samples.len() as f64 / wall.as_secs_f64().max(f64::EPSILON)
    );
    println!("  cycles            ADD p50 ms   ADD p99 ms");
    for (index, window) in samples.chunks(WINDOW).enumerate() {
        let adds = Latencies::new(window.iter().map(|s| s.1).collect(), Duration::ZERO);
        println!(
            "  {:>6}–{:<6}     {:>10}   {:>10}",
            index * WINDOW,
            index * WINDOW + window.len(),
            ms(adds.percentile(50.0)),
            ms(adds.percentile(99.0))
        );
    }
    row(
        &format!("{label} ADD"),
        &Latencies::new(samples.iter().map(|s| s.1).collect(), wall),
    );
    row(
        &format!("{label} DEL"),
        &Latencies::new(samples.iter().map(|s| s.2).collect(), wall),
    );
}

/// Addresses host-local still holds in `dir` (one file per address).
fn host_local_leaks(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let cycles = cycles()?;
    let binaries: PathBuf = release_binary("brindle")?
        .parent()
        .context("binary dir")?
        .to_owned();
    let prefix = format!("brdb{}", std::process::id());
    let lab = Lab::up(LabSpec {
        nodes: NODES,
        ..LabSpec::new(format!("{prefix}l"), binaries.clone())
    })?;
    let mut workers = Vec::new();
    for node in 0..NODES {
        for worker in 0..WORKERS_PER_NODE {
            let plugin = Plugin {
                label: "brindle",
                binary: binaries.join("brindle-cni"),
                config: lab.cni_config(node)?,
            };
            workers.push((plugin, Namespace::create(format!("{prefix}-b{node}w{worker}"))?));
        }
    }
    // The first ADD waits for the agents to reach the control plane.
    let deadline = Instant::now() + Duration::from_secs(30);
    while invoke(&workers[0].0, "ADD", "warm-up", &workers[0].1.path()).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the lab never accepted an ADD\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    invoke(&workers[0].0, "DEL", "warm-up", &workers[0].1.path())?;

    let before: Vec<(String, u64)> = lab
        .pids()
        .into_iter()
        .map(|(n, pid)| (n, proc_status_kib(pid, "VmRSS:")))
        .collect();
    let samples = churn(&workers, cycles, &format!("{prefix}-churn"))?;
    let after: Vec<(String, u64)> = lab
        .pids()
        .into_iter()
        .map(|(n, pid)| (n, proc_status_kib(pid, "VmRSS:")))
        .collect();
    let (leaked, clean) = (lab.addresses_in_use()?, lab.ipam_problems()?.is_none());
    report(&format!("brindle ({} workers)", workers.len()), &samples);
    println!("  RSS (KiB)            start        end");
    for ((name, start), (_, end)) in before.iter().zip(&after) {
        println!("  {name:<16} {start:>9} {end:>10}");
    }
    println!("  addresses left allocated: {leaked}; ipam check clean: {clean}");
    drop(workers);
    drop(lab);

    // The peer: ptp + host-local with the same number of workers, from a node namespace.
    let node = Namespace::create(format!("{prefix}-peer"))?;
    let data = tempfile::Builder::new()
        .prefix("brindle-bench-churn-")
        .tempdir()?;
    let config = format!(
        r#"{{"cniVersion":"1.0.0","name":"churn-ptp","type":"ptp","mtu":1450,"ipam":{{"type":"host-local","subnet":"10.96.0.0/16","dataDir":"{}"}}}}"#,
        data.path().display()
    );
    let peer_workers: Vec<(Plugin, Namespace)> = (0..NODES * WORKERS_PER_NODE)
        .map(|worker| {
            let plugin = Plugin {
                label: "ptp+host-local",
                binary: PathBuf::from(PEER_DIR).join("ptp"),
                config: config.clone(),
            };
            Ok((plugin, Namespace::create(format!("{prefix}-p{worker}"))?))
        })
        .collect::<anyhow::Result<_>>()?;
    let node_path = node.path();
    let peer_samples = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<_> {
                let file = std::fs::File::open(&node_path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                churn(&peer_workers, cycles, &format!("{prefix}-peer"))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("peer thread panicked"))?
    })?;
    report(
        &format!("ptp+host-local ({} workers)", peer_workers.len()),
        &peer_samples,
    );
    println!(
        "  addresses left allocated: {}",
        host_local_leaks(&data.path().join("churn-ptp"))
    );
    let rate = |s: &[Sample]| s.len() as f64 / s.last().map_or(1.0, |l| l.0.as_secs_f64());
    println!(
        "\nbrindle / ptp+host-local pods/s: {:.2}",
        rate(&samples) / rate(&peer_samples)
    );
    Ok(())
}
