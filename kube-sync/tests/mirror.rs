//! kube-sync against the Kubernetes API stand-in (the real kube-rs client, unmodified) and a
//! real policy-svc: Namespaces, NetworkPolicies, ServiceAccounts and Pods are mirrored with origin `kubernetes`;
//! what was deleted while kube-sync was away, or while its watch had expired (`410 Gone`), is
//! removed after it comes back; objects made with `brindle apply` are never touched; bookmarks
//! keep a quiet watch current; a Node deleted from Kubernetes has its addresses released and its
//! endpoints and registration removed, and nothing of another node is touched.

use std::collections::BTreeMap;
use std::time::Duration;

use brindle_fanout::FanoutConfig;
use brindle_grpc_server::testing::{embedded_store, serve_on_loopback};
use brindle_metrics::Metrics;
use brindle_proto::ipam::v1 as ipam;
use brindle_proto::ipam::v1::ipam_client::IpamClient;
use brindle_proto::policy::v1 as pb;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use brindle_proto::route::v1 as route;
use brindle_proto::route::v1::routes_client::RoutesClient;
use ipam_svc::core::Ipam;
use ipam_svc::grpc::IpamService;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Node, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use kube_standin::StandIn;
use kube_standin::objects::{self, meta, namespace, node, selector};
use kube_sync::runtime::Services;
use policy_svc::grpc::PolicyService;
use route_svc::grpc::RoutesService;
use tonic::transport::Channel;

