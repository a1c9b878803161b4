//! mTLS with node identity, against `brindle server` with certificates from `brindle certs`: a
//! client without a valid certificate is refused; node A's certificate can act for node A but
//! cannot assign, release, register nodes or endpoints for node B, nor change pools or policies;
//! the administrator's certificate can.

mod support;

use std::path::Path;
use std::process::Output;

use support::{Server, tls_flags};

/// `brindle ARGS` with the certificate `<stem>` from `certs` (none: the CA only).
fn brindle_as(server: &Server, certs: &Path, stem: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend(["--tls-ca".into(), certs.join("ca.crt").display().to_string()]);
    if let Some(stem) = stem {
        all.extend([
            "--tls-cert".into(),
            certs.join(format!("{stem}.crt")).display().to_string(),
            "--tls-key".into(),
            certs.join(format!("{stem}.key")).display().to_string(),
        ]);
    }
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    support::brindle(&server.address, &all, stdin)
}

/// Calls `method` with `body` as the identity `<stem>`; (succeeded, output).
fn call(server: &Server, certs: &Path, stem: &str, method: &str, body: &str) -> (bool, String) {
    let mut flags = tls_flags(certs, stem);
    flags.extend(["-d".into(), body.into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = server.grpcurl_with(&flags, &[method]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn denied(result: (bool, String), why: &str) {
    assert!(
        !result.0 && result.1.contains("PermissionDenied") && result.1.contains(why),
        "expected PermissionDenied ({why}): {}",
        result.1
    );
}

fn allowed(result: (bool, String)) -> String {
    assert!(result.0, "expected success: {}", result.1);
    result.1
}

/// The first address of an AutoAssign answer.
fn first_ip(answer: &str) -> String {
    let json: serde_json::Value = serde_json::from_str(answer).expect("JSON");
    json["allocations"][0]["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in {answer}"))
        .to_owned()
}

/// Another code than PERMISSION_DENIED, naming `why`.
fn refused(result: (bool, String), code: &str, why: &str) {
    assert!(
        !result.0 && result.1.contains(code) && result.1.contains(why),
        "expected {code} ({why}): {}",
        result.1
    );
}

/// Certificates for nodes `a` and `b` and the administrator `admin` in `<dir>/certs`, and an
/// mTLS server on an embedded store in `dir`.
fn mtls_server(dir: &Path) -> (Server, std::path::PathBuf) {
    let certs = dir.join("certs");
    let made = support::brindle(
        "",
        &[
            "certs",
            "--dir",
            &certs.display().to_string(),
            "--server",
            "127.0.0.1",
            "--node",
            "a",
            "--node",
            "b",
            "--admin",
            "admin",
        ],
        "",
    );
    assert!(made.status.success(), "{made:?}");
    let store = dir.join("store.redb");
    let server = Server::start_tls(
        &["--store-path", &store.display().to_string()],
        &dir.join("server.log"),
        &certs,
    );
    (server, certs)
}

#[test]
fn node_identity_from_client_certificates_limits_what_each_caller_may_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, certs) = mtls_server(dir.path());

    // No valid certificate: refused.
    let plain = support::brindle(&server.address, &["get", "ippool", "--timeout", "2"], "");
    assert_eq!(
        plain.status.code(),
        Some(1),
        "plain text to an mTLS server: {plain:?}"
    );
    let anonymous = brindle_as(&server, &certs, None, &["get", "ippool", "--timeout", "2"], "");
    assert_eq!(
        anonymous.status.code(),
        Some(1),
        "TLS without a client certificate: {anonymous:?}"
    );
    let stranger = dir.path().join("other-ca");
    assert!(
        support::brindle(
            "",
            &[
                "certs",
                "--dir",
                &stranger.display().to_string(),
                "--admin",
                "admin"
            ],
            ""
        )
        .status
        .success()
    );
    let mut foreign = tls_flags(&stranger, "admin-admin");
    foreign[1] = certs.join("ca.crt").display().to_string();
    let foreign: Vec<&str> = foreign.iter().map(String::as_str).collect();
    let out = server.grpcurl_with(&foreign, &["brindle.ipam.v1.Ipam/ListPools"]);
    assert!(!out.status.success(), "a certificate of another CA: {out:?}");

    // Pools and policies: administrators only.
    let pool =
        "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n";
    let policy = "apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\n\
                  spec: {selector: all(), ingress: [{action: Allow}]}\n";
    for manifest in [pool, policy] {
        let out = brindle_as(&server, &certs, Some("node-a"), &["apply", "-f", "-"], manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1)
                && stderr.contains("PermissionDenied")
                && stderr.contains("administrators only"),
            "{stderr}"
        );
        let out = brindle_as(
            &server,
            &certs,
            Some("admin-admin"),
            &["apply", "-f", "-"],
            manifest,
        );
        assert!(out.status.success(), "the administrator applies: {out:?}");
    }
    // Reading is open to every identity.
    let out = brindle_as(&server, &certs, Some("node-a"), &["get", "ippool"], "");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10.244.0.0/16"),
        "{out:?}"
    );

    // Addresses: a node assigns and releases for itself only.
    let assign = |node: &str, handle: &str| {
        format!(
            r#"{{"handle_id": "{handle}", "node": "{node}", "num_ipv4": 1, "attributes": {{"node": "{node}"}}}}"#
        )
    };
    let a1 = first_ip(&allowed(call(
        &server,
        &certs,
        "node-a",
        "brindle.ipam.v1.Ipam/AutoAssign",
        &assign("a", "net.a1"),
    )));
    denied(
        call(
            &server,
            &certs,
            "node-a",
            "brindle.ipam.v1.Ipam/AutoAssign",
            &assign("b", "net.a2"),
        ),
        "node a may not assign addresses for node \"b\"",
    );
    allowed(call(
        &server,
        &certs,
        "admin-admin",
        "brindle.ipam.v1.Ipam/AutoAssign",
        &assign("b", "net.b1"),
    ));
    denied(
        call(
            &server,
            &certs,
            "node-a",
            "brindle.ipam.v1.Ipam/ReleaseByHandle",
            r#"{"handle_id": "net.b1"}"#,
        ),
        "node a may not release addresses for node \"b\"",
    );
    denied(
        call(
            &server,
            &certs,
            "node-a",
            "brindle.ipam.v1.Ipam/GarbageCollect",
            r#"{"node": "b"}"#,
        ),
        "for node \"b\"",
    );
    let released = allowed(call(
        &server,
        &certs,
        "node-b",
        "brindle.ipam.v1.Ipam/ReleaseByHandle",
        r#"{"handle_id": "net.b1"}"#,
    ));
    assert!(released.contains("10.244."), "{released}");
    denied(
        call(
            &server,
            &certs,
            "node-a",
            "brindle.ipam.v1.Ipam/DeleteNode",
            r#"{"node": "b"}"#,
        ),
        "administrators only",
    );

    // BGP objects: administrators write, anyone reads.
    for (method, body) in [
        ("SetBgpConfiguration", r#"{"as_number": 65000}"#),
        (
            "ApplyBgpPeer",
            r#"{"name": "tor", "peer_ip": "192.0.2.9", "as_number": 64513}"#,
        ),
        ("DeleteBgpPeer", r#"{"name": "tor"}"#),
    ] {
        denied(
            call(
                &server,
                &certs,
                "node-a",
                &format!("brindle.route.v1.Routes/{method}"),
                body,
            ),
            "administrators only",
        );
    }
    allowed(call(
        &server,
        &certs,
        "admin-admin",
        "brindle.route.v1.Routes/ApplyBgpPeer",
        r#"{"name": "tor", "peer_ip": "192.0.2.9", "as_number": 64513, "password": "s3cret"}"#,
    ));
    // Anyone reads the peers; only administrators their passwords.
    let list = |who: &str| {
        allowed(call(
            &server,
            &certs,
            who,
            "brindle.route.v1.Routes/ListBgpPeers",
            "{}",
        ))
    };
    let peers = list("node-a");
    assert!(
        peers.contains("192.0.2.9") && !peers.contains("s3cret") && peers.contains("redacted"),
        "{peers}"
    );
    assert!(list("admin-admin").contains("s3cret"));

    // Node registrations and workload endpoints: for the node itself only.
    let register = |node: &str| format!(r#"{{"node": {{"name": "{node}", "addresses": ["192.0.2.1"]}}}}"#);
    allowed(call(
        &server,
        &certs,
        "node-a",
        "brindle.route.v1.Routes/RegisterNode",
        &register("a"),
    ));
    denied(
        call(
            &server,
            &certs,
            "node-a",
            "brindle.route.v1.Routes/RegisterNode",
            &register("b"),
        ),
        "may not register a node",
    );
    let endpoint = |node: &str| {
        format!(
            r#"{{"endpoint": {{"node": "{node}", "interface": "brd1", "namespace": "default", "pod": "p", "ips": ["{a1}"]}}}}"#
        )
    };
    allowed(call(
        &server,
        &certs,
        "node-a",
        "brindle.policy.v1.Policy/RegisterEndpoint",
        &endpoint("a"),
    ));
    denied(
        call(
            &server,
            &certs,
            "node-a",
            "brindle.policy.v1.Policy/RegisterEndpoint",
            &endpoint("b"),
        ),
        "may not register an endpoint",
    );
    denied(
        call(
            &server,
            &certs,
            "node-b",
            "brindle.policy.v1.Policy/SetEndpointLabels",
            r#"{"namespace": "default", "pod": "p", "labels": {"x": "y"}}"#,
        ),
        "administrators only",
    );
    // Flow logs: a node reports only its own flows; only administrators read them.
    let flow = |node: &str| {
        format!(
            r#"{{"node": "{node}", "flows": [{{"sourceIp": "{a1}", "destinationIp": "10.9.9.9", "protocol": 6, "sourcePort": 4000, "destinationPort": 80, "direction": "DIRECTION_INGRESS", "verdict": "VERDICT_DENY", "ruleIndex": -1, "packets": 1, "bytes": 60}}]}}"#
        )
    };
    allowed(call(
        &server,
        &certs,
        "node-a",
        "brindle.policy.v1.Policy/ReportFlows",
        &flow("a"),
    ));
    denied(
        call(
            &server,
            &certs,
            "node-a",
            "brindle.policy.v1.Policy/ReportFlows",
            &flow("b"),
        ),
        "may not report flows",
    );
    denied(
        call(
            &server,
            &certs,
            "node-a",
            "brindle.policy.v1.Policy/ListFlows",
            "{}",
        ),
        "administrators only",
    );
    let listed = allowed(call(
        &server,
        &certs,
        "admin-admin",
        "brindle.policy.v1.Policy/ListFlows",
        "{}",
    ));
    assert!(
        listed.contains("\"source\": \"default/p\""),
        "completed with the pod: {listed}"
    );

    // No secrets in the logs: nothing of the private keys.
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("server log");
    let key = std::fs::read_to_string(certs.join("server.key")).expect("server key");
    let key_line = key.lines().nth(1).expect("a line of key material");
    assert!(
        log.contains("serving gRPC") && log.contains("transport=\"mTLS\""),
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY") && !log.contains(key_line), "{log}");
}

/// With mTLS a node acts only for itself in content too, not only in name: it registers only the
/// addresses IPAM holds for its own pods, only tunnel addresses IPAM gave it and its own VTEP MAC,
/// no address or MAC another node holds, no label an administrator did not set; it neither
/// receives nor extends another node's handle, nor follows, renews, deregisters or deletes for
/// another node.
#[test]
fn a_node_may_claim_only_what_is_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, certs) = mtls_server(dir.path());
    let as_a = |method: &str, body: &str| call(&server, &certs, "node-a", method, body);
    let as_b = |method: &str, body: &str| call(&server, &certs, "node-b", method, body);
    let as_admin = |method: &str, body: &str| call(&server, &certs, "admin-admin", method, body);
    let pools = "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16}\n---\n\
                 apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: tunnels}\n\
                 spec: {cidr: 10.250.0.0/24, allowedUses: [Tunnel]}\n";
    let out = brindle_as(&server, &certs, Some("admin-admin"), &["apply", "-f", "-"], pools);
    assert!(out.status.success(), "{out:?}");
    let assign = |handle: &str, node: &str, use_: &str| {
        format!(r#"{{"handle_id": "{handle}", "node": "{node}", "num_ipv4": 1, "use": "{use_}"}}"#)
    };
    const AUTO_ASSIGN: &str = "brindle.ipam.v1.Ipam/AutoAssign";
    const ASSIGN_IP: &str = "brindle.ipam.v1.Ipam/AssignIp";
    let a_pod = first_ip(&allowed(as_a(
        AUTO_ASSIGN,
        &assign("net.a1", "a", "ALLOWED_USE_WORKLOAD"),
    )));
    let b_pod = first_ip(&allowed(as_b(
        AUTO_ASSIGN,
        &assign("net.b1", "b", "ALLOWED_USE_WORKLOAD"),
    )));
    let a_tunnel = first_ip(&allowed(as_a(
        AUTO_ASSIGN,
        &assign("vxlan-tunnel-addr-a", "a", "ALLOWED_USE_TUNNEL"),
    )));

    // IPAM: another node's handle is neither handed out nor extended; release by IP is the
    // administrators'.
    denied(
        as_a(AUTO_ASSIGN, &assign("net.b1", "a", "ALLOWED_USE_WORKLOAD")),
        "belongs to node \"b\"",
    );
    denied(
        as_a(
            ASSIGN_IP,
            r#"{"handle_id": "net.b1", "ip": "10.244.100.1", "node": "a"}"#,
        ),
        "belongs to node \"b\"",
    );
    denied(
        as_a(
            ASSIGN_IP,
            r#"{"handle_id": "net.x", "ip": "10.244.100.1", "node": "b"}"#,
        ),
        "node a may not assign addresses for node \"b\"",
    );
    refused(
        as_a(
            ASSIGN_IP,
            r#"{"handle_id": "net.a2", "ip": "10.250.0.77", "node": "a"}"#,
        ),
        "FailedPrecondition",
        "does not allow Workload",
    );
    denied(
        as_a(
            "brindle.ipam.v1.Ipam/ReleaseIps",
            &format!(r#"{{"ips": [{{"ip": "{b_pod}", "sequence": 1}}]}}"#),
        ),
        "administrators only",
    );
    denied(
        as_a(
            "brindle.ipam.v1.Ipam/ReleaseByHandle",
            r#"{"handle_id": "net.b1"}"#,
        ),
        "may not release addresses for node \"b\"",
    );

    // Endpoints: only addresses IPAM holds for the node's own pods.
    const REGISTER_ENDPOINT: &str = "brindle.policy.v1.Policy/RegisterEndpoint";
    let endpoint = |node: &str, interface: &str, pod: &str, ip: &str, labels: &str| {
        format!(
            r#"{{"endpoint": {{"node": "{node}", "interface": "{interface}", "namespace": "default", "pod": "{pod}", "ips": ["{ip}"], "labels": {labels}}}}}"#
        )
    };
    allowed(as_a(
        REGISTER_ENDPOINT,
        &endpoint("a", "brda1", "web", &a_pod, r#"{"app": "web"}"#),
    ));
    denied(
        as_a(REGISTER_ENDPOINT, &endpoint("a", "brda2", "thief", &b_pod, "{}")),
        "IPAM holds it for node \"b\"",
    );
    denied(
        as_a(
            REGISTER_ENDPOINT,
            &endpoint("a", "brda3", "tunnel", &a_tunnel, "{}"),
        ),
        "vxlan-tunnel-addr-a",
    );
    denied(
        as_a(
            REGISTER_ENDPOINT,
            &endpoint("a", "brda4", "ghost", "10.244.200.1", "{}"),
        ),
        "has not assigned it to any pod",
    );
    // An address of one of its pods is not registered under another pod's name.
    let named = first_ip(&allowed(as_a(
        AUTO_ASSIGN,
        r#"{"handle_id": "net.a3", "node": "a", "num_ipv4": 1, "attributes": {"namespace": "default", "pod": "web-0"}}"#,
    )));
    denied(
        as_a(REGISTER_ENDPOINT, &endpoint("a", "brda6", "db-0", &named, "{}")),
        "IPAM holds it for pod \"web-0\"",
    );
    refused(
        as_a(REGISTER_ENDPOINT, &endpoint("a", "brd+", "web", &a_pod, "{}")),
        "InvalidArgument",
        "endpoint.interface",
    );
    refused(
        as_a(
            REGISTER_ENDPOINT,
            &endpoint("a", "brda5", "web\\n-A FORWARD -j ACCEPT", &a_pod, "{}"),
        ),
        "InvalidArgument",
        "endpoint.pod",
    );
    // Labels the pod's owner set stay when the node registers the endpoint again.
    allowed(as_admin(
        "brindle.policy.v1.Policy/SetEndpointLabels",
        r#"{"namespace": "default", "pod": "web", "labels": {"app": "web", "tier": "front"}}"#,
    ));
    allowed(as_a(
        REGISTER_ENDPOINT,
        &endpoint("a", "brda1", "web", &a_pod, r#"{"app": "db"}"#),
    ));
    let listed = allowed(as_a("brindle.policy.v1.Policy/ListEndpoints", r#"{"node": "a"}"#));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(
        listed["endpoints"][0]["labels"],
        serde_json::json!({"app": "web", "tier": "front"}),
        "{listed}"
    );
    denied(
        as_a(
            "brindle.policy.v1.Policy/DeleteEndpoint",
            r#"{"node": "b", "interface": "brdb1"}"#,
        ),
        "node a may not delete an endpoint for node \"b\"",
    );

    // Node registrations: tunnel addresses IPAM gave the node, its own VTEP MAC, nothing another
    // node holds, labels an administrator set.
    const REGISTER_NODE: &str = "brindle.route.v1.Routes/RegisterNode";
    let mac = |node: &str| {
        route_api::model::vtep_mac(node)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let node = |name: &str, address: &str, extra: &str| {
        format!(r#"{{"node": {{"name": "{name}", "addresses": ["{address}"]{extra}}}}}"#)
    };
    let vtep = |mac: &str, ip: &str| format!(r#", "vtep_mac": "{mac}", "vtep_ipv4": "{ip}""#);
    denied(
        as_a(
            REGISTER_NODE,
            &node("a", "192.0.2.1", &vtep(&mac("a"), "10.250.0.200")),
        ),
        "IPAM does not hold it for the node's handle \"vxlan-tunnel-addr-a\"",
    );
    denied(
        as_a(
            REGISTER_NODE,
            &node("a", "192.0.2.1", &vtep(&mac("b"), &a_tunnel)),
        ),
        "derived from its name",
    );
    denied(
        as_a(
            REGISTER_NODE,
            &node("a", "192.0.2.1", r#", "labels": {"zone": "x"}"#),
        ),
        "labels are set by administrators",
    );
    refused(
        as_a(REGISTER_NODE, &node("a", &a_pod, "")),
        "AlreadyExists",
        "IP pool \"pods\"",
    );
    allowed(as_a(
        REGISTER_NODE,
        &node("a", "192.0.2.1", &vtep(&mac("a"), &a_tunnel)),
    ));
    // Route-svc sees a's registration within moments; b may not claim a's underlay address.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (ok, text) = as_b(REGISTER_NODE, &node("b", "192.0.2.1", ""));
        if !ok && text.contains("AlreadyExists") && text.contains("node \"a\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b took a's address: {text}");
        if ok {
            allowed(as_admin(
                "brindle.route.v1.Routes/DeregisterNode",
                r#"{"name": "b"}"#,
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    denied(
        as_a(
            "brindle.route.v1.Routes/SetNodeLabels",
            r#"{"name": "a", "labels": {"zone": "x"}}"#,
        ),
        "administrators only",
    );
    allowed(as_admin(
        "brindle.route.v1.Routes/SetNodeLabels",
        r#"{"name": "a", "labels": {"zone": "x"}}"#,
    ));
    allowed(as_a(
        REGISTER_NODE,
        &node("a", "192.0.2.1", r#", "labels": {"zone": "x"}"#),
    ));
    // Given labels replace the registration's: an agent's stale labels neither lock it out nor
    // change them.
    for labels in ["", r#", "labels": {"zone": "y"}"#] {
        let registered = allowed(as_a(REGISTER_NODE, &node("a", "192.0.2.1", labels)));
        assert!(
            registered.contains(r#""zone": "x""#) && !registered.contains(r#""zone": "y""#),
            "the administrator's labels stay: {registered}"
        );
    }
    for (method, body, action) in [
        ("RenewNode", r#"{"name": "b"}"#, "renew a node's registration"),
        ("DeregisterNode", r#"{"name": "b"}"#, "deregister a node"),
    ] {
        denied(
            as_a(&format!("brindle.route.v1.Routes/{method}"), body),
            &format!("node a may not {action} for node \"b\""),
        );
    }

    // Sync: a node follows its own view only.
    for (service, action) in [
        ("brindle.route.v1.Routes/Sync", "follow the routing state"),
        ("brindle.policy.v1.Policy/Sync", "follow the policy view"),
    ] {
        denied(
            as_a(service, r#"{"hello": {"node": "b"}}"#),
            &format!("node a may not {action} for node \"b\""),
        );
    }
}
