//! `brindle certs --kubernetes-namespace`: the CA and the services' and administrators'
//! certificates kept as Secrets, and the CA certificate as a ConfigMap for the agents — what
//! deploy/kubernetes' bootstrap Job runs. Made once: a Secret that exists is kept, so running it
//! again (a Job retried, a re-apply) changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, PostParams};

use super::{Issued, Pki, write};

/// The CA certificate and its key (mounted only where node certificates are signed).
pub const CA_SECRET: &str = "brindle-ca";
/// The services' server certificate (`tls.crt`, `tls.key`, `ca.crt`).
pub const SERVICES_SECRET: &str = "brindle-services-tls";
/// The CA certificate alone (`ca.crt`), which agents verify the services with.
pub const CA_CONFIG_MAP: &str = "brindle-ca";

/// An administrator's certificate's Secret.
pub fn admin_secret(name: &str) -> String {
    format!("brindle-admin-{name}-tls")
}

/// What became of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Made now.
    Created,
    /// Already there, left as it was.
    Kept,
    /// Replaced to match the CA.
    Updated,
}

const LABELS: [(&str, &str); 1] = [("app.kubernetes.io/part-of", "brindle")];

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(
            LABELS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The text of `key` in a Secret.
fn secret_text(secret: &Secret, key: &str) -> anyhow::Result<String> {
    let name = secret.metadata.name.as_deref().unwrap_or_default();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .with_context(|| format!("Secret {name} has no {key:?}"))?;
    String::from_utf8(bytes.0.clone()).with_context(|| format!("Secret {name}: {key:?} is not text"))
}

/// Creates `secret`; refuses when another run made it meanwhile (run again to use that one).
async fn create(secrets: &Api<Secret>, secret: Secret) -> anyhow::Result<()> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            bail!("Secret {name} was created by someone else meanwhile; run again to keep it")
        }
        Err(error) => Err(error).with_context(|| format!("creating Secret {name}")),
    }
}

fn tls_secret(name: &str, issued: &Issued, ca_pem: &str) -> anyhow::Result<Secret> {
    let data = [
        ("tls.crt", read(&issued.cert)?),
        ("tls.key", read(&issued.key)?),
        ("ca.crt", ca_pem.to_owned()),
    ];
    Ok(Secret {
        metadata: metadata(name),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            data.into_iter()
                .map(|(key, text)| (key.to_owned(), ByteString(text.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    })
}

/// A certificate Secret: kept when it exists (it must be the CA's), else issued and created.
async fn certificate_secret(
    secrets: &Api<Secret>,
    name: &str,
    ca_pem: &str,
    issue: impl FnOnce() -> anyhow::Result<Issued>,
) -> anyhow::Result<Outcome> {
    if let Some(existing) = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {name}"))?
    {
        if secret_text(&existing, "ca.crt")? != ca_pem {
            bail!(
                "Secret {name} was issued by another CA than Secret {CA_SECRET}'s: delete it to issue it again"
            );
        }
        return Ok(Outcome::Kept);
    }
    create(secrets, tls_secret(name, &issue()?, ca_pem)?).await?;
    Ok(Outcome::Created)
}

/// The CA (from its Secret, or made and stored), the services' certificate for `servers` (when
/// any), one per administrator, and the CA's ConfigMap, in `namespace`; what became of each.
pub async fn issue(
    client: kube::Client,
    namespace: &str,
    servers: &[String],
    admins: &[String],
) -> anyhow::Result<Vec<(String, Outcome)>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let work = tempfile::tempdir().context("a private working directory")?;
    let existing = secrets
        .get_opt(CA_SECRET)
        .await
        .with_context(|| format!("reading Secret {CA_SECRET}"))?;
    if let Some(ca) = &existing {
        write(&work.path().join("ca.crt"), &secret_text(ca, "ca.crt")?, false)?;
        write(&work.path().join("ca.key"), &secret_text(ca, "ca.key")?, true)?;
    }
    let pki = Pki::open_or_create(work.path())?;
    let ca_pem = read(&pki.ca())?;
    let mut done = Vec::new();
    if existing.is_some() {
        done.push((format!("Secret {CA_SECRET}"), Outcome::Kept));
    } else {
        let data: BTreeMap<String, ByteString> =
            [("ca.crt", ca_pem.clone()), ("ca.key", read(&pki.ca_key())?)]
                .into_iter()
                .map(|(key, text)| (key.to_owned(), ByteString(text.into_bytes())))
                .collect();
        let secret = Secret {
            metadata: metadata(CA_SECRET),
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        };
        create(&secrets, secret).await?;
        done.push((format!("Secret {CA_SECRET}"), Outcome::Created));
    }
    if !servers.is_empty() {
        let outcome = certificate_secret(&secrets, SERVICES_SECRET, &ca_pem, || pki.server(servers)).await?;
        done.push((format!("Secret {SERVICES_SECRET}"), outcome));
    }
    for admin in admins {
        let name = admin_secret(admin);
        let outcome = certificate_secret(&secrets, &name, &ca_pem, || pki.admin(admin)).await?;
        done.push((format!("Secret {name}"), outcome));
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config_map = ConfigMap {
        metadata: metadata(CA_CONFIG_MAP),
        data: Some([("ca.crt".to_owned(), ca_pem.clone())].into()),
        ..ConfigMap::default()
    };
    let outcome = match config_maps
        .get_opt(CA_CONFIG_MAP)
        .await
        .with_context(|| format!("reading ConfigMap {CA_CONFIG_MAP}"))?
    {
        Some(current) if current.data == config_map.data => Outcome::Kept,
        Some(_) => {
            config_maps
                .replace(CA_CONFIG_MAP, &PostParams::default(), &config_map)
                .await
                .with_context(|| format!("replacing ConfigMap {CA_CONFIG_MAP}"))?;
            Outcome::Updated
        }
        None => {
            config_maps
                .create(&PostParams::default(), &config_map)
                .await
                .with_context(|| format!("creating ConfigMap {CA_CONFIG_MAP}"))?;
            Outcome::Created
        }
    };
    done.push((format!("ConfigMap {CA_CONFIG_MAP}"), outcome));
    Ok(done)
}
