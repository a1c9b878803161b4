//! TLS for brindle's gRPC: the servers' flags (their certificate, and the CA of client
//! certificates: with TLS on, a client certificate is required) and the clients' flags (the CA of
//! the servers, their own certificate), and channels that use them.

use std::net::{Ipv4Addr, SocketAddr};
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
    /// A certificate, key or CA in PEM text is unusable.
    #[error("TLS identity: {0}")]
    Identity(String),
    /// The address is not a URL tonic can connect to.
    #[error("address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A server was asked to speak plain text on an address other hosts can reach.
    #[error(
        "refusing to serve plain text on {address}: anyone who reaches it could change pools, \
         routes and policies. Give --tls-cert, --tls-key and --tls-client-ca (`brindle certs` \
         issues them), listen on a loopback address, or pass --insecure-plaintext to accept the risk"
    )]
    PlaintextOnNetwork {
        /// The listen address.
        address: std::net::SocketAddr,
    },
}

/// How a server's callers reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS: every caller shows a certificate the client CA signed.
    MutualTls,
    /// Plain text on a loopback address: only this host's processes reach it.
    LoopbackPlaintext,
    /// Plain text on the network, as `--insecure-plaintext` asked: every caller is trusted.
    InsecurePlaintext,
}

/// The response header in which a server names its transport (so `brindle node status` reports
/// what the server speaks, not what the caller guesses from its address).
pub const TRANSPORT_HEADER: &str = "brindle-transport";

impl Transport {
    /// Its value in [`TRANSPORT_HEADER`].
    pub fn header_value(self) -> &'static str {
        match self {
            Self::MutualTls => "mtls",
            Self::LoopbackPlaintext => "loopback-plaintext",
            Self::InsecurePlaintext => "insecure-plaintext",
        }
    }

    /// The transport a [`TRANSPORT_HEADER`] value names.
    pub fn from_header_value(value: &str) -> Option<Self> {
        [Self::MutualTls, Self::LoopbackPlaintext, Self::InsecurePlaintext]
            .into_iter()
            .find(|t| t.header_value() == value)
    }

    /// How it is named in logs and by `brindle node status`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::MutualTls => "mTLS",
            Self::LoopbackPlaintext => "plain text on loopback",
            Self::InsecurePlaintext => "INSECURE plain text on the network (--insecure-plaintext)",
        }
    }
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
    /// Serve plain text on a non-loopback address although every caller is then trusted (without
    /// it such a server refuses to start); it warns at start and reports
    /// `brindle_insecure_plaintext 1`.
    #[arg(long, env = "BRINDLE_INSECURE_PLAINTEXT", conflicts_with = "tls_cert")]
    pub insecure_plaintext: bool,
}

impl ServerTlsArgs {
    /// Where to listen: `given`, or on `port` every address with TLS and loopback without.
    pub fn listen_address(&self, given: Option<SocketAddr>, port: u16) -> SocketAddr {
        given.unwrap_or_else(|| {
            let ip = if self.mutual_tls() {
                Ipv4Addr::UNSPECIFIED
            } else {
                Ipv4Addr::LOCALHOST
            };
            SocketAddr::from((ip, port))
        })
    }

    /// How callers reach a server listening on `address`; plain text on an address other hosts
    /// can reach is refused unless `--insecure-plaintext` says otherwise.
    pub fn transport(&self, address: SocketAddr) -> Result<Transport, TlsError> {
        if self.mutual_tls() {
            Ok(Transport::MutualTls)
        } else if address.ip().is_loopback() {
            Ok(Transport::LoopbackPlaintext)
        } else if self.insecure_plaintext {
            Ok(Transport::InsecurePlaintext)
        } else {
            Err(TlsError::PlaintextOnNetwork { address })
        }
    }
    /// Whether certificate, key and client CA are all given (clap requires them together).
    fn mutual_tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some() && self.tls_client_ca.is_some()
    }

    /// TLS that authenticates the server only (its certificate and key; no client certificate is
    /// asked for): the bootstrap port's. `None` without a certificate.
    pub fn server_only_config(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        Ok(Some(
            ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?)),
        ))
    }

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
    /// Verify every server's certificate for this name instead of the host in its address (as
    /// kubectl's flag of that name): for servers dialled by address, e.g. Kubernetes ClusterIPs.
    #[arg(long, env = "BRINDLE_TLS_SERVER_NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// The client's TLS configuration; `None` without a CA.
    pub fn config(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some(name) = &self.tls_server_name {
            config = config.domain_name(name);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(config))
    }
}

/// How often a client pings its connection over HTTP/2, idle or not (well inside servers' default
/// 300 s idle timeout).
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(60);
/// How long a client waits for a ping's answer before it drops the connection.
const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// An endpoint for `address` (`host:port` or a URL) that connects within `connect_timeout`, over
/// TLS when `tls` is given (then `http://` means `https://`), and keeps its connection alive.
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
        .connect_timeout(connect_timeout)
        // Pings keep an idle connection open through servers' idle timeout (and find a dead
        // server before the next call does).
        .http2_keep_alive_interval(CLIENT_KEEPALIVE)
        .keep_alive_timeout(CLIENT_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()).map_err(|e| bad(e.to_string())),
        None => Ok(endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_only_on_loopback_unless_asked_for() {
        let plain = ServerTlsArgs::default();
        let on = |text: &str| text.parse::<SocketAddr>().expect("address");
        assert_eq!(plain.listen_address(None, 7400), on("127.0.0.1:7400"));
        assert_eq!(
            plain.transport(on("127.0.0.1:7400")).expect("loopback"),
            Transport::LoopbackPlaintext
        );
        assert_eq!(
            plain.transport(on("[::1]:7400")).expect("loopback"),
            Transport::LoopbackPlaintext
        );
        for address in ["0.0.0.0:7400", "192.0.2.1:7400", "[::]:7400"] {
            let refused = plain.transport(on(address)).expect_err(address).to_string();
            assert!(
                refused.contains("--tls-cert") && refused.contains("--insecure-plaintext"),
                "{refused}"
            );
        }
        let insecure = ServerTlsArgs {
            insecure_plaintext: true,
            ..ServerTlsArgs::default()
        };
        assert_eq!(
            insecure.transport(on("0.0.0.0:7400")).expect("asked for"),
            Transport::InsecurePlaintext
        );
        let tls = ServerTlsArgs {
            tls_cert: Some("server.pem".into()),
            tls_key: Some("server-key.pem".into()),
            tls_client_ca: Some("ca.pem".into()),
            ..ServerTlsArgs::default()
        };
        assert_eq!(tls.listen_address(None, 7400), on("0.0.0.0:7400"));
        assert_eq!(
            tls.transport(on("0.0.0.0:7400")).expect("mTLS"),
            Transport::MutualTls
        );
        for transport in [
            Transport::MutualTls,
            Transport::LoopbackPlaintext,
            Transport::InsecurePlaintext,
        ] {
            assert_eq!(
                Transport::from_header_value(transport.header_value()),
                Some(transport)
            );
        }
    }
}
