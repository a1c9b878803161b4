//! Property-based fuzzing of ipam-svc's requests (fuzzing proper needs a nightly toolchain): valid
//! encoded requests with random byte edits, and random bytes, decoded and handed to the gRPC
//! service on the embedded store. No call panics or answers INTERNAL/UNKNOWN, and whatever the
//! calls did, the IPAM records stay consistent (`check` is clean after every call).

use std::sync::Arc;

use brindle_proto::fuzzing::{damaged, decode, refused_cleanly};
use brindle_proto::ipam::v1 as pb;
use brindle_proto::ipam::v1::ipam_server::Ipam as _;
use ipam_svc::core::Ipam;
use ipam_svc::grpc::IpamService;
use proptest::prelude::*;
use tonic::{Request, Status};

fn pool(name: &str, cidr: &str) -> pb::IpPool {
    pb::IpPool {
        name: name.into(),
        cidr: cidr.into(),
        block_size: 28,
        ..Default::default()
    }
}

fn attributes(node: &str) -> Option<pb::HandleAttributes> {
    Some(pb::HandleAttributes {
        namespace: "default".into(),
        pod: "p".into(),
        node: node.into(),
        ..Default::default()
    })
}

/// One call: which method, and its request bytes.
#[derive(Debug, Clone)]
enum Call {
    CreatePool(Vec<u8>),
    UpdatePool(Vec<u8>),
    DeletePool(Vec<u8>),
    SetConfig(Vec<u8>),
    AutoAssign(Vec<u8>),
    AssignIp(Vec<u8>),
    ReleaseByHandle(Vec<u8>),
    ReleaseIps(Vec<u8>),
    CreateReservation(Vec<u8>),
    Show(Vec<u8>),
    GarbageCollect(Vec<u8>),
    DeleteNode(Vec<u8>),
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        1 => damaged(vec![pb::CreatePoolRequest { pool: Some(pool("extra", "10.98.0.0/24")) }]).prop_map(Call::CreatePool),
        1 => damaged(vec![pb::UpdatePoolRequest { pool: Some(pool("pods", "10.99.0.0/24")) }]).prop_map(Call::UpdatePool),
        1 => damaged(vec![pb::DeletePoolRequest { name: "extra".into(), force: false }]).prop_map(Call::DeletePool),
        1 => damaged(vec![pb::SetConfigRequest {
            config: Some(pb::IpamConfig { strict_affinity: false, max_blocks_per_host: 4, release_cooldown_seconds: 0 }),
        }])
        .prop_map(Call::SetConfig),
        3 => damaged(vec![pb::AutoAssignRequest {
            handle_id: "net.c1".into(),
            node: "n1".into(),
            num_ipv4: 1,
            attributes: attributes("n1"),
            ..Default::default()
        }])
        .prop_map(Call::AutoAssign),
        1 => damaged(vec![pb::AssignIpRequest {
            handle_id: "net.c2".into(),
            ip: "10.99.0.7".into(),
            node: "n2".into(),
            attributes: attributes("n2"),
            ..Default::default()
        }])
        .prop_map(Call::AssignIp),
        2 => damaged(vec![pb::ReleaseByHandleRequest { handle_id: "net.c1".into() }]).prop_map(Call::ReleaseByHandle),
        1 => damaged(vec![pb::ReleaseIpsRequest { ips: vec![pb::IpRelease { ip: "10.99.0.7".into(), sequence: 2 }] }])
            .prop_map(Call::ReleaseIps),
        1 => damaged(vec![pb::CreateReservationRequest {
            reservation: Some(pb::Reservation { name: "r".into(), cidrs: vec!["10.99.0.8/30".into()] }),
            replace: false,
        }])
        .prop_map(Call::CreateReservation),
        1 => damaged(vec![pb::ShowRequest { blocks: true, borrowed: true, ip: "10.99.0.1".into() }]).prop_map(Call::Show),
        1 => damaged(vec![pb::GarbageCollectRequest {
            node: "n1".into(),
            valid_handle_ids: vec!["net.c1".into()],
            network: "net".into(),
            all_networks: false,
            min_age_seconds: 0,
        }])
        .prop_map(Call::GarbageCollect),
        1 => damaged(vec![pb::DeleteNodeRequest { node: "n2".into() }]).prop_map(Call::DeleteNode),
    ]
}

/// Makes the call when its bytes decode; the status of a refusal.
async fn make(service: &IpamService, call: Call) -> Result<(), Status> {
    fn request<M: prost::Message + Default>(bytes: &[u8]) -> Option<Request<M>> {
        decode::<M>(bytes).map(Request::new)
    }
    macro_rules! send {
        ($method:ident, $bytes:expr) => {
            match request($bytes) {
                Some(request) => service.$method(request).await.map(|_| ()),
                None => Ok(()),
            }
        };
    }
    match call {
        Call::CreatePool(b) => send!(create_pool, &b),
        Call::UpdatePool(b) => send!(update_pool, &b),
        Call::DeletePool(b) => send!(delete_pool, &b),
        Call::SetConfig(b) => send!(set_config, &b),
        Call::AutoAssign(b) => send!(auto_assign, &b),
        Call::AssignIp(b) => send!(assign_ip, &b),
        Call::ReleaseByHandle(b) => send!(release_by_handle, &b),
        Call::ReleaseIps(b) => send!(release_ips, &b),
        Call::CreateReservation(b) => send!(create_reservation, &b),
        Call::Show(b) => send!(show, &b),
        Call::GarbageCollect(b) => send!(garbage_collect, &b),
        Call::DeleteNode(b) => send!(delete_node, &b),
    }
}

#[test]
fn damaged_requests_are_refused_cleanly_and_never_corrupt_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (ipam, service) = runtime.block_on(async {
        let store = Arc::new(
            brindle_datastore::EmbeddedStore::open(&dir.path().join("store.redb"))
                .await
                .expect("store"),
        );
        let ipam = Arc::new(Ipam::new(store));
        let service = IpamService::new(Arc::clone(&ipam));
        service
            .create_pool(Request::new(pb::CreatePoolRequest {
                pool: Some(pool("pods", "10.99.0.0/24")),
            }))
            .await
            .expect("pool");
        (ipam, service)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(1500));
    runner
        .run(&call(), |call| {
            let context = format!("{call:?}");
            refused_cleanly(&context, runtime.block_on(make(&service, call)))?;
            let report = runtime.block_on(ipam.check(None)).expect("check");
            prop_assert!(report.is_clean(), "{context}: {:?}", report.problems);
            Ok(())
        })
        .expect("no damaged request breaks ipam-svc");
}
