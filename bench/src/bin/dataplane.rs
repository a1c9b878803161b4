//! bench-dataplane: pod-to-pod TCP throughput across two lab nodes through brindle's data plane
//! (routed directly, and over VXLAN) against a bare path between the same two pod namespaces
//! without brindle (a veth from each pod into one bridge, same MTU), measured with Debian's
//! iperf3 in the same run, rounds alternating between the two paths. Prints the median of each
//! and the median of the per-round ratios (goal: ≥ 90 % direct, ≥ 70 % VXLAN).
//!
//! Needs root, iperf3 and the workspace's release binaries:
//! `cargo build --release --workspace --bins && target/release/bench-dataplane`.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use brindle::lab::{Encapsulation, Lab, LabSpec, Underlay};
use brindle_bench::iperf::{IperfArgs, iperf3, median};

/// Connects the two pods of `lab` with a bare path (a veth from each into one bridge, the pods'
/// MTU) and returns it with the second pod's address on it.
fn bare_path(lab: &Lab, prefix: &str, mtu: &str) -> anyhow::Result<(Underlay, &'static str)> {
    let bridge = Underlay::create(format!("{prefix}-bare"), None)?;
    for (index, pod) in lab.pods.iter().take(2).enumerate() {
        let port = format!("b{index}");
        bridge.plug(
            &pod.namespace,
            &port,
            "bare0",
            &format!("10.255.0.{}/24", index + 1),
        )?;
        pod.namespace.ip(&["link", "set", "bare0", "mtu", mtu])?;
        bridge.namespace.ip(&["link", "set", &port, "mtu", mtu])?;
    }
    Ok((bridge, "10.255.0.2"))
}

/// Medians of brindle's and the bare path's throughput, and of the ratio within each round (the
/// two runs of a round are back to back, so the machine's drift cancels out).
fn measure(args: &IperfArgs, encapsulation: Encapsulation) -> anyhow::Result<(f64, f64, f64)> {
    let prefix = format!("brdb{}", std::process::id());
    let lab = Lab::up(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        encapsulation,
        ..LabSpec::new(prefix.clone(), args.binaries.clone())
    })?;
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        bail!("{error}\n{}", lab.logs());
    }
    let mtu = lab.pods[0].namespace.ip(&["-j", "link", "show", "eth0"])?;
    let mtu: serde_json::Value = serde_json::from_str(&mtu)?;
    let mtu = mtu[0]["mtu"].as_u64().context("pod MTU")?.to_string();
    let (_bridge, bare_ip) = bare_path(&lab, &prefix, &mtu)?;
    let (client, server) = (&lab.pods[0].namespace, &lab.pods[1].namespace);
    let pod_ip = lab.pods[1].ip.to_string();
    let mut brindle = Vec::new();
    let mut bare = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..args.rounds {
        let through_brindle = iperf3(client, server, &pod_ip, args.seconds)?;
        let through_bare = iperf3(client, server, bare_ip, args.seconds)?;
        brindle.push(through_brindle);
        bare.push(through_bare);
        ratios.push(through_brindle / through_bare);
    }
    Ok((median(brindle), median(bare), median(ratios)))
}

fn main() -> anyhow::Result<()> {
    let args = IperfArgs::parse()?;
    if !Command::new("iperf3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!("iperf3 is missing (apt-get install iperf3)");
    }
    println!(
        "pod-to-pod TCP throughput across two nodes, iperf3 {} s × {} rounds, medians (ratio: of each round's pair)\n",
        args.seconds, args.rounds
    );
    println!(
        "{:<8} {:>15} {:>12} {:>7}   goal",
        "path", "brindle Gbit/s", "bare Gbit/s", "ratio"
    );
    for (name, encapsulation, goal) in [
        ("direct", Encapsulation::Never, 0.90),
        ("vxlan", Encapsulation::Vxlan, 0.70),
    ] {
        let (brindle, bare, ratio) = measure(&args, encapsulation)?;
        println!(
            "{name:<8} {:>15.2} {:>12.2} {:>5.0} %   {} ≥ {:.0} %",
            brindle / 1e9,
            bare / 1e9,
            ratio * 100.0,
            if ratio >= goal { "✓" } else { "✗" },
            goal * 100.0
        );
    }
    Ok(())
}
