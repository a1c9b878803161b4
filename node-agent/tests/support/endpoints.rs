//! [`EndpointRegistry`] on policy-svc's stored objects themselves (embedded store), no gRPC in
//! between, with a switch that makes it unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use node_agent::core::endpoints::{EndpointCallError, EndpointRegistry};
use policy_svc::core::PolicyError;
use policy_svc::core::model::{Endpoint, EndpointKey};
use policy_svc::core::objects::Objects;

/// policy-svc's endpoint registry in-process.
pub struct InProcessEndpoints {
    /// The stored objects.
    pub objects: Objects,
    /// While set, every call fails as if policy-svc were down.
    pub down: Arc<AtomicBool>,
}

impl InProcessEndpoints {
    fn reachable(&self) -> Result<(), EndpointCallError> {
        if self.down.load(Ordering::SeqCst) {
            Err(EndpointCallError::Unavailable("policy-svc is down (test)".into()))
        } else {
            Ok(())
        }
    }
}

fn call_error(error: PolicyError) -> EndpointCallError {
    match error {
        PolicyError::Invalid { .. } => EndpointCallError::Refused(error.to_string()),
        other => EndpointCallError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl EndpointRegistry for InProcessEndpoints {
    async fn register(&self, endpoint: &Endpoint) -> Result<(), EndpointCallError> {
        self.reachable()?;
        self.objects
            .register_endpoint(endpoint)
            .await
            .map(drop)
            .map_err(call_error)
    }

    async fn remove(&self, key: &EndpointKey) -> Result<(), EndpointCallError> {
        self.reachable()?;
        self.objects.delete_endpoint(key).await.map_err(call_error)
    }

    async fn interfaces(&self, node: &str) -> Result<Vec<String>, EndpointCallError> {
        self.reachable()?;
        let listed = self
            .objects
            .list_endpoints(Some(node))
            .await
            .map_err(call_error)?;
        Ok(listed.into_iter().map(|(e, _)| e.key.interface).collect())
    }
}
