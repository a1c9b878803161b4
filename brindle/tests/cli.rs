//! The `brindle` CLI against a running `brindle server` (on a real etcd, so the test can damage
//! IPAM records behind the server's back): every command, every output format, the apply → get
//! round trip, and error cases with their exit statuses.

mod support;

use std::process::Output;

use brindle_datastore::Txn;
use brindle_datastore::testing::EtcdServer;
use brindle_proto::ipam::v1 as ipam;
use brindle_proto::policy::v1 as policy;
use brindle_proto::route::v1 as route;
use support::Server;

const MANIFEST: &str = "apiVersion: brindle.io/v1
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 26, vxlanMode: CrossSubnet, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: IPReservation
metadata: {name: infra}
spec: {reservedCIDRs: [10.244.0.0/30, 10.244.255.0/24]}
---
apiVersion: brindle.io/v1
kind: IPAMConfig
metadata: {name: default}
spec: {strictAffinity: true, maxBlocksPerHost: 4}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}]
---
apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: audit}
spec: {selector: all(), order: 10, types: [Egress], egress: [{action: Log}, {action: Allow}]}
---
apiVersion: brindle.io/v1
kind: GlobalNetworkPolicy
metadata: {name: pass-infra}
spec: {selector: \"infra == 'true'\", types: [Ingress], ingress: [{action: Pass}]}
";

struct Cli<'a> {
    server: &'a Server,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        support::brindle(&self.server.address, args, stdin)
    }

    /// Runs a command that must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "brindle {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).expect("JSON output")
    }

    /// Runs a command that must fail with `code`; its standard error.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "brindle {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = EtcdServer::start().await.expect("start etcd");
    let server = Server::start(
        &["--etcd-endpoints", &etcd.endpoint()],
        &dir.path().join("server.log"),
    );
    let cli = Cli { server: &server };
    let manifest = dir.path().join("cluster.yaml");
    std::fs::write(&manifest, MANIFEST).expect("write manifest");
    let manifest = manifest.to_str().expect("utf-8 path");

    tokio::task::block_in_place(|| {
        apply_get_delete_round_trip(&cli, manifest);
        bgp_objects(&cli);
    });
    let (kept, released) = allocate(&server).await;
    for ip in [&kept, &released] {
        let octets = ip
            .parse::<std::net::Ipv4Addr>()
            .expect("an IPv4 address")
            .octets();
        assert!(
            !(octets[..3] == [10, 244, 0] && octets[3] < 4),
            "{ip} is reserved (ipreservation/infra)"
        );
    }
    tokio::task::block_in_place(|| ipam_commands(&cli, &etcd, &kept, &released));
    register_node_and_endpoint(&server, &kept).await;
    tokio::task::block_in_place(|| {
        node_status_and_trace(&cli, &kept);
        error_cases(&cli, manifest);
        node_delete(&cli);
        // `delete -f` removes what the manifest created (the IPAM configuration stays).
        let deleted = cli.ok(&["delete", "-f", manifest, "-n", "shop", "--force"]);
        assert_eq!(deleted.lines().count(), 6, "{deleted}");
        assert!(deleted.contains("ipreservation/infra deleted"), "{deleted}");
        assert_eq!(cli.json(&["get", "ippool"])["items"], serde_json::json!([]));
        assert_eq!(
            cli.json(&["get", "ipreservation"])["items"],
            serde_json::json!([])
        );
    });
}

