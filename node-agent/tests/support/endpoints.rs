//! [`EndpointRegistry`] on policy-svc's stored objects themselves (embedded store), no gRPC in
//! between, with a switch that makes it unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use node_agent::core::calls::{CallError, Service};
use node_agent::core::endpoints::EndpointRegistry;
use policy_api::model::{Endpoint, EndpointKey};
use policy_svc::core::PolicyError;
use policy_svc::core::objects::Objects;

/// policy-svc's endpoint registry in-process.
pub struct InProcessEndpoints {
    /// The stored objects.
    pub objects: Objects,
    /// While set, every call fails as if policy-svc were down.
    pub down: Arc<AtomicBool>,
}

impl InProcessEndpoints {
    fn reachable(&self) -> Result<(), CallError> {
        if self.down.load(Ordering::SeqCst) {
            Err(CallError::unavailable(
                Service::Policy,
                "policy-svc is down (test)",
            ))
        } else {
            Ok(())
        }
    }
}

fn call_error(error: PolicyError) -> CallError {
    match error {
        PolicyError::Invalid { .. } => CallError::refused(Service::Policy, error),
        other => CallError::unavailable(Service::Policy, other),
    }
}

#[async_trait::async_trait]
impl EndpointRegistry for InProcessEndpoints {
    async fn register(&self, endpoint: &Endpoint) -> Result<(), CallError> {
        self.reachable()?;
        self.objects
            .register_endpoint(endpoint)
            .await
            .map(drop)
            .map_err(call_error)
    }

    async fn remove(&self, key: &EndpointKey) -> Result<(), CallError> {
        self.reachable()?;
        self.objects.delete_endpoint(key).await.map_err(call_error)
    }

    async fn interfaces(&self, node: &str) -> Result<Vec<String>, CallError> {
        self.reachable()?;
        let listed = self
            .objects
            .list_endpoints(Some(node))
            .await
            .map_err(call_error)?;
        Ok(listed.into_iter().map(|(e, _)| e.key.interface).collect())
    }
}
