//! BGP end to end on the real kernel with real daemons: 4 nodes over 2 subnets, a pool with no
//! encapsulation; every node's agent configures a BIRD 2 beside it, which peers with FRR on the
//! router joining the subnets (their default gateway). Every pod reaches every other (ping and a
//! TCP exchange) with no tunnel device on any node and pod-addressed (unencapsulated) packets on
//! the router; a host outside the cluster reaches every pod; FRR's table holds exactly every
//! node's blocks, next hop the node; a block claimed later is announced and withdrawn with its
//! pool; an agent SIGKILLed and restarted withdraws nothing and loses no ping; a wrong peer AS and
//! a TCP MD5 password the router does not share keep the session down and `brindle node status`
//! says why; a node deleted while its agent runs has its routes withdrawn; one that died with its
//! daemon loses them at the router after its peer's `maxRestartTime`, and its deletion removes
//! them from every other node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use brindle::lab::{
    Encapsulation, Lab, LabSpec, ROUTER_AS, Target, Transport, Workload, probe, router_address, serve,
    test_binaries,
};

fn lab() -> Lab {
    let spec = LabSpec {
        nodes: 4,
        pods_per_node: 1,
        subnets: 2,
        encapsulation: Encapsulation::Never,
        bgp: true,
        ..LabSpec::new(format!("brbg{}", std::process::id()), test_binaries())
    };
    Lab::up(spec).expect("lab")
}

/// The pod blocks FRR holds: (prefix, next hop).
fn router_table(lab: &Lab) -> BTreeSet<(String, String)> {
    lab.router_routes()
        .expect("FRR's table")
        .into_iter()
        .map(|r| (r.prefix, r.next_hop))
        .collect()
}

/// Every node's blocks as route-svc distributes them: (prefix, the node's address).
fn expected_table(lab: &Lab) -> BTreeSet<(String, String)> {
    let out = lab
        .cli(&["ipam", "show", "--blocks", "-o", "json"])
        .output()
        .expect("ipam show");
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mut expected = BTreeSet::new();
    for block in shown["blocks"].as_array().expect("blocks") {
        let owner = block["node"].as_str().unwrap_or_default();
        if let Some(node) = lab.nodes.iter().find(|n| n.name == owner) {
            expected.insert((
                block["cidr"].as_str().expect("cidr").to_owned(),
                node.address.to_string(),
            ));
        }
    }
    expected
}

