//! The labels given to nodes carry their origin and must be Kubernetes labels: an administrator's
//! and kube-sync's never replace or delete each other's; labels stored before origins existed still
//! read; DeleteNode removes a node's labels and registration and is idempotent.

use std::sync::Arc;

use brindle_datastore::{Store, Txn};
use brindle_fanout::FanoutConfig;
use brindle_grpc_server::testing::{embedded_store, serve_on_loopback};
use brindle_proto::route::v1 as pb;
use brindle_proto::route::v1::routes_client::RoutesClient;
use route_svc::grpc::{RoutesService, SERVICE_NAME};
use tonic::Code;

fn labels(name: &str, pairs: &[(&str, &str)], origin: &str) -> pb::SetNodeLabelsRequest {
    pb::SetNodeLabelsRequest {
        name: name.into(),
        labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        origin: origin.into(),
        if_revision: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_origin_never_replaces_or_deletes_the_others_node_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = embedded_store(dir.path()).await;
    // A record written before labels had an origin: a plain map.
    store
        .txn(Txn::new().put(ipam_api::keys::node_labels("old"), br#"{"rack":"r1"}"#.to_vec()))
        .await
        .expect("legacy record");
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(RoutesService::start(store, FanoutConfig::default()).into_server());
    let address = serve_on_loopback(routes, &[SERVICE_NAME]).await;
    let mut client = RoutesClient::connect(format!("http://{address}"))
        .await
        .expect("connect");

    client
        .set_node_labels(labels("k8s", &[("zone", "a")], "kubernetes"))
        .await
        .expect("kube-sync's");
    client
        .set_node_labels(labels("admin", &[("zone", "b")], ""))
        .await
        .expect("an administrator's");
    // A label Kubernetes would not accept is refused, named.
    for (key, value) in [("bad key", "x"), ("zone", "a b"), ("-zone", "a")] {
        let refused = client
            .set_node_labels(labels("admin", &[(key, value)], ""))
            .await
            .expect_err("not a label");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains(&format!("{key}={value}")),
            "{refused:?}"
        );
    }
    let refused = client
        .set_node_labels(labels("k8s", &[("zone", "z")], ""))
        .await
        .expect_err("Kubernetes owns them");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("owned by Kubernetes"), "{refused:?}");
    let refused = client
        .set_node_labels(labels("admin", &[], "kubernetes"))
        .await
        .expect_err("an administrator owns them");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let refused = client
        .set_node_labels(labels("old", &[("zone", "c")], "helm"))
        .await
        .expect_err("unknown origin");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    let listed = client
        .list_node_labels(pb::ListNodeLabelsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .nodes;
    let summary: Vec<(String, String, Option<String>)> = listed
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                n.origin.clone(),
                n.labels.values().next().cloned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("admin".to_owned(), String::new(), Some("b".to_owned())),
            ("k8s".to_owned(), "kubernetes".to_owned(), Some("a".to_owned())),
            ("old".to_owned(), String::new(), Some("r1".to_owned())),
        ]
    );
    let owned = client
        .list_node_labels(pb::ListNodeLabelsRequest {
            origin: "kubernetes".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .nodes;
    assert_eq!(owned.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["k8s"]);

    let refused = client
        .delete_node(pb::DeleteNodeRequest {
            name: "admin".into(),
            origin: "kubernetes".into(),
        })
        .await
        .expect_err("not kube-sync's");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    client
        .delete_node(pb::DeleteNodeRequest {
            name: "k8s".into(),
            origin: "kubernetes".into(),
        })
        .await
        .expect("kube-sync deletes its node");
    client
        .delete_node(pb::DeleteNodeRequest {
            name: "k8s".into(),
            origin: "kubernetes".into(),
        })
        .await
        .expect("deleting it again succeeds");
    let left = client
        .list_node_labels(pb::ListNodeLabelsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .nodes;
    assert_eq!(
        left.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["admin", "old"]
    );

    // A read-modify-write that lost a race is refused, and the winner's labels stay.
    let read = client
        .list_node_labels(pb::ListNodeLabelsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.name == "admin")
        .expect("admin's labels")
        .revision;
    client
        .set_node_labels(pb::SetNodeLabelsRequest {
            if_revision: Some(read),
            ..labels("admin", &[("zone", "b"), ("rack", "1")], "")
        })
        .await
        .expect("the first writer");
    let lost = client
        .set_node_labels(pb::SetNodeLabelsRequest {
            if_revision: Some(read),
            ..labels("admin", &[("zone", "b"), ("row", "2")], "")
        })
        .await
        .expect_err("the second writer read before the first wrote");
    assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
    assert!(lost.message().contains("read them again"), "{lost:?}");
    let fresh = client
        .set_node_labels(pb::SetNodeLabelsRequest {
            if_revision: Some(0),
            ..labels("fresh", &[("zone", "c")], "")
        })
        .await
        .expect("0: none given yet");
    assert_eq!(fresh.into_inner().labels.len(), 1);
}
