//! The namespace lab end to end on the real kernel: 3 nodes × 2 pods reach each other — ping and a
//! TCP transfer between every pod pair — routed directly, over VXLAN, and CrossSubnet across two
//! subnets (direct within, VXLAN across); a node that joins later gets routes to everyone and
//! everyone to it; the data plane outlives the control plane (on etcd), and agents keep repairing
//! it meanwhile; natOutgoing.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use brindle::lab::{Encapsulation, Lab, LabSpec, test_binaries};

fn spec(nodes: usize) -> LabSpec {
    LabSpec {
        nodes,
        pods_per_node: 2,
        ..LabSpec::new(format!("brdt{}", std::process::id()), test_binaries())
    }
}

/// Pings and TCP-transfers between every pod pair (after the routes converged).
fn full_mesh_ping_and_tcp(lab: &Lab) {
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    for from in 0..lab.pods.len() {
        for to in 0..lab.pods.len() {
            if from != to {
                tcp_transfer(lab, from, to);
            }
        }
    }
}

/// Packets node `node` sent through its VXLAN device.
fn vxlan_tx_packets(lab: &Lab, node: usize) -> u64 {
    let stats = lab.nodes[node]
        .namespace
        .ip(&["-s", "-j", "link", "show", "vxlan.brindle"])
        .expect("the VXLAN device exists");
    let parsed: serde_json::Value = serde_json::from_str(&stats).expect("ip -j");
    parsed[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .expect("tx packets")
}

/// Sends 256 KiB from pod `from` to pod `to` over TCP and checks every byte arrived.
fn tcp_transfer(lab: &Lab, from: usize, to: usize) {
    let (from_ip, to_ip) = (lab.pods[from].ip.into(), lab.pods[to].ip.into());
    tcp_transfer_between(lab, (from, from_ip), (to, to_ip));
}

/// Sends 256 KiB from pod `from.0` (address `from.1`) to pod `to.0` at `to.1` over TCP, checks
/// every byte arrived and the server saw the client's own address.
fn tcp_transfer_between(lab: &Lab, from: (usize, IpAddr), to: (usize, IpAddr)) {
    const BYTES: usize = 256 * 1024;
    let ((from, from_ip), (to, to_ip)) = (from, to);
    let (ready, listening) = std::sync::mpsc::channel();
    let server = lab.pods[to].namespace.spawn(move || {
        let listener = std::net::TcpListener::bind((to_ip, 5201))?;
        ready.send(())?;
        let (mut stream, peer) = listener.accept()?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        Ok((received, peer.ip()))
    });
    listening
        .recv_timeout(Duration::from_secs(5))
        .expect("server listening");
    lab.pods[from]
        .namespace
        .spawn(move || {
            let mut stream =
                std::net::TcpStream::connect_timeout(&(to_ip, 5201).into(), Duration::from_secs(5))?;
            let payload: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
            stream.write_all(&payload)?;
            Ok(())
        })
        .join()
        .expect("client thread")
        .expect("client sends");
    let (received, peer) = server.join().expect("server thread").expect("server receives");
    assert_eq!(
        peer, from_ip,
        "no NAT between pods: the server sees the client pod's address"
    );
    assert_eq!(received.len(), BYTES, "pod {from} → pod {to}");
    assert!(received.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
}

#[test]
fn three_nodes_full_mesh_ping_and_tcp_then_a_new_node_joins() {
    let mut lab = Lab::up(spec(3)).expect("lab up");
    assert_eq!(lab.pods.len(), 6);
    // The lab's control plane speaks mTLS by default: every agent shows its node's certificate,
    // the CLI an administrator's.
    assert!(lab.mutual_tls());
    let status = lab
        .cli(&["node", "status"])
        .output()
        .expect("brindle node status");
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.ends_with("\ncontrol plane: mTLS\n"), "{status}");
    full_mesh_ping_and_tcp(&lab);
    let node = lab.add_node().expect("fourth node");
    lab.add_pod(node).expect("pod on the new node");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("after a node joined: {error}\n{}", lab.logs());
    }
}

