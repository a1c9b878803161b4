//! What kube-sync relies on in policy-svc: objects carry their origin and one origin never
//! replaces or deletes another's; mirrored pods give their endpoints labels and named ports (also
//! when the pod arrives after its endpoint); GetPod waits for a pod that is not known yet.

use std::time::{Duration, Instant};

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::testing::{embedded_store, serve_on_loopback};
use brindle_proto::policy::v1 as pb;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use policy_api::model::EndpointKey;
use policy_svc::grpc::{PolicyService, SERVICE_NAME};
use tonic::Code;
use tonic::transport::Channel;

async fn serve(dir: &tempfile::TempDir) -> (PolicyClient<Channel>, PolicyService) {
    let service = PolicyService::start(embedded_store(dir.path()).await, FanoutConfig::default());
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(service.clone().into_server());
    let address = serve_on_loopback(routes, &[SERVICE_NAME]).await;
    (
        PolicyClient::connect(format!("http://{address}"))
            .await
            .expect("connect"),
        service,
    )
}

fn apply(manifest: &str, origin: &str) -> pb::ApplyRequest {
    pb::ApplyRequest {
        manifest: manifest.into(),
        namespace: String::new(),
        origin: origin.into(),
    }
}

const SHOP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a}}\n";
const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                      metadata: {name: web, namespace: shop}\nspec: {podSelector: {}}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origin_never_replaces_or_deletes_anothers_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut client, _service) = serve(&dir).await;
    client.apply(apply(SHOP, "")).await.expect("brindle apply");
    let refused = client
        .apply(apply(SHOP, "kubernetes"))
        .await
        .expect_err("owned by apply");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("Namespace shop is owned by brindle apply"),
        "{refused:?}"
    );

    let applied = client
        .apply(apply(POLICY, "kubernetes"))
        .await
        .expect("kube-sync's")
        .into_inner();
    assert_eq!(applied.objects[0].origin, "kubernetes");
    let again = client
        .apply(apply(POLICY, "kubernetes"))
        .await
        .expect("unchanged")
        .into_inner();
    assert_eq!(
        again.objects[0].revision, applied.objects[0].revision,
        "an unchanged object is not rewritten"
    );
    let refused = client
        .apply(apply(POLICY, ""))
        .await
        .expect_err("owned by Kubernetes");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("owned by Kubernetes"), "{refused:?}");

    let shop = pb::ObjectRef {
        kind: "Namespace".into(),
        namespace: String::new(),
        name: "shop".into(),
    };
    let refused = client
        .delete(pb::DeleteRequest {
            object: Some(shop.clone()),
            origin: "kubernetes".into(),
        })
        .await
        .expect_err("kube-sync may not delete what apply made");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    client
        .get(pb::GetRequest { object: Some(shop) })
        .await
        .expect("still there");

    let owned = client
        .list(pb::ListRequest {
            origin: "kubernetes".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .objects;
    assert_eq!(owned.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["web"]);
    let bad = client
        .list(pb::ListRequest {
            origin: "helm".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown origin");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
}

fn pod(name: &str, uid: &str, labels: &[(&str, &str)]) -> pb::Pod {
    pb::Pod {
        namespace: "shop".into(),
        name: name.into(),
        uid: uid.into(),
        node: "node-1".into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        service_account: "web-sa".into(),
        ports: vec![pb::NamedPort {
            name: "http".into(),
            protocol: "TCP".into(),
            port: 8080,
        }],
        ..Default::default()
    }
}

fn endpoint(interface: &str, pod: &str, ip: &str) -> pb::RegisterEndpointRequest {
    pb::RegisterEndpointRequest {
        endpoint: Some(pb::WorkloadEndpoint {
            node: "node-1".into(),
            interface: interface.into(),
            namespace: "shop".into(),
            pod: pod.into(),
            container_id: format!("c-{pod}"),
            ips: vec![ip.into()],
            labels: [("from".to_owned(), "cni-args".to_owned())].into(),
            ..Default::default()
        }),
    }
}

async fn labels_of(service: &PolicyService, interface: &str, want: &[(&str, &str)], named_ports: usize) {
    let key = EndpointKey {
        node: "node-1".into(),
        interface: interface.into(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (labels, ports) = service.hub().with_state(|state, _| {
            state
                .endpoint(&key)
                .map(|e| (e.labels.clone(), e.ports.len()))
                .unwrap_or_default()
        });
        let wanted = want
            .iter()
            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            && labels.len() == want.len();
        if wanted {
            assert_eq!(ports, named_ports, "named ports");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{interface}: labels {labels:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_pods_give_their_endpoints_labels_before_and_after_the_endpoint_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut client, service) = serve(&dir).await;
    client
        .register_endpoint(endpoint("brd00000000001", "web-1", "10.0.0.1"))
        .await
        .expect("endpoint");
    labels_of(&service, "brd00000000001", &[("from", "cni-args")], 0).await;

    client
        .apply_pods(pb::ApplyPodsRequest {
            pods: vec![
                pod("web-1", "u1", &[("app", "web")]),
                pod("web-2", "u2", &[("app", "web")]),
            ],
        })
        .await
        .expect("pods");
    labels_of(
        &service,
        "brd00000000001",
        &[("app", "web"), ("projectcalico.org/serviceaccount", "web-sa")],
        1,
    )
    .await;
    client
        .register_endpoint(endpoint("brd00000000002", "web-2", "10.0.0.2"))
        .await
        .expect("endpoint");
    labels_of(
        &service,
        "brd00000000002",
        &[("app", "web"), ("projectcalico.org/serviceaccount", "web-sa")],
        1,
    )
    .await;

    client
        .apply_pods(pb::ApplyPodsRequest {
            pods: vec![pod("web-1", "u1", &[("app", "api")])],
        })
        .await
        .expect("relabel");
    labels_of(
        &service,
        "brd00000000001",
        &[("app", "api"), ("projectcalico.org/serviceaccount", "web-sa")],
        1,
    )
    .await;

    client
        .delete_pods(pb::DeletePodsRequest {
            pods: vec![pb::PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
            }],
        })
        .await
        .expect("delete");
    let listed = client
        .list_pods(pb::ListPodsRequest {})
        .await
        .expect("list")
        .into_inner()
        .pods;
    assert_eq!(
        listed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["web-2"]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    labels_of(
        &service,
        "brd00000000001",
        &[("app", "api"), ("projectcalico.org/serviceaccount", "web-sa")],
        1,
    )
    .await;

    let bad = client
        .apply_pods(pb::ApplyPodsRequest {
            pods: vec![pod("web 3", "u3", &[])],
        })
        .await
        .expect_err("a bad name");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("pods[0].name"), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pod_waits_for_the_pod_and_names_it_when_it_never_comes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, _service) = serve(&dir).await;
    let mut waiter = client.clone();
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        waiter
            .get_pod(pb::GetPodRequest {
                namespace: "shop".into(),
                name: "late".into(),
                uid: "u9".into(),
                wait_ms: 10_000,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut writer = client.clone();
    writer
        .apply_pods(pb::ApplyPodsRequest {
            pods: vec![pod("late", "u8", &[("app", "old")])],
        })
        .await
        .expect("an earlier pod");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a pod with another uid does not count");
    writer
        .apply_pods(pb::ApplyPodsRequest {
            pods: vec![pod("late", "u9", &[("app", "late")])],
        })
        .await
        .expect("the pod");
    let found = waiting.await.expect("task").expect("found").into_inner();
    assert_eq!(found.labels.get("app").map(String::as_str), Some("late"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered when it arrived"
    );

    let missing = client
        .clone()
        .get_pod(pb::GetPodRequest {
            namespace: "shop".into(),
            name: "never".into(),
            uid: String::new(),
            wait_ms: 200,
        })
        .await
        .expect_err("never comes");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("shop/never"), "{missing:?}");
}
