//! `brindle lab up|down`: builds the namespace lab (library side: `brindle::lab`), prints the
//! reachability matrix, and tears it down.

use std::time::Duration;

use anyhow::Context;
use brindle::lab::{self, Lab, LabSpec};

use crate::cli::LabCommand;

pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Down { prefix } => {
            let removed = lab::down(&prefix)?;
            println!("removed {removed} namespaces starting with {prefix}");
            Ok(())
        }
        LabCommand::Up(args) => {
            let binaries = std::env::current_exe()?
                .parent()
                .context("the brindle binary's directory")?
                .to_owned();
            let spec = LabSpec {
                prefix: args.prefix,
                nodes: args.nodes.into(),
                pods_per_node: args.pods_per_node.into(),
                pool: args.pool,
                binaries,
                encapsulation: args.encapsulation,
                subnets: args.subnets.into(),
                etcd_members: args.etcd.into(),
                control_plane: args.control_plane,
                policy: args.policy,
                dual_stack: args.dual_stack,
                kubernetes_pods: false,
                underlay_mtu: args.underlay_mtu,
                insecure_plaintext: args.insecure_plaintext,
                node_labels: Vec::new(),
                node_cert_lifetime: args.node_cert_lifetime,
                bgp: args.bgp,
                // Flow logs of allowed connections too, so that staged verdicts show in them.
                agent_flags: if args.policy {
                    vec!["--flow-log-allowed".into()]
                } else {
                    Vec::new()
                },
            };
            let lab = tokio::task::spawn_blocking(move || Lab::up(spec)).await??;
            let lab = tokio::task::spawn_blocking(move || {
                let converged = lab.wait_full_mesh(Duration::from_secs(30));
                (lab, converged)
            })
            .await?;
            let (lab, converged) = lab;
            println!("encapsulation: {:?}", args.encapsulation);
            if !lab.pods.is_empty() {
                println!(
                    "pod MTU (detected by the agents: smallest uplink MTU minus the encapsulation's overhead): {}",
                    lab.pod_mtu(0)?
                );
            }
            for (index, node) in lab.nodes.iter().enumerate() {
                println!("node {} at {}", node.name, node.address);
                for (pod, placed) in lab.pods.iter().enumerate() {
                    if placed.node != index {
                        println!(
                            "  → pod {} {:<15} {}",
                            placed.name,
                            placed.ip,
                            lab.path(index, pod)?
                        );
                    }
                }
            }
            let lab = tokio::task::spawn_blocking(move || {
                let matrix = lab.matrix();
                println!("\npod-to-pod reachability (ping):\n{}", lab.render(&matrix));
                if args.dual_stack {
                    for pod in &lab.pods {
                        if let Some(ipv6) = pod.ipv6 {
                            println!("pod {} has {ipv6}", pod.name);
                        }
                    }
                    // Not converging is what the matrix below shows.
                    lab.wait_full_mesh_ipv6(Duration::from_secs(10)).ok();
                    let matrix = lab.matrix_ipv6();
                    println!(
                        "\npod-to-pod reachability over IPv6 (ping -6):\n{}",
                        lab.render(&matrix)
                    );
                }
                lab
            })
            .await?;
            if let Err(error) = converged {
                eprintln!("{}", lab.logs());
                return Err(error);
            }
            let lab = if args.bgp {
                tokio::task::spawn_blocking(move || bgp_demo(lab)).await??
            } else {
                lab
            };
            let lab = if args.policy {
                tokio::task::spawn_blocking(move || policy_demo(&lab).map(|()| lab)).await??
            } else {
                lab
            };
            for node in 0..lab.nodes.len() {
                if let Some((subject, not_after)) = lab.node_certificate(node)? {
                    println!(
                        "node {}: certificate {subject} (obtained with a join token, renewed at two thirds of its life), valid until {not_after}",
                        lab.nodes[node].name
                    );
                }
            }
            println!("\n$ brindle node status   (in the control plane's namespace)");
            let status = lab
                .cli(&["node", "status"])
                .status()
                .context("running brindle node status")?;
            anyhow::ensure!(status.success(), "brindle node status failed\n{}", lab.logs());
            if !args.once {
                println!("lab running; Ctrl-C tears it down");
                brindle_grpc::shutdown_signal().await;
            }
            tokio::task::spawn_blocking(move || drop(lab)).await?;
            println!("lab torn down");
            Ok(())
        }
    }
}