/// `ip -4 monitor route` inside a node namespace, recording every IPv4 route change until stopped
/// (IPv6 link-local routes come and go with the kernel's address configuration).
struct RouteMonitor {
    child: std::process::Child,
    output: PathBuf,
}

impl RouteMonitor {
    fn start(lab: &Lab, node: usize, dir: &std::path::Path) -> Self {
        let output = dir.join(format!("monitor-{node}.txt"));
        let child = std::process::Command::new("ip")
            .args(["-4", "-n", &lab.nodes[node].namespace.name, "monitor", "route"])
            .stdout(std::fs::File::create(&output).expect("monitor file"))
            .spawn()
            .expect("ip monitor");
        Self { child, output }
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

#[test]
fn vxlan_always_full_mesh_ping_and_tcp_through_the_tunnel() {
    let lab = Lab::up(LabSpec {
        prefix: format!("brdt{}v", std::process::id()),
        encapsulation: Encapsulation::Vxlan,
        ..spec(3)
    })
    .expect("lab up");
    full_mesh_ping_and_tcp(&lab);
    for (node, host) in lab.nodes.iter().enumerate() {
        let device = host
            .namespace
            .ip(&["-d", "link", "show", "vxlan.brindle"])
            .expect("VXLAN device");
        assert!(
            device.contains("mtu 1450")
                && device.contains("vxlan id 4096")
                && device.contains("dstport 4789"),
            "{device}"
        );
        for (pod, placed) in lab.pods.iter().enumerate() {
            if placed.node != node {
                let path = lab.path(node, pod).expect("ip route get");
                assert!(
                    path.contains("dev vxlan.brindle"),
                    "node {node} → pod {pod}: {path}"
                );
            }
        }
        assert!(
            vxlan_tx_packets(&lab, node) > 0,
            "node {node} sent through the tunnel"
        );
    }
    // A remote route and a remote endpoint's neighbour entry removed by hand come back at the
    // agent's next re-read of the kernel.
    let node = &lab.nodes[0].namespace;
    let routes = node
        .ip(&["-4", "route", "show", "proto", "80", "dev", "vxlan.brindle"])
        .expect("routes");
    let route = routes
        .lines()
        .next()
        .expect("a route through the tunnel")
        .to_owned();
    let destination = route.split_whitespace().next().expect("destination").to_owned();
    let gateway = route.split_whitespace().nth(2).expect("via").to_owned();
    node.ip(&["route", "del", &destination])
        .expect("delete the route");
    node.ip(&["neigh", "del", &gateway, "dev", "vxlan.brindle"])
        .expect("delete the neighbour");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!(
            "after a route and a neighbour were deleted: {error}\n{}",
            lab.logs()
        );
    }
    let repaired = node
        .ip(&["-4", "route", "show", "proto", "80", "dev", "vxlan.brindle"])
        .expect("routes");
    assert!(
        repaired.contains(&destination),
        "{destination} is routed again: {repaired}"
    );
    let neighbour = node
        .ip(&["neigh", "show", &gateway, "dev", "vxlan.brindle"])
        .expect("neighbours");
    assert!(
        neighbour.contains("PERMANENT"),
        "{gateway}'s entry is back: {neighbour}"
    );
    // The device deleted by hand: the agent notices and sets it up again, routes and all.
    lab.nodes[0]
        .namespace
        .ip(&["link", "del", "vxlan.brindle"])
        .expect("delete the device");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("after vxlan.brindle was deleted: {error}\n{}", lab.logs());
    }
}

