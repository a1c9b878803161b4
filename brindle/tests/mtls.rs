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

#[test]
fn node_identity_from_client_certificates_limits_what_each_caller_may_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
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
    let store = dir.path().join("store.redb");
    let server = Server::start_tls(
        &["--store-path", &store.display().to_string()],
        &dir.path().join("server.log"),
        &certs,
    );

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
    allowed(call(
        &server,
        &certs,
        "node-a",
        "brindle.ipam.v1.Ipam/AutoAssign",
        &assign("a", "net.a1"),
    ));
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
            r#"{{"endpoint": {{"node": "{node}", "interface": "brd1", "namespace": "default", "pod": "p", "ips": ["10.244.0.9"]}}}}"#
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

    // No secrets in the logs: nothing of the private keys.
    let log = std::fs::read_to_string(dir.path().join("server.log")).expect("server log");
    let key = std::fs::read_to_string(certs.join("server.key")).expect("server key");
    let key_line = key.lines().nth(1).expect("a line of key material");
    assert!(log.contains("serving gRPC") && log.contains("mtls=true"), "{log}");
    assert!(!log.contains("PRIVATE KEY") && !log.contains(key_line), "{log}");
}
