//! Rendering and applying on the recording kernel.

use std::collections::{BTreeMap, BTreeSet};

use policy_api::model::{Endpoint, EndpointKey, NamedPort, Namespace, Protocol};
use policy_svc::core::Calculator;
use policy_svc::core::resource::{Resource, parse_documents};

use super::*;
use crate::dataplane::{Call, Ipsets, Iptables, RecordingKernel};

const POLICIES: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}, {ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24, 10.9.2.0/24]}}]
      ports: [{port: http}, {port: 9000, endPort: 9010}]
";

fn endpoint(node: &str, interface: &str, pod: &str, ip: &str, labels: &[(&str, &str)]) -> Endpoint {
    Endpoint {
        key: EndpointKey {
            node: node.into(),
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

fn world() -> Calculator {
    let mut calc = Calculator::new();
    calc.put_namespace(Namespace::new("shop", BTreeMap::new()));
    for resource in parse_documents(POLICIES, "").expect("valid") {
        if let Resource::KubernetesPolicy(policy) = resource {
            calc.put_policy(policy.to_policy().expect("valid"));
        }
    }
    calc.put_endpoint(endpoint("n1", "brdaaaa", "web", "10.0.0.2", &[("app", "web")]));
    calc.put_endpoint(endpoint("n1", "brdbbbb", "other", "10.0.0.3", &[]));
    calc.put_endpoint(endpoint(
        "n2",
        "brdcccc",
        "client",
        "10.0.1.2",
        &[("role", "client")],
    ));
    calc
}

#[test]
fn renders_dispatch_endpoint_and_policy_chains_with_sets() {
    let rendered = render(&world().view("n1"), Family::V4);
    let chain = |name: &str| {
        rendered
            .chains
            .get(name)
            .unwrap_or_else(|| panic!("{name}: {:?}", rendered.chains.keys()))
    };
    assert!(
        chain(FROM_WORKLOADS)
            .iter()
            .any(|r| r.ends_with("-i brdaaaa -g brd-fw-brdaaaa"))
    );
    assert!(
        chain(TO_WORKLOADS).last().is_some_and(|r| r.ends_with("-j DROP")),
        "unknown workloads fail closed"
    );
    // web is selected for ingress: its chain ends in a drop; other is open (marks cleared only).
    assert!(
        chain("brd-tw-brdaaaa")
            .last()
            .is_some_and(|r| r.ends_with("-j DROP"))
    );
    assert_eq!(chain("brd-tw-brdbbbb").len(), 1);
    let policy = rendered
        .chains
        .keys()
        .find(|k| k.starts_with("brd-pi-"))
        .expect("policy chain");
    let rules = chain(policy).join("\n");
    assert!(rules.contains("-m multiport --dports 9000:9010"), "{rules}");
    assert!(rules.contains("dst,dst"), "named port set: {rules}");
    assert!(
        rules.contains("-s 10.9.0.0/16") && rules.contains("! --match-set brd-c"),
        "{rules}"
    );
    let client_set = rendered
        .sets
        .values()
        .find(|s| s.members.contains("10.0.1.2"))
        .expect("client set");
    assert_eq!(client_set.kind, "hash:net");
    assert!(
        rendered
            .sets
            .values()
            .any(|s| s.kind == "hash:ip,port" && s.members.contains("10.0.0.2,tcp:8080"))
    );
    assert!(
        rendered.sets.values().any(|s| s.members.contains("10.9.1.0/24")),
        "except list as a local set"
    );
}

#[test]
fn each_family_renders_its_own_addresses_into_its_own_sets() {
    let mut calc = world();
    let mut dual = endpoint("n2", "brddddd", "client6", "fd00::7", &[("role", "client")]);
    dual.ips.push("10.0.1.7".parse().expect("ip"));
    calc.put_endpoint(dual);
    let icmp = "apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: ping, namespace: shop}
spec:
  selector: app == 'web'
  ingress: [{action: Allow, protocol: ICMP, source: {nets: [\"fd00:9::/64\", 10.9.0.0/16]}}]
";
    for resource in parse_documents(icmp, "").expect("valid") {
        if let Resource::Policy(policy) = resource {
            calc.put_policy(policy);
        }
    }
    let v4 = render(&calc.view("n1"), Family::V4);
    let v6 = render(&calc.view("n1"), Family::V6);
    assert!(
        v4.sets.keys().all(|name| name.starts_with("brd-")),
        "{:?}",
        v4.sets.keys()
    );
    assert!(
        v6.sets.keys().all(|name| name.starts_with("brd6-")),
        "{:?}",
        v6.sets.keys()
    );
    let members = |rendered: &Rendered| -> BTreeSet<String> {
        rendered
            .sets
            .values()
            .flat_map(|s| s.members.iter().cloned())
            .collect()
    };
    let address = |member: &String| member.split(',').next().unwrap_or_default().to_owned();
    assert!(members(&v4).contains("10.0.1.7") && !members(&v4).iter().any(|m| address(m).contains(':')));
    assert!(members(&v6).contains("fd00::7") && !members(&v6).contains("10.0.1.7"));
    let rules = |rendered: &Rendered| {
        rendered
            .chains
            .values()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(rules(&v4).contains("-p icmp -s 10.9.0.0/16"), "{}", rules(&v4));
    assert!(
        rules(&v6).contains("-p ipv6-icmp -s fd00:9::/64"),
        "{}",
        rules(&v6)
    );
}

#[test]
fn a_protocol_with_a_not_protocol_renders_one_protocol_match() {
    let mut calc = world();
    let guard = "apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: guard, namespace: shop}
spec:
  selector: app == 'web'
  ingress:
    - {action: Deny, protocol: TCP, notProtocol: UDP}
    - {action: Allow, notProtocol: UDP}
";
    for resource in parse_documents(guard, "").expect("valid") {
        if let Resource::Policy(policy) = resource {
            calc.put_policy(policy);
        }
    }
    let rendered = render(&calc.view("n1"), Family::V4);
    let rules: Vec<&String> = rendered
        .chains
        .iter()
        .filter(|(name, _)| name.starts_with("brd-pi-"))
        .flat_map(|(_, rules)| rules)
        .collect();
    assert!(
        rules.iter().any(|r| r.ends_with("\" -p tcp -j DROP")),
        "{rules:?}"
    );
    assert!(
        rules.iter().any(|r| r.contains("\" ! -p udp -j MARK")),
        "{rules:?}"
    );
    assert!(
        rules.iter().all(|r| r.matches("-p ").count() <= 1),
        "iptables accepts one protocol match per rule: {rules:?}"
    );
    // The Deny rule's packets go to NFLOG first, rate limited, named by policy, direction, rule.
    let logged = rules
        .iter()
        .position(|r| r.contains("-m limit --limit 1000/second --limit-burst 1000 -j NFLOG --nflog-group 1 --nflog-prefix \"DR ") && r.ends_with(" i0\""))
        .expect("an NFLOG rule before the drop");
    assert!(rules[logged + 1].ends_with("\" -p tcp -j DROP"), "{rules:?}");
}

#[test]
fn icmp_types_render_in_their_own_family_only() {
    let mut calc = world();
    // Calico's documented "allow ping" policy, as written.
    let ping = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-ping-in-cluster}
spec:
  selector: all()
  types: [Ingress]
  ingress:
    - action: Allow
      protocol: ICMP
      source: {selector: all()}
      icmp: {type: 8}
    - action: Allow
      protocol: ICMPv6
      source: {selector: all()}
      icmp: {type: 128}
    - action: Deny
      protocol: ICMP
      notICMP: {type: 3, code: 4}
";
    for resource in parse_documents(ping, "").expect("valid") {
        if let Resource::Policy(policy) = resource {
            calc.put_policy(policy);
        }
    }
    let rules = |family| -> Vec<String> {
        render(&calc.view("n1"), family)
            .chains
            .into_iter()
            .filter(|(name, _)| name.starts_with("brd-pi-") || name.starts_with("brd6-pi-"))
            .flat_map(|(_, rules)| rules)
            .collect()
    };
    let (v4, v6) = (rules(Family::V4), rules(Family::V6));
    assert!(
        v4.iter().any(|r| r.contains("-p icmp -m icmp --icmp-type 8 ")),
        "{v4:?}"
    );
    assert!(
        v4.iter()
            .any(|r| r.contains("-p icmp -m icmp ! --icmp-type 3/4 ") && r.ends_with("-j DROP")),
        "{v4:?}"
    );
    assert!(
        !v4.iter().any(|r| r.contains("icmpv6") || r.contains("ipv6-icmp")),
        "{v4:?}"
    );
    assert!(
        v6.iter().any(|r| r.contains("-p 58 -m icmp6 --icmpv6-type 128 ")),
        "{v6:?}"
    );
    assert!(!v6.iter().any(|r| r.contains("--icmp-type")), "{v6:?}");
}

#[test]
fn applies_only_differences_and_repairs_after_resync() {
    let kernel = RecordingKernel::default();
    let mut calc = world();
    let mut applier = PolicyApplier::new(Family::V4);
    let desired = render(&calc.view("n1"), Family::V4);
    assert_eq!(applier.apply(&kernel, &kernel, &desired).expect("apply"), 2);
    assert!(kernel.calls().contains(&Call::IptablesJump(
        "filter".into(),
        "FORWARD".into(),
        FORWARD_CHAIN.into()
    )));
    assert_eq!(
        applier.apply(&kernel, &kernel, &desired).expect("again"),
        0,
        "nothing changed, nothing written"
    );

    // A new client elsewhere: one ipset line, no iptables write.
    let before = kernel.calls().len();
    calc.put_endpoint(endpoint(
        "n3",
        "brddddd",
        "client2",
        "10.0.2.2",
        &[("role", "client")],
    ));
    let desired = render(&calc.view("n1"), Family::V4);
    assert_eq!(applier.apply(&kernel, &kernel, &desired).expect("member"), 1);
    let (iptables, ipsets) = kernel.restores();
    assert_eq!(iptables.len(), 1, "still only the first iptables write");
    let last = ipsets.last().expect("ipset write");
    assert_eq!(
        last.trim(),
        format!(
            "add {} 10.0.2.2 -exist",
            last.split_whitespace().nth(1).unwrap_or_default()
        )
    );
    assert_eq!(
        kernel.calls().len() - before,
        1,
        "one ipset restore, nothing else"
    );

    // Somebody flushes a chain by hand: after a resync exactly that chain is written back.
    Iptables::restore(&kernel, "filter", "*filter\n:brd-tw-brdaaaa - [0:0]\nCOMMIT\n").expect("tamper");
    applier.resync();
    assert_eq!(applier.apply(&kernel, &kernel, &desired).expect("repair"), 1);
    let (iptables, _) = kernel.restores();
    let repair = iptables.last().expect("repair write");
    assert!(
        repair.contains(":brd-tw-brdaaaa") && !repair.contains(":brd-fw-brdaaaa"),
        "{repair}"
    );

    // The policy goes: its chain and sets go, the endpoints stay (open).
    let id = calc.state().policies().next().expect("policy").id.clone();
    calc.remove_policy(&id);
    let desired = render(&calc.view("n1"), Family::V4);
    applier.apply(&kernel, &kernel, &desired).expect("remove");
    let saved = Iptables::save(&kernel, "filter").expect("save");
    assert!(!saved.contains("brd-pi-"), "{saved}");
    assert!(saved.contains(":brd-tw-brdaaaa"));
    let sets = Ipsets::save(&kernel).expect("sets");
    assert!(sets.trim().is_empty(), "stale sets destroyed: {sets}");

    // A fresh applier (agent restart) writes nothing when the kernel already matches.
    let mut restarted = PolicyApplier::new(Family::V4);
    assert_eq!(restarted.apply(&kernel, &kernel, &desired).expect("restart"), 0);
}

#[test]
fn a_failed_write_is_retried_from_what_the_kernel_holds() {
    let kernel = RecordingKernel::default();
    let mut applier = PolicyApplier::new(Family::V4);
    let desired = render(&world().view("n1"), Family::V4);
    kernel.fail_on("IptablesRestore");
    assert!(applier.apply(&kernel, &kernel, &desired).is_err());
    assert!(applier.apply(&kernel, &kernel, &desired).expect("retry") >= 1);
    assert_eq!(applier.apply(&kernel, &kernel, &desired).expect("settled"), 0);
}

/// Denied packets are always logged; with allowed flows asked for, the first packet of a
/// connection an Allow rule admits, or that no policy governs, is logged too — rate limited.
#[test]
fn allowed_first_packets_are_logged_only_when_asked() {
    let view = world().view("n1");
    let logging_rules = |rendered: &Rendered| -> Vec<String> {
        rendered
            .chains
            .values()
            .flatten()
            .filter(|r| r.contains("-j NFLOG"))
            .cloned()
            .collect()
    };
    let denied_only = logging_rules(&render(&view, Family::V4));
    assert!(!denied_only.is_empty());
    assert!(
        denied_only.iter().all(|r| r.contains("--nflog-prefix \"D")),
        "{denied_only:#?}"
    );
    let logging = FlowLogRules {
        allowed: true,
        per_second: 250,
    };
    let options = RenderOptions {
        flow_log: logging,
        ..RenderOptions::default()
    };
    let all = logging_rules(&Renderer::new(Family::V4, options).render(&view));
    let allowed: Vec<&String> = all.iter().filter(|r| r.contains("--nflog-prefix \"A")).collect();
    assert!(
        allowed
            .iter()
            .any(|r| r.contains("--nflog-prefix \"AX brdbbbb i\"")),
        "other has no policy: {all:#?}"
    );
    assert!(
        allowed.iter().any(|r| r.contains("--nflog-prefix \"AR ")),
        "{all:#?}"
    );
    assert!(allowed.iter().all(|r| r.contains("-m conntrack --ctstate NEW")));
    assert!(
        all.iter()
            .all(|r| r.contains("--limit 250/second --limit-burst 250"))
    );
}

/// A rendered chain's rules, a line each (empty when it is not rendered).
fn chain_text(rendered: &Rendered, chain: &str) -> String {
    rendered
        .chains
        .get(chain)
        .map(|rules| rules.join("\n"))
        .unwrap_or_default()
}

/// A host endpoint's traffic goes through the global policies selecting it, behind the failsafe
/// ports, and is dropped when none allows it; pods' traffic to the node meets their egress
/// policies, then the endpoint-to-host action.
#[test]
fn host_endpoints_get_input_and_output_chains_behind_failsafe_ports() {
    let mut calc = world();
    calc.put_host_endpoint(&policy_api::host_endpoint::HostEndpoint {
        name: "n1-eth0".into(),
        node: "n1".into(),
        interface: Some("eth0".into()),
        expected_ips: vec!["192.168.0.1".parse().expect("ip")],
        labels: BTreeMap::from([("role".to_owned(), "worker".to_owned())]),
        annotations: BTreeMap::new(),
    });
    let policy = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: hosts}\n\
                  spec:\n  selector: role == 'worker'\n  types: [Ingress]\n  ingress:\n    \
                  - {action: Deny, protocol: TCP, destination: {ports: [9400]}}\n";
    for resource in parse_documents(policy, "").expect("valid") {
        if let Resource::Policy(policy) = resource {
            calc.put_policy(policy);
        }
    }
    let options = RenderOptions {
        host: HostRules {
            endpoint_to_host: EndpointToHost::Drop,
            ..HostRules::default()
        },
        ..RenderOptions::default()
    };
    let rendered = Renderer::new(Family::V4, options).render(&calc.view("n1"));
    let text = |chain: &str| chain_text(&rendered, chain);
    let input = text(INPUT_CHAIN);
    assert!(
        input.contains("-i eth0 -g brd-hi-eth0"),
        "the host endpoint's chain: {input}"
    );
    assert!(input.contains("-i brd+ -g brd-wl-to-host"), "{input}");
    let pods = text("brd-wl-to-host");
    assert!(
        pods.contains("-j brd-from-wl") && pods.ends_with("-j DROP"),
        "{pods}"
    );
    let to_host = text("brd-hi-eth0");
    let failsafe = to_host.find("--dports 22,").expect("failsafe ports");
    let policy = to_host.find("-j brd-pi-").expect("the policy");
    assert!(failsafe < policy, "failsafe ports first: {to_host}");
    assert!(to_host.contains("-j ACCEPT"), "allowed is accepted: {to_host}");
    assert!(
        to_host.contains("--nflog-prefix \"DX eth0 i\"") && to_host.ends_with("-j DROP"),
        "{to_host}"
    );
    let from_host = text("brd-ho-eth0");
    assert!(
        from_host.ends_with("-j DROP"),
        "no egress policy: nothing leaves but failsafe: {from_host}"
    );
    assert!(text(OUTPUT_CHAIN).contains("-o eth0 -g brd-ho-eth0"));
    let sets: Vec<&String> = rendered.sets.values().flat_map(|s| s.members.iter()).collect();
    assert!(
        !sets.iter().any(|m| m.starts_with("192.168.0.1")),
        "no selector here names the host"
    );
}

/// Without host endpoints only pods' traffic to their node is governed: nothing else of the
/// host's own traffic meets a rule of brindle's (its firewall keeps its say), and an IPv6 pod's
/// neighbour discovery is never a policy's to drop.
#[test]
fn without_host_endpoints_only_pods_traffic_to_the_node_is_governed() {
    for family in [Family::V4, Family::V6] {
        let rendered = render(&world().view("n1"), family);
        let text = |chain: &str| chain_text(&rendered, chain);
        let input = text(INPUT_CHAIN);
        assert_eq!(input.lines().count(), 1, "{input}");
        assert!(input.contains("-i brd+ -g brd-wl-to-host"));
        let output = text(OUTPUT_CHAIN);
        assert!(output.lines().all(|rule| rule.ends_with("-j RETURN")), "{output}");
        let pods = text("brd-wl-to-host");
        assert!(
            pods.ends_with("-j RETURN"),
            "the default leaves the rest to the host: {pods}"
        );
        let discovery = pods.find("--icmpv6-type 135");
        let policies = pods.find("-j brd-from-wl").expect("egress policies");
        match family {
            Family::V4 => assert!(discovery.is_none()),
            Family::V6 => assert!(discovery.is_some_and(|at| at < policies), "{pods}"),
        }
    }
}
