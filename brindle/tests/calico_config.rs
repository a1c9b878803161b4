//! What Calico users configure, in the namespace lab on the real kernel: pools chosen by the
//! network configuration's `ipam.ipv4_pools` (names or CIDRs) and by node labels (`--node-labels`
//! against a pool's `nodeSelector`), and the pod MTU detected from the underlay and the pools'
//! encapsulation when the configuration sets none.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use brindle::lab::{Encapsulation, Lab, LabSpec, Workload, test_binaries};

fn spec(tag: &str) -> LabSpec {
    LabSpec {
        nodes: 2,
        ..LabSpec::new(format!("brdc{}{tag}", std::process::id()), test_binaries())
    }
}

/// `brindle apply -f -` of `manifest`.
fn apply(lab: &Lab, manifest: &str) {
    let mut child = lab
        .cli(&["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("brindle apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("manifest");
    let applied = child.wait_with_output().expect("brindle apply");
    assert!(applied.status.success(), "brindle apply: {applied:?}");
}

/// Whether `ip` is in the /24 `cidr`.
fn within(ip: Ipv4Addr, cidr: &str) -> bool {
    let network = cidr.trim_end_matches(".0/24");
    ip.to_string()
        .rsplit_once('.')
        .is_some_and(|(prefix, _)| prefix == network)
}

fn pod_with_pools(pools: &[&str]) -> Workload {
    Workload {
        ipv4_pools: pools.iter().map(|p| (*p).to_owned()).collect(),
        ..Workload::default()
    }
}

#[test]
fn pools_are_chosen_by_node_labels_and_by_the_network_configuration() {
    let mut lab = Lab::up(LabSpec {
        node_labels: vec!["rack=a".into(), "rack=b".into()],
        ..spec("p")
    })
    .expect("lab up");
    // The lab's own pool off; one pool per rack.
    apply(
        &lab,
        "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: lab}\n\
         spec: {cidr: 10.244.0.0/16, blockSize: 26, disabled: true}\n---\n\
         apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: rack-a}\n\
         spec: {cidr: 10.250.0.0/24, blockSize: 28, nodeSelector: \"rack == 'a'\"}\n---\n\
         apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: rack-b}\n\
         spec: {cidr: 10.251.0.0/24, blockSize: 28, nodeSelector: \"rack == 'b'\"}\n",
    );
    // A node labelled rack=a (given by the lab as an administrator would, and said by its agent's
    // --node-labels) draws only from rack a's pool.
    for node in [0, 0, 0, 1, 1] {
        let pod = lab.add_pod(node).expect("a pod");
        let (ip, wanted) = (lab.pods[pod].ip, ["10.250.0.0/24", "10.251.0.0/24"][node]);
        assert!(
            within(ip, wanted),
            "a pod on node {node} got {ip}, not from {wanted}"
        );
    }
    // Asking node b for rack a's pool names the pool and why.
    let refused = lab
        .add_workload(1, &pod_with_pools(&["rack-a"]))
        .expect_err("rack a's pool on a rack b node");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("rack-a") && refused.contains("node selector"),
        "{refused}"
    );

    // Relabelling a node moves only its later allocations: node 0 (rack a) becomes rack b.

    let labelled = lab
        .cli(&["node", "label", &lab.nodes[0].name.clone(), "rack=b"])
        .output()
        .expect("brindle node label");
    assert!(labelled.status.success(), "{labelled:?}");
    let pod = lab.add_pod(0).expect("a pod after relabelling");
    assert!(within(lab.pods[pod].ip, "10.251.0.0/24"), "{}", lab.pods[pod].ip);
    // Its agent, restarted with its stale --node-labels rack=a, registers again and keeps rack=b.
    agent_registers_again(&lab, 0);
    let pod = lab.add_pod(0).expect("a pod after the agent's restart");
    assert!(within(lab.pods[pod].ip, "10.251.0.0/24"), "{}", lab.pods[pod].ip);
    // The pods placed before keep their rack a addresses, and carry traffic.
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("after relabelling: {error}\n{}", lab.logs());
    }

    // ipam.ipv4_pools by name and by CIDR: two pods of one node in two different pools.
    apply(
        &lab,
        "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: blue}\n\
         spec: {cidr: 10.252.0.0/24, blockSize: 28}\n---\n\
         apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: green}\n\
         spec: {cidr: 10.253.0.0/24, blockSize: 28}\n",
    );
    for (pools, wanted) in [(["blue"], "10.252.0.0/24"), (["10.253.0.0/24"], "10.253.0.0/24")] {
        let pod = lab
            .add_workload(0, &pod_with_pools(&pools))
            .expect("a pod in its pool");
        let ip = lab.pods[pod].ip;
        assert!(within(ip, wanted), "ipv4_pools {pools:?} gave {ip}");
    }
    // An unknown pool is a CNI error naming it.
    let unknown = lab
        .add_workload(0, &pod_with_pools(&["no-such-pool"]))
        .expect_err("an unknown pool");
    let unknown = format!("{unknown:#}");
    assert!(
        unknown.contains("no-such-pool") && unknown.contains("ipv4_pools"),
        "{unknown}"
    );
    // The pods reach each other across nodes and pools, and IPAM's books balance.
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    assert_eq!(lab.ipam_problems().expect("ipam check"), None);
}

