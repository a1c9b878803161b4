//! The policy data plane on the real kernel, in namespaces made for the test, with both iptables
//! backends: a rendered view is applied with iptables-restore and ipset, read back through
//! iptables-save (hash comments) so a second apply writes nothing, a chain flushed by hand is
//! repaired after a resync, and a removed policy's chains and sets go. The backend the host uses
//! is detected from where rules already are.

mod support;

use std::collections::BTreeMap;

use node_agent::core::policy::{FORWARD_CHAIN, Family, PolicyApplier, render};
use node_agent::dataplane::{IpsetCommands, IptablesBackend, IptablesCommands, LoggedPacket, NflogSocket};
use policy_api::model::{Endpoint, EndpointKey, NamedPort, Namespace, Protocol};
use policy_svc::core::Calculator;
use policy_svc::core::resource::{Resource, parse_documents};
use support::Netns;

const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}, {ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24]}}]
      ports: [{port: http}, {port: 9000, endPort: 9010, protocol: UDP}]
";

fn endpoint(interface: &str, pod: &str, ip: &str, labels: &[(&str, &str)]) -> Endpoint {
    Endpoint {
        key: EndpointKey {
            node: "n1".into(),
            interface: interface.into(),
        },
        namespace: "shop".into(),
        pod: pod.into(),
        container_id: format!("c-{pod}"),
        ips: vec![ip.parse().expect("ip")],
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ports: vec![NamedPort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
    }
}

fn calculation() -> Calculator {
    let mut calc = Calculator::new();
    calc.put_namespace(Namespace::new("shop", BTreeMap::new()));
    for resource in parse_documents(POLICY, "").expect("valid") {
        if let Resource::KubernetesPolicy(policy) = resource {
            calc.put_policy(policy.to_policy().expect("valid"));
        }
    }
    calc.put_endpoint(endpoint("brdaaaa", "web", "10.0.0.2", &[("app", "web")]));
    calc.put_endpoint(endpoint("brdbbbb", "client", "10.0.0.3", &[("role", "client")]));
    calc
}

fn applies_repairs_and_cleans_up(backend: IptablesBackend, save: &'static str) {
    let node = Netns::new("pol");
    let name = node.name.clone();
    node.run(move || async move {
        let iptables = IptablesCommands::new(backend);
        let ipsets = IpsetCommands;
        let mut calc = calculation();
        let mut applier = PolicyApplier::new(Family::V4);
        let desired = render(&calc.view("n1"), Family::V4);
        let writes = applier.apply(&iptables, &ipsets, &desired).expect("first apply");
        assert_eq!(writes, 2, "one ipset and one iptables write");
        let saved = support::run("ip", &["netns", "exec", &name, save, "-t", "filter"]);
        assert!(
            saved.contains(&format!("-A FORWARD -j {FORWARD_CHAIN}")),
            "{saved}"
        );
        assert!(
            saved
                .lines()
                .any(|l| l.starts_with("-A brd-to-wl -o brdaaaa") && l.ends_with("-g brd-tw-brdaaaa")),
            "{saved}"
        );
        assert!(
            saved.contains("--match-set brd-n") && saved.contains("dst,dst"),
            "named port: {saved}"
        );
        let sets = support::run("ip", &["netns", "exec", &name, "ipset", "save"]);
        assert!(
            sets.contains("add brd-n") && sets.contains("10.0.0.2,tcp:8080"),
            "{sets}"
        );

        // Read back from the kernel by a fresh applier: nothing to write.
        let mut restarted = PolicyApplier::new(Family::V4);
        assert_eq!(
            restarted.apply(&iptables, &ipsets, &desired).expect("restart"),
            0,
            "{saved}"
        );

        // A chain flushed by hand comes back after a resync, and only it is written.
        support::run(
            "ip",
            &[
                "netns",
                "exec",
                &name,
                &save.replace("-save", ""),
                "-F",
                "brd-tw-brdaaaa",
            ],
        );
        restarted.resync();
        assert_eq!(restarted.apply(&iptables, &ipsets, &desired).expect("repair"), 1);
        let repaired = support::run("ip", &["netns", "exec", &name, save, "-t", "filter"]);
        assert_eq!(
            repaired
                .lines()
                .filter(|l| l.starts_with("-A brd-tw-brdaaaa"))
                .count(),
            saved
                .lines()
                .filter(|l| l.starts_with("-A brd-tw-brdaaaa"))
                .count()
        );

        // The policy goes: its chains and sets go; endpoints stay, open.
        let id = calc.state().policies().next().expect("policy").id.clone();
        calc.remove_policy(&id);
        restarted
            .apply(&iptables, &ipsets, &render(&calc.view("n1"), Family::V4))
            .expect("remove");
        let saved = support::run("ip", &["netns", "exec", &name, save, "-t", "filter"]);
        assert!(
            !saved.contains("brd-pi-") && saved.contains(":brd-tw-brdaaaa"),
            "{saved}"
        );
        let sets = support::run("ip", &["netns", "exec", &name, "ipset", "save"]);
        assert!(!sets.contains("brd-"), "{sets}");
    });
}

#[test]
fn policy_applies_with_iptables_nft() {
    applies_repairs_and_cleans_up(IptablesBackend::Nft, "iptables-nft-save");
}

#[test]
fn policy_applies_with_iptables_legacy() {
    applies_repairs_and_cleans_up(IptablesBackend::Legacy, "iptables-legacy-save");
}

#[test]
fn the_backend_is_the_one_holding_the_hosts_rules() {
    let legacy = Netns::new("legacy");
    legacy.exec(&[
        "iptables-legacy",
        "-A",
        "FORWARD",
        "-s",
        "192.0.2.0/24",
        "-j",
        "ACCEPT",
    ]);
    legacy.run(|| async { assert_eq!(IptablesBackend::detect(), IptablesBackend::Legacy) });
    let nft = Netns::new("nft");
    nft.exec(&[
        "iptables-nft",
        "-A",
        "FORWARD",
        "-s",
        "192.0.2.0/24",
        "-j",
        "ACCEPT",
    ]);
    nft.run(|| async { assert_eq!(IptablesBackend::detect(), IptablesBackend::Nft) });
}

/// Wires pod namespace `pod` (address `ip`) to `node` through host interface `interface`, Calico
/// style: a /32 behind 169.254.1.1 (a permanent neighbour: the host side's MAC), a route to the pod.
fn wire_pod(node: &Netns, pod: &Netns, interface: &str, ip: &str) {
    const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
    node.exec(&[
        "ip", "link", "add", interface, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ]);
    node.exec(&["ip", "link", "set", interface, "address", HOST_MAC, "up"]);
    node.exec(&["ip", "route", "add", &format!("{ip}/32"), "dev", interface]);
    pod.exec(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod.exec(&["ip", "route", "add", "169.254.1.1", "dev", "eth0"]);
    pod.exec(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    pod.exec(&[
        "ip",
        "neigh",
        "add",
        "169.254.1.1",
        "lladdr",
        HOST_MAC,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
}

/// A packet a policy drops is first sent to NFLOG group 1 with a prefix naming what denied it:
/// here the end of web's ingress policies (`DX brdaaaa i`) for a ping from the client, which the
/// policy (TCP http and UDP 9000-9010 only) does not admit.
#[test]
fn denied_packets_reach_nflog_naming_what_denied_them() {
    let node = Netns::new("nflog");
    let (web, client) = (Netns::new("web"), Netns::new("client"));
    wire_pod(&node, &web, "brdaaaa", "10.0.0.2");
    wire_pod(&node, &client, "brdbbbb", "10.0.0.3");
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let client_name = client.name.clone();
    node.run(move || async move {
        let iptables = IptablesCommands::new(IptablesBackend::detect());
        let desired = render(&calculation().view("n1"), Family::V4);
        PolicyApplier::new(Family::V4)
            .apply(&iptables, &IpsetCommands, &desired)
            .expect("apply");
        let mut socket = NflogSocket::bind(node_agent::core::policy::FLOW_LOG_NFLOG_GROUP).expect("bind");
        socket.set_non_blocking().expect("non-blocking");
        let pinged = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &client_name,
                "ping",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                "10.0.0.2",
            ])
            .status()
            .expect("ping");
        assert!(!pinged.success(), "the policy admits no ping");
        // NFLOG flushes its queue every 100 ms.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let mut packets = Vec::new();
        loop {
            let batch = socket.receive().expect("receive");
            if batch.packets.is_empty() {
                break;
            }
            packets.extend(batch.packets);
        }
        let denied: Vec<&LoggedPacket> = packets
            .iter()
            .filter(|LoggedPacket { prefix, payload }| {
                prefix == "DX brdaaaa i"
                    && payload.len() >= 20
                    && payload[9] == 1
                    && payload[12..16] == [10, 0, 0, 3]
                    && payload[16..20] == [10, 0, 0, 2]
            })
            .collect();
        assert_eq!(denied.len(), 3, "one per echo request: {packets:?}");
    });
}
