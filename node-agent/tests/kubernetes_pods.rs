//! With Kubernetes sync on, an ADD takes its pod's labels and named ports from the Pod object
//! kube-sync mirrored into policy-svc (a real policy-svc over gRPC), never from the CNI request:
//! a Pod that arrives 2 s after its ADD started is waited for; one that never arrives fails the
//! ADD with CNI error 11 naming the pod, leaving no address, veth or endpoint behind. Calico's
//! `ipv4pools` annotation chooses the pool (by name or CIDR); an unknown pool is named; the
//! `ipAddrs` annotation gives the pod the address it names.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::testing::{embedded_store, serve_on_loopback};
use brindle_proto::cni_codes::TRY_AGAIN_LATER;
use brindle_proto::policy::v1 as pb;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use ipam_svc::core::Ipam;
use node_agent::core::attachments::AttachmentStore;
use node_agent::core::cni::{CniOps, CniRequest, NetworkConfig};
use node_agent::core::pods::KubernetesPods;
use node_agent::core::wiring::AttachmentKey;
use node_agent::dataplane::{Netlink, RecordingKernel};
use node_agent::grpc::policy_client::GrpcPolicy;
use policy_svc::grpc::{PolicyService, SERVICE_NAME};
use support::ipam::InProcessIpam;
use support::node::workload_pool;

struct Setup {
    _dir: tempfile::TempDir,
    ops: CniOps,
    policy: PolicyClient<tonic::transport::Channel>,
    ipam: Arc<Ipam>,
}

async fn setup(wait: Duration) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = embedded_store(dir.path()).await;
    let ipam = Arc::new(Ipam::new(store.clone()));
    ipam.create_pool(workload_pool("p", "10.79.0.0/24"))
        .await
        .expect("pool");
    ipam.create_pool(workload_pool("q", "10.81.0.0/24"))
        .await
        .expect("pool");
    let service = PolicyService::start(store, FanoutConfig::default());
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(service.into_server());
    let url = format!("http://{}", serve_on_loopback(routes, &[SERVICE_NAME]).await);
    let grpc = GrpcPolicy::new(
        tonic::transport::Endpoint::from_shared(url.clone())
            .expect("url")
            .into(),
    );
    let kernel = Arc::new(RecordingKernel::default());
    let records = AttachmentStore::open(&dir.path().join("records")).expect("records");
    let ops = CniOps::new(
        "n1",
        Arc::clone(&kernel) as Arc<dyn Netlink>,
        Arc::clone(&kernel) as Arc<dyn node_agent::dataplane::Sysctl>,
        Arc::new(InProcessIpam(Arc::clone(&ipam))),
        records,
    )
    .with_endpoints(Arc::new(grpc.clone()))
    .with_kubernetes_pods(KubernetesPods::new(Arc::new(grpc), wait));
    Setup {
        _dir: dir,
        ops,
        policy: PolicyClient::connect(url).await.expect("policy client"),
        ipam,
    }
}

