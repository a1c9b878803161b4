//! Where each kind is written, over brindle's gRPC APIs: Namespaces and NetworkPolicies as
//! policy-svc objects of origin `kubernetes`, Pods as policy-svc's mirrored pods.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use brindle_proto::policy::v1 as pb;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::follow::{FollowMetrics, Target, WriteError};
use crate::translate::{self, ObjectKey};

/// The origin kube-sync writes and owns.
pub const ORIGIN: &str = "kubernetes";

/// Whether a refusal is about the object itself (retrying cannot help).
fn refused(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument | Code::FailedPrecondition | Code::PermissionDenied
    )
}

fn failed(what: impl Into<String>, status: Status) -> WriteError {
    WriteError {
        what: what.into(),
        status,
    }
}

/// Each Namespace's IPAM annotations, shared by the Namespace and Pod mirrors.
pub type NamespaceAnnotations = Arc<RwLock<HashMap<String, BTreeMap<String, String>>>>;

/// Called with every object a mirror writes.
type Observer<K> = Box<dyn Fn(&K) + Send>;

/// A kind policy-svc stores as an object (`Namespace`, `KubernetesNetworkPolicy`).
pub struct PolicyObjects<K> {
    client: PolicyClient<Channel>,
    kind: &'static str,
    stored_kind: &'static str,
    manifest: fn(&K) -> String,
    metrics: FollowMetrics,
    /// Called with every object written (the Namespace mirror records annotations here).
    observe: Option<Observer<K>>,
}

impl PolicyObjects<Namespace> {
    /// Namespaces (their labels); their IPAM annotations go into `annotations`.
    pub fn namespaces(
        client: PolicyClient<Channel>,
        metrics: FollowMetrics,
        annotations: NamespaceAnnotations,
    ) -> Self {
        Self {
            client,
            kind: "Namespace",
            stored_kind: "Namespace",
            manifest: translate::namespace_manifest,
            metrics,
            observe: Some(Box::new(move |namespace: &Namespace| {
                let name = namespace.metadata.name.clone().unwrap_or_default();
                let found = translate::ipam_annotations(&namespace.metadata);
                let mut map = annotations.write().unwrap_or_else(|p| p.into_inner());
                if found.is_empty() {
                    map.remove(&name);
                } else {
                    map.insert(name, found);
                }
            })),
        }
    }
}

impl PolicyObjects<ServiceAccount> {
    /// ServiceAccounts (their labels, which `serviceAccountSelector`s select by).
    pub fn service_accounts(client: PolicyClient<Channel>, metrics: FollowMetrics) -> Self {
        Self {
            client,
            kind: "ServiceAccount",
            stored_kind: "ServiceAccount",
            manifest: translate::service_account_manifest,
            metrics,
            observe: None,
        }
    }
}

impl PolicyObjects<NetworkPolicy> {
    /// `networking.k8s.io/v1` NetworkPolicies.
    pub fn network_policies(client: PolicyClient<Channel>, metrics: FollowMetrics) -> Self {
        Self {
            client,
            kind: "NetworkPolicy",
            stored_kind: "KubernetesNetworkPolicy",
            manifest: translate::policy_manifest,
            metrics,
            observe: None,
        }
    }
}

impl<K: kube::Resource + Sync> PolicyObjects<K> {
    async fn apply(&mut self, objects: &[&K]) -> Result<(), Status> {
        let manifest = objects
            .iter()
            .map(|object| (self.manifest)(object))
            .collect::<Vec<_>>()
            .join("\n---\n");
        self.client
            .apply(pb::ApplyRequest {
                manifest,
                namespace: String::new(),
                origin: ORIGIN.into(),
            })
            .await
            .map(drop)
    }
}

