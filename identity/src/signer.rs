//! Signing node certificates: the CA's certificate and key (as `brindle certs` writes them), a
//! CSR from the agent's own key, and a certificate `CN=brindle:node:<node>` for client
//! authentication only, valid for the configured lifetime — the subject the CSR asks for is
//! ignored.

use std::path::Path;
use std::time::Duration;

use brindle_grpc_server::auth::NODE_PREFIX;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::IdentityError;

/// Shortest certificate lifetime accepted (tests rotate quickly; nothing shorter is useful).
pub const MIN_LIFETIME: Duration = Duration::from_secs(10);
/// How far back a certificate's validity starts (clocks of nodes differ a little).
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// A node certificate as issued.
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    /// The certificate (PEM).
    pub certificate_pem: String,
    /// The CA's certificate (PEM).
    pub ca_pem: String,
    /// When it expires (Unix seconds).
    pub not_after_unix: i64,
}

/// Signs node certificates with a CA.
pub struct NodeSigner {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    lifetime: Duration,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSigner")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn signing(reason: impl std::fmt::Display) -> IdentityError {
    IdentityError::Signing(reason.to_string())
}

impl NodeSigner {
    /// The CA in `ca_cert` and `ca_key` (PEM files), issuing certificates valid for `lifetime`.
    pub fn open(ca_cert: &Path, ca_key: &Path, lifetime: Duration) -> Result<Self, IdentityError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| signing(format!("reading {}: {e}", path.display())))
        };
        let (ca_pem, key_pem) = (read(ca_cert)?, read(ca_key)?);
        Self::from_pem(&ca_pem, &key_pem, lifetime)
    }

    /// The CA given as PEM text.
    pub fn from_pem(ca_pem: &str, key_pem: &str, lifetime: Duration) -> Result<Self, IdentityError> {
        if lifetime < MIN_LIFETIME {
            return Err(IdentityError::Invalid {
                field: "lifetime",
                reason: format!("{lifetime:?} is shorter than {MIN_LIFETIME:?}"),
            });
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| signing(format!("the CA key: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_pem(ca_pem, key).map_err(|e| signing(format!("the CA certificate: {e}")))?;
        Ok(Self {
            issuer,
            ca_pem: ca_pem.to_owned(),
            lifetime,
        })
    }

    /// How long the certificates it signs are valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A certificate for `node` for the key of `csr_pem` (its signature checked, its subject
    /// ignored).
    pub fn sign(&self, node: &str, csr_pem: &str) -> Result<SignedCertificate, IdentityError> {
        let invalid = |reason: String| IdentityError::Invalid {
            field: "csr_pem",
            reason,
        };
        let mut request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| invalid(format!("not a valid CSR: {e}")))?;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, format!("{NODE_PREFIX}{node}"));
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + self.lifetime;
        request.params = params;
        let certificate = request.signed_by(&self.issuer).map_err(signing)?;
        Ok(SignedCertificate {
            certificate_pem: certificate.pem(),
            ca_pem: self.ca_pem.clone(),
            not_after_unix: (now + self.lifetime).unix_timestamp(),
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, IsCa};

    use super::*;

    fn ca() -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let certificate = params.self_signed(&key).expect("CA");
        (certificate.pem(), key.serialize_pem())
    }

    #[test]
    fn a_certificate_names_the_node_given_not_the_one_asked_for() {
        let (ca_pem, key_pem) = ca();
        let signer = NodeSigner::from_pem(&ca_pem, &key_pem, Duration::from_secs(60)).expect("signer");
        let key = KeyPair::generate().expect("key");
        let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
        asked
            .distinguished_name
            .push(DnType::CommonName, "brindle:node:other");
        let csr = asked.serialize_request(&key).expect("csr").pem().expect("pem");
        let signed = signer.sign("mine", &csr).expect("signed");
        let (_, pem) = x509_parser::pem::parse_x509_pem(signed.certificate_pem.as_bytes()).expect("pem");
        let certificate = pem.parse_x509().expect("x509");
        let subject = certificate.subject().to_string();
        assert_eq!(subject, "CN=brindle:node:mine");
        assert!(certificate.subject_alternative_name().expect("parses").is_none());
        let lifetime =
            certificate.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp();
        assert!((50..=60).contains(&lifetime), "{lifetime}");

        assert!(matches!(
            signer.sign("mine", "garbage"),
            Err(IdentityError::Invalid { field: "csr_pem", .. })
        ));
        assert!(matches!(
            NodeSigner::from_pem(&ca_pem, &key_pem, Duration::from_secs(1)),
            Err(IdentityError::Invalid {
                field: "lifetime",
                ..
            })
        ));
    }
}
