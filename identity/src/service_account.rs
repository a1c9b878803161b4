//! Bootstrap by Kubernetes identity: the agent pod's projected ServiceAccount token (audience
//! [`AUDIENCE`]) is reviewed by the API server (a TokenReview); it must belong to the agents'
//! service account and be bound to a pod, and that pod — read from the API, its uid checked —
//! must run on the node the certificate is asked for.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use crate::IdentityError;

/// The audience agents' tokens must be issued for.
pub const AUDIENCE: &str = "brindle";
/// The `extra` keys a bound token's review names its pod with.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Reviews agents' ServiceAccount tokens.
#[derive(Clone)]
pub struct ServiceAccountTokens {
    client: kube::Client,
    namespace: String,
    name: String,
}

fn refused(reason: impl Into<String>) -> IdentityError {
    IdentityError::TokenRefused(reason.into())
}

impl ServiceAccountTokens {
    /// Takes tokens of the service account `namespace/name` (the agents'), checked through
    /// `client`.
    pub fn new(client: kube::Client, service_account: &str) -> Result<Self, IdentityError> {
        let (namespace, name) = service_account
            .split_once('/')
            .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| IdentityError::Invalid {
                field: "service_account",
                reason: format!("{service_account:?} is not NAMESPACE/NAME"),
            })?;
        Ok(Self {
            client,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Checks that `token` is the agents' service account's, bound to a pod running on `node`.
    pub async fn redeem(&self, token: &str, node: &str) -> Result<(), IdentityError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(IdentityError::Kubernetes)?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(refused(format!(
                "the ServiceAccount token is not authenticated: {}",
                status.error.unwrap_or_default()
            )));
        }
        if !status.audiences.unwrap_or_default().iter().any(|a| a == AUDIENCE) {
            return Err(refused(format!(
                "the ServiceAccount token is not for audience {AUDIENCE:?}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let expected = format!("system:serviceaccount:{}:{}", self.namespace, self.name);
        let username = user.username.unwrap_or_default();
        if username != expected {
            return Err(refused(format!(
                "the token is {username:?}'s, not the agents' ({expected:?})"
            )));
        }
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|values| values.first()).cloned();
        let (Some(pod_name), Some(pod_uid)) = (first(POD_NAME), first(POD_UID)) else {
            return Err(refused(
                "the token is bound to no pod (a projected token is needed)",
            ));
        };
        let pod = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(&pod_name)
            .await
            .map_err(IdentityError::Kubernetes)?
            .ok_or_else(|| refused(format!("pod {}/{pod_name} is gone", self.namespace)))?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(refused(format!(
                "pod {}/{pod_name} is not the one the token was bound to",
                self.namespace
            )));
        }
        let scheduled = pod.spec.and_then(|spec| spec.node_name).unwrap_or_default();
        if scheduled != node {
            return Err(refused(format!(
                "pod {}/{pod_name} runs on node {scheduled:?}, not {node:?}",
                self.namespace
            )));
        }
        Ok(())
    }
}
