//! Kubernetes Nodes: their labels become the node's given labels in route-svc (origin
//! `kubernetes`, so pool `nodeSelector`s match them); a Node deleted from Kubernetes is deleted
//! from brindle — its IPAM blocks and handles released (ipam-svc), its workload endpoints
//! removed (policy-svc), its registration and labels removed (route-svc) — the cleanup Calico's
//! kube-controllers does (`NodeServices::delete_node`, which `brindle node delete` shares). kube-sync
//! deletes only nodes whose labels it owns: a node that registered with brindle but was never a
//! Kubernetes Node is left alone.

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

/// The services that hold something of a node: what deleting it touches.
#[derive(Clone)]
pub struct NodeServices {
    /// route-svc: its registration and labels.
    pub routes: RoutesClient<Channel>,
    /// ipam-svc: its addresses and blocks.
    pub ipam: IpamClient<Channel>,
    /// policy-svc: its workload endpoints.
    pub policy: PolicyClient<Channel>,
}

/// What deleting a node released.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeDeleted {
    /// Addresses released.
    pub released_ips: u64,
    /// Blocks deleted (their routes withdrawn from every node and BGP peer).
    pub released_blocks: u32,
    /// Workload endpoints removed.
    pub endpoints: usize,
    /// Whether route-svc kept the registration because another origin owns the node's labels.
    pub registration_kept: bool,
}

impl NodeServices {
    /// Deletes everything brindle holds of node `name` — its addresses and blocks, its workload
    /// endpoints, then its registration and labels (with `origin`, only when that origin owns
    /// them). The registration goes last, so an interrupted deletion is finished by the next.
    pub async fn delete_node(&mut self, name: &str, origin: Option<&str>) -> Result<NodeDeleted, WriteError> {
        let failed = |what: &str, status| WriteError {
            what: format!("{what} of deleted node {name}"),
            status,
        };
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
        let registration_kept = match self
            .routes
            .delete_node(route::DeleteNodeRequest {
                name: name.to_owned(),
                origin: origin.unwrap_or_default().to_owned(),
            })
            .await
        {
            Ok(_) => false,
            Err(status) if origin.is_some() && status.code() == Code::FailedPrecondition => true,
            Err(status) => return Err(failed("deleting the registration", status)),
        };
        Ok(NodeDeleted {
            released_ips: released.released_ips,
            released_blocks: released.released_blocks,
            endpoints: endpoints.len(),
            registration_kept,
        })
    }
}

/// Kubernetes Nodes written into brindle's services.
pub struct Nodes {
    services: NodeServices,
    metrics: FollowMetrics,
}

impl Nodes {
    /// Nodes written through these services.
    pub fn new(services: NodeServices, metrics: FollowMetrics) -> Self {
        Self { services, metrics }
    }

    /// Deletes everything brindle holds of node `name` when kube-sync owns its labels (a node
    /// an administrator labelled is left alone).
    async fn delete(&mut self, name: &str) -> Result<(), WriteError> {
        if !self.owned().await?.contains(&(String::new(), name.to_owned())) {
            tracing::info!(
                node = name,
                "Kubernetes deleted the Node, but kube-sync does not own it in brindle: left alone"
            );
            return Ok(());
        }
        let deleted = self.services.delete_node(name, Some(ORIGIN)).await?;
        if deleted.registration_kept {
            tracing::info!(
                node = name,
                "route-svc record kept: an administrator owns its labels"
            );
        }
        tracing::info!(
            node = name,
            released_ips = deleted.released_ips,
            released_blocks = deleted.released_blocks,
            endpoints = deleted.endpoints,
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
            match self.services.routes.set_node_labels(request).await {
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
            .services
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