fn request(pod: &str, uid: &str) -> CniRequest {
    CniRequest {
        key: AttachmentKey {
            network: "net".into(),
            container_id: format!("sandbox-{pod}"),
            ifname: "eth0".into(),
        },
        netns: "/".into(),
        args: [
            ("K8S_POD_NAMESPACE", "shop"),
            ("K8S_POD_NAME", pod),
            ("K8S_POD_UID", uid),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    }
}

/// A configuration whose CNI args claim other labels than the Pod's.
fn claiming_labels() -> NetworkConfig {
    let config = serde_json::json!({"args": {"cni": {"labels": [{"key": "app", "value": "claimed"}]}}});
    NetworkConfig::parse(&config, &Default::default()).expect("config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_waits_for_a_late_pod_and_takes_its_labels_from_it() {
    let mut s = setup(Duration::from_secs(10)).await;
    let started = Instant::now();
    let ops = Arc::new(s.ops);
    let adding = tokio::spawn({
        let ops = Arc::clone(&ops);
        async move { ops.add(&request("web-1", "u1"), &claiming_labels()).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!adding.is_finished(), "the ADD waits for its Pod");
    s.policy
        .apply_pods(pb::ApplyPodsRequest {
            pods: vec![pb::Pod {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u1".into(),
                node: "n1".into(),
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ports: vec![pb::NamedPort {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    port: 8080,
                }],
                ..Default::default()
            }],
        })
        .await
        .expect("kube-sync mirrors the Pod");
    adding
        .await
        .expect("task")
        .expect("the ADD succeeds once the Pod is known");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "it went on as soon as the Pod came"
    );
    let endpoints = s
        .policy
        .list_endpoints(pb::ListEndpointsRequest { node: "n1".into() })
        .await
        .expect("endpoints")
        .into_inner()
        .endpoints;
    assert_eq!(endpoints.len(), 1);
    assert_eq!(
        endpoints[0].labels.get("app").map(String::as_str),
        Some("web"),
        "the Pod's labels, not the CNI args'"
    );
    assert_eq!(endpoints[0].ports.len(), 1, "the Pod's named port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_for_a_pod_that_never_comes_fails_with_code_11_and_leaves_nothing() {
    let mut s = setup(Duration::from_secs(1)).await;
    let failure = s
        .ops
        .add(&request("ghost", "u7"), &claiming_labels())
        .await
        .expect_err("no Pod object");
    assert_eq!(failure.code, TRY_AGAIN_LATER, "{failure:?}");
    assert!(
        failure.msg.contains("shop/ghost") && failure.msg.contains("u7"),
        "{failure:?}"
    );
    let endpoints = s
        .policy
        .list_endpoints(pb::ListEndpointsRequest { node: "n1".into() })
        .await
        .expect("endpoints")
        .into_inner()
        .endpoints;
    assert!(endpoints.is_empty(), "{endpoints:?}");
    let shown = s.ipam.show(&Default::default()).await.expect("show");
    assert!(
        shown.pools.iter().all(|p| p.in_use == 0),
        "no address was taken: {:?}",
        shown.pools
    );
}

fn annotated(name: &str, pools: &str) -> pb::Pod {
    pb::Pod {
        namespace: "shop".into(),
        name: name.into(),
        uid: format!("u-{name}"),
        node: "n1".into(),
        ipam_annotations: [("cni.projectcalico.org/ipv4pools".to_owned(), pools.to_owned())].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_annotation_chooses_the_pool_and_an_unknown_pool_is_named() {
    let mut s = setup(Duration::from_secs(1)).await;
    s.policy
        .apply_pods(pb::ApplyPodsRequest {
            pods: vec![
                annotated("by-cidr", "[\"10.81.0.0/24\"]"),
                annotated("by-name", "[\"q\"]"),
                annotated("unknown", "[\"nope\"]"),
            ],
        })
        .await
        .expect("pods");
    for pod in ["by-cidr", "by-name"] {
        let mut add = request(pod, &format!("u-{pod}"));
        add.netns = format!("/run/netns/{pod}");
        let added = s.ops.add(&add, &claiming_labels()).await.expect(pod);
        let ip = added.addresses[0].addr().to_string();
        assert!(ip.starts_with("10.81.0."), "{pod}: {ip} is not from pool q");
    }
    let failure = s
        .ops
        .add(&request("unknown", "u-unknown"), &claiming_labels())
        .await
        .expect_err("no such pool");
    let text = format!("{} {}", failure.msg, failure.details);
    assert!(
        text.contains("nope") && text.contains("annotations"),
        "{failure:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_addrs_annotation_gives_the_pod_that_address() {
    let mut s = setup(Duration::from_secs(1)).await;
    let mut pod = annotated("fixed", "[\"p\"]");
    pod.ipam_annotations = [(
        "cni.projectcalico.org/ipAddrs".to_owned(),
        "[\"10.79.0.42\"]".to_owned(),
    )]
    .into();
    s.policy
        .apply_pods(pb::ApplyPodsRequest { pods: vec![pod] })
        .await
        .expect("pod");
    let added = s
        .ops
        .add(&request("fixed", "u-fixed"), &claiming_labels())
        .await
        .expect("add");
    assert_eq!(added.addresses[0].addr().to_string(), "10.79.0.42");
}
