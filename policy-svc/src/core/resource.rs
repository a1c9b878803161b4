//! The objects operators write (`brindle apply -f`): a stream of YAML (or JSON) documents, each a
//! Namespace, a brindle NetworkPolicy or GlobalNetworkPolicy (`brindle.io/v1`, or Calico's
//! `projectcalico.org/v3` as written — the same fields: `policy_document`), a staged policy
//! (`staged`), a HostEndpoint (`host_endpoints`) or a Kubernetes NetworkPolicy
//! (`networking.k8s.io/v1`), each parsed by its kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{PolicyError, invalid};
use super::host_endpoints::HostEndpointDocument;
use super::kubernetes::{self, DEFAULT_NAMESPACE};
use super::policy_document::PolicyDocument;
use super::records::Record;
use super::staged;
use super::validate;
use policy_api::host_endpoint::HostEndpoint;
use policy_api::model::{Namespace, Policy};
use policy_api::service_account::ServiceAccount;

/// API version of brindle's own kinds.
pub const API_VERSION: &str = "brindle.io/v1";
/// Calico's API version, whose policies brindle's share their fields with.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";

/// One object.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A namespace and its labels.
    Namespace(Namespace),
    /// A brindle NetworkPolicy or GlobalNetworkPolicy.
    Policy(Policy),
    /// A Kubernetes NetworkPolicy, kept as written (its translation is `to_policy`).
    KubernetesPolicy(kubernetes::NetworkPolicy),
    /// A staged policy (computed, never enforced).
    Staged(Box<staged::StagedPolicy>),
    /// A host endpoint.
    HostEndpoint(HostEndpoint),
    /// A service account's labels.
    ServiceAccount(ServiceAccount),
}

impl Resource {
    /// What is stored of it (a Kubernetes policy with its translation).
    pub fn into_record(self) -> Result<Record, PolicyError> {
        Ok(match self {
            Self::Namespace(namespace) => Record::Namespace(namespace),
            Self::Policy(policy) => Record::Policy(policy, None),
            Self::KubernetesPolicy(object) => Record::Policy(object.to_policy()?, Some(Box::new(object))),
            Self::Staged(staged) => Record::Staged(staged),
            Self::HostEndpoint(host) => Record::HostEndpoint(host),
            Self::ServiceAccount(account) => Record::ServiceAccount(account),
        })
    }
}

/// The fields every document has.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypeMeta {
    /// `apiVersion`, empty when absent.
    #[serde(default)]
    pub api_version: String,
    /// `kind`, empty when absent.
    #[serde(default)]
    pub kind: String,
}

/// `metadata` of brindle kinds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metadata {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace (namespaced kinds; `default` when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels (Namespace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A Namespace document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NamespaceDocument {
    metadata: Metadata,
}

/// A ServiceAccount document: what policies see of it (its labels), nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountDocument {
    api_version: String,
    kind: String,
    metadata: ServiceAccountMetadata,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceAccountMetadata {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

impl ServiceAccountDocument {
    /// The document of a service account.
    pub fn of(account: &ServiceAccount) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "ServiceAccount".into(),
            metadata: ServiceAccountMetadata {
                name: account.name.clone(),
                namespace: Some(account.namespace.clone()),
                labels: account.labels.clone(),
            },
        }
    }
}

/// Parses every document of `text`; namespaced objects that name no namespace go to `namespace`
/// (`default` when empty). `index` in errors counts documents from 0.
pub fn parse_documents(text: &str, namespace: &str) -> Result<Vec<Resource>, PolicyError> {
    let namespace = if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    };
    let mut resources = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = yaml_serde::Value::deserialize(document)
            .map_err(|e| invalid(format!("document {index}"), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        resources.push(parse_value(value, namespace).map_err(|e| match e {
            PolicyError::Invalid { field, reason } => invalid(format!("document {index}: {field}"), reason),
            other => other,
        })?);
    }
    Ok(resources)
}

fn parse_value(value: yaml_serde::Value, namespace: &str) -> Result<Resource, PolicyError> {
    let meta: TypeMeta =
        yaml_serde::from_value(value.clone()).map_err(|e| invalid("apiVersion", e.to_string()))?;
    let decode = |e: yaml_serde::Error| invalid(meta.kind.clone(), e.to_string());
    match (meta.api_version.as_str(), meta.kind.as_str()) {
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            let mut policy: kubernetes::NetworkPolicy = yaml_serde::from_value(value).map_err(decode)?;
            policy
                .metadata
                .namespace
                .get_or_insert_with(|| namespace.to_owned());
            policy.to_policy()?;
            Ok(Resource::KubernetesPolicy(policy))
        }
        ("v1", "Namespace") | (API_VERSION, "Namespace") => {
            let document: NamespaceDocument = yaml_serde::from_value(value).map_err(decode)?;
            validate::name("metadata.name", &document.metadata.name, false)?;
            Ok(Resource::Namespace(Namespace::new(
                document.metadata.name,
                document.metadata.labels,
            )))
        }
        (API_VERSION | CALICO_API_VERSION, kind) if staged::enforced_kind(kind).is_some() => {
            let (action, value) = staged::unstage(&meta.api_version, kind, value)?;
            let (policy, kubernetes) = match parse_value(value, namespace)? {
                Resource::Policy(policy) => (policy, None),
                Resource::KubernetesPolicy(object) => (object.to_policy()?, Some(Box::new(object))),
                other => return Err(invalid("kind", format!("{kind:?} stands for {other:?}"))),
            };
            Ok(Resource::Staged(Box::new(staged::StagedPolicy {
                action,
                policy,
                kubernetes,
            })))
        }
        ("v1", "ServiceAccount") => {
            let document: ServiceAccountDocument = yaml_serde::from_value(value).map_err(decode)?;
            let metadata = document.metadata;
            let namespace = metadata.namespace.unwrap_or_else(|| namespace.to_owned());
            validate::name("metadata.namespace", &namespace, false)?;
            validate::name("metadata.name", &metadata.name, true)?;
            Ok(Resource::ServiceAccount(ServiceAccount {
                namespace,
                name: metadata.name,
                labels: metadata.labels,
            }))
        }
        (API_VERSION | CALICO_API_VERSION, "HostEndpoint") => {
            HostEndpointDocument::parse(value).map(Resource::HostEndpoint)
        }
        (API_VERSION | CALICO_API_VERSION, "NetworkPolicy" | "GlobalNetworkPolicy") => {
            let mut document: PolicyDocument = yaml_serde::from_value(value).map_err(decode)?;
            if document.kind == "NetworkPolicy" {
                document
                    .metadata
                    .namespace
                    .get_or_insert_with(|| namespace.to_owned());
            }
            Ok(Resource::Policy(document.to_policy()?))
        }
        (version, kind) => Err(invalid(
            "kind",
            format!(
                "{kind:?} of {version:?} is not a kind brindle knows (Namespace; {API_VERSION} or \
                 {CALICO_API_VERSION} NetworkPolicy, GlobalNetworkPolicy, StagedNetworkPolicy, \
                 StagedGlobalNetworkPolicy, HostEndpoint; {CALICO_API_VERSION} StagedKubernetesNetworkPolicy; \
                 networking.k8s.io/v1 NetworkPolicy; v1 ServiceAccount)"
            ),
        )),
    }
}