fn apply_get_delete_round_trip(cli: &Cli<'_>, manifest: &str) {
    let applied = cli.ok(&["apply", "-f", manifest, "-n", "shop"]);
    for line in [
        "ippool/pods created",
        "ipreservation/infra created",
        "ipamconfig/default configured",
        "namespace/shop applied",
        "networkpolicy.networking.k8s.io/shop/web applied",
        "networkpolicy/shop/audit applied",
        "globalnetworkpolicy/pass-infra applied",
    ] {
        assert!(applied.lines().any(|l| l == line), "{line:?} missing:\n{applied}");
    }
    let again = cli.ok(&["apply", "-f", manifest, "-n", "shop"]);
    assert!(
        again.contains("ippool/pods configured") && again.contains("ipreservation/infra configured"),
        "a second apply updates: {again}"
    );

    // Tables.
    let pools = cli.ok(&["get", "ippools"]);
    assert!(
        pools.starts_with("NAME   CIDR            BLOCK   VXLAN         IPIP    NAT    DISABLED   NODES\n")
            && pools.contains("pods   10.244.0.0/16   26      CrossSubnet   Never   true   false      all()"),
        "{pools}"
    );
    let policies = cli.ok(&["get", "netpol", "-A"]);
    assert!(
        policies.contains("shop        audit   brindle.io/v1")
            && policies.contains("shop        web     networking.k8s.io/v1"),
        "{policies}"
    );
    assert!(
        policies
            .lines()
            .next()
            .is_some_and(|header| header.contains("ORIGIN"))
            && policies.lines().skip(1).all(|row| row.contains(" apply ")),
        "each object's origin: {policies}"
    );
    assert!(cli.ok(&["get", "ns"]).contains("team=web"));
    assert!(cli.ok(&["get", "gnp"]).contains("pass-infra"));
    assert!(cli.ok(&["get", "ipamconfig"]).contains("default   true"));
    assert_eq!(
        cli.ok(&["get", "ipreservations"]),
        "NAME    RESERVED-CIDRS\ninfra   10.244.0.0/30,10.244.255.0/24\n"
    );
    // A reservation read back applies as it was (in brindle's shape), and a changed one
    // replaces it.
    let reservation = cli.ok(&["get", "ipreservation", "infra", "-o", "yaml"]);
    assert!(reservation.contains("brindle.io/v1"), "{reservation}");
    let narrower = reservation.replace("- 10.244.255.0/24\n", "");
    let out = cli.run_with_stdin(&["apply", "-f", "-"], &narrower);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ipreservation/infra configured"),
        "{out:?}"
    );
    assert_eq!(
        cli.json(&["get", "ipreservation", "infra"])["spec"]["reservedCIDRs"],
        serde_json::json!(["10.244.0.0/30"])
    );
    assert!(
        cli.fails(&["get", "ipreservation", "none"], 1)
            .contains("ipreservation \"none\" not found")
    );

    // JSON and YAML give the manifests back.
    let pool = cli.json(&["get", "ippool", "pods"]);
    assert_eq!(pool["spec"]["vxlanMode"], "CrossSubnet");
    assert_eq!(pool["spec"]["natOutgoing"], true);
    assert_eq!(cli.json(&["get", "ipamconfig"])["spec"]["maxBlocksPerHost"], 4);
    let web = cli.ok(&[
        "get",
        "networkpolicy.networking.k8s.io",
        "web",
        "-n",
        "shop",
        "-o",
        "yaml",
    ]);
    let web: serde_json::Value = yaml_serde::from_str(&web).expect("YAML output");
    assert_eq!(web["spec"]["ingress"][0]["ports"][0]["port"], 80);
    assert_eq!(web["metadata"]["namespace"], "shop");

    // get -o yaml | apply -f - changes nothing.
    let before = cli.json(&["get", "netpol", "-A"]);
    let listed = cli.ok(&["get", "netpol", "-A", "-o", "yaml"]);
    let out = cli.run_with_stdin(&["apply", "-f", "-"], &listed);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cli.json(&["get", "netpol", "-A"]), before);
    let pool_yaml = cli.ok(&["get", "ippool", "pods", "-o", "yaml"]);
    let out = cli.run_with_stdin(&["apply", "-f", "-"], &pool_yaml);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ippool/pods configured"),
        "{out:?}"
    );

    // Delete by name, then apply again.
    assert_eq!(
        cli.ok(&["delete", "netpol", "audit", "-n", "shop"]),
        "networkpolicy/shop/audit deleted\n"
    );
    assert!(
        cli.fails(&["get", "netpol", "audit", "-n", "shop"], 1)
            .contains("not found")
    );
    cli.ok(&["apply", "-f", manifest, "-n", "shop"]);
}

