//! Node identities without hand-issued certificates, against `brindle server` with a signing CA:
//! an administrator's join token for node A buys A's certificate on the bootstrap port and
//! nothing else (not B's, not with a wrong or unknown token); A renews it with itself, the CSR's
//! subject ignored; A's certificate cannot act for B; the bootstrap port serves nothing but the
//! bootstrap. On Kubernetes (kube-standin, the tests' stand-in API server: no API server can be
//! installed here), an agent pod's ServiceAccount token buys the certificate of the node its pod
//! runs on, and nothing for another node, service account, audience or pod (the real agent in a
//! pod, with the control plane as deploy/kubernetes runs it: `tests/deploy.rs`).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use brindle_grpc::{ClientIdentity, Dialer, IdentityConnector};
use brindle_proto::identity::v1 as pb;
use brindle_proto::route::v1 as route;
use support::Server;
use tonic::Code;

/// A key and a CSR for it asking for `common_name` (which the signer must ignore).
fn key_and_csr(common_name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let csr = params.serialize_request(&key).expect("csr").pem().expect("pem");
    (key.serialize_pem(), csr)
}

/// The common name of a PEM certificate.
fn common_name(pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let certificate = pem.parse_x509().expect("x509");
    certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .expect("common name")
        .to_owned()
}

