//! Kubernetes Nodes: their labels become the node's given labels in route-svc (origin
//! `kubernetes`, so pool `nodeSelector`s match them); a Node deleted from Kubernetes is deleted
//! from brindle — its IPAM blocks and handles released (ipam-svc), its workload endpoints
//! removed (policy-svc), its registration and labels removed (route-svc) — the cleanup Calico's
//! kube-controllers does. Only nodes whose labels kube-sync owns are ever deleted: a node that
//! registered with brindle but was never a Kubernetes Node is left alone.

use std::collections::BTreeSet;

use brindle_proto::ipam::v1 as ipam;
use brindle_proto::ipam::v1::ipam_client::IpamClient;
use brindle_proto::policy::v1 as policy;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use brindle_proto::route::v1 as route;
use brindle_proto::route::v1::routes_client::RoutesClient;
use k8s_openapi::api::core::v1::Node;
use tonic::Code;
use tonic::transport::Channel;

use crate::follow::{FollowMetrics, Target, WriteError};
use crate::targets::ORIGIN;
use crate::translate::ObjectKey;

/// The services a Node touches.
pub struct Nodes {
    routes: RoutesClient<Channel>,
    ipam: IpamClient<Channel>,
    policy: PolicyClient<Channel>,
    metrics: FollowMetrics,
}

impl Nodes {
    /// Nodes written through these clients.
    pub fn new(
        routes: RoutesClient<Channel>,
        ipam: IpamClient<Channel>,
        policy: PolicyClient<Channel>,
        metrics: FollowMetrics,
    ) -> Self {
        Self {
            routes,
            ipam,
            policy,
            metrics,
        }
    }

    /// Deletes everything brindle holds of node `name` when kube-sync owns its labels (a node
    /// an administrator labelled is left alone); the route-svc record (kube-sync's mark) goes
    /// last, so an interrupted cleanup is finished at the next list.
    async fn delete(&mut self, name: &str) -> Result<(), WriteError> {
        let failed = |what: &str, status| WriteError {
            what: format!("{what} of deleted node {name}"),
            status,
        };
        if !self.owned().await?.contains(&(String::new(), name.to_owned())) {
            tracing::info!(
                node = name,
                "Kubernetes deleted the Node, but kube-sync does not own it in brindle: left alone"
            );
            return Ok(());
        }
        let released = self
            .ipam
            .delete_node(ipam::DeleteNodeRequest {
                node: name.to_owned(),
            })
            .await
            .map_err(|s| failed("releasing the addresses", s))?
            .into_inner();
        let endpoints = self
            .policy
            .list_endpoints(policy::ListEndpointsRequest {
                node: name.to_owned(),
            })
            .await
            .map_err(|s| failed("listing the endpoints", s))?
            .into_inner()
            .endpoints;
        for endpoint in &endpoints {
            self.policy
                .delete_endpoint(policy::DeleteEndpointRequest {
                    node: name.to_owned(),
                    interface: endpoint.interface.clone(),
                })
                .await
                .map_err(|s| failed("removing an endpoint", s))?;
        }
        match self
            .routes
            .delete_node(route::DeleteNodeRequest {
                name: name.to_owned(),
                origin: ORIGIN.into(),
            })
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::FailedPrecondition => {
                tracing::info!(
                    node = name,
                    "route-svc record kept: an administrator owns its labels"
                );
            }
            Err(status) => return Err(failed("deleting the registration", status)),
        }
        tracing::info!(
            node = name,
            released_ips = released.released_ips,
            released_blocks = released.released_blocks,
            endpoints = endpoints.len(),
            "deleted a node that Kubernetes no longer has"
        );
        Ok(())
    }
}

#[async_trait::async_trait]
impl Target<Node> for Nodes {
    fn kind(&self) -> &'static str {
        "Node"
    }

    async fn upsert(&mut self, objects: &[Node]) -> Result<(), WriteError> {
        for node in objects {
            let name = node.metadata.name.clone().unwrap_or_default();
            let request = route::SetNodeLabelsRequest {
                name: name.clone(),
                labels: node
                    .metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                origin: ORIGIN.into(),
                if_revision: None,
            };
            match self.routes.set_node_labels(request).await {
                Ok(_) => {}
                Err(status) if matches!(status.code(), Code::InvalidArgument | Code::FailedPrecondition) => {
                    self.metrics.rejected("Node");
                    tracing::warn!(
                        node = name,
                        error = status.message(),
                        "route-svc refuses the node's labels; skipped"
                    );
                }
                Err(status) => {
                    return Err(WriteError {
                        what: format!("setting the labels of node {name}"),
                        status,
                    });
                }
            }
        }
        Ok(())
    }

    async fn remove(&mut self, keys: &[ObjectKey]) -> Result<(), WriteError> {
        for (_, name) in keys {
            self.delete(name).await?;
        }
        Ok(())
    }

    async fn owned(&mut self) -> Result<BTreeSet<ObjectKey>, WriteError> {
        let listed = self
            .routes
            .list_node_labels(route::ListNodeLabelsRequest {
                origin: ORIGIN.into(),
            })
            .await
            .map_err(|status| WriteError {
                what: "listing the nodes kube-sync labelled".into(),
                status,
            })?;
        Ok(listed
            .into_inner()
            .nodes
            .into_iter()
            .map(|node| (String::new(), node.name))
            .collect())
    }
}
