//! policy-svc's calculation follows the datastore through a compaction: when its watch fell behind
//! one, it re-lists, and an endpoint deleted meanwhile leaves the calculation and the view of a
//! node already followed while one added meanwhile joins them (on the embedded store and on etcd).

use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::testing::{CompactedAfterFirstList, EtcdServer};
use brindle_datastore::{EtcdStore, Store};
use brindle_fanout::FanoutConfig;
use policy_api::model::{Endpoint, EndpointKey};
use policy_svc::core::objects::Objects;
use policy_svc::grpc::PolicyService;

fn endpoint(interface: &str, ip: &str) -> Endpoint {
    Endpoint {
        key: EndpointKey {
            node: "n1".into(),
            interface: interface.into(),
        },
        namespace: "default".into(),
        pod: format!("pod-{interface}"),
        container_id: format!("c-{interface}"),
        ips: vec![ip.parse().expect("ip")],
        labels: Default::default(),
        ports: Vec::new(),
    }
}

async fn a_watch_behind_a_compaction_re_lists(store: Arc<dyn Store>) {
    let objects = Objects::new(Arc::clone(&store));
    for (interface, ip) in [("brdkept", "10.0.0.1"), ("brdgone", "10.0.0.2")] {
        objects
            .register_endpoint(&endpoint(interface, ip))
            .await
            .expect("register");
    }
    let compacting = Arc::new(CompactedAfterFirstList::new(store, |store| async move {
        let objects = Objects::new(store);
        objects
            .delete_endpoint(&endpoint("brdgone", "10.0.0.2").key)
            .await
            .expect("delete");
        objects
            .register_endpoint(&endpoint("brdnew", "10.0.0.3"))
            .await
            .expect("register");
    }));
    let service = PolicyService::start(Arc::clone(&compacting) as Arc<dyn Store>, FanoutConfig::default());
    let followed = service.hub().fanout("n1");
    let interfaces = || {
        service.hub().with_state(|state, _| {
            let mut interfaces: Vec<String> = state.endpoints().map(|e| e.key.interface.clone()).collect();
            interfaces.sort();
            interfaces
        })
    };
    let viewed = || {
        followed.flush();
        followed.with_state(|view| view.keys().map(|key| key.to_string()).collect::<Vec<_>>())
    };
    let expected_view = ["endpoint/brdkept", "endpoint/brdnew"];
    for _ in 0..400 {
        if interfaces() == ["brdkept", "brdnew"] && viewed() == expected_view {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(interfaces(), ["brdkept", "brdnew"]);
    assert_eq!(
        viewed(),
        expected_view,
        "the followed node's view after the re-list"
    );
    compacting.assert_relisted();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_store_a_watch_behind_a_compaction_re_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    a_watch_behind_a_compaction_re_lists(brindle_grpc_server::testing::embedded_store(dir.path()).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_watch_behind_a_compaction_re_lists() {
    let etcd = EtcdServer::start().await.expect("start etcd");
    let store = EtcdStore::connect(&etcd.config()).await.expect("connect");
    a_watch_behind_a_compaction_re_lists(Arc::new(store)).await;
}
