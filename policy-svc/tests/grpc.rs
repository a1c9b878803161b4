//! policy-svc over gRPC: the real grpcurl lists, describes and calls every kind of method (bad
//! input gets INVALID_ARGUMENT / NOT_FOUND naming what is wrong); a node's Sync stream carries
//! exactly its view and follows endpoint, label and policy changes; trace explains a verdict.

use std::time::Duration;

use brindle_fanout::{FanoutConfig, Key, Mirror};
use brindle_grpc_server::testing::{embedded_store, grpcurl, serve_on_loopback};
use brindle_proto::common::v1 as common;
use brindle_proto::policy::v1 as pb;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use brindle_sync::SnapshotAssembler;
use futures_util::StreamExt;
use policy_api::convert::PolicyWire;
use policy_api::view::ViewEntry;
use policy_svc::grpc::{PolicyService, SERVICE_NAME};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

async fn serve(dir: &tempfile::TempDir) -> (String, PolicyService) {
    let store = embedded_store(dir.path()).await;
    let service = PolicyService::start(store, FanoutConfig::default());
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(service.clone().into_server());
    (serve_on_loopback(routes, &[SERVICE_NAME]).await, service)
}

fn call(address: &str, method: &str, body: &str) -> (bool, String) {
    grpcurl(&[
        "-plaintext",
        "-d",
        body,
        address,
        &format!("{SERVICE_NAME}/{method}"),
    ])
}

fn endpoint_json(node: &str, interface: &str, ns: &str, pod: &str, ip: &str, labels: &str) -> String {
    format!(
        r#"{{"endpoint":{{"node":"{node}","interface":"{interface}","namespace":"{ns}","pod":"{pod}","containerId":"c-{pod}","ips":["{ip}"],"labels":{labels},"ports":[{{"name":"http","protocol":"TCP","port":8080}}]}}}}"#
    )
}