/// BGPConfiguration and BGPPeer in both shapes: applied, read back in every format, applied again
/// from what `get` printed; each bad field named; the configuration cannot be deleted, a peer can.
fn bgp_objects(cli: &Cli<'_>) {
    let manifest = "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n\
                    spec: {asNumber: 65000, logSeverityScreen: Warning, nodeToNodeMeshEnabled: false}\n---\n\
                    apiVersion: brindle.io/v1\nkind: BGPPeer\nmetadata: {name: tor-a}\n\
                    spec: {peerIP: 192.0.2.1, asNumber: 64513, nodeSelector: \"rack == 'a'\", \
                    password: {value: s3cret}, maxRestartTime: 2m}\n";
    let out = cli.run_with_stdin(&["apply", "-f", "-"], manifest);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("bgpconfiguration/default configured")
            && stdout.contains("bgppeer/tor-a applied"),
        "{out:?}"
    );
    let peers = cli.ok(&["get", "bgppeers"]);
    assert!(
        peers.contains("tor-a")
            && peers.contains("192.0.2.1")
            && peers.contains("rack == 'a'")
            && peers.contains("set"),
        "{peers}"
    );
    let configuration = cli.json(&["get", "bgpconfiguration"]);
    assert_eq!(configuration["spec"]["asNumber"], 65000);
    assert_eq!(configuration["spec"]["listenPort"], 179);
    assert_eq!(configuration["spec"]["logSeverityScreen"], "Warning");
    assert_eq!(configuration["spec"]["nodeToNodeMeshEnabled"], false);
    let peer = cli.json(&["get", "bgppeer", "tor-a"]);
    assert_eq!(peer["spec"]["password"]["value"], "s3cret");
    assert_eq!(peer["spec"]["maxRestartTime"], "120s");
    let yaml = cli.ok(&["get", "bgppeer", "tor-a", "-o", "yaml"]);
    let out = cli.run_with_stdin(&["apply", "-f", "-"], &yaml);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cli.json(&["get", "bgppeer", "tor-a"]), peer);

    let refused = |spec: &str, named: &str| {
        let bad = format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: bad}}\nspec: {spec}\n"
        );
        let out = cli.run_with_stdin(&["apply", "-f", "-"], &bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && stderr.contains(named),
            "{spec}: {stderr}"
        );
    };
    refused("{peerIP: \"192.0.2.1:179\", asNumber: 64513}", "peerIP");
    refused("{peerIP: 192.0.2.1, asNumber: 0}", "asNumber");
    refused("{peerIP: fe80::1, asNumber: 64513}", "peerIP");
    refused(
        "{peerIP: 192.0.2.1, asNumber: 64513, keepOriginalNextHop: true}",
        "keepOriginalNextHop",
    );
    refused(
        "{peerIP: 192.0.2.1, asNumber: 64513, maxRestartTime: 2h}",
        "maxRestartTime",
    );
    refused(
        "{peerIP: 192.0.2.1, asNumber: 64513, maxRestartTime: 500ms}",
        "maxRestartTime",
    );
    refused(
        "{peerIP: 192.0.2.1, asNumber: 64513, peerSelector: all()}",
        "peerSelector",
    );
    refused(
        "{peerIP: 192.0.2.1, asNumber: 64513, password: {secretKeyRef: {name: s, key: k}}}",
        "secretKeyRef",
    );
    refused(
        "{peerIP: 192.0.2.1, asNumber: 64513, node: n1, nodeSelector: all()}",
        "not both",
    );
    assert!(
        cli.fails(&["delete", "bgpconfiguration", "default"], 1)
            .contains("cannot be deleted")
    );
    assert_eq!(cli.ok(&["delete", "bgppeer", "tor-a"]), "bgppeer/tor-a deleted\n");
    assert!(cli.fails(&["get", "bgppeer", "tor-a"], 1).contains("not found"));
    assert!(
        cli.fails(&["delete", "bgppeer", "tor-a"], 1)
            .contains("no BGP peer")
    );
}