#[test]
fn cross_subnet_routes_directly_within_a_subnet_and_over_vxlan_across_then_a_node_joins() {
    let mut lab = Lab::up(LabSpec {
        prefix: format!("brdt{}x", std::process::id()),
        encapsulation: Encapsulation::VxlanCrossSubnet,
        subnets: 2,
        ..spec(3)
    })
    .expect("lab up");
    // Nodes alternate between the subnets: n1 and n3 share one, n2 is behind the router.
    assert_eq!(
        lab.nodes.iter().map(|n| n.subnet).collect::<Vec<_>>(),
        vec![0, 1, 0]
    );
    full_mesh_ping_and_tcp(&lab);
    let check_paths = |lab: &Lab| {
        for (node, host) in lab.nodes.iter().enumerate() {
            for (pod, placed) in lab.pods.iter().enumerate() {
                if placed.node == node {
                    continue;
                }
                let path = lab.path(node, pod).expect("ip route get");
                let remote = &lab.nodes[placed.node];
                if remote.subnet == host.subnet {
                    assert!(
                        path.contains(&format!("via {} dev eth0", remote.address)),
                        "same subnet, direct: node {node} → pod {pod}: {path}"
                    );
                } else {
                    assert!(
                        path.contains("dev vxlan.brindle"),
                        "across subnets, VXLAN: node {node} → pod {pod}: {path}"
                    );
                }
            }
        }
    };
    check_paths(&lab);
    let node = lab.add_node().expect("fourth node");
    assert_eq!(lab.nodes[node].subnet, 1);
    lab.add_pod(node).expect("pod on the new node");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("after a node joined: {error}\n{}", lab.logs());
    }
    check_paths(&lab);
}

#[test]
fn the_data_plane_survives_the_control_plane_and_resumes_without_a_route_flap() {
    // On etcd, so stopping the control plane stops the datastore process too; over VXLAN, so
    // the tunnel's routes are watched as well.
    let lab = Lab::up(LabSpec {
        prefix: format!("brdt{}r", std::process::id()),
        etcd_members: 1,
        encapsulation: Encapsulation::Vxlan,
        ..spec(3)
    })
    .expect("lab up");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let monitors: Vec<_> = (0..lab.nodes.len())
        .map(|n| RouteMonitor::start(&lab, n, dir.path()))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    lab.stop_control_plane().expect("stop");
    std::thread::sleep(Duration::from_secs(30));
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(5)) {
        panic!("30 s without the control plane: {error}\n{}", lab.logs());
    }
    lab.start_control_plane().expect("start");
    // Every agent reconnects and acknowledges the state it resumed at.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = lab.node_status().unwrap_or_default();
        if status.len() == lab.nodes.len() && status.iter().all(|n| n.connected && n.acked_revision > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agents did not resume: {status:#?}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.wait_full_mesh(Duration::from_secs(5))
        .expect("after the restart");
    for (node, monitor) in monitors.into_iter().enumerate() {
        let changes = monitor.stop();
        assert!(
            changes.trim().is_empty(),
            "node {node}'s routes changed across the outage and restart:\n{changes}"
        );
    }
}

#[test]
fn without_the_control_plane_an_agent_still_repairs_a_route_removed_behind_its_back() {
    let lab = Lab::up(LabSpec {
        prefix: format!("brdt{}d", std::process::id()),
        pods_per_node: 1,
        ..spec(2)
    })
    .expect("lab up");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    lab.stop_control_plane().expect("stop");
    let node = &lab.nodes[0].namespace;
    let remote = lab.pods[1].ip.to_string();
    let routes = node.ip(&["-4", "route", "show", "proto", "80"]).expect("routes");
    let route = routes
        .lines()
        .find(|line| line.contains(" via "))
        .expect("a route to the other node's block")
        .to_owned();
    let destination = route.split_whitespace().next().expect("destination").to_owned();
    node.ip(&["route", "del", &destination])
        .expect("delete the route");
    assert!(!lab.reaches(0, 1), "{remote} is cut off without its route");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(40)) {
        panic!(
            "the route was not repaired while the control plane is down: {error}\n{}",
            lab.logs()
        );
    }
}

