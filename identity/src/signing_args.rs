//! The flags of a server that signs node certificates (`brindle server`, `ipam-svc`) and the
//! identity services they start: `Identity` beside the server's own, `Bootstrap` on its own port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Store;
use brindle_grpc_server::{BootstrapPort, ServiceRoutes};
use tonic::service::RoutesBuilder;

use crate::{IdentityError, JoinTokens, NodeSigner, ServiceAccountTokens};

// The flags. (A plain comment: clap would make a doc comment the command's `about`.)
#[derive(Debug, Clone, clap::Args)]
#[allow(missing_docs)]
pub struct SigningArgs {
    /// The CA that signs node certificates (`ca.crt` as `brindle certs` writes it): with it the
    /// server renews nodes' certificates and, on --bootstrap-listen, issues them for join tokens
    /// (`brindle node join-token`) or agents' ServiceAccount tokens. Needs the TLS flags.
    #[arg(long, env = "BRINDLE_SIGNING_CA_CERT", requires_all = ["signing_ca_key", "tls_cert"])]
    pub signing_ca_cert: Option<PathBuf>,
    /// The signing CA's key (`ca.key`).
    #[arg(long, env = "BRINDLE_SIGNING_CA_KEY", requires = "signing_ca_cert")]
    pub signing_ca_key: Option<PathBuf>,
    /// Where the bootstrap port listens with --signing-ca-cert: TLS without client certificates,
    /// serving only the exchange of a token for a node certificate.
    #[arg(long, env = "BRINDLE_BOOTSTRAP_LISTEN", default_value = "0.0.0.0:7409")]
    pub bootstrap_listen: SocketAddr,
    /// Take agents' projected ServiceAccount tokens (audience `brindle`) on the bootstrap port:
    /// tokens of this service account (`NAMESPACE/NAME`), bound to a pod running on the node asked
    /// for, checked with TokenReviews through the Kubernetes API.
    #[arg(long, env = "BRINDLE_BOOTSTRAP_SERVICE_ACCOUNT", requires = "signing_ca_cert")]
    pub bootstrap_service_account: Option<String>,
    /// The Kubernetes API for --bootstrap-service-account (default: in a pod its service
    /// account, else `$KUBECONFIG` or `~/.kube/config`).
    #[arg(
        long,
        env = "BRINDLE_BOOTSTRAP_KUBECONFIG",
        requires = "bootstrap_service_account"
    )]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Seconds node certificates are valid (agents renew them at two thirds; at least 10).
    #[arg(long, env = "BRINDLE_NODE_CERT_LIFETIME", default_value_t = 6 * 3600,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub node_cert_lifetime: u64,
}

/// A signer ready to serve: the CA read, the Kubernetes API found when tokens are reviewed.
pub struct Signing {
    signer: NodeSigner,
    service_accounts: Option<ServiceAccountTokens>,
    bootstrap_listen: SocketAddr,
}

/// The error of `what` failing with its source.
fn api_error<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> IdentityError {
    move |source| IdentityError::KubernetesApi {
        what: what.into(),
        source: Box::new(source),
    }
}

/// The Kubernetes API of `kubeconfig`, or the one the environment names (in a pod: its service
/// account).
async fn kubernetes_client(kubeconfig: Option<&Path>) -> Result<kube::Client, IdentityError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(api_error(format!("reading the kubeconfig {}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(api_error(format!("using the kubeconfig {}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(api_error("no --bootstrap-kubeconfig and not in a cluster"))?,
    };
    kube::Client::try_from(config).map_err(api_error("building the client"))
}

impl SigningArgs {
    /// Reads the CA and, to review ServiceAccount tokens, finds the Kubernetes API; `None` without
    /// --signing-ca-cert.
    pub async fn open(&self) -> Result<Option<Signing>, IdentityError> {
        let (Some(cert), Some(key)) = (&self.signing_ca_cert, &self.signing_ca_key) else {
            return Ok(None);
        };
        let signer = NodeSigner::open(cert, key, Duration::from_secs(self.node_cert_lifetime))?;
        let service_accounts = match &self.bootstrap_service_account {
            Some(service_account) => {
                let client = kubernetes_client(self.bootstrap_kubeconfig.as_deref()).await?;
                Some(ServiceAccountTokens::new(client, service_account)?)
            }
            None => None,
        };
        Ok(Some(Signing {
            signer,
            service_accounts,
            bootstrap_listen: self.bootstrap_listen,
        }))
    }
}

impl Signing {
    /// Adds the `Identity` service to the server's main port and the bootstrap port to `served`,
    /// over the join tokens kept in `store`.
    pub fn serve_in(self, served: &mut ServiceRoutes, store: Arc<dyn Store>) {
        let (identity, bootstrap) =
            crate::grpc::services(self.signer, JoinTokens::new(store), self.service_accounts);
        served.routes.add_service(identity.into_server());
        served.names.push(crate::grpc::IDENTITY_SERVICE);
        let mut routes = RoutesBuilder::default();
        routes.add_service(bootstrap.into_server());
        served.bootstrap = Some(BootstrapPort {
            listen: self.bootstrap_listen,
            routes,
        });
    }
}