async fn issue_with(
    bootstrap: &Dialer,
    request: pb::IssueNodeCertificateRequest,
) -> Result<pb::NodeCertificate, tonic::Status> {
    let channel = bootstrap.connect().await.expect("bootstrap port");
    pb::bootstrap_client::BootstrapClient::new(channel)
        .issue_node_certificate(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn issue(
    bootstrap: &Dialer,
    node: &str,
    token: &str,
    csr_pem: String,
) -> Result<pb::NodeCertificate, tonic::Status> {
    let request = pb::IssueNodeCertificateRequest {
        node: node.to_owned(),
        join_token: token.to_owned(),
        csr_pem,
        ..Default::default()
    };
    issue_with(bootstrap, request).await
}

/// The CA, the server's certificate and the administrator `admin`'s in `<dir>/certs`.
fn certificates(dir: &Path) -> std::path::PathBuf {
    let certs = dir.join("certs");
    let made = support::brindle(
        "",
        &[
            "certs",
            "--dir",
            &certs.display().to_string(),
            "--server",
            "127.0.0.1",
            "--admin",
            "admin",
        ],
        "",
    );
    assert!(made.status.success(), "{made:?}");
    certs
}

fn join_token(server: &Server, certs: &Path, node: &str) -> String {
    let admin = |name: &str| certs.join(name).display().to_string();
    let made = support::brindle(
        &format!("https://{}", server.address),
        &[
            "node",
            "join-token",
            node,
            "--ttl",
            "600",
            "--tls-ca",
            &admin("ca.crt"),
            "--tls-cert",
            &admin("admin-admin.crt"),
            "--tls-key",
            &admin("admin-admin.key"),
        ],
        "",
    );
    assert!(made.status.success(), "{made:?}");
    String::from_utf8(made.stdout).expect("utf-8").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_buys_its_own_nodes_certificate_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certificates(dir.path());
    let file = |name: &str| certs.join(name).display().to_string();
    let mut server = Server::start_tls(
        &[
            "--store-path",
            &dir.path().join("store.redb").display().to_string(),
            "--signing-ca-cert",
            &file("ca.crt"),
            "--signing-ca-key",
            &file("ca.key"),
            "--bootstrap-listen",
            "127.0.0.1:0",
            "--node-cert-lifetime",
            "60",
        ],
        &dir.path().join("server.log"),
        &certs,
    );
    let bootstrap_address = server.logged_address("serving the bootstrap port");
    let ca_pem = std::fs::read_to_string(certs.join("ca.crt")).expect("CA");
    let server_only = IdentityConnector::new(&ca_pem, None).expect("connector");
    let bootstrap =
        Dialer::through(&bootstrap_address, server_only.clone(), Duration::from_secs(5)).expect("dialer");

    let token = join_token(&server, &certs, "node-a");
    // A's token does not buy B's certificate, nor does a wrong or made-up token buy anything.
    let (_, csr) = key_and_csr("brindle:node:node-b");
    let refused = issue(&bootstrap, "node-b", &token, csr.clone())
        .await
        .expect_err("B with A's token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("made for node \"node-a\""),
        "{refused:?}"
    );
    let (id, _) = token.split_once('.').expect("id.secret");
    for wrong in [
        format!("{id}.0000000000000000"),
        "abcdef.0123456789abcdef".into(),
        "nonsense".into(),
    ] {
        let refused = issue(&bootstrap, "node-a", &wrong, csr.clone())
            .await
            .expect_err("a wrong token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{wrong}: {refused:?}");
    }
    let refused = issue(&bootstrap, "node-a", &token, "not a CSR".into())
        .await
        .expect_err("no CSR");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // A's token buys A's certificate, whatever name the CSR asks for.
    let (key, csr) = key_and_csr("brindle:node:node-b");
    let issued = issue(&bootstrap, "node-a", &token, csr)
        .await
        .expect("A's certificate");
    assert_eq!(common_name(&issued.certificate_pem), "brindle:node:node-a");
    assert_eq!(issued.ca_pem, ca_pem);

    // With it, A renews its certificate (for A, whatever the CSR says) on the main port...
    let identity = ClientIdentity::from_pem(&issued.certificate_pem, &key).expect("identity");
    let as_a = IdentityConnector::new(&ca_pem, Some(Arc::clone(&identity))).expect("connector");
    let main = Dialer::through(&server.address, as_a, Duration::from_secs(5))
        .expect("dialer")
        .connect_lazy();
    let (new_key, csr) = key_and_csr("brindle:node:node-b");
    let renewed = pb::identity_client::IdentityClient::new(main.clone())
        .renew_node_certificate(pb::RenewNodeCertificateRequest { csr_pem: csr })
        .await
        .expect("renewal")
        .into_inner();
    assert_eq!(common_name(&renewed.certificate_pem), "brindle:node:node-a");
    identity
        .replace(&renewed.certificate_pem, &new_key)
        .expect("the renewed identity");
    // ...and cannot act for B.
    let denied = route::routes_client::RoutesClient::new(main)
        .renew_node(route::RenewNodeRequest {
            name: "node-b".into(),
            bgp_sessions: Vec::new(),
        })
        .await
        .expect_err("A for B");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("node node-a may not"), "{denied:?}");
    // Only administrators make tokens.
    let denied = pb::identity_client::IdentityClient::new(
        Dialer::through(
            &server.address,
            IdentityConnector::new(&ca_pem, Some(identity)).expect("connector"),
            Duration::from_secs(5),
        )
        .expect("dialer")
        .connect_lazy(),
    )
    .create_join_token(pb::CreateJoinTokenRequest {
        node: "node-b".into(),
        ttl_seconds: 0,
    })
    .await
    .expect_err("a node makes a token");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // The bootstrap port serves the bootstrap only: nothing else answers there.
    let elsewhere =
        route::routes_client::RoutesClient::new(bootstrap.connect().await.expect("bootstrap port"))
            .list_nodes(route::ListNodesRequest {})
            .await
            .expect_err("route-svc on the bootstrap port");
    assert_eq!(elsewhere.code(), Code::Unimplemented, "{elsewhere:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_buys_the_certificate_of_its_pods_node_only() {
    use k8s_openapi::api::core::v1::Pod;
    use kube_standin::{BoundToken, StandIn, objects};

    let dir = tempfile::tempdir().expect("tempdir");
    let certs = certificates(dir.path());
    let api = StandIn::start(Duration::from_secs(60)).await.expect("stand-in");
    let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
    for (pod, node) in [("agent-a", "node-a"), ("agent-b", "node-b")] {
        api.put(&objects::pod(
            "brindle-system",
            pod,
            node,
            &[("app", "brindle-node")],
        ));
    }
    let uid_a = api
        .uid::<Pod>(Some("brindle-system"), "agent-a")
        .expect("agent-a's uid");
    let token = |service_account: &str, pod: &str, uid: &str, audience: &str| {
        api.issue_token(BoundToken {
            namespace: "brindle-system".into(),
            service_account: service_account.into(),
            pod: pod.into(),
            pod_uid: uid.into(),
            audiences: vec![audience.into()],
        })
    };
    let agent_a = token("brindle-node", "agent-a", &uid_a, "brindle");

    let file = |name: &str| certs.join(name).display().to_string();
    let mut server = Server::start_tls(
        &[
            "--store-path",
            &dir.path().join("store.redb").display().to_string(),
            "--signing-ca-cert",
            &file("ca.crt"),
            "--signing-ca-key",
            &file("ca.key"),
            "--bootstrap-listen",
            "127.0.0.1:0",
            "--bootstrap-service-account",
            "brindle-system/brindle-node",
            "--bootstrap-kubeconfig",
            &kubeconfig.display().to_string(),
        ],
        &dir.path().join("server.log"),
        &certs,
    );
    let bootstrap_address = server.logged_address("serving the bootstrap port");
    let ca_pem = std::fs::read_to_string(certs.join("ca.crt")).expect("CA");
    let bootstrap = Dialer::through(
        &bootstrap_address,
        IdentityConnector::new(&ca_pem, None).expect("connector"),
        Duration::from_secs(5),
    )
    .expect("dialer");
    let ask = |node: &str, service_account_token: &str| pb::IssueNodeCertificateRequest {
        node: node.to_owned(),
        csr_pem: key_and_csr("brindle:node:anything").1,
        service_account_token: service_account_token.to_owned(),
        ..Default::default()
    };

    let issued = issue_with(&bootstrap, ask("node-a", &agent_a))
        .await
        .expect("A's certificate");
    assert_eq!(common_name(&issued.certificate_pem), "brindle:node:node-a");

    let refusals = [
        (ask("node-b", &agent_a), "runs on node \"node-a\", not \"node-b\""),
        (
            ask("node-a", &token("default", "agent-a", &uid_a, "brindle")),
            "not the agents'",
        ),
        (
            ask(
                "node-a",
                &token(
                    "brindle-node",
                    "agent-a",
                    &uid_a,
                    "https://kubernetes.default.svc",
                ),
            ),
            "not authenticated",
        ),
        (
            ask("node-b", &token("brindle-node", "agent-b", "uid-old", "brindle")),
            "not the one the token was bound to",
        ),
        (ask("node-a", "made-up"), "not authenticated"),
    ];
    for (request, why) in refusals {
        let refused = issue_with(&bootstrap, request).await.expect_err(why);
        assert_eq!(refused.code(), Code::Unauthenticated, "{why}: {refused:?}");
        assert!(refused.message().contains(why), "{why}: {refused:?}");
    }
    // Its pod gone, the token buys nothing; and one proof at a time.
    api.delete::<Pod>(Some("brindle-system"), "agent-a");
    let refused = issue_with(&bootstrap, ask("node-a", &agent_a))
        .await
        .expect_err("pod gone");
    assert!(refused.message().contains("is gone"), "{refused:?}");
    let both = pb::IssueNodeCertificateRequest {
        join_token: "abcdef.0123456789abcdef".into(),
        ..ask("node-a", &agent_a)
    };
    let refused = issue_with(&bootstrap, both).await.expect_err("two proofs");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}