fn policy(namespace: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(Some(namespace), name, &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(&[("app", name)]),
            policy_types: Some(vec!["Ingress".into()]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn account(namespace: &str, name: &str, labels: &[(&str, &str)]) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(Some(namespace), name, labels),
        ..ServiceAccount::default()
    }
}

fn pod(namespace: &str, name: &str, labels: &[(&str, &str)], host_network: bool) -> Pod {
    let mut pod = objects::pod(namespace, name, "node-1", labels);
    if let Some(spec) = &mut pod.spec {
        spec.host_network = Some(host_network);
        spec.containers = vec![Container {
            name: "app".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        }];
    }
    pod
}

struct Cluster {
    api: StandIn,
    dir: tempfile::TempDir,
    policy: PolicyClient<Channel>,
    routes: RoutesClient<Channel>,
    ipam: IpamClient<Channel>,
    services: Services,
}

impl Cluster {
    async fn start(bookmark_every: Duration) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = embedded_store(dir.path()).await;
        let mut routes = tonic::service::RoutesBuilder::default();
        routes.add_service(PolicyService::start(store.clone(), FanoutConfig::default()).into_server());
        routes.add_service(RoutesService::start(store.clone(), FanoutConfig::default()).into_server());
        routes.add_service(IpamService::new(std::sync::Arc::new(Ipam::new(store))).into_server());
        let names = [
            policy_svc::grpc::SERVICE_NAME,
            route_svc::grpc::SERVICE_NAME,
            ipam_svc::grpc::SERVICE_NAME,
        ];
        let url = format!("http://{}", serve_on_loopback(routes, &names).await);
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect_lazy();
        let services = Services::new(channel.clone(), channel.clone(), channel.clone());
        let api = StandIn::start(bookmark_every).await.expect("stand-in");
        Self {
            api,
            dir,
            policy: PolicyClient::new(channel.clone())
                .max_decoding_message_size(brindle_grpc::MAX_RESPONSE_BYTES),
            routes: RoutesClient::new(channel.clone()),
            ipam: IpamClient::new(channel),
            services,
        }
    }

    /// Starts kube-sync's mirror as a task, its client built from a kubeconfig file.
    async fn start_mirror(&self) -> tokio::task::JoinHandle<()> {
        self.start_mirror_with(Metrics::new()).await
    }

    /// Starts kube-sync's mirror reporting into `metrics`.
    async fn start_mirror_with(&self, metrics: Metrics) -> tokio::task::JoinHandle<()> {
        let kubeconfig = self.api.write_kubeconfig(self.dir.path()).expect("kubeconfig");
        let client = kube_sync::runtime::kubernetes_client(Some(&kubeconfig))
            .await
            .expect("client");
        let services = self.services.clone();
        tokio::spawn(async move { kube_sync::runtime::mirror(client, services, &metrics).await })
    }

    async fn apply(&self, manifest: &str) {
        self.policy
            .clone()
            .apply(pb::ApplyRequest {
                manifest: manifest.into(),
                ..Default::default()
            })
            .await
            .expect("brindle apply");
    }

    /// Every stored object as "Kind namespace/name origin".
    async fn objects(&self) -> Vec<String> {
        let listed = self
            .policy
            .clone()
            .list(pb::ListRequest::default())
            .await
            .expect("list");
        listed
            .into_inner()
            .objects
            .into_iter()
            .map(|o| {
                format!(
                    "{} {}/{} {}",
                    o.kind,
                    o.namespace,
                    o.name,
                    if o.origin.is_empty() { "apply" } else { &o.origin }
                )
            })
            .collect()
    }

    /// Every mirrored pod: its labels.
    async fn pods(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let listed = self
            .policy
            .clone()
            .list_pods(pb::ListPodsRequest {})
            .await
            .expect("pods");
        listed
            .into_inner()
            .pods
            .into_iter()
            .map(|p| {
                (
                    format!("{}/{}", p.namespace, p.name),
                    p.labels.into_iter().collect(),
                )
            })
            .collect()
    }

    /// Waits until `check` holds of (objects, pods).
    async fn until(
        &self,
        what: &str,
        check: impl Fn(&[String], &BTreeMap<String, BTreeMap<String, String>>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (objects, pods) = (self.objects().await, self.pods().await);
            if check(&objects, &pods) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not reached; objects {objects:#?}, pods {pods:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn has(objects: &[String], entry: &str) -> bool {
    objects.iter().any(|o| o == entry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_objects_are_mirrored_and_what_vanished_while_kube_sync_was_away_is_removed() {
    let cluster = Cluster::start(Duration::from_secs(60)).await;
    let api = &cluster.api;
    cluster
        .apply(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: manual, labels: {by: hand}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: hand-made, namespace: shop}\n\
             spec: {podSelector: {}}\n",
        )
        .await;
    api.put(&namespace("shop", &[("team", "a")]));
    api.put(&namespace("manual", &[("by", "kubernetes")]));
    api.put(&policy("shop", "web"));
    api.put(&policy("shop", "old"));
    api.put(&pod("shop", "web-1", &[("app", "web")], false));
    api.put(&pod("shop", "gone-1", &[("app", "gone")], false));
    api.put(&pod("kube-system", "proxy", &[], true));
    api.put(&account("shop", "api", &[("tier", "backend")]));
    api.put(&account("shop", "old-sa", &[]));

    let mirror = cluster.start_mirror().await;
    cluster
        .until("the first sync", |objects, pods| {
            has(objects, "Namespace /shop kubernetes")
                && has(objects, "ServiceAccount shop/api kubernetes")
                && has(objects, "ServiceAccount shop/old-sa kubernetes")
                && has(objects, "KubernetesNetworkPolicy shop/web kubernetes")
                && has(objects, "KubernetesNetworkPolicy shop/old kubernetes")
                && pods
                    .get("shop/web-1")
                    .is_some_and(|l| l.get("app").map(String::as_str) == Some("web"))
                && pods.contains_key("shop/gone-1")
        })
        .await;
    let objects = cluster.objects().await;
    assert!(
        has(&objects, "Namespace /manual apply"),
        "`brindle apply` owns it: {objects:#?}"
    );
    assert!(
        !cluster.pods().await.contains_key("kube-system/proxy"),
        "host-network pods are not mirrored"
    );
    let namespace = cluster
        .policy
        .clone()
        .get(pb::GetRequest {
            object: Some(pb::ObjectRef {
                kind: "Namespace".into(),
                namespace: String::new(),
                name: "manual".into(),
            }),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(
        namespace.manifest.contains("by: hand"),
        "not replaced by Kubernetes' labels: {}",
        namespace.manifest
    );

    // kube-sync stops; meanwhile a policy and a pod are deleted and another policy is made.
    mirror.abort();
    let _ = mirror.await;
    api.delete::<NetworkPolicy>(Some("shop"), "old");
    api.delete::<Pod>(Some("shop"), "gone-1");
    api.delete::<ServiceAccount>(Some("shop"), "old-sa");
    api.put(&policy("shop", "new"));

    let mirror = cluster.start_mirror().await;
    cluster
        .until("the re-list after a restart", |objects, pods| {
            !has(objects, "KubernetesNetworkPolicy shop/old kubernetes")
                && !has(objects, "ServiceAccount shop/old-sa kubernetes")
                && has(objects, "KubernetesNetworkPolicy shop/new kubernetes")
                && !pods.contains_key("shop/gone-1")
                && pods.contains_key("shop/web-1")
        })
        .await;
    let objects = cluster.objects().await;
    assert!(
        has(&objects, "KubernetesNetworkPolicy shop/hand-made apply")
            && has(&objects, "Namespace /manual apply"),
        "`brindle apply` objects are never removed: {objects:#?}"
    );
    mirror.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_relists_with_nothing_lost_or_left_over() {
    let cluster = Cluster::start(Duration::from_secs(60)).await;
    let api = &cluster.api;
    api.put(&namespace("shop", &[]));
    api.put(&policy("shop", "a"));
    api.put(&pod("shop", "web-1", &[("app", "web")], false));
    let metrics = Metrics::new();
    let mirror = cluster.start_mirror_with(metrics.clone()).await;
    cluster
        .until("the first sync", |objects, pods| {
            has(objects, "KubernetesNetworkPolicy shop/a kubernetes") && pods.contains_key("shop/web-1")
        })
        .await;
    let before = api.requests();

    // The watches stall; changes pile up; the history they would resume from is compacted.
    api.hold_watches(true);
    api.delete::<NetworkPolicy>(Some("shop"), "a");
    api.put(&policy("shop", "b"));
    api.put(&pod("shop", "web-1", &[("app", "web"), ("tier", "front")], false));
    api.put(&pod("shop", "web-2", &[("app", "web")], false));
    api.compact();

    cluster
        .until("the re-list after 410 Gone", |objects, pods| {
            !has(objects, "KubernetesNetworkPolicy shop/a kubernetes")
                && has(objects, "KubernetesNetworkPolicy shop/b kubernetes")
                && pods
                    .get("shop/web-1")
                    .is_some_and(|l| l.get("tier").map(String::as_str) == Some("front"))
                && pods.contains_key("shop/web-2")
        })
        .await;
    let after = api.requests();
    assert!(
        after.gone > before.gone,
        "the watches were answered 410 Gone: {before:?} → {after:?}"
    );
    assert!(
        after.lists > before.lists,
        "and re-listed: {before:?} → {after:?}"
    );
    // The gauges are set once a write is acknowledged, just after policy-svc shows it.
    let expected = [
        "brindle_kube_sync_relists_total{kind=\"Pod\"} 2",
        "brindle_kube_sync_objects{kind=\"Pod\"} 2",
        "brindle_kube_sync_objects{kind=\"NetworkPolicy\"} 1",
        "brindle_kube_sync_write_lag_seconds_count{kind=\"Pod\"}",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut scraped = metrics.encode();
    while !expected.iter().all(|e| scraped.contains(e)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        scraped = metrics.encode();
    }
    for expected in expected {
        assert!(scraped.contains(expected), "{expected} in\n{scraped}");
    }
    mirror.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_keep_a_quiet_watch_current_so_compaction_costs_no_relist() {
    let cluster = Cluster::start(Duration::from_millis(100)).await;
    let api = &cluster.api;
    api.put(&namespace("shop", &[]));
    api.put(&policy("shop", "a"));
    let mirror = cluster.start_mirror().await;
    cluster
        .until("the first sync", |objects, _| {
            has(objects, "KubernetesNetworkPolicy shop/a kubernetes")
        })
        .await;
    // Pods and policies are quiet while a namespace changes: only bookmarks move their watches
    // past its resource version.
    api.put(&namespace("shop", &[("team", "b")]));
    cluster
        .until("the namespace change", |objects, _| {
            has(objects, "Namespace /shop kubernetes")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = api.requests();
    api.compact();
    api.put(&policy("shop", "c"));
    cluster
        .until("a change after compaction", |objects, _| {
            has(objects, "KubernetesNetworkPolicy shop/c kubernetes")
        })
        .await;
    let after = api.requests();
    assert_eq!(
        after.gone, before.gone,
        "no watch was behind the compaction: {before:?} → {after:?}"
    );
    assert_eq!(
        after.lists, before.lists,
        "nothing re-listed: {before:?} → {after:?}"
    );
    mirror.abort();
}

impl Cluster {
    /// Gives `node` a pod address in IPAM and a workload endpoint in policy-svc.
    async fn pod_on(&self, node: &str, pod: &str) {
        let assigned = self
            .ipam
            .clone()
            .auto_assign(ipam::AutoAssignRequest {
                handle_id: format!("net.{pod}"),
                node: node.into(),
                num_ipv4: 1,
                ..Default::default()
            })
            .await
            .expect("an address")
            .into_inner();
        let ip = assigned.allocations[0].ip.clone();
        self.policy
            .clone()
            .register_endpoint(pb::RegisterEndpointRequest {
                endpoint: Some(pb::WorkloadEndpoint {
                    node: node.into(),
                    interface: format!("brd{pod}"),
                    namespace: "shop".into(),
                    pod: pod.into(),
                    ips: vec![ip],
                    ..Default::default()
                }),
            })
            .await
            .expect("an endpoint");
    }

    /// A node's (addresses in use, endpoints).
    async fn node_holdings(&self, node: &str) -> (u64, usize) {
        let shown = self
            .ipam
            .clone()
            .show(ipam::ShowRequest {
                blocks: true,
                ..Default::default()
            })
            .await
            .expect("show")
            .into_inner();
        let addresses = shown
            .blocks
            .iter()
            .filter(|b| b.node == node)
            .map(|b| b.in_use)
            .sum();
        let endpoints = self
            .policy
            .clone()
            .list_endpoints(pb::ListEndpointsRequest { node: node.into() })
            .await
            .expect("endpoints")
            .into_inner()
            .endpoints
            .len();
        (addresses, endpoints)
    }

    /// Every node's given labels: (origin, labels).
    async fn node_labels(&self) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
        let listed = self
            .routes
            .clone()
            .list_node_labels(route::ListNodeLabelsRequest::default())
            .await
            .expect("node labels")
            .into_inner();
        listed
            .nodes
            .into_iter()
            .map(|n| (n.name, (n.origin, n.labels.into_iter().collect())))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_has_its_addresses_released_and_nothing_of_another_node_is_touched() {
    let cluster = Cluster::start(Duration::from_secs(60)).await;
    let api = &cluster.api;
    let pool = ipam::IpPool {
        name: "pods".into(),
        cidr: "10.80.0.0/16".into(),
        ..Default::default()
    };
    cluster
        .ipam
        .clone()
        .create_pool(ipam::CreatePoolRequest { pool: Some(pool) })
        .await
        .expect("pool");
    for (node, pod) in [
        ("node-gone", "a1"),
        ("node-gone", "a2"),
        ("node-stays", "b1"),
        ("bare-metal", "c1"),
        ("admin-node", "d1"),
    ] {
        cluster.pod_on(node, pod).await;
    }
    // An administrator labelled this node before kube-sync saw it: brindle apply's, not Kubernetes'.
    cluster
        .routes
        .clone()
        .set_node_labels(route::SetNodeLabelsRequest {
            name: "admin-node".into(),
            labels: [("zone".to_owned(), "x".to_owned())].into(),
            origin: String::new(),
            if_revision: None,
        })
        .await
        .expect("an administrator's labels");
    api.put(&node("admin-node", &[("zone", "k")]));
    api.put(&node("node-gone", &[("zone", "a")]));
    api.put(&node("node-stays", &[("zone", "b")]));
    let mirror = cluster.start_mirror().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let labels = cluster.node_labels().await;
        let stays = labels.get("node-stays").is_some_and(|(origin, labels)| {
            origin == "kubernetes" && labels.get("zone").map(String::as_str) == Some("b")
        });
        if stays && labels.contains_key("node-gone") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node labels: {labels:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.node_holdings("node-gone").await, (2, 2));

    api.delete::<Node>(None, "node-gone");
    api.delete::<Node>(None, "admin-node");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster.node_holdings("node-gone").await != (0, 0)
        || cluster.node_labels().await.contains_key("node-gone")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-gone still holds {:?}",
            cluster.node_holdings("node-gone").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cluster.node_holdings("node-stays").await,
        (1, 1),
        "a node that still exists is untouched"
    );
    assert_eq!(
        cluster.node_holdings("bare-metal").await,
        (1, 1),
        "a node Kubernetes never had is untouched"
    );
    assert_eq!(
        cluster.node_holdings("admin-node").await,
        (1, 1),
        "a node an administrator labelled is not kube-sync's to delete"
    );
    assert_eq!(
        cluster
            .node_labels()
            .await
            .get("admin-node")
            .map(|(origin, _)| origin.as_str()),
        Some(""),
        "its labels stay the administrator's"
    );
    let report = cluster
        .ipam
        .clone()
        .check(ipam::CheckRequest::default())
        .await
        .expect("check")
        .into_inner();
    assert!(report.clean, "ipam check is clean: {report:?}");
    mirror.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_pods_than_one_default_sized_answer_holds_are_listed_and_reconciled() {
    // Mirrored pods Kubernetes no longer has, more than gRPC's default 4 MiB answer holds (as at
    // 150,000 pods): kube-sync's re-list must read them all to remove them.
    const PODS: usize = 20_000;
    let cluster = Cluster::start(Duration::from_secs(60)).await;
    let mut policy = cluster.policy.clone();
    let pod = |i: usize| pb::Pod {
        namespace: "crowd".into(),
        name: format!("pod-{i:05}"),
        uid: format!("uid-{i:05}"),
        node: "node-1".into(),
        labels: (0..6)
            .map(|l| (format!("example.com/label-{l}"), format!("value-{i:05}-{l}")))
            .collect(),
        ..pb::Pod::default()
    };
    let indexes: Vec<usize> = (0..PODS).collect();
    for chunk in indexes.chunks(kube_sync::follow::BATCH) {
        policy
            .apply_pods(pb::ApplyPodsRequest {
                pods: chunk.iter().map(|&i| pod(i)).collect(),
            })
            .await
            .expect("apply pods");
    }
    assert_eq!(cluster.pods().await.len(), PODS);
    let mirror = cluster.start_mirror().await;
    // Generous: the services, kube-sync and this test share two workers of a debug build.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = policy
            .list_pods(pb::ListPodsRequest {})
            .await
            .expect("pods")
            .into_inner()
            .pods
            .len();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} of {PODS} pods Kubernetes does not have are still mirrored"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    mirror.abort();
}
