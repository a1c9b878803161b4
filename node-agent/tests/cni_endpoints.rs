//! CNI operations register every pod as a workload endpoint with policy-svc (real stored-object
//! logic in-process): labels and named ports from the network configuration, identity from
//! CNI_ARGS; DEL removes it before anything else; policy-svc down makes ADD fail with nothing left
//! behind and DEL fail with the record kept for a retry; start-up reconciliation puts the
//! registry back in line with the attachments.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use brindle_datastore::EmbeddedStore;
use brindle_proto::cni_codes::{INVALID_CONFIG, TRY_AGAIN_LATER};
use ipam_svc::core::Ipam;
use node_agent::core::attachments::AttachmentStore;
use node_agent::core::cni::{CniOps, CniRequest, NetworkConfig};
use node_agent::core::wiring::AttachmentKey;
use node_agent::dataplane::{Netlink, RecordingKernel};
use policy_api::model::{EndpointKey, Protocol};
use policy_svc::core::objects::Objects;
use support::endpoints::InProcessEndpoints;
use support::ipam::InProcessIpam;
use support::node::workload_pool;

struct Setup {
    _dir: tempfile::TempDir,
    objects: Objects,
    down: Arc<AtomicBool>,
    ops: CniOps,
    records: AttachmentStore,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        EmbeddedStore::open(dir.path().join("s.redb"))
            .await
            .expect("store"),
    );
    let ipam = Arc::new(Ipam::new(store.clone()));
    ipam.create_pool(workload_pool("p", "10.78.0.0/24"))
        .await
        .expect("pool");
    let kernel = Arc::new(RecordingKernel::default());
    let records = AttachmentStore::open(&dir.path().join("records")).expect("records");
    let objects = Objects::new(store);
    let down = Arc::new(AtomicBool::new(false));
    let registry = InProcessEndpoints {
        objects: objects.clone(),
        down: down.clone(),
    };
    let ops = CniOps::new(
        "n1",
        Arc::clone(&kernel) as Arc<dyn Netlink>,
        Arc::clone(&kernel) as Arc<dyn node_agent::dataplane::Sysctl>,
        Arc::new(InProcessIpam(ipam)),
        records.clone(),
    )
    .with_endpoints(Arc::new(registry));
    Setup {
        _dir: dir,
        objects,
        down,
        ops,
        records,
    }
}

fn request(container: &str) -> CniRequest {
    CniRequest {
        key: AttachmentKey {
            network: "net".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
        },
        netns: "/".into(),
        args: [("K8S_POD_NAMESPACE", "shop"), ("K8S_POD_NAME", container)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    }
}

fn labelled() -> NetworkConfig {
    let config = serde_json::json!({
        "args": {
            "cni": {"labels": [{"key": "app", "value": "web"}]},
            "brindle": {"ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}
        }
    });
    NetworkConfig::parse(&config, &Default::default()).expect("config")
}

#[tokio::test]
async fn add_registers_and_del_removes_the_endpoint() {
    let s = setup().await;
    let added = s.ops.add(&request("web-1"), &labelled()).await.expect("add");
    let endpoints = s.objects.list_endpoints(Some("n1")).await.expect("list");
    assert_eq!(endpoints.len(), 1);
    let (endpoint, _) = &endpoints[0];
    assert_eq!(
        (endpoint.namespace.as_str(), endpoint.pod.as_str()),
        ("shop", "web-1")
    );
    assert_eq!(endpoint.key.interface, added.wired.host_ifname);
    assert_eq!(endpoint.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(endpoint.named_port("http", Protocol::Tcp), Some(8080));
    assert_eq!(
        endpoint.ips,
        added.addresses.iter().map(|a| a.addr()).collect::<Vec<_>>()
    );

    s.ops.del(&request("web-1")).await.expect("del");
    assert!(
        s.objects
            .list_endpoints(Some("n1"))
            .await
            .expect("list")
            .is_empty()
    );
    s.ops.del(&request("web-1")).await.expect("del twice");
}

#[test]
fn bad_labels_are_refused_naming_the_field() {
    let config = serde_json::json!({"args": {"cni": {"labels": [{"key": "app"}]}}});
    let failure = NetworkConfig::parse(&config, &Default::default()).expect_err("malformed labels");
    assert_eq!(failure.code, INVALID_CONFIG);
    assert!(failure.msg.contains("args.cni.labels[0]"), "{failure:?}");
    let config = serde_json::json!({"args": {"brindle": {"ports": [{"name": "http", "port": 70000}]}}});
    let failure = NetworkConfig::parse(&config, &Default::default()).expect_err("bad port");
    assert!(failure.msg.contains("args.brindle.ports[0]"), "{failure:?}");
}

#[tokio::test]
async fn policy_svc_down_fails_add_cleanly_and_keeps_del_for_a_retry() {
    let s = setup().await;
    s.down.store(true, Ordering::SeqCst);
    let failure = s
        .ops
        .add(&request("web-3"), &labelled())
        .await
        .expect_err("registry down");
    assert_eq!(failure.code, TRY_AGAIN_LATER);
    assert!(
        s.records.list().expect("records").is_empty(),
        "a failed ADD leaves no record"
    );
    s.down.store(false, Ordering::SeqCst);
    s.ops
        .add(&request("web-3"), &labelled())
        .await
        .expect("add once it is back");

    s.down.store(true, Ordering::SeqCst);
    let failure = s.ops.del(&request("web-3")).await.expect_err("registry down");
    assert_eq!(failure.code, TRY_AGAIN_LATER);
    assert_eq!(
        s.records.list().expect("records").len(),
        1,
        "the record stays for the retry"
    );
    s.down.store(false, Ordering::SeqCst);
    s.ops.del(&request("web-3")).await.expect("del retried");
    assert!(s.objects.list_endpoints(None).await.expect("list").is_empty());
}

#[tokio::test]
async fn reconcile_registers_missing_endpoints_and_removes_strays() {
    let s = setup().await;
    let added = s.ops.add(&request("web-4"), &labelled()).await.expect("add");
    let (endpoint, _) = s
        .objects
        .list_endpoints(Some("n1"))
        .await
        .expect("list")
        .remove(0);
    s.objects
        .delete_endpoint(&endpoint.key)
        .await
        .expect("lost from the registry");
    let mut stray = endpoint.clone();
    stray.key = EndpointKey {
        node: "n1".into(),
        interface: "brdghost0000".into(),
    };
    s.objects
        .register_endpoint(&stray)
        .await
        .expect("an endpoint no attachment owns");
    s.ops.reconcile().await.expect("reconcile");
    let interfaces: Vec<String> = s
        .objects
        .list_endpoints(Some("n1"))
        .await
        .expect("list")
        .into_iter()
        .map(|(e, _)| e.key.interface)
        .collect();
    assert_eq!(interfaces, vec![added.wired.host_ifname]);
}
