//! Who is calling and what they may do. With mTLS the identity is the client certificate's: a node
//! agent's certificate names its node (`CN=brindle:node:<name>`, Kubernetes' convention for
//! kubelets), an administrator's carries the organisation `brindle:admins`. Nodes may act for
//! their own node only; changes to pools, policies and other nodes are the administrators'.
//! Without TLS every caller is trusted (a lab, or a single node on a private network).

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Common-name prefix of a node agent's certificate.
pub const NODE_PREFIX: &str = "brindle:node:";
/// Organisation of administrators' certificates.
pub const ADMINS: &str = "brindle:admins";

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server runs without TLS: everyone is trusted.
    Trusted,
    /// A node agent, by node name.
    Node(String),
    /// An administrator, by certificate common name.
    Admin(String),
}

impl Caller {
    /// The caller of `request`. Servers with TLS require a client certificate in the handshake,
    /// so a request without one came over plain text. A certificate that is neither a node's nor
    /// an administrator's is refused.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        let Some(certificates) = request.peer_certs() else {
            return Ok(Self::Trusted);
        };
        let certificate = certificates
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        Self::from_certificate(certificate.as_ref())
    }

    /// The identity a DER certificate carries.
    pub fn from_certificate(der: &[u8]) -> Result<Self, Status> {
        let (_, certificate) = X509Certificate::from_der(der)
            .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
        let subject = certificate.subject();
        if subject
            .iter_organization()
            .any(|o| o.as_str().is_ok_and(|o| o == ADMINS))
        {
            let name = subject
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .unwrap_or("admin");
            return Ok(Self::Admin(name.to_owned()));
        }
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default();
        match common_name.strip_prefix(NODE_PREFIX) {
            Some(node) if !node.is_empty() => Ok(Self::Node(node.to_owned())),
            _ => Err(Status::permission_denied(format!(
                "client certificate CN={common_name:?} is neither a node's ({NODE_PREFIX}<name>) \
                 nor an administrator's (O={ADMINS})"
            ))),
        }
    }

    /// Allows administrators (and everyone without TLS) to `action`.
    pub fn require_admin(&self, action: &str) -> Result<(), Status> {
        match self {
            Self::Trusted | Self::Admin(_) => Ok(()),
            Self::Node(node) => Err(Status::permission_denied(format!(
                "node {node} may not {action}: administrators only"
            ))),
        }
    }

    /// Allows node `node` itself (and administrators, and everyone without TLS) to `action`.
    pub fn require_node(&self, node: &str, action: &str) -> Result<(), Status> {
        match self {
            Self::Node(caller) if caller != node => Err(Status::permission_denied(format!(
                "node {caller} may not {action} for node {node:?}"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn certificate(common_name: &str, organisation: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        if let Some(organisation) = organisation {
            name.push(DnType::OrganizationName, organisation);
        }
        params.distinguished_name = name;
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().to_vec()
    }

    #[test]
    fn identities_come_from_the_subject() {
        assert_eq!(
            Caller::from_certificate(&certificate("brindle:node:n1", None)).expect("node"),
            Caller::Node("n1".into())
        );
        assert_eq!(
            Caller::from_certificate(&certificate("alice", Some(ADMINS))).expect("admin"),
            Caller::Admin("alice".into())
        );
        let refused = Caller::from_certificate(&certificate("web", Some("acme"))).expect_err("neither");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn nodes_act_for_themselves_only() {
        let node = Caller::Node("n1".into());
        assert!(node.require_node("n1", "claim blocks").is_ok());
        let denied = node.require_node("n2", "claim blocks").expect_err("other node");
        assert!(
            denied
                .message()
                .contains("node n1 may not claim blocks for node \"n2\"")
        );
        assert!(node.require_admin("change pools").is_err());
        assert!(Caller::Admin("a".into()).require_node("n2", "x").is_ok());
        assert!(Caller::Trusted.require_admin("x").is_ok());
    }
}