fn wait_for(what: &str, lab: &Lab, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Packets the router's iptables rule `comment` counted.
fn counted(lab: &Lab, comment: &str) -> u64 {
    let router = lab.router_namespace().expect("router");
    let listed = router
        .command(std::path::Path::new("iptables"))
        .args(["-w", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])
        .output()
        .expect("iptables");
    String::from_utf8_lossy(&listed.stdout)
        .lines()
        .find(|l| l.contains(comment))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether `brindle node status` reports a BGP session of node `name` that `matches`.
fn has_session(
    lab: &Lab,
    name: &str,
    matches: impl Fn(&brindle_proto::route::v1::BgpSession) -> bool,
) -> bool {
    lab.node_status().is_ok_and(|nodes| {
        nodes
            .iter()
            .any(|n| n.node.as_ref().is_some_and(|m| m.name == name) && n.bgp_sessions.iter().any(&matches))
    })
}

/// Gives node `node` a BGPPeer toward its router with `as_number` and `password`, and waits until
/// `brindle node status` reports that session down with `why` in its info.
fn refused_session_explained(lab: &Lab, node: usize, as_number: u32, password: Option<&str>, why: &str) {
    let (name, router) = (
        lab.nodes[node].name.clone(),
        router_address(lab.nodes[node].subnet),
    );
    lab.apply_bgp_peer(&name, &router, as_number, &name, password)
        .expect("BGPPeer");
    wait_for(
        &format!("node status to say {why:?}"),
        lab,
        Duration::from_secs(60),
        || {
            has_session(lab, &name, |s| {
                s.state != "Established" && s.last_error.contains(why)
            })
        },
    );
}

#[test]
fn nodes_announce_their_blocks_and_pods_cross_subnets_unencapsulated_through_the_router() {
    let mut lab = lab();
    // Count on the router: packets addressed to pods (unencapsulated) and VXLAN packets.
    let router = lab.router_namespace().expect("router");
    for rule in [
        vec!["-d", "10.244.0.0/16", "-m", "comment", "--comment", "to-pods"],
        vec![
            "-p",
            "udp",
            "--dport",
            "4789",
            "-m",
            "comment",
            "--comment",
            "vxlan",
        ],
    ] {
        let mut args = vec!["-w", "-t", "raw", "-A", "PREROUTING"];
        args.extend(rule);
        assert!(
            router.succeeds(&[&["iptables"][..], &args].concat()),
            "iptables {args:?}"
        );
    }
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    lab.wait_bgp_established(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));

    // TCP between every pair too.
    let _servers: Vec<_> = lab
        .pods
        .iter()
        .map(|p| serve(&p.namespace, &[80]).expect("serve"))
        .collect();
    for from in &lab.pods {
        let targets = lab
            .pods
            .iter()
            .map(|p| Target {
                ip: p.ip.into(),
                transport: Transport::Tcp,
                port: 80,
            })
            .collect();
        let reached = probe(&from.namespace, targets, Duration::from_secs(2)).expect("probe");
        assert!(reached.iter().all(|r| *r), "{} over TCP: {reached:?}", from.name);
    }
    for node in &lab.nodes {
        let links = node.namespace.ip(&["-d", "link", "show"]).expect("links");
        assert!(
            !links.contains("vxlan") && !links.contains("ipip"),
            "{}: {links}",
            node.name
        );
    }
    assert!(
        counted(&lab, "to-pods") > 0,
        "no pod-addressed packet crossed the router"
    );
    assert_eq!(counted(&lab, "vxlan"), 0, "VXLAN crossed the router");

    // The router holds exactly every node's blocks, next hop the node.
    let expected = expected_table(&lab);
    assert_eq!(expected.len(), 4, "{expected:?}");
    wait_for(
        "FRR's table to hold every node's blocks",
        &lab,
        Duration::from_secs(30),
        || router_table(&lab) == expected,
    );

    // Every node's own BGP identity is in its registration: router id its address, the cluster's AS.
    let out = lab
        .cli(&["node", "status", "-o", "json"])
        .output()
        .expect("node status");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for node in &lab.nodes {
        let shown = status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["node"] == node.name.as_str())
            .unwrap_or_else(|| panic!("{} in {status}", node.name));
        assert_eq!(
            shown["bgp"],
            serde_json::json!({"routerId": node.address.to_string(), "asNumber": 64512}),
            "{shown}"
        );
    }

    // A host outside the cluster reaches every pod.
    lab.add_outside().expect("outside");
    let outside = lab.outside.as_ref().expect("outside");
    for pod in &lab.pods {
        assert!(
            outside.succeeds(&["ping", "-c", "1", "-W", "2", &pod.ip.to_string()]),
            "outside → {}",
            pod.name
        );
    }

    // A block claimed later (a pod from a second pool on node 1) is announced; deleting the pod
    // and the pool withdraws it.
    lab.apply_with_cli(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: extra}\nspec: {cidr: 10.245.0.0/24, blockSize: 28}\n",
    )
    .expect("pool");
    let extra = lab
        .add_workload(
            0,
            &Workload {
                pod: "extra".into(),
                ipv4_pools: vec!["extra".into()],
                ..Workload::default()
            },
        )
        .expect("pod from the second pool");
    let claimed = (
        format!("{}/28", lab.pods[extra].ip),
        lab.nodes[0].address.to_string(),
    );
    assert!(claimed.0.starts_with("10.245.0."), "{claimed:?}");
    wait_for("the new block announced", &lab, Duration::from_secs(30), || {
        router_table(&lab).iter().any(|(prefix, hop)| {
            prefix.starts_with("10.245.0.") && prefix.ends_with("/28") && *hop == claimed.1
        })
    });
    lab.remove_pod(extra).expect("remove the pod");
    let deleted = lab
        .cli(&["delete", "ippool", "extra"])
        .output()
        .expect("delete pool");
    assert!(deleted.status.success(), "{deleted:?}");
    wait_for("the block withdrawn", &lab, Duration::from_secs(30), || {
        !router_table(&lab)
            .iter()
            .any(|(prefix, _)| prefix.starts_with("10.245."))
    });

    // An agent SIGKILLed and restarted withdraws nothing; the outside host keeps reaching its pod.
    let before = router_table(&lab);
    let victim = lab.nodes[1].name.clone();
    let target = lab
        .pods
        .iter()
        .find(|p| p.node == 1)
        .expect("a pod on node 1")
        .ip
        .to_string();
    lab.kill(&victim).expect("SIGKILL the agent");
    let outside = lab.outside.as_ref().expect("outside");
    for _ in 0..10 {
        assert!(
            outside.succeeds(&["ping", "-c", "1", "-W", "1", &target]),
            "lost a ping while the agent was down"
        );
        assert_eq!(
            router_table(&lab),
            before,
            "a route changed while the agent was down"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    lab.restart(&victim).expect("restart the agent");
    std::thread::sleep(Duration::from_secs(3));
    assert!(outside.succeeds(&["ping", "-c", "1", "-W", "1", &target]));
    assert_eq!(
        router_table(&lab),
        before,
        "the restarted agent changed the routes"
    );

    // A wrong peer AS, and a password the router does not have (BIRD cannot say why: the kernel
    // drops the signed segments silently): each session stays down and node status says why.
    refused_session_explained(&lab, 2, ROUTER_AS + 1, None, "Bad peer AS");
    refused_session_explained(&lab, 3, ROUTER_AS, Some("not-the-routers"), "TCP MD5");
    let status = lab.cli(&["node", "status"]).output().expect("node status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("BGP sessions") && text.contains("Bad peer AS") && text.contains("TCP MD5 password"),
        "{text}"
    );

    // A node deleted while its agent and BIRD run: its block is withdrawn from the router and
    // from the other nodes at once.
    node_deleted(&lab, 1);
    // A node that died with its BIRD, then deleted: the router drops its routes once the peer's
    // maxRestartTime (5 s instead of BIRD's 120 s: graceful restart) has passed — the death does
    // that, not the deletion — and the deletion takes its blocks from every other node.
    let (name, router) = (lab.nodes[0].name.clone(), router_address(lab.nodes[0].subnet));
    lab.apply_with_cli(&format!(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: {name}}}\n\
         spec: {{peerIP: {router}, asNumber: {ROUTER_AS}, node: {name}, maxRestartTime: 5s}}\n"
    ))
    .expect("maxRestartTime");
    let (config, _) = lab.bird_files(&name);
    wait_for(
        "BIRD given the restart time",
        &lab,
        Duration::from_secs(30),
        || std::fs::read_to_string(&config).is_ok_and(|c| c.contains("graceful restart time 5;")),
    );
    wait_for(
        "its session established again",
        &lab,
        Duration::from_secs(60),
        || has_session(&lab, &name, |s| s.state == "Established"),
    );
    lab.kill(&name).expect("SIGKILL the agent");
    lab.kill(&format!("{name}-bird")).expect("SIGKILL BIRD");
    node_deleted(&lab, 0);
}

