//! A client certificate that changes under running channels: every TLS handshake presents the
//! certificate current at that moment, so connections made after a renewal use the new one while
//! connections already open — and the streams on them — carry on undisturbed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

use crate::TlsError;

fn invalid(what: &str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Identity(format!("{what}: {reason}"))
}

/// A certificate and key readable from PEM.
fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("the certificate", e))?;
    if chain.is_empty() {
        return Err(invalid("the certificate", "no certificate in the PEM text"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid("the key", e))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| invalid("the key", e))?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// The client certificate a process presents now; replaced on renewal.
#[derive(Debug)]
pub struct ClientIdentity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ClientIdentity {
    /// The identity of `cert_pem` and `key_pem`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: RwLock::new(certified_key(cert_pem, key_pem)?),
        }))
    }

    /// Presents `cert_pem` and `key_pem` from the next handshake on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let renewed = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = renewed;
        Ok(())
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Dials TLS (HTTP/2 by ALPN) to servers the CA vouches for, presenting `identity` when one is
/// given (without one: a server-authenticated channel, as the bootstrap uses).
#[derive(Clone)]
pub struct IdentityConnector {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for IdentityConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityConnector").finish_non_exhaustive()
    }
}

impl IdentityConnector {
    /// Trusts servers `ca_pem` signed; presents `identity`, if any.
    pub fn new(ca_pem: &str, identity: Option<Arc<ClientIdentity>>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(certificate.map_err(|e| invalid("the CA", e))?)
                .map_err(|e| invalid("the CA", e))?;
        }
        if roots.is_empty() {
            return Err(invalid("the CA", "no certificate in the PEM text"));
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS", e))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(identity) => builder.with_client_cert_resolver(identity),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// Verifies servers' certificates for `name` instead of the host dialled (`--tls-server-name`).
    #[must_use]
    pub fn with_server_name(mut self, name: Option<String>) -> Self {
        self.server_name = name;
        self
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tower::Service<Uri> for IdentityConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = Arc::clone(&self.config);
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let bad = |reason: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{uri}: {reason}"))
            };
            let host = uri
                .host()
                .ok_or_else(|| bad("no host"))?
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let name = ServerName::try_from(server_name.unwrap_or_else(|| host.clone()))
                .map_err(|_| bad("not a host name or address"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
