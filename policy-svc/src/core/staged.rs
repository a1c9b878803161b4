//! Staged policies — Calico's StagedNetworkPolicy, StagedGlobalNetworkPolicy and
//! StagedKubernetesNetworkPolicy: a change to the enforced policies proposed but not made, either
//! `Set` (enforce this policy, creating or replacing the one of the same name) or `Delete` (remove
//! the enforced one of that name). They are stored and evaluated beside the enforced policies —
//! `policy trace` shows what they would decide — and never reach a node's view.

use serde::{Deserialize, Serialize};

use super::error::{PolicyError, invalid};
use super::kubernetes;
use super::policy_document::PolicyDocument;
use super::resource::{API_VERSION, CALICO_API_VERSION};
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

/// Parses a staged document of `kind` (`namespace` for namespaced kinds naming none).
pub fn parse(
    api_version: &str,
    kind: &str,
    mut value: yaml_serde::Value,
    namespace: &str,
) -> Result<StagedPolicy, PolicyError> {
    let decode = |e: yaml_serde::Error| invalid(kind, e.to_string());
    let action = take_action(&mut value)?;
    if action == StagedAction::Delete {
        // Only the name counts: whatever the spec says stands for nothing.
        let spec: yaml_serde::Value = if kind == "StagedKubernetesNetworkPolicy" {
            yaml_serde::from_str("{podSelector: {}}").map_err(decode)?
        } else {
            yaml_serde::Value::Mapping(yaml_serde::Mapping::new())
        };
        if let Some(mapping) = value.as_mapping_mut() {
            mapping.insert("spec".into(), spec);
        }
    }
    let set = |value: &mut yaml_serde::Value, field: &str, text: &str| {
        if let Some(mapping) = value.as_mapping_mut() {
            mapping.insert(field.into(), text.into());
        }
    };
    match enforced_kind(kind) {
        Some("KubernetesNetworkPolicy") => {
            if api_version != CALICO_API_VERSION {
                return Err(invalid(
                    "apiVersion",
                    format!("{api_version:?}: StagedKubernetesNetworkPolicy is {CALICO_API_VERSION}"),
                ));
            }
            set(&mut value, "apiVersion", "networking.k8s.io/v1");
            set(&mut value, "kind", "NetworkPolicy");
            let mut object: kubernetes::NetworkPolicy = yaml_serde::from_value(value).map_err(decode)?;
            object
                .metadata
                .namespace
                .get_or_insert_with(|| namespace.to_owned());
            Ok(StagedPolicy {
                action,
                policy: object.to_policy()?,
                kubernetes: Some(Box::new(object)),
            })
        }
        Some(enforced) => {
            set(&mut value, "apiVersion", API_VERSION);
            set(&mut value, "kind", enforced);
            let mut document: PolicyDocument = yaml_serde::from_value(value).map_err(decode)?;
            if enforced == "NetworkPolicy" {
                document
                    .metadata
                    .namespace
                    .get_or_insert_with(|| namespace.to_owned());
            }
            Ok(StagedPolicy {
                action,
                policy: document.to_policy()?,
                kubernetes: None,
            })
        }
        None => Err(invalid("kind", format!("{kind:?} is not a staged kind"))),
    }
}

impl StagedPolicy {
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
