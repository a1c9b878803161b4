//! bench-bgp: how fast a claimed block reaches the fabric, and how much the fabric holds. A 4-node
//! namespace lab over 2 subnets with BGP (`brindle lab up --bgp`: BIRD 2 beside each agent, FRR on
//! the router). 50 times a pod is added through the real shim from a pool of /32 blocks, so each
//! ADD claims a block; measured from the ADD's return (the block is in the datastore) until the
//! router's kernel holds the route FRR learned. Side by side, the floor of the daemons themselves:
//! 50 routes given by hand to a BIRD of the bench's own, peered with the same router (a static
//! route and `birdc configure`), until the router's kernel holds them. Then 200 pods per node on the lab's /26 pool: the routes the router
//! holds (blocks, not pods).
//!
//! Needs root, Debian's bird2 and frr, and release binaries:
//! `cargo build --release --workspace --bins && target/release/bench-bgp`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle::lab::{Encapsulation, Lab, LabSpec, Workload};
use brindle_bench::cni::release_binary;
use brindle_bench::{Latencies, row};

const NODES: usize = 4;
const CLAIMS: usize = 50;
const PODS_PER_NODE: usize = 200;

/// Waits until the router's kernel routes `prefix`; how long that took from `since`.
fn until_routed(lab: &Lab, prefix: &str, since: Instant) -> anyhow::Result<Duration> {
    let router = lab.router_namespace()?;
    let deadline = since + Duration::from_secs(30);
    loop {
        let routes = router.ip(&["route", "show", prefix])?;
        if routes.contains("proto bgp") {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{prefix} never reached the router");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The floor: a BIRD of the bench's own in the control plane's namespace (on the first subnet,
/// so the router accepts it as a neighbour), given routes by hand — the same daemons and network,
/// no brindle in between.
fn daemon_floor(lab: &Lab) -> anyhow::Result<Latencies> {
    let dir = tempfile::tempdir()?;
    let (config, socket) = (dir.path().join("bird.conf"), dir.path().join("bird.ctl"));
    let render = |routes: &str| {
        format!(
            "router id 192.168.200.1;\nprotocol device {{}}\nprotocol static floor {{\n  ipv4;\n{routes}}}\n\
             protocol bgp tor {{\n  local as 64600;\n  neighbor 192.168.200.253 as 64513;\n  \
             ipv4 {{ import none; export all; }};\n}}\n"
        )
    };
    std::fs::write(&config, render(""))?;
    let mut bird = lab
        .control_namespace()
        .command(std::path::Path::new("bird"))
        .arg("-f")
        .arg("-c")
        .arg(&config)
        .arg("-s")
        .arg(&socket)
        .spawn()
        .context("bird (Debian package bird2)")?;
    let measured = (|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::process::Command::new("birdc")
            .arg("-s")
            .arg(&socket)
            .args(["show", "protocols", "tor"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Established"))
        {
            if Instant::now() > deadline {
                bail!("the floor's BIRD never peered with the router");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut samples = Vec::new();
        let started = Instant::now();
        let mut routes = String::new();
        for n in 0..CLAIMS {
            let prefix = format!("10.246.{n}.0/24");
            routes.push_str(&format!("  route {prefix} blackhole;\n"));
            std::fs::write(&config, render(&routes))?;
            let since = Instant::now();
            let out = std::process::Command::new("birdc")
                .arg("-s")
                .arg(&socket)
                .arg("configure")
                .output()?;
            if !String::from_utf8_lossy(&out.stdout).contains("Reconfigur") {
                bail!("birdc configure: {out:?}");
            }
            samples.push(until_routed(lab, &prefix, since)?);
        }
        Ok(Latencies::new(samples, started.elapsed()))
    })();
    let _ = bird.kill();
    let _ = bird.wait();
    measured
}

fn main() -> anyhow::Result<()> {
    let binaries: PathBuf = release_binary("brindle")?
        .parent()
        .context("binary dir")?
        .to_owned();
    let mut lab = Lab::up(LabSpec {
        nodes: NODES,
        pods_per_node: 0,
        subnets: 2,
        encapsulation: Encapsulation::Never,
        bgp: true,
        ..LabSpec::new(format!("bgpb{}", std::process::id()), binaries)
    })?;
    lab.wait_bgp_established(Duration::from_secs(60))?;
    // Every claim is a block: more blocks per node than the default 20.
    lab.apply_with_cli(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: claims}\nspec: {cidr: 10.245.0.0/24, blockSize: 32}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {maxBlocksPerHost: 64}\n",
    )?;
    let mut samples = Vec::new();
    let started = Instant::now();
    for n in 0..CLAIMS {
        let pod = lab.add_workload(
            n % NODES,
            &Workload {
                pod: format!("claim-{n}"),
                ipv4_pools: vec!["claims".into()],
                ..Workload::default()
            },
        )?;
        let since = Instant::now();
        samples.push(until_routed(&lab, &format!("{}/32", lab.pods[pod].ip), since)?);
    }
    let claims = Latencies::new(samples, started.elapsed());
    let floor = daemon_floor(&lab)?;
    println!("bench-bgp: {NODES} nodes over 2 subnets, BIRD 2 on each, FRR on the router ({CLAIMS} claims)");
    row("block claimed → in the router (brindle)", &claims);
    row("route added to BIRD by hand (floor)", &floor);
    println!(
        "ratio brindle / floor: p50 {:.2}×, p99 {:.2}×",
        claims.percentile(50.0).as_secs_f64() / floor.percentile(50.0).as_secs_f64().max(1e-9),
        claims.percentile(99.0).as_secs_f64() / floor.percentile(99.0).as_secs_f64().max(1e-9),
    );

    // From the lab's /26 pool only (the /32 pool above is eligible for every pod too).
    for node in 0..NODES {
        for n in 0..PODS_PER_NODE {
            lab.add_workload(
                node,
                &Workload {
                    pod: format!("pod-{node}-{n}"),
                    ipv4_pools: vec!["lab".into()],
                    ..Workload::default()
                },
            )?;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let held = lab.router_routes()?;
    let lab_pool: Vec<_> = held.iter().filter(|r| r.prefix.starts_with("10.244.")).collect();
    println!(
        "{} pods on {NODES} nodes: the router holds {} routes of the /26 pool ({} in all, with the {CLAIMS} /32 blocks)",
        NODES * PODS_PER_NODE,
        lab_pool.len(),
        held.len()
    );
    Ok(())
}
