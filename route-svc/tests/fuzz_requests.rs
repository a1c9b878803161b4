//! Property-based fuzzing of route-svc's requests (fuzzing proper needs a nightly toolchain):
//! valid encoded node registrations with random byte edits, and random bytes, decoded and handed to
//! the gRPC service on the embedded store. No call panics or answers INTERNAL/UNKNOWN, and the
//! registry stays readable (`ListNodes` answers after every call).

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::testing::embedded_store;
use brindle_proto::fuzzing::{damaged, decode, refused_cleanly};
use brindle_proto::route::v1 as pb;
use brindle_proto::route::v1::routes_server::Routes as _;
use proptest::prelude::*;
use route_svc::grpc::RoutesService;
use tonic::{Request, Status};

#[derive(Debug, Clone)]
enum Call {
    Register(Vec<u8>),
    Renew(Vec<u8>),
    Deregister(Vec<u8>),
}

fn call() -> impl Strategy<Value = Call> {
    let node = pb::Node {
        name: "n1".into(),
        addresses: vec!["192.168.7.11".into()],
        ipv4_subnet: "192.168.7.0/24".into(),
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        vtep_mac: "66:00:00:00:00:01".into(),
        vtep_ipv4: "10.244.0.1".into(),
        ..Default::default()
    };
    prop_oneof![
        3 => damaged(vec![pb::RegisterNodeRequest { node: Some(node), ttl_seconds: 30 }]).prop_map(Call::Register),
        1 => damaged(vec![pb::RenewNodeRequest { name: "n1".into(), bgp_sessions: Vec::new() }]).prop_map(Call::Renew),
        1 => damaged(vec![pb::DeregisterNodeRequest { name: "n1".into() }]).prop_map(Call::Deregister),
    ]
}

async fn make(service: &RoutesService, call: Call) -> Result<(), Status> {
    match call {
        Call::Register(b) => match decode::<pb::RegisterNodeRequest>(&b) {
            Some(m) => service.register_node(Request::new(m)).await.map(|_| ()),
            None => Ok(()),
        },
        Call::Renew(b) => match decode::<pb::RenewNodeRequest>(&b) {
            Some(m) => service.renew_node(Request::new(m)).await.map(|_| ()),
            None => Ok(()),
        },
        Call::Deregister(b) => match decode::<pb::DeregisterNodeRequest>(&b) {
            Some(m) => service.deregister_node(Request::new(m)).await.map(|_| ()),
            None => Ok(()),
        },
    }
}

#[test]
fn damaged_registrations_are_refused_cleanly_and_the_registry_stays_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let service = runtime
        .block_on(async { RoutesService::start(embedded_store(dir.path()).await, FanoutConfig::default()) });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(1500));
    runner
        .run(&call(), |call| {
            let context = format!("{call:?}");
            refused_cleanly(&context, runtime.block_on(make(&service, call)))?;
            let listed = runtime.block_on(service.list_nodes(Request::new(pb::ListNodesRequest {})));
            prop_assert!(listed.is_ok(), "{context}: {listed:?}");
            Ok(())
        })
        .expect("no damaged request breaks route-svc");
}
