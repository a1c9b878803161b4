//! Flow logs end to end on the netns lab, under a Kubernetes default-deny: the agents read what
//! the policy chains send to NFLOG, report it to policy-svc, and `brindle flows` shows it — one
//! denied connect as one flow naming the policy and the pods within 2 s, 1,000 denied datagrams
//! of one connection as one flow of 1,000 packets, 100,000 distinct denied flows without the
//! agent's table or policy-svc's growing past their bounds; a staged deny leaves traffic flowing
//! while its flows say what it would do.

use std::io::BufRead;
use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use brindle::lab::{EchoServers, Lab, LabSpec, Target, Transport, Workload, probe, serve, test_binaries};
use serde_json::Value;

const NAMESPACE: &str = "flows";
const OPEN_NAMESPACE: &str = "open";
/// The most flows an agent counts between two reports (its --flow-log-max-flows).
const AGENT_FLOWS: usize = 2_000;
/// Packets each rule logs per second (the agents' --flow-log-rate: iptables' most).
const LOG_RATE: u32 = 10_000;

fn workload(namespace: &str, pod: &str) -> Workload {
    Workload {
        namespace: namespace.into(),
        pod: pod.into(),
        labels: vec![("app".into(), pod.into())],
        ..Workload::default()
    }
}

/// `brindle flows -o json <args>`'s flows.
fn flows(lab: &Lab, args: &[&str]) -> Vec<Value> {
    let mut command = vec!["flows", "-o", "json"];
    command.extend(args);
    let output = lab.cli(&command).output().expect("brindle flows");
    assert!(
        output.status.success(),
        "brindle flows: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    listed["flows"].as_array().cloned().unwrap_or_default()
}

/// Polls `brindle flows -o json <args>` until one flow passes `wanted` or `timeout` passes.
fn wait_flow(lab: &Lab, args: &[&str], timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(flow) = flows(lab, args).into_iter().find(|f| wanted(f)) {
            return Some(flow);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of a metric series (`name{labels}`) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .trim_end_matches(" kB")
                .parse()
                .ok()
        })
        .expect("VmRSS")
}

struct FlowLab {
    lab: Lab,
    web: usize,
    client: usize,
    other: usize,
    _servers: Vec<EchoServers>,
}

impl FlowLab {
    fn ip(&self, pod: usize) -> IpAddr {
        self.lab.pods[pod].ip.into()
    }

    fn connects(&self, from: usize, to: usize, port: u16) -> bool {
        let target = Target {
            ip: self.ip(to),
            transport: Transport::Tcp,
            port,
        };
        probe(
            &self.lab.pods[from].namespace,
            vec![target],
            Duration::from_millis(700),
        )
        .expect("probe")[0]
    }

    /// Sends `count` datagrams from the client to the web pod, port `first_port` and up (`ports`
    /// of them, cycling), from `sources` sockets, at most `per_second` of them a second.
    fn send_udp(&self, first_port: u16, ports: u32, sources: usize, count: u32, per_second: u32) {
        let destination = self.ip(self.web);
        self.lab.pods[self.client]
            .namespace
            .spawn(move || {
                let sockets: Vec<UdpSocket> = (0..sources)
                    .map(|_| UdpSocket::bind("0.0.0.0:0"))
                    .collect::<Result<_, _>>()?;
                let started = Instant::now();
                for index in 0..count {
                    let due = Duration::from_secs_f64(f64::from(index) / f64::from(per_second));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let port = u32::from(first_port) + index % ports;
                    let socket = &sockets[(index / ports) as usize % sources];
                    let port = u16::try_from(port)?;
                    // A full socket buffer (ENOBUFS) only loses a datagram the policy drops anyway.
                    let _ = socket.send_to(b"x", (destination, port));
                }
                anyhow::Ok(())
            })
            .join()
            .expect("sender thread")
            .expect("sending");
    }

    fn up() -> Self {
        let mut lab = Lab::up(LabSpec {
            nodes: 2,
            policy: true,
            agent_flags: [
                "--flow-log-allowed",
                "--flow-log-rate",
                &LOG_RATE.to_string(),
                "--flow-log-max-flows",
                &AGENT_FLOWS.to_string(),
            ]
            .map(String::from)
            .to_vec(),
            ..LabSpec::new(format!("brdf{}", std::process::id()), test_binaries())
        })
        .expect("lab up");
        let web = lab.add_workload(0, &workload(NAMESPACE, "web")).expect("web");
        let client = lab
            .add_workload(1, &workload(NAMESPACE, "client"))
            .expect("client");
        let other = lab
            .add_workload(0, &workload(OPEN_NAMESPACE, "other"))
            .expect("other");
        let servers = [web, other]
            .iter()
            .map(|pod| serve(&lab.pods[*pod].namespace, &[80]).expect("echo servers"))
            .collect();
        Self {
            lab,
            web,
            client,
            other,
            _servers: servers,
        }
    }
}