#[test]
fn nat_outgoing_masquerades_pod_traffic_leaving_the_pools_and_only_when_enabled() {
    let mut lab = Lab::up(LabSpec {
        prefix: format!("brdt{}n", std::process::id()),
        ..spec(2)
    })
    .expect("lab up");
    let external = lab.add_external().expect("external namespace");
    let pings = |lab: &Lab| {
        lab.pods[0]
            .namespace
            .succeeds(&["ping", "-c", "1", "-W", "1", &external.to_string()])
    };
    let eventually = |what: &str, condition: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "{what}\n{}", lab.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(
        !pings(&lab),
        "without natOutgoing the outside cannot answer a pod address"
    );
    lab.set_nat_outgoing(true).expect("enable");
    eventually("natOutgoing on: the pod reaches the outside", &|| pings(&lab));
    // The outside sees the node's address, not the pod's.
    let (ready, listening) = std::sync::mpsc::channel();
    let server = lab.external.as_ref().expect("external").spawn(move || {
        let listener = std::net::TcpListener::bind((external, 5202))?;
        ready.send(())?;
        Ok(listener.accept()?.1.ip())
    });
    listening.recv_timeout(Duration::from_secs(5)).expect("listening");
    lab.pods[0]
        .namespace
        .spawn(move || {
            Ok(std::net::TcpStream::connect_timeout(
                &(external, 5202).into(),
                Duration::from_secs(5),
            )?)
        })
        .join()
        .expect("client thread")
        .expect("client connects");
    let seen = server.join().expect("server thread").expect("server accepts");
    assert_eq!(seen, std::net::IpAddr::V4(lab.nodes[lab.pods[0].node].address));
    // Pod-to-pod traffic is never masqueraded.
    tcp_transfer(&lab, 0, lab.pods.len() - 1);
    lab.set_nat_outgoing(false).expect("disable");
    eventually("natOutgoing off again: no answer", &|| !pings(&lab));
}

/// Waits until every pod reaches every other over IPv6 (20 s).
fn wait_ipv6_full_mesh(lab: &Lab) {
    if let Err(error) = lab.wait_full_mesh_ipv6(Duration::from_secs(20)) {
        panic!("{error}\n{}", lab.logs());
    }
}

#[test]
fn dual_stack_pods_reach_each_other_over_ipv6_across_nodes() {
    let lab = Lab::up(LabSpec {
        prefix: format!("brdt{}d", std::process::id()),
        pods_per_node: 1,
        dual_stack: true,
        ..spec(3)
    })
    .expect("lab up");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    for pod in &lab.pods {
        let ipv6 = pod.ipv6.expect("an IPv6 address");
        let prefix = brindle::lab::IPV6_POOL.trim_end_matches(":/112");
        assert!(
            ipv6.to_string().starts_with(prefix),
            "{ipv6} in {}",
            brindle::lab::IPV6_POOL
        );
    }
    wait_ipv6_full_mesh(&lab);
    let v6 = |pod: usize| IpAddr::V6(lab.pods[pod].ipv6.expect("IPv6"));
    tcp_transfer_between(&lab, (0, v6(0)), (2, v6(2)));
    // The route to a remote IPv6 block goes straight to its node's IPv6 address.
    let path = lab.nodes[0]
        .namespace
        .ip(&["-6", "route", "get", &v6(1).to_string()])
        .expect("route get");
    assert!(path.contains("via fd00:200::"), "{path}");
}

