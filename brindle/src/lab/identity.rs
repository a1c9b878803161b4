//! Who is who in the lab: with mTLS (the default) a CA in the lab's directory, the control plane's
//! certificate for its underlay address, an administrator's for the lab's own calls and the CLI,
//! and for each agent a join token it trades for its node's certificate on the bootstrap port of
//! the all-in-one server or of ipam-svc — the flags each process takes, and the endpoints the
//! lab's calls connect to.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use brindle_grpc::{ClientTlsArgs, tls};
use tonic::transport::Endpoint;

use super::{BOOTSTRAP_PORT, Lab, Service, UNDERLAY};
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
            tls_server_name: None,
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

    /// The signing flags of the server agents bootstrap from (the all-in-one server, or
    /// ipam-svc): the CA, the bootstrap port, the certificates' lifetime; none in plain text.
    pub(super) fn signing_flags(&self) -> Vec<OsString> {
        let Some(tls) = self.tls.as_ref() else {
            return Vec::new();
        };
        let mut flags: Vec<OsString> = vec![
            "--signing-ca-cert".into(),
            tls.pki.ca().into(),
            "--signing-ca-key".into(),
            tls.pki.ca_key().into(),
            "--bootstrap-listen".into(),
            format!("{UNDERLAY}.1:{BOOTSTRAP_PORT}").into(),
        ];
        if let Some(lifetime) = self.spec.node_cert_lifetime {
            flags.extend(["--node-cert-lifetime".into(), lifetime.to_string().into()]);
        }
        flags
    }

    /// The client flags of the lab's administrator (none in plain text).
    pub(super) fn admin_flags(&self) -> Vec<OsString> {
        self.tls
            .as_ref()
            .map(|tls| tls.client_flags(&tls.admin))
            .unwrap_or_default()
    }

    /// The client flags of node `node`'s agent (none in plain text): a join token made for it
    /// and where to keep the certificate it buys.
    pub(super) fn node_flags(&self, node: &str) -> anyhow::Result<Vec<OsString>> {
        let Some(tls) = &self.tls else {
            return Ok(Vec::new());
        };
        let made = self
            .cli(&["node", "join-token", node, "--ttl", "3600"])
            .output()
            .context("brindle node join-token")?;
        if !made.status.success() {
            bail!(
                "a join token for {node}: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
        let token_file = self.dir.path().join(format!("{node}.token"));
        std::fs::write(&token_file, &made.stdout).context("writing the join token")?;
        Ok(vec![
            "--tls-ca".into(),
            tls.pki.ca().into(),
            "--cert-dir".into(),
            self.dir.path().join(format!("{node}-pki")).into(),
            "--join-token-file".into(),
            token_file.into(),
            "--bootstrap-endpoint".into(),
            format!("https://{UNDERLAY}.1:{BOOTSTRAP_PORT}").into(),
        ])
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

    /// The subject and expiry of the certificate node `node`'s agent obtained with its join token
    /// and keeps renewing (`None` without mTLS).
    pub fn node_certificate(&self, node: usize) -> anyhow::Result<Option<(String, String)>> {
        if self.tls.is_none() {
            return Ok(None);
        }
        let name = &self.nodes.get(node).context("no such node")?.name;
        let path = self.dir.path().join(format!("{name}-pki")).join("node.crt");
        let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).context("the node certificate is not PEM")?;
        let certificate = pem.parse_x509().context("the node certificate does not parse")?;
        Ok(Some((
            certificate.subject().to_string(),
            certificate.validity().not_after.to_string(),
        )))
    }

    /// Whether the lab's control plane speaks mTLS.
    pub fn mutual_tls(&self) -> bool {
        self.tls.is_some()
    }
}