#[async_trait::async_trait]
impl<K: kube::Resource + Sync> Target<K> for PolicyObjects<K> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn upsert(&mut self, objects: &[K]) -> Result<(), WriteError> {
        if let Some(observe) = &self.observe {
            objects.iter().for_each(observe);
        }
        let all: Vec<&K> = objects.iter().collect();
        match self.apply(&all).await {
            Ok(()) => return Ok(()),
            Err(status) if !refused(&status) => {
                return Err(failed(format!("applying {} objects", self.kind), status));
            }
            Err(_) => {}
        }
        // One of them is refused: apply each alone, so the others still land.
        for object in objects {
            if let Err(status) = self.apply(&[object]).await {
                let (namespace, name) = translate::key_of(object.meta());
                if !refused(&status) {
                    return Err(failed(
                        format!("applying {} {namespace}/{name}", self.kind),
                        status,
                    ));
                }
                self.metrics.rejected(self.kind);
                tracing::warn!(
                    kind = self.kind,
                    namespace,
                    name,
                    error = status.message(),
                    "brindle refuses it; skipped"
                );
            }
        }
        Ok(())
    }

    async fn remove(&mut self, keys: &[ObjectKey]) -> Result<(), WriteError> {
        for (namespace, name) in keys {
            let request = pb::DeleteRequest {
                object: Some(pb::ObjectRef {
                    kind: self.stored_kind.into(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                }),
                origin: ORIGIN.into(),
            };
            match self.client.delete(request).await {
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) if status.code() == Code::FailedPrecondition => {
                    tracing::info!(
                        kind = self.kind,
                        namespace,
                        name,
                        "not removed: `brindle apply` owns it"
                    );
                }
                Err(status) => {
                    return Err(failed(
                        format!("deleting {} {namespace}/{name}", self.kind),
                        status,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn owned(&mut self) -> Result<BTreeSet<ObjectKey>, WriteError> {
        let listed = self
            .client
            .list(pb::ListRequest {
                kind: self.stored_kind.into(),
                namespace: String::new(),
                origin: ORIGIN.into(),
            })
            .await
            .map_err(|status| failed(format!("listing {} objects", self.kind), status))?;
        Ok(listed
            .into_inner()
            .objects
            .into_iter()
            .map(|object| (object.namespace, object.name))
            .collect())
    }
}

/// Pods, as policy-svc's mirrored pods.
pub struct Pods {
    client: PolicyClient<Channel>,
    namespace_annotations: NamespaceAnnotations,
    metrics: FollowMetrics,
}

impl Pods {
    /// Pods; their Namespace's IPAM annotations come from `namespace_annotations`.
    pub fn new(
        client: PolicyClient<Channel>,
        metrics: FollowMetrics,
        namespace_annotations: NamespaceAnnotations,
    ) -> Self {
        Self {
            client,
            namespace_annotations,
            metrics,
        }
    }

    async fn apply(&mut self, pods: Vec<pb::Pod>) -> Result<(), Status> {
        self.client
            .apply_pods(pb::ApplyPodsRequest { pods })
            .await
            .map(drop)
    }
}

#[async_trait::async_trait]
impl Target<Pod> for Pods {
    fn kind(&self) -> &'static str {
        "Pod"
    }

    async fn upsert(&mut self, objects: &[Pod]) -> Result<(), WriteError> {
        let pods: Vec<pb::Pod> = {
            let annotations = self
                .namespace_annotations
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let none = BTreeMap::new();
            objects
                .iter()
                .filter_map(|pod| {
                    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                    translate::pod(pod, annotations.get(namespace).unwrap_or(&none))
                })
                .collect()
        };
        if pods.is_empty() {
            return Ok(());
        }
        match self.apply(pods.clone()).await {
            Ok(()) => return Ok(()),
            Err(status) if !refused(&status) => return Err(failed("applying pods", status)),
            Err(_) => {}
        }
        for pod in pods {
            let (namespace, name) = (pod.namespace.clone(), pod.name.clone());
            if let Err(status) = self.apply(vec![pod]).await {
                if !refused(&status) {
                    return Err(failed(format!("applying pod {namespace}/{name}"), status));
                }
                self.metrics.rejected("Pod");
                tracing::warn!(
                    namespace,
                    name,
                    error = status.message(),
                    "brindle refuses the pod; skipped"
                );
            }
        }
        Ok(())
    }

    async fn remove(&mut self, keys: &[ObjectKey]) -> Result<(), WriteError> {
        let pods = keys
            .iter()
            .map(|(namespace, name)| pb::PodRef {
                namespace: namespace.clone(),
                name: name.clone(),
            })
            .collect();
        self.client
            .delete_pods(pb::DeletePodsRequest { pods })
            .await
            .map(drop)
            .map_err(|status| failed("deleting pods", status))
    }

    async fn owned(&mut self) -> Result<BTreeSet<ObjectKey>, WriteError> {
        let listed = self
            .client
            .list_pods(pb::ListPodsRequest {})
            .await
            .map_err(|status| failed("listing pods", status))?;
        Ok(listed
            .into_inner()
            .pods
            .into_iter()
            .map(|pod| (pod.namespace, pod.name))
            .collect())
    }
}
