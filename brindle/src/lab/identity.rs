//! Who is who in the lab: with mTLS (the default) a CA in the lab's directory, the control plane's
//! certificate for its underlay address, an administrator's for the lab's own calls and the CLI,
//! and one per node for its agent — the flags each process takes, and the endpoints the lab's
//! calls connect to.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use brindle_grpc::{ClientTlsArgs, tls};
use tonic::transport::Endpoint;

use super::{Lab, Service, UNDERLAY};
use crate::certs::{Issued, Pki};

/// How long one of the lab's calls may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The administrator the lab acts as.
const ADMIN: &str = "lab-admin";

/// The lab's certificates.
pub(super) struct LabTls {
    pki: Pki,
    server: Issued,
    admin: Issued,
}

impl LabTls {
    /// A CA, the control plane's certificate and the administrator's, in `dir`.
    pub(super) fn create(dir: &Path) -> anyhow::Result<Self> {
        let pki = Pki::open_or_create(dir)?;
        let server = pki.server(&[format!("{UNDERLAY}.1")])?;
        let admin = pki.admin(ADMIN)?;
        Ok(Self { pki, server, admin })
    }

    fn client(&self, issued: &Issued) -> ClientTlsArgs {
        ClientTlsArgs {
            tls_ca: Some(self.pki.ca()),
            tls_cert: Some(issued.cert.clone()),
            tls_key: Some(issued.key.clone()),
        }
    }

    fn client_flags(&self, issued: &Issued) -> Vec<OsString> {
        vec![
            "--tls-ca".into(),
            self.pki.ca().into(),
            "--tls-cert".into(),
            issued.cert.clone().into(),
            "--tls-key".into(),
            issued.key.clone().into(),
        ]
    }
}

impl Lab {
    /// A server's flags: its certificate and the client CA, or the opt-in to plain text.
    pub(super) fn server_transport_flags(&self) -> Vec<OsString> {
        match &self.tls {
            Some(tls) => vec![
                "--tls-cert".into(),
                tls.server.cert.clone().into(),
                "--tls-key".into(),
                tls.server.key.clone().into(),
                "--tls-client-ca".into(),
                tls.pki.ca().into(),
            ],
            // The lab's underlay is a network of its own namespaces.
            None => vec!["--insecure-plaintext".into()],
        }
    }

    /// The client flags of the lab's administrator (none in plain text).
    pub(super) fn admin_flags(&self) -> Vec<OsString> {
        self.tls
            .as_ref()
            .map(|tls| tls.client_flags(&tls.admin))
            .unwrap_or_default()
    }

    /// The client flags of node `node`'s agent, its certificate issued first (none in plain text).
    pub(super) fn node_flags(&self, node: &str) -> anyhow::Result<Vec<OsString>> {
        match &self.tls {
            Some(tls) => Ok(tls.client_flags(&tls.pki.node(node)?)),
            None => Ok(Vec::new()),
        }
    }

    /// An endpoint of `service` for the lab's administrator.
    pub(super) fn admin_endpoint(&self, service: Service) -> anyhow::Result<Endpoint> {
        let config = match &self.tls {
            Some(tls) => tls.client(&tls.admin).config()?,
            None => None,
        };
        Ok(tls::endpoint(
            &self.endpoint(service),
            config.as_ref(),
            CONNECT_TIMEOUT,
        )?)
    }

    /// Whether the lab's control plane speaks mTLS.
    pub fn mutual_tls(&self) -> bool {
        self.tls.is_some()
    }
}
