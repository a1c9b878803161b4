//! Staged policies — Calico's StagedNetworkPolicy, StagedGlobalNetworkPolicy and
//! StagedKubernetesNetworkPolicy: a change to the enforced policies proposed but not made, either
//! `Set` (enforce this policy, creating or replacing the one of the same name) or `Delete` (remove
//! the enforced one of that name). They are stored and evaluated beside the enforced policies —
//! `policy trace` shows what they would decide — and never reach a node's view.

use serde::{Deserialize, Serialize};

use super::error::{PolicyError, invalid};
use super::kubernetes;
use super::policy_document::PolicyDocument;
use super::resource::CALICO_API_VERSION;
use policy_api::model::{Policy, PolicyId};

/// What enforcing a staged policy would do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StagedAction {
    /// Enforce the policy: create it, or replace the enforced one of the same name.
    #[default]
    Set,
    /// Delete the enforced policy of the same name.
    Delete,
}

impl StagedAction {
    fn parse(text: &str) -> Result<Self, PolicyError> {
        match text {
            "" | "Set" => Ok(Self::Set),
            "Delete" => Ok(Self::Delete),
            other => Err(invalid(
                "spec.stagedAction",
                format!("{other:?}: expected Set or Delete"),
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Set => "Set",
            Self::Delete => "Delete",
        }
    }
}

/// A staged policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagedPolicy {
    /// What enforcing it would do.
    pub action: StagedAction,
    /// The policy as it would be enforced; its id is the enforced policy's it stands for (for
    /// `Delete`, only the id counts).
    pub policy: Policy,
    /// A StagedKubernetesNetworkPolicy as written (with the Kubernetes object's fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Box<kubernetes::NetworkPolicy>>,
}

/// The enforced kind a staged kind stands for (`None`: not a staged kind).
pub fn enforced_kind(staged_kind: &str) -> Option<&'static str> {
    match staged_kind {
        "StagedNetworkPolicy" => Some("NetworkPolicy"),
        "StagedGlobalNetworkPolicy" => Some("GlobalNetworkPolicy"),
        "StagedKubernetesNetworkPolicy" => Some("KubernetesNetworkPolicy"),
        _ => None,
    }
}

/// Takes `spec.stagedAction` out of a document.
fn take_action(value: &mut yaml_serde::Value) -> Result<StagedAction, PolicyError> {
    let action = value
        .get_mut("spec")
        .and_then(yaml_serde::Value::as_mapping_mut)
        .and_then(|spec| spec.remove("stagedAction"));
    match action {
        None => Ok(StagedAction::Set),
        Some(yaml_serde::Value::String(text)) => StagedAction::parse(&text),
        Some(other) => Err(invalid(
            "spec.stagedAction",
            format!("{other:?}: expected Set or Delete"),
        )),
    }
}

/// A staged document of `kind` as the document of the kind it stands for, and its action. A
/// `Delete` names a policy and nothing else: any other spec field is refused.
pub fn unstage(
    api_version: &str,
    kind: &str,
    mut value: yaml_serde::Value,
) -> Result<(StagedAction, yaml_serde::Value), PolicyError> {
    let enforced =
        enforced_kind(kind).ok_or_else(|| invalid("kind", format!("{kind:?} is not a staged kind")))?;
    let action = take_action(&mut value)?;
    let kubernetes = enforced == "KubernetesNetworkPolicy";
    if kubernetes && api_version != CALICO_API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!("{api_version:?}: StagedKubernetesNetworkPolicy is {CALICO_API_VERSION}"),
        ));
    }
    if action == StagedAction::Delete {
        let spec = value.get("spec").and_then(yaml_serde::Value::as_mapping);
        if let Some(field) = spec.and_then(|spec| spec.keys().next()) {
            return Err(invalid(
                format!("spec.{}", field.as_str().unwrap_or("?")),
                "a staged Delete names the policy to delete and takes no spec besides stagedAction",
            ));
        }
        // What the enforced kind needs to be valid, and no more.
        let spec = if kubernetes {
            yaml_serde::from_str("{podSelector: {}}").map_err(|e| invalid("spec", e.to_string()))?
        } else {
            yaml_serde::Value::Mapping(yaml_serde::Mapping::new())
        };
        if let Some(mapping) = value.as_mapping_mut() {
            mapping.insert("spec".into(), spec);
        }
    }
    if let Some(mapping) = value.as_mapping_mut() {
        let (api_version, kind) = if kubernetes {
            ("networking.k8s.io/v1", "NetworkPolicy")
        } else {
            (api_version, enforced)
        };
        mapping.insert("apiVersion".into(), api_version.into());
        mapping.insert("kind".into(), kind.into());
    }
    Ok((action, value))
}

impl StagedPolicy {
    /// The staged policy as read back from under the key of `id`: a Kubernetes one translated
    /// again from the object as written (as enforced ones are); the policy must be `id`'s.
    pub fn stored_as(mut self, id: &PolicyId) -> Result<Self, PolicyError> {
        if let Some(object) = &self.kubernetes {
            self.policy = object.to_policy()?;
        }
        if self.policy.id != *id {
            return Err(invalid(
                "policy.id",
                format!("{} is stored under the key of {id}", self.policy.id),
            ));
        }
        Ok(self)
    }

    /// Its kind's name.
    pub fn kind(&self) -> &'static str {
        match (&self.policy.id, &self.kubernetes) {
            (_, Some(_)) => "StagedKubernetesNetworkPolicy",
            (PolicyId::Global { .. }, None) => "StagedGlobalNetworkPolicy",
            _ => "StagedNetworkPolicy",
        }
    }

    /// The document `apply` takes back.
    pub fn manifest(&self) -> Result<String, yaml_serde::Error> {
        if self.action == StagedAction::Delete {
            let (namespace, name) = match &self.policy.id {
                PolicyId::Global { name } => (None, name),
                PolicyId::Namespaced { namespace, name } | PolicyId::Kubernetes { namespace, name } => {
                    (Some(namespace), name)
                }
            };
            let mut metadata = yaml_serde::Mapping::new();
            metadata.insert("name".into(), name.as_str().into());
            if let Some(namespace) = namespace {
                metadata.insert("namespace".into(), namespace.as_str().into());
            }
            let mut spec = yaml_serde::Mapping::new();
            spec.insert("stagedAction".into(), self.action.name().into());
            let mut document = yaml_serde::Mapping::new();
            document.insert("apiVersion".into(), CALICO_API_VERSION.into());
            document.insert("kind".into(), self.kind().into());
            document.insert("metadata".into(), metadata.into());
            document.insert("spec".into(), spec.into());
            return yaml_serde::to_string(&document);
        }
        let mut value = match &self.kubernetes {
            Some(object) => yaml_serde::to_value(object)?,
            None => yaml_serde::to_value(PolicyDocument::from_policy(&self.policy))?,
        };
        if let Some(mapping) = value.as_mapping_mut() {
            mapping.insert("apiVersion".into(), CALICO_API_VERSION.into());
            mapping.insert("kind".into(), self.kind().into());
        }
        if let Some(spec) = value.get_mut("spec").and_then(yaml_serde::Value::as_mapping_mut) {
            spec.insert("stagedAction".into(), self.action.name().into());
        }
        yaml_serde::to_string(&value)
    }
}