#[test]
fn dual_stack_over_vxlan_across_two_subnets_carries_ipv6_pods_on_the_ipv4_underlay() {
    let lab = Lab::up(LabSpec {
        prefix: format!("brdt{}w", std::process::id()),
        pods_per_node: 1,
        dual_stack: true,
        encapsulation: Encapsulation::Vxlan,
        subnets: 2,
        ..spec(3)
    })
    .expect("lab up");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    wait_ipv6_full_mesh(&lab);
    let v6 = |pod: usize| IpAddr::V6(lab.pods[pod].ipv6.expect("IPv6"));
    // Nodes 1 and 2 are on different subnets: only the tunnel joins them.
    tcp_transfer_between(&lab, (0, v6(0)), (1, v6(1)));
    let path = lab.nodes[0]
        .namespace
        .ip(&["-6", "route", "get", &v6(1).to_string()])
        .expect("route get");
    assert!(path.contains("dev vxlan.brindle"), "{path}");
    let tx_before = vxlan_tx_packets(&lab, 0);
    assert!(lab.reaches_ipv6(0, 1));
    assert!(
        vxlan_tx_packets(&lab, 0) > tx_before,
        "the IPv6 ping went through the tunnel"
    );
}

#[test]
fn ipv6_traffic_follows_kubernetes_policy_with_ipv6_ip_blocks() {
    let lab = Lab::up(LabSpec {
        prefix: format!("brdt{}6", std::process::id()),
        pods_per_node: 1,
        dual_stack: true,
        policy: true,
        ..spec(2)
    })
    .expect("lab up");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    let eventually = |what: &str, holds: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !holds() {
            assert!(std::time::Instant::now() < deadline, "{what}\n{}", lab.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    eventually("IPv6 open before any policy", &|| lab.reaches_ipv6(0, 1));
    let client = lab.pods[0].ipv6.expect("IPv6");
    let target = &lab.nodes[1].name;
    let policy = |except: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: v6-only, namespace: default}}\n\
             spec:\n  podSelector: {{matchLabels: {{node: {target}}}}}\n  ingress:\n    - from: [{{ipBlock: \
             {{cidr: \"{}\"{except}}}}}]\n",
            brindle::lab::IPV6_POOL
        )
    };
    // The pod on node 2 admits the IPv6 pool except the client: both families are closed to it.
    lab.apply(&policy(&format!(", except: [\"{client}/128\"]")))
        .expect("apply");
    eventually("IPv6 from an excepted address is dropped", &|| {
        !lab.reaches_ipv6(0, 1)
    });
    assert!(!lab.reaches(0, 1), "IPv4 is not in the IPv6 block");
    // Without the exception IPv6 is let in; IPv4 stays out.
    lab.apply(&policy("")).expect("apply");
    eventually("IPv6 from the pool is admitted", &|| lab.reaches_ipv6(0, 1));
    assert!(!lab.reaches(0, 1), "an IPv6 ipBlock admits no IPv4");
    assert!(
        lab.reaches_ipv6(1, 0),
        "replies and the other direction are unaffected"
    );
}

/// The value of the series `series` (name and labels exactly as exposed) in a scrape.
fn series(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{scrape}"))
}

#[test]
fn metrics_of_the_control_plane_and_an_agent_exist_and_move() {
    let mut lab = Lab::up(LabSpec {
        prefix: format!("brdt{}m", std::process::id()),
        pods_per_node: 1,
        policy: true,
        ..spec(2)
    })
    .expect("lab up");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    // The full mesh needs routes only: the agent programs policy-svc's first state on its own
    // time, and the series below count from it.
    let policy_programmed = "brindle_agent_program_duration_seconds_count{service=\"policy-svc\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let agent = loop {
        let agent = lab.agent_metrics(0).expect("scrape the agent");
        if agent.contains(policy_programmed) || std::time::Instant::now() > deadline {
            break agent;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let server = lab.server_metrics().expect("scrape the server");
    assert_eq!(series(&server, "brindle_datastore_up{}"), 1.0);
    assert_eq!(
        series(&server, "brindle_insecure_plaintext{}"),
        0.0,
        "the lab speaks mTLS"
    );
    assert_eq!(
        series(
            &server,
            "brindle_fanout_subscribers{service=\"route-svc\",state=\"connected\"}"
        ),
        2.0
    );
    assert!(series(&server, "brindle_fanout_revision{service=\"route-svc\"}") > 0.0);
    assert_eq!(series(&server, "brindle_policy_objects{kind=\"endpoint\"}"), 2.0);
    assert!(
        series(
            &server,
            "brindle_grpc_requests_total{service=\"brindle.ipam.v1.Ipam\",method=\"AutoAssign\",code=\"OK\"}"
        ) >= 2.0
    );
    assert_eq!(
        series(
            &agent,
            "brindle_cni_requests_total{command=\"ADD\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        series(&agent, "brindle_agent_sync_connected{service=\"route-svc\"}"),
        1.0
    );
    assert_eq!(
        series(&agent, "brindle_agent_sync_connected{service=\"policy-svc\"}"),
        1.0
    );
    let assigned = series(&server, "brindle_ipam_addresses_assigned_total{}");
    let policy_applies = series(&agent, policy_programmed);

    // A pod added on node 0 and a policy applied: the series move.
    lab.add_pod(0).expect("add a pod");
    lab.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all}\n\
         spec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .expect("apply a policy");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let server = lab.server_metrics().expect("scrape the server");
        let agent = lab.agent_metrics(0).expect("scrape the agent");
        let moved = series(
            &agent,
            "brindle_cni_requests_total{command=\"ADD\",result=\"ok\"}",
        ) == 2.0
            && series(
                &agent,
                "brindle_cni_request_duration_seconds_count{command=\"ADD\"}",
            ) == 2.0
            && series(&server, "brindle_ipam_addresses_assigned_total{}") > assigned
            && series(&server, "brindle_policy_objects{kind=\"policy\"}") == 1.0
            && series(&agent, policy_programmed) > policy_applies
            && series(&agent, "brindle_agent_programmed_objects{service=\"policy-svc\"}") > 0.0;
        if moved {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "series did not move:\n{server}\n{agent}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The global IPv6 address of a node's VXLAN device.
fn vxlan_ipv6(lab: &Lab, node: usize) -> String {
    let shown = lab.nodes[node]
        .namespace
        .ip(&[
            "-6",
            "-j",
            "addr",
            "show",
            "dev",
            "vxlan.brindle",
            "scope",
            "global",
        ])
        .expect("the VXLAN device");
    let parsed: serde_json::Value = serde_json::from_str(&shown).expect("ip -j");
    parsed[0]["addr_info"][0]["local"]
        .as_str()
        .unwrap_or_else(|| panic!("no IPv6 address on vxlan.brindle: {shown}"))
        .to_owned()
}

#[test]
fn a_restarted_dual_stack_vxlan_agent_keeps_its_ipv6_tunnel_address_while_pods_are_added() {
    let mut lab = Lab::up(LabSpec {
        prefix: format!("brdt{}k", std::process::id()),
        pods_per_node: 1,
        dual_stack: true,
        encapsulation: Encapsulation::Vxlan,
        ..spec(2)
    })
    .expect("lab up");
    wait_ipv6_full_mesh(&lab);
    let tunnel = vxlan_ipv6(&lab, 0);
    let node = lab.nodes[0].name.clone();
    lab.kill(&node).expect("kill the agent");
    lab.restart(&node).expect("restart the agent");
    // Pods are added while the agent starts (its start-up sweep runs, its followers start).
    for _ in 0..3 {
        lab.add_pod(0).expect("a pod on the restarted node");
    }
    wait_ipv6_full_mesh(&lab);
    assert_eq!(vxlan_ipv6(&lab, 0), tunnel, "the device keeps its address");
    let shown = lab
        .cli(&["ipam", "show", "--ip", &tunnel, "-o", "json"])
        .output()
        .expect("brindle ipam show");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!("vxlan-v6-tunnel-addr-{node}")),
        "IPAM still holds the tunnel address for the node's tunnel handle: {shown}"
    );
    assert!(
        lab.pods
            .iter()
            .all(|pod| pod.ipv6.map(|ip| ip.to_string()) != Some(tunnel.clone())),
        "no pod got the tunnel's address"
    );
    assert_eq!(lab.ipam_problems().expect("ipam check"), None);
}
