//! Node certificates rotate under CNI churn, on the namespace lab with mTLS: every agent traded a
//! join token for its node's certificate, lives on certificates valid 12 s (renewed every 8 s)
//! while pods are added and deleted without pause — no ADD or DEL fails, no Sync stream is
//! reopened — and after the first certificates have long expired, a restarted server is reached
//! again by every agent (new connections present the renewed certificate).

use std::time::{Duration, Instant};

use brindle::lab::{Lab, LabSpec, Namespace, Workload, test_binaries};

/// Sum of the agent's `brindle_agent_sync_reconnects_total` series.
fn sync_reconnects(lab: &Lab, node: usize) -> f64 {
    let metrics = lab.agent_metrics(node).expect("agent metrics");
    metrics
        .lines()
        .filter(|line| line.starts_with("brindle_agent_sync_reconnects_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// ADD then DEL of one pod on `node`; panics naming the command that failed.
fn add_and_delete(lab: &Lab, node: usize, name: &str) {
    let pod = Namespace::create(name.to_owned()).expect("pod namespace");
    for command in ["ADD", "DEL"] {
        let (ok, output) = lab
            .cni(node, command, name, &pod.path(), &Workload::default())
            .expect("run the shim");
        assert!(
            ok,
            "{command} of {name} on node {node} failed: {output}\n{}",
            lab.logs()
        );
    }
}

#[test]
fn node_certificates_rotate_under_cni_churn_without_failures_or_reconnects() {
    let prefix = format!("brdr{}", std::process::id());
    let lab = Lab::up(LabSpec {
        nodes: 2,
        policy: true,
        node_cert_lifetime: Some(12),
        ..LabSpec::new(prefix.clone(), test_binaries())
    })
    .expect("lab up");
    assert!(lab.mutual_tls());

    let started = Instant::now();
    let mut pods = 0;
    while started.elapsed() < Duration::from_secs(30) {
        for node in 0..lab.nodes.len() {
            add_and_delete(&lab, node, &format!("{prefix}-c{pods}"));
            pods += 1;
        }
    }
    let logs = lab.logs();
    for node in &lab.nodes {
        let renewed = logs
            .lines()
            .filter(|line| {
                line.contains("node certificate renewed") && line.contains(&format!("node=\"{}\"", node.name))
            })
            .count();
        assert!(
            renewed >= 2,
            "{} renewed its certificate {renewed} times in 30 s\n{logs}",
            node.name
        );
    }
    for node in 0..lab.nodes.len() {
        assert_eq!(
            sync_reconnects(&lab, node),
            0.0,
            "node {node} reopened a Sync stream\n{logs}"
        );
    }

    // The certificates the agents started with expired long ago: after a server restart, every
    // connection is new, and only a renewed certificate gets through.
    lab.kill("server").expect("kill the server");
    lab.restart("server").expect("restart the server");
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in 0..lab.nodes.len() {
        loop {
            let pod = Namespace::create(format!("{prefix}-after{node}")).expect("pod namespace");
            let (ok, output) = lab
                .cni(
                    node,
                    "ADD",
                    &format!("{prefix}-after{node}"),
                    &pod.path(),
                    &Workload::default(),
                )
                .expect("run the shim");
            if ok {
                let (deleted, output) = lab
                    .cni(
                        node,
                        "DEL",
                        &format!("{prefix}-after{node}"),
                        &pod.path(),
                        &Workload::default(),
                    )
                    .expect("run the shim");
                assert!(deleted, "{output}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} cannot reach the restarted server: {output}\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let status = lab.node_status().expect("node status");
    assert_eq!(status.len(), lab.nodes.len(), "{status:?}");
}
