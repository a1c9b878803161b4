//! Property-based fuzzing of policy-svc's requests (fuzzing proper needs a nightly toolchain):
//! valid encoded requests with random byte edits, and random bytes, decoded and handed to the gRPC
//! service on the embedded store. No call panics or answers INTERNAL/UNKNOWN, and what is stored
//! stays usable: every stored object is listed with a manifest that parses back.

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::testing::embedded_store;
use brindle_proto::fuzzing::{damaged, decode, refused_cleanly};
use brindle_proto::policy::v1 as pb;
use brindle_proto::policy::v1::policy_server::Policy as _;
use policy_svc::core::resource::parse_documents;
use policy_svc::grpc::PolicyService;
use proptest::prelude::*;
use tonic::{Request, Status};

const MANIFEST: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}, {ipBlock: {cidr: 10.9.0.0/16, except: [10.9.1.0/24]}}], ports: [{port: http}, {port: 9000, endPort: 9010}]}]
---
apiVersion: brindle.io/v1
kind: GlobalNetworkPolicy
metadata: {name: g}
spec: {selector: \"app == 'web'\", order: 10, ingress: [{action: Deny, protocol: UDP, source: {nets: [10.0.0.0/8]}}]}
";

#[derive(Debug, Clone)]
enum Call {
    Apply(Vec<u8>),
    Delete(Vec<u8>),
    Register(Vec<u8>),
    Labels(Vec<u8>),
    Trace(Vec<u8>),
}

fn call() -> impl Strategy<Value = Call> {
    let endpoint = pb::WorkloadEndpoint {
        node: "n1".into(),
        interface: "brd0123456789a".into(),
        namespace: "shop".into(),
        pod: "web-1".into(),
        container_id: "c1".into(),
        ips: vec!["10.244.0.5".into()],
        labels: [("app".to_owned(), "web".to_owned())].into(),
        ports: vec![pb::NamedPort {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 8080,
        }],
        revision: 0,
    };
    let peer = |ip: &str| {
        Some(pb::TracePeer {
            peer: Some(pb::trace_peer::Peer::Ip(ip.into())),
        })
    };
    prop_oneof![
        2 => damaged(vec![pb::ApplyRequest { manifest: MANIFEST.into(), namespace: "shop".into(), origin: String::new() }]).prop_map(Call::Apply),
        1 => damaged(vec![pb::DeleteRequest {
            object: Some(pb::ObjectRef { kind: "KubernetesNetworkPolicy".into(), namespace: "shop".into(), name: "web".into() }),
            origin: String::new(),
        }])
        .prop_map(Call::Delete),
        2 => damaged(vec![pb::RegisterEndpointRequest { endpoint: Some(endpoint) }]).prop_map(Call::Register),
        1 => damaged(vec![pb::SetEndpointLabelsRequest {
            namespace: "shop".into(),
            pod: "web-1".into(),
            labels: [("app".to_owned(), "db".to_owned())].into(),
        }])
        .prop_map(Call::Labels),
        1 => damaged(vec![pb::TraceRequest {
            source: peer("10.9.2.1"),
            destination: peer("10.244.0.5"),
            protocol: "TCP".into(),
            port: 9005,
            source_port: 0,
            ..Default::default()
        }])
        .prop_map(Call::Trace),
    ]
}

async fn make(service: &PolicyService, call: Call) -> Result<(), Status> {
    macro_rules! send {
        ($method:ident, $message:ty, $bytes:expr) => {
            match decode::<$message>($bytes) {
                Some(m) => service.$method(Request::new(m)).await.map(|_| ()),
                None => Ok(()),
            }
        };
    }
    match call {
        Call::Apply(b) => send!(apply, pb::ApplyRequest, &b),
        Call::Delete(b) => send!(delete, pb::DeleteRequest, &b),
        Call::Register(b) => send!(register_endpoint, pb::RegisterEndpointRequest, &b),
        Call::Labels(b) => send!(set_endpoint_labels, pb::SetEndpointLabelsRequest, &b),
        Call::Trace(b) => send!(trace, pb::TraceRequest, &b),
    }
}

#[test]
fn damaged_requests_are_refused_cleanly_and_what_is_stored_stays_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let service = runtime
        .block_on(async { PolicyService::start(embedded_store(dir.path()).await, FanoutConfig::default()) });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(1500));
    runner
        .run(&call(), |call| {
            let context = format!("{call:?}");
            refused_cleanly(&context, runtime.block_on(make(&service, call)))?;
            let listed = runtime
                .block_on(service.list(Request::new(pb::ListRequest::default())))
                .map_err(|s| TestCaseError::fail(format!("{context}: list: {s:?}")))?
                .into_inner();
            for object in listed.objects {
                prop_assert!(
                    parse_documents(&object.manifest, &object.namespace).is_ok(),
                    "{context}: stored {} {}/{} does not parse back:\n{}",
                    object.kind,
                    object.namespace,
                    object.name,
                    object.manifest
                );
            }
            let endpoints =
                runtime.block_on(service.list_endpoints(Request::new(pb::ListEndpointsRequest::default())));
            prop_assert!(endpoints.is_ok(), "{context}: {endpoints:?}");
            Ok(())
        })
        .expect("no damaged request breaks policy-svc");
}