/// Two addresses of node n1 from the pool (handles net.kept and net.released); the kept one.
async fn allocate(server: &Server) -> (String, String) {
    let mut client = ipam::ipam_client::IpamClient::connect(format!("http://{}", server.address))
        .await
        .expect("connect ipam");
    let mut ips = Vec::new();
    for handle in ["net.kept", "net.released"] {
        let assigned = client
            .auto_assign(ipam::AutoAssignRequest {
                handle_id: handle.into(),
                node: "n1".into(),
                num_ipv4: 1,
                attributes: Some(ipam::HandleAttributes {
                    namespace: "shop".into(),
                    pod: handle.trim_start_matches("net.").into(),
                    node: "n1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("auto assign")
            .into_inner();
        ips.push(assigned.allocations[0].ip.clone());
    }
    (ips[0].clone(), ips[1].clone())
}

fn ipam_commands(cli: &Cli<'_>, etcd: &EtcdServer, kept: &str, released: &str) {
    let usage = cli.json(&["ipam", "show"]);
    assert_eq!(usage["pools"][0]["inUse"], 2, "{usage}");
    assert!(cli.ok(&["ipam", "show"]).contains("2 (0.0%)"));
    let blocks = cli.ok(&["ipam", "show", "--blocks"]);
    assert!(blocks.contains("10.244.") && blocks.contains("n1"), "{blocks}");
    assert_eq!(
        cli.json(&["ipam", "show", "--borrowed"])["borrowed"],
        serde_json::json!([])
    );
    let shown = cli.ok(&["ipam", "show", "--ip", kept, "-o", "yaml"]);
    let shown: serde_json::Value = yaml_serde::from_str(&shown).expect("YAML");
    assert_eq!(shown["state"], "allocated");
    assert_eq!(shown["handleId"], "net.kept");
    assert_eq!(shown["pod"], "kept");

    assert!(cli.ok(&["ipam", "check"]).contains("clean"));
    // `ipam release --ip` frees one address.
    assert!(
        cli.ok(&["ipam", "release", "--ip", released])
            .starts_with(&format!("released {released}"))
    );
    assert_ne!(
        cli.json(&["ipam", "show", "--ip", released])["state"],
        "allocated"
    );
    assert!(
        cli.fails(&["ipam", "release", "--ip", released], 1)
            .contains("not allocated")
    );

    // A handle record lost behind the server's back: check reports it (exit 3), the report
    // drives the release, and the records are clean again.
    let store = tokio::runtime::Handle::current().block_on(async {
        let store = brindle_datastore::open(&brindle_datastore::StoreConfig::Etcd(etcd.config()))
            .await
            .expect("open etcd");
        store
            .txn(Txn::new().delete(ipam_api::keys::handle("net.kept")))
            .await
            .expect("delete handle");
        store
    });
    drop(store);
    let report = tempfile::NamedTempFile::new().expect("report file");
    let report_path = report.path().to_str().expect("utf-8 path");
    let stderr = cli.fails(&["ipam", "check", "-o", report_path], 3);
    assert!(stderr.contains("IPAM check found 1 problems"), "{stderr}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.path()).expect("report")).expect("JSON");
    assert_eq!(
        written["problems"][0]["kind"], "ALLOCATION_WITHOUT_HANDLE",
        "{written}"
    );
    assert_eq!(written["problems"][0]["ip"], kept);
    let released_lines = cli.ok(&["ipam", "release", "--from-report", report_path]);
    assert!(
        released_lines.contains(&format!("released {kept}")),
        "{released_lines}"
    );
    assert!(cli.ok(&["ipam", "check", "-o", "-"]).contains("\"clean\": true"));
    a_report_past_grpcs_default_message_size_is_read_whole(cli, etcd);
}

/// Handles lost on a large cluster make a report past gRPC's default 4 MiB: `ipam check` still
/// reads and writes every problem.
fn a_report_past_grpcs_default_message_size_is_read_whole(cli: &Cli<'_>, etcd: &EtcdServer) {
    const HANDLES: usize = 40;
    const ADDRESSES: usize = 1_000;
    let id = |h: usize| format!("net.cli-lost-{h:02}");
    let handle = |h: usize| ipam_api::model::Handle {
        id: id(h),
        attributes: ipam_api::model::HandleAttributes::default(),
        ips: (0..ADDRESSES)
            .map(|a| {
                let ordinal = u32::try_from(h * ADDRESSES + a).expect("small");
                let ip = std::net::Ipv4Addr::from(0x0a63_0000 + ordinal);
                let block = std::net::Ipv4Addr::from(0x0a63_0000 + (ordinal & !63));
                ipam_api::model::HandleIp {
                    ip: ip.into(),
                    block: format!("{block}/26").parse().expect("block"),
                    sequence: 1,
                }
            })
            .collect(),
        created_unix_ms: 1,
    };
    let store = tokio::runtime::Handle::current().block_on(async {
        let store = brindle_datastore::open(&brindle_datastore::StoreConfig::Etcd(etcd.config()))
            .await
            .expect("open etcd");
        for handle in (0..HANDLES).map(handle) {
            let value = serde_json::to_vec(&handle).expect("JSON");
            store
                .txn(Txn::new().put(ipam_api::keys::handle(&handle.id), value))
                .await
                .expect("put handle");
        }
        store
    });
    let report = tempfile::NamedTempFile::new().expect("report file");
    let report_path = report.path().to_str().expect("utf-8 path");
    let stderr = cli.fails(&["ipam", "check", "-o", report_path], 3);
    let problems = HANDLES * ADDRESSES;
    assert!(
        stderr.contains(&format!("IPAM check found {problems} problems")),
        "{stderr}"
    );
    let written = std::fs::read_to_string(report.path()).expect("report");
    assert!(
        written.len() > 4 << 20,
        "the report is past 4 MiB: {} bytes",
        written.len()
    );
    let written: serde_json::Value = serde_json::from_str(&written).expect("JSON");
    assert_eq!(written["problems"].as_array().map(Vec::len), Some(problems));
    tokio::runtime::Handle::current().block_on(async {
        for h in 0..HANDLES {
            let key = ipam_api::keys::handle(&id(h));
            store.txn(Txn::new().delete(key)).await.expect("delete handle");
        }
    });
    assert!(cli.ok(&["ipam", "check"]).contains("clean"));
}

/// Node n1 registered with route-svc, and a pod of shop labelled app=web at `ip` with policy-svc.
async fn register_node_and_endpoint(server: &Server, ip: &str) {
    let address = format!("http://{}", server.address);
    let mut routes = route::routes_client::RoutesClient::connect(address.clone())
        .await
        .expect("connect routes");
    routes
        .register_node(route::RegisterNodeRequest {
            node: Some(route::Node {
                name: "n1".into(),
                addresses: vec!["192.0.2.1".into()],
                ..Default::default()
            }),
            ttl_seconds: 60,
        })
        .await
        .expect("register node");
    // A node Kubernetes owns (kube-sync gave its labels).
    routes
        .set_node_labels(route::SetNodeLabelsRequest {
            name: "k8s-node".into(),
            labels: [("rack".to_owned(), "a".to_owned())].into(),
            origin: "kubernetes".into(),
            if_revision: None,
        })
        .await
        .expect("Kubernetes labels");
    let mut policies = policy::policy_client::PolicyClient::connect(address)
        .await
        .expect("connect policy");
    policies
        .register_endpoint(policy::RegisterEndpointRequest {
            endpoint: Some(policy::WorkloadEndpoint {
                node: "n1".into(),
                interface: "brd0001".into(),
                namespace: "shop".into(),
                pod: "web-1".into(),
                container_id: "c1".into(),
                ips: vec![ip.into()],
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("register endpoint");
}

fn node_status_and_trace(cli: &Cli<'_>, ip: &str) {
    // route-svc learns of the registration through its datastore watch.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let table = loop {
        let table = cli.ok(&["node", "status"]);
        if table.contains("192.0.2.1") || std::time::Instant::now() > deadline {
            break table;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("n1 ") && l.contains("192.0.2.1") && l.contains("never synced")),
        "{table}"
    );
    assert!(
        table.ends_with("\ncontrol plane: plain text on loopback\n"),
        "the transport is shown: {table}"
    );
    let status = cli.json(&["node", "status"]);
    assert_eq!(status["controlPlane"]["transport"], "plain text on loopback");
    let node = &status["nodes"][0];
    assert_eq!(node["node"], "n1");
    assert_eq!(node["policy"]["endpoints"], 1, "{status}");
    assert_eq!(node["routes"]["sync"], "never synced");

    // The Kubernetes policy admits port 80 from pods of shop only.
    let traced = cli.ok(&[
        "policy",
        "trace",
        "--from",
        "203.0.113.9",
        "--to",
        "shop/web-1",
        "--port",
        "80",
    ]);
    assert!(
        traced.starts_with(&format!("203.0.113.9 → {ip} TCP/80: DENY")),
        "{traced}"
    );
    assert!(traced.contains("shop/knp.web"), "the deciding policy: {traced}");
    let args = [
        "policy",
        "trace",
        "--from",
        "shop/web-1",
        "--to",
        "shop/web-1",
        "--port",
        "80",
    ];
    let traced = cli.json(&args);
    assert_eq!(traced["verdict"], "allow", "{traced}");

    // A staged deny: nothing enforced changes, trace shows both verdicts.
    let staged = "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata: {name: no-80}\n\
                  spec: {order: 10, selector: all(), types: [Ingress], ingress: [{action: Deny, protocol: TCP, \
                  destination: {ports: [80]}}]}\n";
    let out = cli.run_with_stdin(&["apply", "-f", "-"], staged);
    assert!(out.status.success(), "{out:?}");
    let yaml = cli.ok(&["get", "sgnp", "no-80", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: StagedGlobalNetworkPolicy") && yaml.contains("stagedAction: Set"),
        "{yaml}"
    );
    let table = cli.ok(&args);
    assert!(
        table.starts_with(&format!(
            "{ip} → {ip} TCP/80: ALLOW (with the staged policies: DENY)"
        )) && table.contains("staged")
            && table.contains("global/no-80"),
        "{table}"
    );
    let traced = cli.json(&args);
    assert_eq!(traced["verdict"], "allow", "{traced}");
    assert_eq!(traced["staged"]["verdict"], "deny", "{traced}");
    assert_eq!(
        cli.ok(&["delete", "sgnp", "no-80"]).trim(),
        "stagedglobalnetworkpolicy/no-80 deleted"
    );
    assert!(cli.json(&args).get("staged").is_none());
}

/// `node delete`: a node that left releases its addresses and endpoints and leaves the status;
/// a second time it is not found; a Kubernetes Node is deleted in Kubernetes.
fn node_delete(cli: &Cli<'_>) {
    let refused = cli.fails(&["node", "delete", "k8s-node"], 1);
    assert!(refused.contains("kubectl delete node k8s-node"), "{refused}");
    let said = cli.ok(&["node", "delete", "n1"]);
    assert!(
        said.starts_with("node/n1 deleted:")
            && said.contains("1 blocks released")
            && said.contains("1 endpoints removed"),
        "{said}"
    );
    // route-svc learns of the deletion through its datastore watch.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = cli.json(&["node", "status"]);
        let listed = status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["node"] == "n1");
        if !listed {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "n1 still listed: {status}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let missing = cli.fails(&["node", "delete", "n1"], 1);
    assert!(missing.contains("node/n1 not found"), "{missing}");
}

fn error_cases(cli: &Cli<'_>, manifest: &str) {
    // Usage errors exit 2 (clap); --help and completions exit 0.
    cli.fails(&["get"], 2);
    cli.fails(&["ipam", "release"], 2);
    for command in [
        &["--help"][..],
        &["apply", "--help"],
        &["get", "--help"],
        &["delete", "--help"],
        &["ipam", "show", "--help"],
        &["ipam", "check", "--help"],
        &["ipam", "release", "--help"],
        &["node", "status", "--help"],
        &["policy", "trace", "--help"],
    ] {
        assert!(cli.ok(command).contains("Usage: brindle"), "{command:?}");
    }
    assert!(cli.ok(&["completions", "bash"]).contains("_brindle"));

    // Errors name what is wrong and exit 1.
    assert!(
        cli.fails(&["get", "pods"], 1)
            .contains("not a kind brindle knows")
    );
    assert!(
        cli.fails(&["get", "gnp", "missing"], 1)
            .contains("\"missing\" not found")
    );
    assert!(
        cli.fails(&["delete", "ipamconfig", "default"], 1)
            .contains("cannot be deleted")
    );
    assert!(
        cli.fails(&["apply", "-f", "/nonexistent.yaml"], 1)
            .contains("/nonexistent.yaml")
    );
    let typo = "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.1.0.0/16, blocksize: 24}\n";
    let out = cli.run_with_stdin(&["apply", "-f", "-"], typo);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("blocksize"),
        "{out:?}"
    );
    // An invalid policy next to a valid one: policy-svc names the field and stores neither.
    let bad = "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\n\
               apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: broken}\n\
               spec: {selector: \"app ==\", ingress: [{action: Allow}]}\n";
    let out = cli.run_with_stdin(&["apply", "-f", "-"], bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && stderr.contains("InvalidArgument") && stderr.contains("document 1"),
        "{stderr}"
    );
    assert!(!cli.ok(&["get", "ns"]).contains("other"), "all or nothing");
    // An overlapping pool: ipam-svc refuses it.
    let overlap =
        "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: overlap}\nspec: {cidr: 10.244.1.0/24}\n";
    let out = cli.run_with_stdin(&["apply", "-f", "-"], overlap);
    assert!(
        out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("ipam-svc"),
        "{out:?}"
    );
    // No server there.
    let out = support::brindle("127.0.0.1:1", &["apply", "-f", manifest], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach policy-svc at 127.0.0.1:1"));
}
