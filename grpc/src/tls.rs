//! TLS for brindle's gRPC: the servers' flags (their certificate, and the CA of client
//! certificates: with TLS on, a client certificate is required) and the clients' flags (the CA of
//! the servers, their own certificate), and channels that use them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address is not a URL tonic can connect to.
    #[error("address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A server's TLS flags. With a certificate the server speaks only mutual TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// Server certificate (PEM); with it the server speaks only mTLS, and clients need a
    /// certificate signed by --tls-client-ca.
    #[arg(long, env = "BRINDLE_TLS_CERT", requires_all = ["tls_key", "tls_client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "BRINDLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signs client certificates (nodes' and administrators').
    #[arg(long, env = "BRINDLE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The server's TLS configuration; `None` without a certificate.
    pub fn config(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_client_ca) else {
            return Ok(None);
        };
        Ok(Some(
            ServerTlsConfig::new()
                .identity(Identity::from_pem(read(cert)?, read(key)?))
                .client_ca_root(Certificate::from_pem(read(ca)?))
                .client_auth_optional(false),
        ))
    }
}

/// A client's TLS flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// CA certificate (PEM) that signs brindle's server certificates; with it connections use TLS.
    #[arg(long, env = "BRINDLE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM): this node's, or an administrator's.
    #[arg(long, env = "BRINDLE_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "BRINDLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The client's TLS configuration; `None` without a CA.
    pub fn config(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(config))
    }
}

/// An endpoint for `address` (`host:port` or a URL) that connects within `connect_timeout`, over
/// TLS when `tls` is given (then `http://` means `https://`).
pub fn endpoint(
    address: &str,
    tls: Option<&ClientTlsConfig>,
    connect_timeout: Duration,
) -> Result<Endpoint, TlsError> {
    let bad = |reason: String| TlsError::Address {
        address: address.to_owned(),
        reason,
    };
    let rest = address
        .split_once("://")
        .map_or(address, |(_, rest)| rest)
        .to_owned();
    let url = match tls {
        Some(_) => format!("https://{rest}"),
        None if address.starts_with("https://") => {
            return Err(bad("https needs the TLS flags (--tls-ca)".into()));
        }
        None => format!("http://{rest}"),
    };
    let endpoint = Endpoint::from_shared(url)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(connect_timeout);
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()).map_err(|e| bad(e.to_string())),
        None => Ok(endpoint),
    }
}
