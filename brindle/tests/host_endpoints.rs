//! Host endpoints end to end on the netns lab: a Calico HostEndpoint for the first node's `eth0`
//! and a GlobalNetworkPolicy denying TCP 22, 7400 and 9400 from the nodes' subnet — the other node
//! can no longer reach the first's port 9400, while 22 and 7400 (failsafe ports) stay reachable and
//! other ports stay allowed; with `--default-endpoint-to-host-action Drop` a pod cannot reach its
//! own node while a pod of the other node can; the hook removed by hand comes back at the next
//! re-read.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use brindle::lab::{Lab, LabSpec, Namespace, Target, Transport, probe, serve, test_binaries};

/// Ports the first node serves: SSH's, brindle's API's, its metrics', and one no rule names.
const PORTS: [u16; 4] = [22, 7400, 9400, 8080];

fn reaches(from: &Namespace, to: IpAddr, port: u16) -> bool {
    let target = Target {
        ip: to,
        transport: Transport::Tcp,
        port,
    };
    probe(from, vec![target], Duration::from_millis(700)).expect("probe")[0]
}

/// Waits until `from` reaching `to:port` is `expected`.
fn settles(from: &Namespace, to: IpAddr, port: u16, expected: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if reaches(from, to, port) == expected {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs iptables (the backend the agent chose: whichever takes the command) in `namespace`.
fn iptables(namespace: &Namespace, args: &[&str]) -> bool {
    ["iptables", "iptables-legacy"].iter().any(|binary| {
        let mut command = vec![*binary];
        command.extend(args);
        namespace.succeeds(&command)
    })
}

#[test]
fn host_endpoint_policy_closes_ports_but_not_failsafe_ones() {
    let lab = Lab::up(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        policy: true,
        agent_flags: vec!["--default-endpoint-to-host-action".into(), "Drop".into()],
        ..LabSpec::new(format!("brdh{}", std::process::id()), test_binaries())
    })
    .expect("lab up");
    let (first, second) = (&lab.nodes[0], &lab.nodes[1]);
    let first_ip = IpAddr::from(first.address);
    let _servers = serve(&first.namespace, &PORTS).expect("servers on the first node");
    let own_pod = lab
        .pods
        .iter()
        .position(|p| p.node == 0)
        .expect("a pod on the first node");
    let other_pod = lab
        .pods
        .iter()
        .position(|p| p.node == 1)
        .expect("a pod on the second node");

    // defaultEndpointToHostAction Drop: a pod cannot reach its own node; the other node's can.
    assert!(
        settles(
            &lab.pods[own_pod].namespace,
            first_ip,
            8080,
            false,
            Duration::from_secs(20)
        ),
        "a pod reached its own node"
    );
    assert!(reaches(&lab.pods[other_pod].namespace, first_ip, 8080));
    for port in PORTS {
        assert!(
            reaches(&second.namespace, first_ip, port),
            "port {port} before any host endpoint"
        );
    }

    let subnet = format!(
        "{}.0/24",
        first.address.octets()[..3]
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(".")
    );
    lab.apply(&format!(
        "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\n\
         metadata: {{name: {node}-eth0, labels: {{host-endpoint: 'true'}}}}\n\
         spec: {{node: {node}, interfaceName: eth0, expectedIPs: ['{first_ip}']}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: no-admin-from-nodes}}\n\
         spec:\n  order: 10\n  selector: has(host-endpoint)\n  types: [Ingress, Egress]\n  ingress:\n    \
         - {{action: Deny, protocol: TCP, source: {{nets: ['{subnet}']}}, destination: {{ports: [22, 7400, 9400]}}}}\n    \
         - {{action: Allow}}\n  egress:\n    - {{action: Allow}}\n",
        node = first.name
    ))
    .expect("host endpoint and policy");
    assert!(
        settles(&second.namespace, first_ip, 9400, false, Duration::from_secs(20)),
        "the metrics port stayed open\n{}",
        lab.logs()
    );
    assert!(reaches(&second.namespace, first_ip, 22), "SSH is failsafe");
    assert!(
        reaches(&second.namespace, first_ip, 7400),
        "brindle's API is failsafe"
    );
    assert!(
        reaches(&second.namespace, first_ip, 8080),
        "the policy allows the rest"
    );
    assert!(
        !reaches(&lab.pods[own_pod].namespace, first_ip, 8080),
        "still Drop"
    );
    assert!(
        lab.reaches(own_pod, other_pod),
        "pods still reach each other (the host endpoint governs the node's own traffic only)"
    );

    // The hook removed by hand: open until the agent's next re-read puts it back.
    assert!(
        iptables(&first.namespace, &["-D", "INPUT", "-j", "brd-INPUT"]),
        "removing the hook"
    );
    assert!(
        reaches(&second.namespace, first_ip, 9400),
        "unhooked: nothing filters"
    );
    assert!(
        settles(&second.namespace, first_ip, 9400, false, Duration::from_secs(30)),
        "the re-read did not restore the hook"
    );

    // The host endpoint deleted: the node's ports open again.
    let deleted = lab
        .cli(&["delete", "hostendpoint", &format!("{}-eth0", first.name)])
        .output()
        .expect("brindle delete");
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
    assert!(settles(
        &second.namespace,
        first_ip,
        9400,
        true,
        Duration::from_secs(20)
    ));
}
