//! route-svc's core against real datastores (embedded and etcd): the registry with leases, the
//! routing state derived from IPAM records, a watch that falls behind a compaction, and replicas
//! converging.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::testing::{CompactedAfterFirstList, EtcdServer};
use brindle_datastore::{EmbeddedStore, EtcdStore, Store};
use brindle_fanout::{Fanout, FanoutConfig, Key};
use ipam_api::model::{AllowedUse, EncapMode, HandleAttributes, IpamConfig, Pool};
use ipam_svc::core::{AssignRequest, Ipam};
use route_api::{Encapsulation, Node, RouteItem};
use route_svc::core::{Registry, RegistryError};
use route_svc::grpc::RoutesService;

enum Backend {
    Embedded(#[allow(dead_code)] tempfile::TempDir),
    Etcd(#[allow(dead_code)] EtcdServer),
}

async fn embedded() -> (Backend, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path().join("store.redb"))
        .await
        .expect("open");
    (Backend::Embedded(dir), Arc::new(store))
}

async fn etcd() -> (Backend, Arc<dyn Store>) {
    let server = EtcdServer::start().await.expect("start etcd");
    let store = EtcdStore::connect(&server.config()).await.expect("connect");
    (Backend::Etcd(server), Arc::new(store))
}

fn node(name: &str, address: &str) -> Node {
    Node {
        name: name.into(),
        addresses: vec![address.parse().expect("ip")],
        ipv4_subnet: Some("192.168.10.0/24".parse().expect("subnet")),
        ipv6_subnet: None,
        labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        vtep_mac: None,
        vtep_ipv4: None,
        vtep_ipv6: None,
        ipip_tunnel_ipv4: None,
        bgp: None,
        lease: 0,
    }
}

fn pool(name: &str, cidr: &str, block_size: u8) -> Pool {
    Pool {
        name: name.into(),
        cidr: cidr.parse().expect("cidr"),
        block_size,
        vxlan_mode: EncapMode::Always,
        ipip_mode: EncapMode::Never,
        nat_outgoing: true,
        disabled: false,
        node_selector: Default::default(),
        allowed_uses: vec![AllowedUse::Workload, AllowedUse::Tunnel],
        disable_bgp_export: false,
    }
}

fn request(handle: &str, node: &str, count: u32) -> AssignRequest {
    AssignRequest {
        handle_id: handle.into(),
        node: node.into(),
        num_ipv4: count,
        num_ipv6: 0,
        ipv4_pools: Vec::new(),
        ipv6_pools: Vec::new(),
        use_: AllowedUse::Workload,
        attributes: HandleAttributes::default(),
    }
}

/// Waits (up to 20 s) until the fan-out's state satisfies `condition`.
async fn settle(
    fanout: &Fanout<RouteItem>,
    what: &str,
    condition: impl Fn(&BTreeMap<Key, RouteItem>) -> bool,
) {
    for _ in 0..400 {
        if condition(&fanout.state()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: state is {:#?}", fanout.state());
}

async fn routing_state_follows_ipam_and_the_registry(store: Arc<dyn Store>) {
    let service = RoutesService::start(Arc::clone(&store), FanoutConfig::default());
    let fanout = service.fanout();
    let registry = Registry::new(Arc::clone(&store));
    let ipam = Ipam::new(Arc::clone(&store));
    registry
        .register(node("n1", "192.168.10.1"), None)
        .await
        .expect("n1");
    registry
        .register(node("n2", "192.168.10.2"), None)
        .await
        .expect("n2");
    ipam.create_pool(pool("tiny", "10.20.0.0/29", 30))
        .await
        .expect("pool of two blocks");
    ipam.set_config(IpamConfig {
        max_blocks_per_host: 2,
        ..IpamConfig::default()
    })
    .await
    .expect("config");
    let n2 = ipam.auto_assign(request("net.n2", "n2", 1)).await.expect("n2");
    let n1 = ipam
        .auto_assign(request("net.n1", "n1", 4))
        .await
        .expect("n1 fills its block");
    let borrowed = ipam
        .auto_assign(request("net.n1b", "n1", 1))
        .await
        .expect("n1 borrows");
    let borrowed_ip: IpAddr = borrowed.allocations[0].ip;
    let n1_block = n1.allocations[0].block;
    let n2_block = n2.allocations[0].block;

    settle(fanout, "nodes, pool, blocks and the borrowed address", |state| {
        matches!(state.get("node/n1"), Some(RouteItem::Node(n)) if n.labels["zone"] == "a")
            && state.contains_key("node/n2")
            && matches!(state.get("pool/tiny"), Some(RouteItem::Pool(p))
                if p.encapsulation == Encapsulation::Vxlan && p.nat_outgoing)
            && matches!(state.get(format!("block/{n1_block}").as_str()), Some(RouteItem::Block { node, .. }) if node == "n1")
            && matches!(state.get(format!("block/{n2_block}").as_str()), Some(RouteItem::Block { node, .. }) if node == "n2")
            && matches!(state.get(format!("borrowed/{borrowed_ip}").as_str()),
                Some(RouteItem::Borrowed { node, block, .. }) if node == "n1" && *block == n2_block)
    })
    .await;

    ipam.release_handle("net.n1b").await.expect("release");
    registry.deregister("n2").await.expect("deregister");
    settle(fanout, "borrowed address and n2 gone", |state| {
        !state.contains_key(format!("borrowed/{borrowed_ip}").as_str()) && !state.contains_key("node/n2")
    })
    .await;
    assert!(matches!(
        registry.deregister("n2").await,
        Err(RegistryError::NotRegistered(_))
    ));
}

async fn a_registration_expires_without_renewal(store: Arc<dyn Store>) {
    let service = RoutesService::start(Arc::clone(&store), FanoutConfig::default());
    let registry = Registry::new(Arc::clone(&store));
    let (_, ttl) = registry
        .register(node("short", "192.168.10.9"), Some(Duration::from_secs(5)))
        .await
        .expect("register");
    assert_eq!(ttl, Duration::from_secs(5));
    settle(service.fanout(), "registered", |state| {
        state.contains_key("node/short")
    })
    .await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        registry.renew("short").await.expect("renew");
    }
    assert!(
        service.fanout().state().contains_key("node/short"),
        "renewed past its TTL"
    );
    settle(service.fanout(), "expired", |state| {
        !state.contains_key("node/short")
    })
    .await;
    assert!(matches!(
        registry.renew("short").await,
        Err(RegistryError::NotRegistered(_))
    ));
}

async fn registrations_are_validated(store: Arc<dyn Store>) {
    let registry = Registry::new(store);
    let field_of = |result: Result<_, RegistryError>| match result {
        Err(RegistryError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    };
    let mut bad = node("Bad_Name", "192.168.10.1");
    assert_eq!(field_of(registry.register(bad.clone(), None).await), "node.name");
    bad.name = "ok".into();
    bad.addresses.clear();
    assert_eq!(field_of(registry.register(bad, None).await), "node.addresses");
    assert_eq!(
        field_of(registry.register(node("ok", "10.9.9.9"), None).await),
        "node.ipv4_subnet"
    );
    let mut vtep = node("ok", "192.168.10.1");
    vtep.vtep_ipv4 = Some("10.20.0.1".parse().expect("ip"));
    assert_eq!(field_of(registry.register(vtep, None).await), "node.vtep_mac");
    assert_eq!(
        field_of(
            registry
                .register(node("ok", "192.168.10.1"), Some(Duration::from_secs(1)))
                .await
        ),
        "ttl_seconds"
    );
}

async fn a_watch_behind_a_compaction_re_lists_and_drops_what_was_deleted(store: Arc<dyn Store>) {
    let registry = Registry::new(Arc::clone(&store));
    for (name, address) in [("n1", "192.168.10.1"), ("n2", "192.168.10.2")] {
        registry.register(node(name, address), None).await.expect(name);
    }
    // Right after the service lists, n2 leaves, n3 joins and the history is compacted.
    let compacting = Arc::new(CompactedAfterFirstList::new(store, |store| async move {
        let registry = Registry::new(store);
        registry.deregister("n2").await.expect("deregister");
        registry
            .register(node("n3", "192.168.10.3"), None)
            .await
            .expect("register");
    }));
    let service = RoutesService::start(Arc::clone(&compacting) as Arc<dyn Store>, FanoutConfig::default());
    settle(
        service.fanout(),
        "n2 gone and n3 there after the re-list",
        |state| {
            state.contains_key("node/n1") && !state.contains_key("node/n2") && state.contains_key("node/n3")
        },
    )
    .await;
    compacting.assert_relisted();
}

async fn replicas_converge_on_the_same_state(store: Arc<dyn Store>) {
    let ipam = Ipam::new(Arc::clone(&store));
    ipam.create_pool(pool("p", "10.30.0.0/16", 28))
        .await
        .expect("pool");
    let registry = Registry::new(Arc::clone(&store));
    let first = RoutesService::start(Arc::clone(&store), FanoutConfig::default());
    for i in 0..6 {
        let name = format!("n{i}");
        registry
            .register(node(&name, &format!("192.168.10.{}", 10 + i)), None)
            .await
            .expect("register");
        for pod in 0..20 {
            ipam.auto_assign(request(&format!("net.{name}.{pod}"), &name, 1))
                .await
                .expect("assign");
        }
        if i == 3 {
            // The second replica starts mid-way (lists, then watches).
            let second = RoutesService::start(Arc::clone(&store), FanoutConfig::default());
            for pod in 0..20 {
                ipam.release_handle(&format!("net.n1.{pod}"))
                    .await
                    .expect("release");
            }
            let revision = store.revision().await.expect("revision");
            for service in [&first, &second] {
                let fanout = service.fanout().clone();
                for _ in 0..400 {
                    if fanout.revision() >= revision {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            assert_eq!(first.fanout().revision(), second.fanout().revision());
            assert_eq!(first.fanout().state(), second.fanout().state());
            assert!(first.fanout().state().len() > 6);
        }
    }
}

macro_rules! scenarios {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_backend, store) = crate::embedded().await;
                    super::$test(store).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_backend, store) = crate::etcd().await;
                    super::$test(store).await;
                }
            )*
        }
    };
}

scenarios!(
    routing_state_follows_ipam_and_the_registry,
    a_watch_behind_a_compaction_re_lists_and_drops_what_was_deleted,
    a_registration_expires_without_renewal,
    registrations_are_validated,
    replicas_converge_on_the_same_state,
);