/// What BGP shows: the router's table (every node's blocks, next hop the node), and a host
/// outside the cluster reaching every pod.
fn bgp_demo(mut lab: Lab) -> anyhow::Result<Lab> {
    lab.wait_bgp_established(Duration::from_secs(30))?;
    println!("\n$ vtysh -c 'show ip bgp'   (FRR on the router, every node's BGP peer)");
    print!("{}", lab.vtysh("show ip bgp")?);
    let outside = lab.add_outside()?;
    let namespace = lab.outside.as_ref().context("the outside namespace")?;
    println!("\nfrom {outside}, outside the cluster behind the router:");
    for pod in &lab.pods {
        let reached = namespace.succeeds(&["ping", "-c", "1", "-W", "2", &pod.ip.to_string()]);
        println!(
            "  ping {} {:<15} {}",
            pod.name,
            pod.ip,
            if reached { "✓" } else { "✗" }
        );
    }
    Ok(lab)
}

/// With policy enforced: the pods of the first node admit only each other (a Kubernetes
/// NetworkPolicy on the `node` label every lab pod carries); prints the matrix again and what
/// policy trace says of one pair it now denies; then stages a Calico policy and shows it changes
/// nothing in the kernel while trace tells what it would do.
fn policy_demo(lab: &Lab) -> anyhow::Result<()> {
    let first = &lab.nodes.first().context("a node")?.name;
    let manifest = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {first}-only, namespace: default}}\n\
         spec:\n  podSelector: {{matchLabels: {{node: {first}}}}}\n  ingress:\n    - from: [{{podSelector: {{matchLabels: {{node: {first}}}}}}}]\n"
    );
    println!("\napplying a Kubernetes NetworkPolicy: pods on {first} admit only pods on {first}\n{manifest}");
    lab.apply(&manifest)?;
    let on_first = |pod: usize| lab.pods[pod].node == 0;
    let expected = |from: usize, to: usize| from == to || !on_first(to) || on_first(from);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let matrix = loop {
        let matrix = lab.matrix();
        let holds = (0..matrix.len()).all(|f| (0..matrix.len()).all(|t| matrix[f][t] == expected(f, t)));
        if holds || std::time::Instant::now() > deadline {
            break matrix;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    println!(
        "pod-to-pod reachability with the policy (ping):\n{}",
        lab.render(&matrix)
    );
    let denied = (0..lab.pods.len())
        .flat_map(|f| (0..lab.pods.len()).map(move |t| (f, t)))
        .find(|(f, t)| !expected(*f, *t));
    if let Some((from, to)) = denied {
        let traced = trace_ping(lab, from, to)?;
        println!(
            "policy trace {} → {} (ICMP):",
            lab.pods[from].name, lab.pods[to].name
        );
        for step in traced.steps {
            println!("  {}", step.explanation);
        }
    }
    let wrong = (0..matrix.len())
        .flat_map(|f| (0..matrix.len()).map(move |t| (f, t)))
        .filter(|(f, t)| matrix[*f][*t] != expected(*f, *t))
        .count();
    anyhow::ensure!(
        wrong == 0,
        "{wrong} pod pairs do not match the policy\n{}",
        lab.logs()
    );
    staged_demo(lab)
}

/// A Calico `projectcalico.org/v3` StagedGlobalNetworkPolicy denying ping to the last node's
/// pods: computed, never enforced — the ping still passes, and trace shows both verdicts.
fn staged_demo(lab: &Lab) -> anyhow::Result<()> {
    let last = lab.nodes.len() - 1;
    let (Some(from), Some(to)) = (
        lab.pods.iter().position(|p| p.node == 0),
        lab.pods.iter().position(|p| p.node == last),
    ) else {
        return Ok(());
    };
    let manifest = format!(
        "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata: {{name: no-ping-to-{node}}}\n\
         spec:\n  order: 10\n  selector: node == '{node}'\n  types: [Ingress]\n  ingress:\n    \
         - {{action: Deny, protocol: ICMP, icmp: {{type: 8}}}}\n",
        node = lab.nodes[last].name
    );
    println!("\nstaging a Calico policy (projectcalico.org/v3, never enforced):\n{manifest}");
    lab.apply(&manifest)?;
    let traced = trace_ping(lab, from, to)?;
    let verdict = |v: i32| super::trace::verdict(v).to_uppercase();
    let staged = traced.staged_verdict.map_or_else(|| "-".to_owned(), verdict);
    let pinged =
        lab.pods[from]
            .namespace
            .succeeds(&["ping", "-c", "1", "-W", "2", &lab.pods[to].ip.to_string()]);
    println!(
        "policy trace {} → {} (ICMP echo): enforced {}, with the staged policies {staged}; ping {}",
        lab.pods[from].name,
        lab.pods[to].name,
        verdict(traced.verdict),
        if pinged { "passes ✓" } else { "fails ✗" }
    );
    anyhow::ensure!(
        pinged && staged == "DENY",
        "a staged policy must change nothing and be traced as a deny\n{}",
        lab.logs()
    );
    host_endpoint_demo(lab)?;
    // Agents report every half second.
    std::thread::sleep(Duration::from_secs(1));
    println!("\n$ brindle flows --denied   (what the policies dropped, as the nodes logged it)");
    let status = lab
        .cli(&["flows", "--denied"])
        .status()
        .context("running brindle flows")?;
    anyhow::ensure!(status.success(), "brindle flows failed\n{}", lab.logs());
    Ok(())
}

/// A Calico HostEndpoint for the first node's eth0 and a GlobalNetworkPolicy denying TCP 22 and
/// 9400 from the other nodes: the second node then reaches the first's port 9400 no more, while
/// 22 stays reachable (a failsafe port) — the node's own traffic under policy.
fn host_endpoint_demo(lab: &Lab) -> anyhow::Result<()> {
    let (first, second) = (&lab.nodes[0], lab.nodes.get(1).context("a second node")?);
    let servers = lab::serve(&first.namespace, &[22, 9400])?;
    let manifest = format!(
        "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\n\
         metadata: {{name: {node}-eth0, labels: {{host-endpoint: 'true'}}}}\n\
         spec: {{node: {node}, interfaceName: eth0, expectedIPs: ['{address}']}}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: no-admin-from-nodes}}\n\
         spec:\n  order: 10\n  selector: has(host-endpoint)\n  types: [Ingress, Egress]\n  ingress:\n    \
         - {{action: Deny, protocol: TCP, source: {{nets: ['{second}/32']}}, destination: {{ports: [22, 9400]}}}}\n    \
         - {{action: Allow}}\n  egress:\n    - {{action: Allow}}\n",
        node = first.name,
        address = first.address,
        second = second.address,
    );
    println!(
        "\nputting {}'s eth0 under policy (a Calico HostEndpoint):\n{manifest}",
        first.name
    );
    lab.apply(&manifest)?;
    let reaches = |port: u16| -> anyhow::Result<bool> {
        let target = lab::Target {
            ip: first.address.into(),
            transport: lab::Transport::Tcp,
            port,
        };
        Ok(lab::probe(&second.namespace, vec![target], Duration::from_millis(700))?[0])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while reaches(9400)? && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    let (metrics, ssh) = (reaches(9400)?, reaches(22)?);
    let mark = |reached: bool| if reached { "reachable ✓" } else { "dropped ✗" };
    println!(
        "from {}: {}:9400 {} (denied by the policy), {}:22 {} (failsafe: no policy closes it)",
        second.name,
        first.address,
        mark(metrics),
        first.address,
        mark(ssh)
    );
    drop(servers);
    anyhow::ensure!(
        !metrics && ssh,
        "the host endpoint's policy must close 9400 and leave 22 open\n{}",
        lab.logs()
    );
    Ok(())
}

/// What policy trace says of a ping (ICMP echo request) between two pods.
fn trace_ping(lab: &Lab, from: usize, to: usize) -> anyhow::Result<brindle_proto::policy::v1::TraceResponse> {
    let (source, destination) = (lab.pods[from].ip.to_string(), lab.pods[to].ip.to_string());
    lab.policy(move |mut client| async move {
        use brindle_proto::policy::v1 as pb;
        let peer = |ip: String| {
            Some(pb::TracePeer {
                peer: Some(pb::trace_peer::Peer::Ip(ip)),
            })
        };
        let request = pb::TraceRequest {
            source: peer(source),
            destination: peer(destination),
            protocol: "ICMP".into(),
            ..Default::default()
        };
        Ok(client.trace(request).await?.into_inner())
    })
}
