//! The node's own certificate when nobody hands it one: kept in `--cert-dir`, obtained with the
//! join token (`--join-token-file`) or the pod's ServiceAccount token
//! (`--service-account-token-file`) through the bootstrap port when missing or expired, and
//! renewed through the `Identity` service at two thirds of its lifetime, each time with a fresh
//! key. Every certificate goes into the [`ClientIdentity`] the agent's channels present, so new
//! connections use it while open ones (and their Sync streams) carry on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use brindle_backoff::Backoff;
use brindle_grpc::{ClientIdentity, Dialer, IdentityConnector};
use brindle_proto::identity::v1 as pb;
use pb::bootstrap_client::BootstrapClient;
use pb::identity_client::IdentityClient;

/// The certificate's file in the directory.
const CERT_FILE: &str = "node.crt";
/// Its key's file (mode 0600).
const KEY_FILE: &str = "node.key";
/// How long one call to the identity services may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate and its key, and the part of its life when it should be renewed.
#[derive(Clone)]
struct Held {
    cert_pem: String,
    key_pem: String,
    /// When it was received (Unix seconds).
    received: i64,
    /// When it expires (Unix seconds).
    not_after: i64,
}

impl Held {
    /// When to renew it: two thirds into the time it was received for.
    fn renew_at(&self) -> i64 {
        self.received + (self.not_after - self.received) * 2 / 3
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// When the certificate in `cert_pem` expires (Unix seconds).
fn not_after(cert_pem: &str) -> anyhow::Result<i64> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).context("the certificate is not PEM")?;
    let certificate = pem.parse_x509().context("the certificate does not parse")?;
    Ok(certificate.validity().not_after.timestamp())
}

/// A fresh key and a CSR for it (its subject does not matter: the signer names the node).
fn key_and_csr() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)
        .context("making a CSR")?
        .pem()
        .context("encoding the CSR")?;
    Ok((key.serialize_pem(), csr))
}

/// Writes `contents` to `dir/name` through a temporary file renamed into place.
fn write_atomically(dir: &Path, name: &str, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, dir.join(name))
        .with_context(|| format!("renaming into {}", dir.display()))?;
    Ok(())
}

/// Why a bootstrap gave no certificate.
enum BootstrapFailure {
    /// The bootstrap port did not answer (or was unavailable): worth trying again.
    Unreachable(anyhow::Error),
    /// It refused, or the agent has nothing to offer it: trying again would not help.
    Refused(anyhow::Error),
}

impl BootstrapFailure {
    fn error(self) -> anyhow::Error {
        match self {
            Self::Unreachable(error) | Self::Refused(error) => error,
        }
    }
}

/// Where the node's certificate comes from.
#[derive(Debug, Clone)]
pub struct CertificateSource {
    /// The node.
    pub node: String,
    /// Where the certificate and key are kept.
    pub dir: PathBuf,
    /// The CA (PEM) that signs the servers' certificates and the node's.
    pub ca_pem: String,
    /// The join token's file, when the agent has one.
    pub join_token_file: Option<PathBuf>,
    /// The projected ServiceAccount token's file (read at each bootstrap: the kubelet rotates
    /// it), when the agent runs in a pod.
    pub service_account_token_file: Option<PathBuf>,
    /// The bootstrap port's address (`https://host:7409`).
    pub bootstrap_endpoint: Option<String>,
    /// The name servers' certificates are verified for, when not the host dialled
    /// (`--tls-server-name`).
    pub server_name: Option<String>,
}

/// Holds the node's certificate and renews it.
pub struct NodeCertificate {
    source: CertificateSource,
    identity: Arc<ClientIdentity>,
    held: Held,
}