/// Deletes node `node` with `brindle node delete` and waits until neither the router nor any
/// other node has a route to the blocks it had.
fn node_deleted(lab: &Lab, node: usize) {
    let (name, address) = (lab.nodes[node].name.clone(), lab.nodes[node].address.to_string());
    let blocks: Vec<String> = expected_table(lab)
        .into_iter()
        .filter(|(_, hop)| *hop == address)
        .map(|(prefix, _)| prefix)
        .collect();
    assert!(!blocks.is_empty(), "{name} has no block");
    let deleted = lab.cli(&["node", "delete", &name]).output().expect("node delete");
    assert!(deleted.status.success(), "{deleted:?}");
    let said = String::from_utf8_lossy(&deleted.stdout);
    assert!(
        said.contains(&format!("{} blocks released", blocks.len())),
        "{said}"
    );
    wait_for(
        &format!("{name}'s blocks {blocks:?} withdrawn from the router"),
        lab,
        Duration::from_secs(30),
        || {
            !router_table(lab)
                .iter()
                .any(|(prefix, _)| blocks.contains(prefix))
        },
    );
    for other in lab.nodes.iter().filter(|n| n.name != name) {
        wait_for(
            &format!("{}'s route to {name}'s blocks removed", other.name),
            lab,
            Duration::from_secs(30),
            || {
                other
                    .namespace
                    .ip(&["route", "show"])
                    .is_ok_and(|routes| !blocks.iter().any(|b| routes.contains(b.as_str())))
            },
        );
    }
}