/// The scenario in order (one lab: building it is the slow part).
#[test]
fn flow_logs_name_what_denied_and_what_staged_policies_would_do() {
    let world = FlowLab::up();
    let lab = &world.lab;
    assert!(world.connects(world.client, world.web, 80), "no policy yet");
    lab.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: default-deny, namespace: {NAMESPACE}}}\n\
         spec: {{podSelector: {{}}, policyTypes: [Ingress]}}\n"
    ))
    .expect("default deny");
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.connects(world.client, world.web, 80) {
        assert!(Instant::now() < deadline, "the default-deny never took effect");
    }
    let (client_ip, web_ip) = (
        world.ip(world.client).to_string(),
        world.ip(world.web).to_string(),
    );
    let policy = format!("{NAMESPACE}/knp.default-deny");

    // One denied connect → one flow within 2 s, naming the policy and both pods.
    let web_port = 8080;
    let connected = Instant::now();
    assert!(!world.connects(world.client, world.web, web_port));
    let denied = wait_flow(lab, &["--denied"], Duration::from_secs(2), |f| {
        f["destination"]["port"] == web_port && f["protocol"] == "TCP"
    });
    let seen_after = connected.elapsed();
    let denied = denied.unwrap_or_else(|| panic!("no denied flow within 2 s: {:?}", flows(lab, &[])));
    println!("denied connect shown after {seen_after:?}: {denied}");
    assert_eq!(denied["verdict"], "deny");
    assert_eq!(denied["direction"], "ingress");
    assert_eq!(denied["policy"], policy.as_str());
    assert_eq!(denied["rule"], Value::Null, "the end of the policy denied");
    assert_eq!(denied["node"], lab.nodes[0].name.as_str());
    assert_eq!(denied["source"]["pod"], format!("{NAMESPACE}/client"));
    assert_eq!(denied["source"]["ip"], client_ip.as_str());
    assert_eq!(denied["destination"]["pod"], format!("{NAMESPACE}/web"));
    assert_eq!(denied["destination"]["ip"], web_ip.as_str());
    let connects: Vec<Value> = flows(lab, &["--denied", "--namespace", NAMESPACE])
        .into_iter()
        .filter(|f| f["destination"]["port"] == web_port)
        .collect();
    assert_eq!(connects.len(), 1, "one connect, one flow: {connects:?}");
    assert!(
        flows(lab, &["--namespace", "kube-system"]).is_empty(),
        "no flow of another namespace"
    );

    // --follow prints flows as nodes report them.
    let mut follower = lab
        .cli(&["flows", "--follow", "--denied", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("brindle flows --follow");
    let lines = std::io::BufReader::new(follower.stdout.take().expect("stdout"));
    let reading = std::thread::spawn(move || {
        lines
            .lines()
            .map_while(Result::ok)
            .map(|line| serde_json::from_str::<Value>(&line).expect("a JSON line"))
            .find(|f| f["destination"]["port"] == 8081)
    });
    // The follower's watch may start after a first connect: connect until it prints one.
    let followed = loop {
        assert!(!world.connects(world.client, world.web, 8081));
        if reading.is_finished() {
            break reading.join().expect("reader");
        }
        assert!(
            connected.elapsed() < Duration::from_secs(30),
            "--follow printed nothing"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = follower.kill();
    let _ = follower.wait();
    let followed = followed.expect("a followed flow");
    assert_eq!(
        (&followed["verdict"], &followed["policy"]),
        (&"deny".into(), &policy.as_str().into())
    );

    // 1,000 denied datagrams of one connection → one flow of 1,000 packets.
    world.send_udp(9000, 1, 1, 1000, u32::MAX);
    let counted = wait_flow(lab, &["--denied"], Duration::from_secs(10), |f| {
        f["destination"]["port"] == 9000 && f["packets"].as_u64() >= Some(1000)
    })
    .unwrap_or_else(|| panic!("no flow of 1000 packets: {:?}", flows(lab, &["--denied"])));
    assert_eq!(counted["packets"], 1000, "{counted}");
    assert_eq!(counted["bytes"], 1000 * (20 + 8 + 1), "{counted}");
    let udp_flows = flows(lab, &["--denied"])
        .into_iter()
        .filter(|f| f["destination"]["port"] == 9000)
        .count();
    assert_eq!(udp_flows, 1);
    let agent_metrics = lab.agent_metrics(0).expect("agent metrics");
    let packets = metric(
        &agent_metrics,
        &format!("brindle_policy_packets_total{{policy=\"{policy}\",verdict=\"deny\"}}"),
    );
    assert!(packets >= Some(1001.0), "{agent_metrics}");

    // 100,000 distinct denied flows: the agent's table and policy-svc's stay under their bounds.
    let agent_pid = lab
        .pids()
        .into_iter()
        .find(|(name, _)| *name == lab.nodes[0].name)
        .map(|(_, pid)| pid)
        .expect("agent pid");
    let rss_before = rss_kib(agent_pid);
    let sender = std::thread::scope(|scope| {
        // As fast as the rules log (a rule logs at most LOG_RATE a second; the rest are dropped
        // unlogged).
        let sending = scope.spawn(|| world.send_udp(10_000, 50_000, 2, 100_000, LOG_RATE));
        let mut most = 0.0f64;
        while !sending.is_finished() {
            let text = lab.agent_metrics(0).expect("agent metrics");
            most = most.max(metric(&text, "brindle_flow_log_flows{}").unwrap_or(0.0));
            std::thread::sleep(Duration::from_millis(20));
        }
        most
    });
    std::thread::sleep(Duration::from_secs(2));
    let text = lab.agent_metrics(0).expect("agent metrics");
    let unrecorded = metric(&text, "brindle_flow_log_unrecorded_packets_total{}").unwrap_or(0.0);
    let server = lab.server_metrics().expect("server metrics");
    let held = metric(&server, "brindle_policy_flows{}").expect("flows held");
    let capacity = metric(&server, "brindle_policy_flows_capacity{}").expect("capacity");
    let rss_after = rss_kib(agent_pid);
    println!(
        "100,000 distinct denied flows: agent table at most {sender} flows (bound {AGENT_FLOWS}), \
         {unrecorded} packets unrecorded; policy-svc holds {held} (bound {capacity}); agent RSS \
         {rss_before} → {rss_after} KiB"
    );
    assert!(sender <= AGENT_FLOWS as f64);
    assert!(unrecorded > 0.0, "the agent's bound was reached");
    assert!(held <= capacity);
    assert!(held > 1000.0, "flows were reported");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the agent's memory stays bounded: {rss_before} → {rss_after} KiB"
    );

    // A staged deny: the traffic still flows, its flows say what the staged policy would do, and
    // trace shows both verdicts.
    lab.apply(&format!(
        "apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\n\
         metadata: {{name: lockdown, namespace: {OPEN_NAMESPACE}}}\n\
         spec: {{stagedAction: Set, selector: all(), types: [Ingress]}}\n"
    ))
    .expect("staged policy");
    let staged_at = Instant::now();
    let staged = loop {
        assert!(
            world.connects(world.client, world.other, 80),
            "a staged policy is not enforced"
        );
        let found = wait_flow(
            lab,
            &["--namespace", OPEN_NAMESPACE],
            Duration::from_secs(1),
            |f| {
                f["direction"] == "ingress"
                    && f["destination"]["port"] == 80
                    && f["staged"]["verdict"] == "deny"
            },
        );
        if let Some(found) = found {
            break found;
        }
        assert!(
            staged_at.elapsed() < Duration::from_secs(20),
            "no staged verdict: {:?}",
            flows(lab, &["--namespace", OPEN_NAMESPACE])
        );
    };
    println!("staged: {staged}");
    assert_eq!(staged["verdict"], "allow");
    assert_eq!(
        staged["policy"],
        Value::Null,
        "no enforced policy selects the pod"
    );
    assert_eq!(staged["staged"]["policy"], format!("{OPEN_NAMESPACE}/lockdown"));
    assert_eq!(staged["source"]["pod"], format!("{NAMESPACE}/client"));
    let traced = lab
        .cli(&[
            "policy",
            "trace",
            "--from",
            &format!("{NAMESPACE}/client"),
            "--to",
            &format!("{OPEN_NAMESPACE}/other"),
            "--port",
            "80",
            "-o",
            "json",
        ])
        .output()
        .expect("trace");
    let traced: Value = serde_json::from_slice(&traced.stdout).expect("trace JSON");
    assert_eq!(
        (&traced["verdict"], &traced["staged"]["verdict"]),
        (&"allow".into(), &"deny".into())
    );
    let allowed = flows(lab, &[])
        .into_iter()
        .filter(|f| f["verdict"] == "allow")
        .count();
    assert!(
        allowed >= 2,
        "allowed connections are logged (egress and ingress)"
    );
}