impl NodeCertificate {
    /// The certificate of `source.dir` while more than a third of its life is left; else a new
    /// one through the bootstrap port with the join token (a certificate still valid is renewed
    /// soon instead, when there is no token).
    pub async fn obtain(source: CertificateSource) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&source.dir).with_context(|| format!("creating {}", source.dir.display()))?;
        let kept = Self::read(&source.dir).ok();
        let now = now_unix();
        let held = match kept {
            Some(held) if held.renew_at() > now => held,
            Some(held) if held.not_after > now => match Self::bootstrap(&source).await {
                Ok(renewed) => renewed,
                Err(failure) => {
                    tracing::warn!(
                        error = format!("{:#}", failure.error()),
                        "no new certificate through the bootstrap port; renewing the kept one soon"
                    );
                    held
                }
            },
            _ => Self::bootstrap_until_answered(&source).await?,
        };
        let identity = ClientIdentity::from_pem(&held.cert_pem, &held.key_pem)?;
        tracing::info!(
            node = source.node,
            not_after = held.not_after,
            "node certificate ready"
        );
        Ok(Self {
            source,
            identity,
            held,
        })
    }

    /// The connector presenting the node's current certificate.
    pub fn connector(&self) -> anyhow::Result<IdentityConnector> {
        Ok(
            IdentityConnector::new(&self.source.ca_pem, Some(Arc::clone(&self.identity)))?
                .with_server_name(self.source.server_name.clone()),
        )
    }

    fn read(dir: &Path) -> anyhow::Result<Held> {
        let cert_pem = std::fs::read_to_string(dir.join(CERT_FILE))?;
        let key_pem = std::fs::read_to_string(dir.join(KEY_FILE))?;
        let received = std::fs::metadata(dir.join(CERT_FILE))?
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        Ok(Held {
            not_after: not_after(&cert_pem)?,
            cert_pem,
            key_pem,
            received,
        })
    }

    /// Keeps `certificate` (and its key) in the directory.
    fn keep(dir: &Path, certificate: &pb::NodeCertificate, key_pem: String) -> anyhow::Result<Held> {
        write_atomically(dir, KEY_FILE, &key_pem, 0o600)?;
        write_atomically(dir, CERT_FILE, &certificate.certificate_pem, 0o644)?;
        Ok(Held {
            cert_pem: certificate.certificate_pem.clone(),
            key_pem,
            received: now_unix(),
            not_after: not_after(&certificate.certificate_pem)?,
        })
    }

    /// A certificate through the bootstrap port, waiting (with backoff) while it cannot be
    /// reached — the control plane may start after the agent; a refusal is final.
    async fn bootstrap_until_answered(source: &CertificateSource) -> anyhow::Result<Held> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            match Self::bootstrap(source).await {
                Ok(held) => return Ok(held),
                Err(BootstrapFailure::Refused(error)) => return Err(error),
                Err(BootstrapFailure::Unreachable(error)) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "the bootstrap port does not answer; retrying"
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// A certificate through the bootstrap port, for the join token or the ServiceAccount token.
    async fn bootstrap(source: &CertificateSource) -> Result<Held, BootstrapFailure> {
        use BootstrapFailure::{Refused, Unreachable};
        let read = |file: &Option<PathBuf>| -> anyhow::Result<String> {
            match file {
                Some(file) => Ok(std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
                    .trim()
                    .to_owned()),
                None => Ok(String::new()),
            }
        };
        let (join_token, service_account_token) = (
            read(&source.join_token_file).map_err(Refused)?,
            read(&source.service_account_token_file).map_err(Refused)?,
        );
        let Some(endpoint) = source
            .bootstrap_endpoint
            .as_ref()
            .filter(|_| !join_token.is_empty() || !service_account_token.is_empty())
        else {
            return Err(Refused(anyhow::anyhow!(
                "no valid node certificate in {} and no token (--join-token-file or --service-account-token-file) and --bootstrap-endpoint to obtain one",
                source.dir.display()
            )));
        };
        let (key_pem, csr_pem) = key_and_csr().map_err(Refused)?;
        let connector = IdentityConnector::new(&source.ca_pem, None)
            .map_err(|e| Refused(e.into()))?
            .with_server_name(source.server_name.clone());
        let channel = Dialer::through(endpoint, connector, CALL_TIMEOUT)
            .map_err(|e| Refused(e.into()))?
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .with_context(|| format!("reaching the bootstrap port {endpoint}"))
            .map_err(Unreachable)?;
        let certificate = BootstrapClient::new(channel)
            .issue_node_certificate(pb::IssueNodeCertificateRequest {
                node: source.node.clone(),
                join_token,
                csr_pem,
                service_account_token,
            })
            .await
            .map_err(|status| {
                let error = anyhow::anyhow!("bootstrap: {:?}: {}", status.code(), status.message());
                match status.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                        Unreachable(error)
                    }
                    _ => Refused(error),
                }
            })?
            .into_inner();
        tracing::info!(
            node = source.node,
            "node certificate obtained through the bootstrap port"
        );
        Self::keep(&source.dir, &certificate, key_pem).map_err(Refused)
    }

    /// Renews the certificate two thirds into its life, through the `Identity` service that
    /// `dialer` reaches (with the current certificate); after it expired unrenewed, through the
    /// bootstrap port again. Runs until the task is dropped.
    pub async fn keep_renewed(mut self, dialer: Dialer) {
        let client = IdentityClient::new(dialer.timeout(CALL_TIMEOUT).connect_lazy());
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let wait = u64::try_from(self.held.renew_at() - now_unix()).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let renewed = if self.held.not_after > now_unix() {
                self.renew(client.clone()).await
            } else {
                Self::bootstrap(&self.source)
                    .await
                    .map_err(BootstrapFailure::error)
            };
            match renewed.and_then(|held| {
                self.identity.replace(&held.cert_pem, &held.key_pem)?;
                Ok(held)
            }) {
                Ok(held) => {
                    tracing::info!(
                        node = self.source.node,
                        not_after = held.not_after,
                        "node certificate renewed"
                    );
                    self.held = held;
                    backoff.reset();
                }
                Err(error) => {
                    tracing::warn!(
                        node = self.source.node,
                        error = format!("{error:#}"),
                        "renewing the node certificate; retrying"
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    async fn renew(&self, mut client: IdentityClient<tonic::transport::Channel>) -> anyhow::Result<Held> {
        let (key_pem, csr_pem) = key_and_csr()?;
        let certificate = client
            .renew_node_certificate(pb::RenewNodeCertificateRequest { csr_pem })
            .await
            .map_err(|status| anyhow::anyhow!("renewal: {:?}: {}", status.code(), status.message()))?
            .into_inner();
        Self::keep(&self.source.dir, &certificate, key_pem)
    }
}
