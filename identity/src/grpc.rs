//! The identity services: `Identity` (administrators make join tokens; a node renews its own
//! certificate, named by the certificate it calls with) and `Bootstrap` (a join token or the agent
//! pod's ServiceAccount token, and a CSR, for the first certificate — served alone on a port that
//! takes callers without certificates).

use std::sync::Arc;
use std::time::Duration;

use brindle_grpc_server::auth::Caller;
use brindle_proto::identity::v1 as pb;
use pb::bootstrap_server::{Bootstrap, BootstrapServer};
use pb::identity_server::{Identity, IdentityServer};
use tonic::{Request, Response, Status};

use crate::{IdentityError, JoinTokens, NodeSigner, ServiceAccountTokens, SignedCertificate};

/// Fully qualified name of the `Identity` service.
pub const IDENTITY_SERVICE: &str = "brindle.identity.v1.Identity";
/// Fully qualified name of the `Bootstrap` service.
pub const BOOTSTRAP_SERVICE: &str = "brindle.identity.v1.Bootstrap";

/// The status for an identity error.
pub fn status(error: IdentityError) -> Status {
    let message = error.to_string();
    match error {
        IdentityError::Invalid { .. } => Status::invalid_argument(message),
        IdentityError::TokenRefused(_) => Status::unauthenticated(message),
        IdentityError::Signing(_) => Status::internal(message),
        IdentityError::Corrupt { .. } => Status::data_loss(message),
        IdentityError::Kubernetes(_) | IdentityError::KubernetesApi { .. } => Status::unavailable(message),
        IdentityError::Store(error) => brindle_grpc_server::store_status(&error, message),
    }
}

fn certificate(signed: SignedCertificate) -> pb::NodeCertificate {
    pb::NodeCertificate {
        certificate_pem: signed.certificate_pem,
        ca_pem: signed.ca_pem,
        not_after_unix: signed.not_after_unix,
    }
}

/// What both services share.
#[derive(Clone)]
struct Shared {
    signer: Arc<NodeSigner>,
    tokens: JoinTokens,
    service_accounts: Option<ServiceAccountTokens>,
}

/// The `Identity` service.
#[derive(Clone)]
pub struct IdentityService(Shared);

/// The `Bootstrap` service.
#[derive(Clone)]
pub struct BootstrapService(Shared);

/// Both services over one signer and one token store; with `service_accounts`, the bootstrap
/// also takes agents' ServiceAccount tokens.
pub fn services(
    signer: NodeSigner,
    tokens: JoinTokens,
    service_accounts: Option<ServiceAccountTokens>,
) -> (IdentityService, BootstrapService) {
    let shared = Shared {
        signer: Arc::new(signer),
        tokens,
        service_accounts,
    };
    (IdentityService(shared.clone()), BootstrapService(shared))
}

impl IdentityService {
    /// As a tonic service.
    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }
}

impl BootstrapService {
    /// As a tonic service.
    pub fn into_server(self) -> BootstrapServer<Self> {
        BootstrapServer::new(self)
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        Caller::of(&request)?.require_admin("make join tokens")?;
        let request = request.into_inner();
        let ttl = (request.ttl_seconds > 0).then(|| Duration::from_secs(request.ttl_seconds.into()));
        let (token, expires_unix) = self.0.tokens.create(&request.node, ttl).await.map_err(status)?;
        tracing::info!(node = request.node, expires_unix, "join token made");
        Ok(Response::new(pb::CreateJoinTokenResponse { token, expires_unix }))
    }

    async fn renew_node_certificate(
        &self,
        request: Request<pb::RenewNodeCertificateRequest>,
    ) -> Result<Response<pb::NodeCertificate>, Status> {
        let Caller::Node(node) = Caller::of(&request)? else {
            return Err(Status::failed_precondition(
                "only a node's certificate is renewed: call with the node's current certificate",
            ));
        };
        let signed = self
            .0
            .signer
            .sign(&node, &request.into_inner().csr_pem)
            .map_err(status)?;
        tracing::info!(
            node,
            not_after = signed.not_after_unix,
            "node certificate renewed"
        );
        Ok(Response::new(certificate(signed)))
    }
}

#[tonic::async_trait]
impl Bootstrap for BootstrapService {
    async fn issue_node_certificate(
        &self,
        request: Request<pb::IssueNodeCertificateRequest>,
    ) -> Result<Response<pb::NodeCertificate>, Status> {
        let request = request.into_inner();
        match (request.join_token.is_empty(), request.service_account_token.is_empty()) {
            (false, true) => self.0.tokens.redeem(&request.join_token, &request.node).await,
            (true, false) => match &self.0.service_accounts {
                Some(service_accounts) => {
                    service_accounts
                        .redeem(&request.service_account_token, &request.node)
                        .await
                }
                None => {
                    return Err(Status::failed_precondition(
                        "this server takes no ServiceAccount tokens (its --bootstrap-service-account is not set)",
                    ));
                }
            },
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of join_token and service_account_token",
                ));
            }
        }
        .map_err(status)?;
        let signed = self
            .0
            .signer
            .sign(&request.node, &request.csr_pem)
            .map_err(status)?;
        tracing::info!(
            node = request.node,
            not_after = signed.not_after_unix,
            "node certificate issued"
        );
        Ok(Response::new(certificate(signed)))
    }
}