/// SIGKILLs `node`'s agent and starts it again; panics unless route-svc accepts its registration
/// (the agent logs each one) within 30 s.
fn agent_registers_again(lab: &Lab, node: usize) {
    let name = lab.nodes[node].name.clone();
    let accepted = format!("registered with route-svc node=\"{name}\"");
    let registrations = || lab.logs().matches(&accepted).count();
    let before = registrations();
    lab.kill(&name).expect("kill the agent");
    lab.restart(&name).expect("restart the agent");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while registrations() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "{name}'s agent did not register again\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every pod's MTU, a don't-fragment ping of that size from each pod to each pod on another node.
fn full_size_packets_cross_nodes(lab: &Lab, mtu: u32) {
    for pod in 0..lab.pods.len() {
        assert_eq!(lab.pod_mtu(pod).expect("pod MTU"), mtu, "pod {pod}");
    }
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    // ICMP payload: the MTU less the IPv4 (20) and ICMP (8) headers.
    let payload = (mtu - 28).to_string();
    for from in &lab.pods {
        for to in lab.pods.iter().filter(|to| to.node != from.node) {
            let ping = [
                "ping",
                "-M",
                "do",
                "-s",
                &payload,
                "-c",
                "1",
                "-W",
                "2",
                &to.ip.to_string(),
            ];
            assert!(
                from.namespace.succeeds(&ping),
                "{} → {}: a {mtu}-byte packet with don't-fragment did not cross",
                from.name,
                to.name
            );
            // One byte more does not leave the pod (its MTU is the limit, not the underlay's).
            let too_big = (mtu - 27).to_string();
            let ping = [
                "ping",
                "-M",
                "do",
                "-s",
                &too_big,
                "-c",
                "1",
                "-W",
                "1",
                &to.ip.to_string(),
            ];
            assert!(
                !from.namespace.succeeds(&ping),
                "{} sent more than its MTU",
                from.name
            );
        }
    }
}

#[test]
fn without_mtu_in_the_configuration_pods_get_the_underlay_mtu_less_the_encapsulation() {
    // An underlay MTU of 1400 and a VXLAN pool: 1400 − 50.
    let lab = Lab::up(LabSpec {
        pods_per_node: 1,
        underlay_mtu: Some(1400),
        encapsulation: Encapsulation::Vxlan,
        ..spec("v")
    })
    .expect("lab up");
    full_size_packets_cross_nodes(&lab, 1350);
    for node in &lab.nodes {
        let device = node
            .namespace
            .ip(&["link", "show", "vxlan.brindle"])
            .expect("VXLAN device");
        assert!(device.contains("mtu 1350"), "{device}");
    }
    drop(lab);
    // The same underlay routed directly: nothing to subtract. (This lab's control plane speaks
    // plain text, as `lab up --insecure-plaintext` asks: the MTU does not depend on it.)
    let lab = Lab::up(LabSpec {
        pods_per_node: 1,
        underlay_mtu: Some(1400),
        insecure_plaintext: true,
        ..spec("d")
    })
    .expect("lab up");
    assert!(!lab.mutual_tls());
    full_size_packets_cross_nodes(&lab, 1400);
}
