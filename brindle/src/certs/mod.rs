//! A small PKI for a lab or a small cluster: a CA, and certificates for the services (server
//! certificates for their host names and addresses), for nodes (`CN=brindle:node:<name>`) and for
//! administrators (`O=brindle:admins`), written as PEM files; private keys are mode 0600. On
//! Kubernetes, [`kubernetes`] keeps them as Secrets.

pub mod kubernetes;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use brindle_grpc_server::auth::{ADMINS, NODE_PREFIX};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// How long issued certificates are valid.
const VALIDITY_DAYS: i64 = 365;
/// How long the CA is valid.
const CA_VALIDITY_DAYS: i64 = 3650;

/// A certificate and its key, as written.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// The CA of a directory, able to issue certificates into it.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// The CA's parameters: the same every time, so a CA key read back signs as the CA it made.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "brindle CA");
    name.push(DnType::OrganizationName, "brindle");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
    Ok(params)
}

/// Refuses a node or administrator name that is not a DNS-1123 subdomain (what node names are;
/// it becomes part of a file name, so `../x` or `a/b` must never get that far).
fn name_in_file(flag: &str, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        route_api::model::valid_node_name(name),
        "{flag} {name:?}: not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)"
    );
    Ok(())
}

/// Writes `contents` to `path`, readable by its owner only when `private`.
fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

impl Pki {
    /// The CA in `dir` (`ca.crt`, `ca.key`), created first when the directory has none.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key_path = dir.join("ca.key");
        let key = if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            KeyPair::from_pem(&pem).with_context(|| format!("{}: not a private key", key_path.display()))?
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write(&key_path, &key.serialize_pem(), true)?;
            write(&dir.join("ca.crt"), &cert.pem(), false)?;
            key
        };
        Ok(Self {
            dir: dir.to_owned(),
            issuer: Issuer::new(ca_params()?, key),
        })
    }

    /// The CA certificate's path.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA key's path.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    fn issue(
        &self,
        stem: &str,
        names: Vec<String>,
        subject: DistinguishedName,
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name = subject;
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        };
        write(&issued.cert, &cert.pem(), false)?;
        write(&issued.key, &key.serialize_pem(), true)?;
        Ok(issued)
    }

    /// `server.crt`: the services' certificate for `hosts` (names and addresses; `localhost` and
    /// `127.0.0.1` are always included).
    pub fn server(&self, hosts: &[String]) -> anyhow::Result<Issued> {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
        names.extend(
            hosts
                .iter()
                .filter(|h| !names.contains(h))
                .cloned()
                .collect::<Vec<_>>(),
        );
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, "brindle server");
        self.issue("server", names, subject, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// `node-<node>.crt`: node `node`'s agent.
    pub fn node(&self, node: &str) -> anyhow::Result<Issued> {
        name_in_file("--node", node)?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, format!("{NODE_PREFIX}{node}"));
        self.issue(
            &format!("node-{node}"),
            Vec::new(),
            subject,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// `admin-<name>.crt`: an administrator.
    pub fn admin(&self, name: &str) -> anyhow::Result<Issued> {
        name_in_file("--admin", name)?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        subject.push(DnType::OrganizationName, ADMINS);
        self.issue(
            &format!("admin-{name}"),
            Vec::new(),
            subject,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use brindle_grpc_server::auth::Caller;

    use super::*;

    fn der(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).expect("certificate");
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
        pem.contents
    }

    #[test]
    fn names_that_are_not_dns_subdomains_are_refused_before_any_file_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::open_or_create(dir.path()).expect("CA");
        let before: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        for bad in ["../x", "a/b", "", "Node", "x\n"] {
            let error = pki.node(bad).expect_err(bad).to_string();
            assert!(error.contains("--node") && error.contains("DNS-1123"), "{error}");
            assert!(pki.admin(bad).is_err(), "{bad:?}");
        }
        assert!(!dir.path().parent().expect("parent").join("x.crt").exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), before.len());
        pki.node("node-1.example.com")
            .expect("a subdomain is a node name");
    }

    #[test]
    fn identities_are_what_the_services_read_and_the_ca_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::open_or_create(dir.path()).expect("CA");
        let node = pki.node("n1").expect("node");
        let admin = pki.admin("alice").expect("admin");
        assert_eq!(
            Caller::from_certificate(&der(&node.cert)).expect("node"),
            Caller::Node("n1".into())
        );
        assert_eq!(
            Caller::from_certificate(&der(&admin.cert)).expect("admin"),
            Caller::Admin("alice".into())
        );
        let mode = std::fs::metadata(&node.key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let ca = std::fs::read(pki.ca()).expect("CA");
        let again = Pki::open_or_create(dir.path()).expect("reopen");
        again.server(&["brindle.example".into()]).expect("server");
        assert_eq!(
            std::fs::read(again.ca()).expect("CA"),
            ca,
            "the CA is reused, not replaced"
        );
    }
}