const DENY_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: brindle.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients, namespace: shop}
spec:
  order: 10
  selector: \"app == 'web'\"
  ingress:
    - {action: Allow, protocol: TCP, source: {selector: \"role == 'client'\"}, destination: {ports: [http]}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_applies_lists_traces_and_refuses_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (address, _service) = serve(&dir).await;
    let addr = address.as_str();
    let (ok, list) = grpcurl(&["-plaintext", addr, "list"]);
    assert!(ok && list.lines().any(|l| l == SERVICE_NAME), "{list}");
    let (ok, describe) = grpcurl(&["-plaintext", addr, "describe", SERVICE_NAME]);
    assert!(
        ok && describe.contains("rpc Sync") && describe.contains("rpc Trace"),
        "{describe}"
    );

    let body = serde_json::json!({ "manifest": DENY_ALL }).to_string();
    let (ok, applied) = call(addr, "Apply", &body);
    assert!(
        ok && applied.contains("KubernetesNetworkPolicy") && applied.contains("web-from-clients"),
        "{applied}"
    );
    let (ok, listed) = call(addr, "List", r#"{"namespace":"shop"}"#);
    assert!(
        ok && listed.contains("deny-all") && listed.contains("action: Allow"),
        "{listed}"
    );
    let (ok, got) = call(
        addr,
        "Get",
        r#"{"object":{"kind":"NetworkPolicy","namespace":"shop","name":"web-from-clients"}}"#,
    );
    assert!(ok && got.contains("role == 'client'"), "{got}");

    for (ns, pod, ip, labels, interface) in [
        ("shop", "web", "10.1.0.2", r#"{"app":"web"}"#, "brd0000000001"),
        (
            "shop",
            "client",
            "10.1.0.3",
            r#"{"role":"client"}"#,
            "brd0000000002",
        ),
        ("shop", "stranger", "10.1.0.4", r#"{}"#, "brd0000000003"),
    ] {
        let (ok, registered) = call(
            addr,
            "RegisterEndpoint",
            &endpoint_json("node-1", interface, ns, pod, ip, labels),
        );
        assert!(ok && registered.contains(ip), "{registered}");
    }
    let mut traced = String::new();
    for _ in 0..100 {
        let (ok, text) = call(
            addr,
            "Trace",
            r#"{"source":{"endpoint":{"namespace":"shop","pod":"client"}},"destination":{"ip":"10.1.0.2"},"protocol":"TCP","port":8080}"#,
        );
        assert!(ok, "{text}");
        traced = text;
        if traced.contains("VERDICT_ALLOW") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        traced.contains("\"policy\": \"shop/web-from-clients\"") && traced.contains("ingress rule 0"),
        "{traced}"
    );
    let (ok, denied) = call(
        addr,
        "Trace",
        r#"{"source":{"endpoint":{"namespace":"shop","pod":"stranger"}},"destination":{"endpoint":{"namespace":"shop","pod":"web"}},"protocol":"TCP","port":8080}"#,
    );
    assert!(
        ok && denied.contains("VERDICT_DENY") && denied.contains("no rule allows"),
        "{denied}"
    );

    let (ok, relabelled) = call(
        addr,
        "SetEndpointLabels",
        r#"{"namespace":"shop","pod":"stranger","labels":{"role":"client"}}"#,
    );
    assert!(ok && relabelled.contains("client"), "{relabelled}");
    let (ok, endpoints) = call(addr, "ListEndpoints", r#"{"node":"node-1"}"#);
    assert!(ok && endpoints.matches("\"pod\"").count() == 3, "{endpoints}");
    let (ok, _) = call(
        addr,
        "DeleteEndpoint",
        r#"{"node":"node-1","interface":"brd0000000003"}"#,
    );
    assert!(ok);
    let (ok, _) = call(
        addr,
        "Delete",
        r#"{"object":{"kind":"KubernetesNetworkPolicy","namespace":"shop","name":"deny-all"}}"#,
    );
    assert!(ok);

    let namespaces: Vec<String> = (0..129)
        .map(|i| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{i}}}\n"))
        .collect();
    let too_many = serde_json::json!({ "manifest": namespaces.join("---\n") }).to_string();
    for (method, body, code, needle) in [
        (
            "Apply",
            r#"{"manifest":"apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {selector: \"app = 'x'\"}"}"#,
            "InvalidArgument",
            "spec.selector",
        ),
        ("Apply", r#"{"manifest":""}"#, "InvalidArgument", "no object"),
        ("Apply", &too_many, "InvalidArgument", "at most 128"),
        (
            "Delete",
            r#"{"object":{"kind":"NetworkPolicy","namespace":"shop","name":"nope"}}"#,
            "NotFound",
            "shop/nope",
        ),
        (
            "Get",
            r#"{"object":{"kind":"Gadget","name":"g"}}"#,
            "InvalidArgument",
            "object.kind",
        ),
        (
            "RegisterEndpoint",
            &endpoint_json("node-1", "brd1", "Bad_NS", "p", "10.1.0.9", "{}"),
            "InvalidArgument",
            "endpoint.namespace",
        ),
        (
            "RegisterEndpoint",
            &endpoint_json("node-1", "brd1", "ns", "p", "10.1.0.999", "{}"),
            "InvalidArgument",
            "endpoint.ips[0]",
        ),
        (
            "SetEndpointLabels",
            r#"{"namespace":"shop","pod":"ghost","labels":{}}"#,
            "NotFound",
            "shop/ghost",
        ),
        (
            "Trace",
            r#"{"source":{"ip":"10.0.0.1"},"destination":{"ip":"10.0.0.2"},"protocol":"TCP"}"#,
            "InvalidArgument",
            "port",
        ),
        (
            "Trace",
            r#"{"source":{"ip":"nope"},"destination":{"ip":"10.0.0.2"},"protocol":"UDP","port":53}"#,
            "InvalidArgument",
            "source.ip",
        ),
    ] {
        let (ok, text) = call(addr, method, body);
        assert!(
            !ok && text.contains(code) && text.contains(needle),
            "{method} {body}: {text}"
        );
    }
}

/// A client of the service at `address`.
async fn connect(address: &str) -> PolicyClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    PolicyClient::new(channel)
}

/// A subscriber for `node` that applies what it receives to a mirror and reports each revision.
async fn subscribe(
    address: &str,
    node: &str,
) -> (mpsc::Receiver<Mirror<ViewEntry>>, tokio::task::JoinHandle<()>) {
    let mut client = connect(address).await;
    let (to_server, outgoing) = mpsc::channel(8);
    let hello = common::SyncClientMessage {
        message: Some(common::sync_client_message::Message::Hello(common::SyncHello {
            node: node.to_owned(),
            resume_revision: 0,
        })),
    };
    to_server.send(hello).await.expect("hello");
    let mut stream = client
        .sync(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("sync")
        .into_inner();
    let (updates, received) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let _keep = to_server;
        let mut mirror = Mirror::default();
        let mut pieces = SnapshotAssembler::default();
        while let Some(Ok(message)) = stream.next().await {
            let applied = brindle_sync::apply_response::<PolicyWire>(&mut mirror, &mut pieces, message)
                .expect("usable");
            assert!(applied.skipped.is_empty(), "{:?}", applied.skipped);
            if applied.changed && updates.send(mirror.clone()).await.is_err() {
                return;
            }
        }
    });
    (received, task)
}

/// Waits until the mirror satisfies `done`.
async fn until(
    received: &mut mpsc::Receiver<Mirror<ViewEntry>>,
    done: impl Fn(&std::collections::BTreeMap<Key, ViewEntry>) -> bool,
) -> Mirror<ViewEntry> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mirror = tokio::time::timeout_at(deadline, received.recv())
            .await
            .expect("the view arrives in time")
            .expect("stream open");
        if done(mirror.state()) {
            return mirror;
        }
    }
}

fn policies(state: &std::collections::BTreeMap<Key, ViewEntry>) -> usize {
    state
        .values()
        .filter(|v| matches!(v, ViewEntry::Policy(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_streams_exactly_its_view_and_follows_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (address, service) = serve(&dir).await;
    let mut client = connect(&address).await;
    client
        .apply(pb::ApplyRequest {
            manifest: DENY_ALL.into(),
            ..Default::default()
        })
        .await
        .expect("apply");
    for (node, interface, pod, ip, labels) in [
        ("node-1", "brd0000000001", "web", "10.1.0.2", [("app", "web")]),
        (
            "node-2",
            "brd0000000002",
            "client",
            "10.1.0.3",
            [("role", "client")],
        ),
    ] {
        let endpoint = pb::WorkloadEndpoint {
            node: node.into(),
            interface: interface.into(),
            namespace: "shop".into(),
            pod: pod.into(),
            container_id: format!("c-{pod}"),
            ips: vec![ip.into()],
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ports: vec![pb::NamedPort {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 8080,
            }],
            revision: 0,
        };
        client
            .register_endpoint(pb::RegisterEndpointRequest {
                endpoint: Some(endpoint),
            })
            .await
            .expect("register");
    }
    let (mut received, task) = subscribe(&address, "node-1").await;
    let mirror = until(&mut received, |state| {
        policies(state) == 2 && state.keys().any(|k| k.ends_with("/10.1.0.3"))
    })
    .await;
    let state = mirror.state();
    assert!(state.contains_key("endpoint/brd0000000001"), "{state:?}");
    assert!(
        !state.contains_key("endpoint/brd0000000002"),
        "node-2's endpoint is not in node-1's view"
    );
    assert!(
        state
            .keys()
            .any(|k| k.starts_with("member/") && k.ends_with("/10.1.0.3")),
        "client in the client set: {state:?}"
    );
    assert!(
        state.keys().any(|k| k.ends_with("/10.1.0.2,tcp:8080")),
        "web's named port: {state:?}"
    );

    // A relabel on another node reaches node-1 as a set membership change only.
    let mut labels = std::collections::HashMap::new();
    labels.insert("role".to_owned(), "former-client".to_owned());
    client
        .set_endpoint_labels(pb::SetEndpointLabelsRequest {
            namespace: "shop".into(),
            pod: "client".into(),
            labels,
        })
        .await
        .expect("relabel");
    until(&mut received, |state| {
        !state.keys().any(|k| k.ends_with("/10.1.0.3"))
    })
    .await;

    // Deleting the brindle policy leaves only the Kubernetes one.
    let object = pb::ObjectRef {
        kind: "NetworkPolicy".into(),
        namespace: "shop".into(),
        name: "web-from-clients".into(),
    };
    client
        .delete(pb::DeleteRequest {
            object: Some(object.clone()),
            origin: String::new(),
        })
        .await
        .expect("delete");
    let mirror = until(&mut received, |state| policies(state) == 1).await;
    let view: std::collections::BTreeMap<Key, ViewEntry> = service
        .hub()
        .fanout("node-1")
        .state()
        .into_values()
        .flat_map(|slot| {
            slot.entries()
                .map(|entry| (Key::clone(entry.key()), ViewEntry::clone(entry)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(mirror.state(), &view, "the mirror is the node's view");
    let gone = client
        .delete(pb::DeleteRequest {
            object: Some(object),
            origin: String::new(),
        })
        .await
        .expect_err("deleted twice");
    assert_eq!(gone.code(), Code::NotFound);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_datastore_refuses_is_named_with_its_limit_not_internal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (address, _service) = serve(&dir).await;
    let mut client = connect(&address).await;
    // One policy whose record is larger than the datastore takes in one request.
    let nets: String = (0..100_000u32)
        .map(|i| format!("        - 10.{}.{}.{}/32\n", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let manifest = format!(
        "apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {{name: huge}}\nspec:\n  selector: all()\n  ingress:\n  - action: Deny\n    source:\n      nets:\n{nets}"
    );
    let refused = client
        .apply(pb::ApplyRequest {
            manifest,
            ..Default::default()
        })
        .await
        .expect_err("too large for the datastore");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("limit of 1572864 bytes"),
        "{refused:?}"
    );
    // A malformed endpoint is the caller's mistake, named.
    let mut bad = pb::WorkloadEndpoint {
        node: "node-1".into(),
        interface: "brd+".into(),
        namespace: "shop".into(),
        pod: "web".into(),
        ips: vec!["10.1.0.2".into()],
        ..Default::default()
    };
    for (interface, pod, field) in [
        ("brd+", "web", "endpoint.interface"),
        ("brd1", "web\n-A FORWARD", "endpoint.pod"),
    ] {
        bad.interface = interface.into();
        bad.pod = pod.into();
        let refused = client
            .register_endpoint(pb::RegisterEndpointRequest {
                endpoint: Some(bad.clone()),
            })
            .await
            .expect_err("malformed");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(field), "{refused:?}");
    }
}
