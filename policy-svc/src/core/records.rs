//! How policy objects are kept in the datastore: their keys under `/brindle/v1/policy/`, their
//! JSON records, and decoding a record (or a deleted key) back into what the calculation needs.

use super::error::PolicyError;
use super::kubernetes;
use super::staged::StagedPolicy;
use policy_api::host_endpoint::HostEndpoint;
use policy_api::model::{
    Endpoint, EndpointKey, GLOBAL_ID_NAMESPACE, KUBERNETES_NAME_PREFIX, Namespace, Origin, Pod, Policy,
    PolicyId,
};
use policy_api::service_account::ServiceAccount;

/// Everything policy-svc stores.
pub const PREFIX: &str = "/brindle/v1/policy/";
const NAMESPACES: &str = "/brindle/v1/policy/namespaces/";
const ENDPOINTS: &str = "/brindle/v1/policy/endpoints/";
const POLICIES: &str = "/brindle/v1/policy/policies/";
const KUBERNETES_POLICIES: &str = "/brindle/v1/policy/k8s-policies/";
const GLOBAL_POLICIES: &str = "/brindle/v1/policy/global-policies/";
const PODS: &str = "/brindle/v1/policy/pods/";
const STAGED: &str = "/brindle/v1/policy/staged/";
const HOST_ENDPOINTS: &str = "/brindle/v1/policy/host-endpoints/";
const SERVICE_ACCOUNTS: &str = "/brindle/v1/policy/service-accounts/";

/// Key of a service account.
pub fn service_account_key(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNTS}{namespace}/{name}")
}

/// Key of a host endpoint.
pub fn host_endpoint_key(name: &str) -> String {
    format!("{HOST_ENDPOINTS}{name}")
}

/// Prefix of every Kubernetes pod.
pub fn pods_prefix() -> &'static str {
    PODS
}

/// Key of a Kubernetes pod.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{PODS}{namespace}/{name}")
}

/// Key of a namespace.
pub fn namespace_key(name: &str) -> String {
    format!("{NAMESPACES}{name}")
}

/// Prefix of every endpoint, or of one node's.
pub fn endpoints_prefix(node: Option<&str>) -> String {
    match node {
        Some(node) => format!("{ENDPOINTS}{node}/"),
        None => ENDPOINTS.to_owned(),
    }
}

/// Key of an endpoint.
pub fn endpoint_key(key: &EndpointKey) -> String {
    format!("{ENDPOINTS}{}/{}", key.node, key.interface)
}

/// Key of a policy.
pub fn policy_key(id: &PolicyId) -> String {
    match id {
        PolicyId::Namespaced { namespace, name } => format!("{POLICIES}{namespace}/{name}"),
        PolicyId::Kubernetes { namespace, name } => format!("{KUBERNETES_POLICIES}{namespace}/{name}"),
        PolicyId::Global { name } => format!("{GLOBAL_POLICIES}{name}"),
    }
}

/// Key of the staged policy standing for the enforced policy `id`.
pub fn staged_key(id: &PolicyId) -> String {
    let enforced = policy_key(id);
    format!("{STAGED}{}", enforced.trim_start_matches(PREFIX))
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A namespace.
    Namespace(String),
    /// An endpoint.
    Endpoint(EndpointKey),
    /// A policy.
    Policy(PolicyId),
    /// A Kubernetes pod (namespace, name).
    Pod(String, String),
    /// A staged policy, by the enforced policy it stands for.
    Staged(PolicyId),
    /// A host endpoint, by name.
    HostEndpoint(String),
    /// A service account (namespace, name).
    ServiceAccount(String, String),
}

/// What a key names; `None` for keys policy-svc does not own.
pub fn subject(key: &str) -> Option<Subject> {
    if let Some(rest) = key.strip_prefix(STAGED) {
        return match subject(&format!("{PREFIX}{rest}")) {
            Some(Subject::Policy(id)) => Some(Subject::Staged(id)),
            _ => None,
        };
    }
    let two = |rest: &str| rest.split_once('/').map(|(a, b)| (a.to_owned(), b.to_owned()));
    if let Some(name) = key.strip_prefix(NAMESPACES) {
        Some(Subject::Namespace(name.to_owned()))
    } else if let Some(name) = key.strip_prefix(HOST_ENDPOINTS) {
        Some(Subject::HostEndpoint(name.to_owned()))
    } else if let Some(rest) = key.strip_prefix(SERVICE_ACCOUNTS) {
        two(rest).map(|(namespace, name)| Subject::ServiceAccount(namespace, name))
    } else if let Some(rest) = key.strip_prefix(ENDPOINTS) {
        two(rest).map(|(node, interface)| Subject::Endpoint(EndpointKey { node, interface }))
    } else if let Some(rest) = key.strip_prefix(POLICIES) {
        two(rest).map(|(namespace, name)| Subject::Policy(PolicyId::Namespaced { namespace, name }))
    } else if let Some(rest) = key.strip_prefix(PODS) {
        two(rest).map(|(namespace, name)| Subject::Pod(namespace, name))
    } else if let Some(rest) = key.strip_prefix(KUBERNETES_POLICIES) {
        two(rest).map(|(namespace, name)| Subject::Policy(PolicyId::Kubernetes { namespace, name }))
    } else {
        key.strip_prefix(GLOBAL_POLICIES).map(|name| {
            Subject::Policy(PolicyId::Global {
                name: name.to_owned(),
            })
        })
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A namespace.
    Namespace(Namespace),
    /// An endpoint.
    Endpoint(Endpoint),
    /// A brindle policy, or a Kubernetes one translated (with the object as written).
    Policy(Policy, Option<Box<kubernetes::NetworkPolicy>>),
    /// A Kubernetes pod.
    Pod(Pod),
    /// A staged policy.
    Staged(Box<StagedPolicy>),
    /// A host endpoint.
    HostEndpoint(HostEndpoint),
    /// A service account's labels.
    ServiceAccount(ServiceAccount),
}

fn corrupt(key: &str, reason: impl ToString) -> PolicyError {
    PolicyError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

/// Decodes the record stored under `key`.
pub fn decode(key: &str, value: &[u8]) -> Result<Record, PolicyError> {
    match subject(key) {
        Some(Subject::Namespace(_)) => serde_json::from_slice(value)
            .map(Record::Namespace)
            .map_err(|e| corrupt(key, e)),
        Some(Subject::Endpoint(_)) => serde_json::from_slice(value)
            .map(Record::Endpoint)
            .map_err(|e| corrupt(key, e)),
        Some(Subject::Pod(..)) => serde_json::from_slice(value)
            .map(Record::Pod)
            .map_err(|e| corrupt(key, e)),
        Some(Subject::HostEndpoint(_)) => serde_json::from_slice(value)
            .map(Record::HostEndpoint)
            .map_err(|e| corrupt(key, e)),
        Some(Subject::ServiceAccount(..)) => serde_json::from_slice(value)
            .map(Record::ServiceAccount)
            .map_err(|e| corrupt(key, e)),
        Some(Subject::Policy(PolicyId::Kubernetes { .. })) => {
            let object: kubernetes::NetworkPolicy =
                serde_json::from_slice(value).map_err(|e| corrupt(key, e))?;
            let policy = object.to_policy().map_err(|e| corrupt(key, e))?;
            Ok(Record::Policy(policy, Some(Box::new(object))))
        }
        Some(Subject::Policy(_)) => serde_json::from_slice(value)
            .map(|policy| Record::Policy(policy, None))
            .map_err(|e| corrupt(key, e)),
        Some(Subject::Staged(id)) => {
            let staged: StagedPolicy = serde_json::from_slice(value).map_err(|e| corrupt(key, e))?;
            let staged = staged.stored_as(&id).map_err(|e| corrupt(key, e))?;
            Ok(Record::Staged(Box::new(staged)))
        }
        None => Err(corrupt(key, "not a policy-svc key")),
    }
}

/// Decodes the record stored under `key` for the calculation: a brindle policy whose id reads as
/// another kind's ([`PolicyId::reads_as_another_kind`], stored before such names were refused)
/// is refused, since enforcing it would replace the other policy's rules in every view holding
/// both; it stays readable and deletable through the API.
pub fn decode_enforced(key: &str, value: &[u8]) -> Result<Record, PolicyError> {
    let record = decode(key, value)?;
    match &record {
        Record::Policy(policy, None) if policy.id.reads_as_another_kind() => Err(PolicyError::NotEnforced {
            key: key.to_owned(),
            reason: format!(
                "its id {} is also another kind of policy's (a name starting with \
                 {KUBERNETES_NAME_PREFIX:?}, or a NetworkPolicy in the namespace \
                 {GLOBAL_ID_NAMESPACE:?}); delete it and create it under another name",
                policy.id
            ),
        }),
        _ => Ok(record),
    }
}

/// Whether the labels of a stored endpoint were set by the pod's owner (`SetEndpointLabels`):
/// they then stay when its node registers the endpoint again. Stored beside the endpoint's own
/// fields.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct OwnerMark {
    /// Labels set by the owner.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub labels_set_by_owner: bool,
}

/// The key and JSON record of an endpoint, with its owner mark.
pub fn encode_endpoint(endpoint: &Endpoint, mark: &OwnerMark) -> (String, Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Stored<'a> {
        #[serde(flatten)]
        endpoint: &'a Endpoint,
        #[serde(flatten)]
        mark: &'a OwnerMark,
    }
    let value = serde_json::to_vec(&Stored { endpoint, mark }).unwrap_or_default();
    (endpoint_key(&endpoint.key), value)
}

/// The owner mark of a stored endpoint (unmarked when the record does not say).
pub fn owner_mark(value: &[u8]) -> OwnerMark {
    serde_json::from_slice(value).unwrap_or_default()
}

/// Who owns a stored namespace or policy: the `origin` field stored beside its own fields
/// (absent: [`Origin::Apply`]).
pub fn stored_origin(value: &[u8]) -> Origin {
    #[derive(serde::Deserialize)]
    struct Mark {
        #[serde(default)]
        origin: Origin,
    }
    serde_json::from_slice::<Mark>(value).map_or(Origin::Apply, |mark| mark.origin)
}

/// The key and JSON record of a record owned by `origin`.
pub fn encode_owned(record: &Record, origin: Origin) -> (String, Vec<u8>) {
    let (key, value) = encode(record);
    if origin.is_apply() {
        return (key, value);
    }
    let mut object: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
    if let Some(fields) = object.as_object_mut() {
        fields.insert("origin".into(), serde_json::json!(origin));
    }
    (key, serde_json::to_vec(&object).unwrap_or_default())
}

/// The key and JSON record of a record.
pub fn encode(record: &Record) -> (String, Vec<u8>) {
    let encoded = match record {
        Record::Pod(pod) => (pod_key(&pod.namespace, &pod.name), serde_json::to_vec(pod)),
        Record::Namespace(namespace) => (namespace_key(&namespace.name), serde_json::to_vec(namespace)),
        Record::Endpoint(endpoint) => (endpoint_key(&endpoint.key), serde_json::to_vec(endpoint)),
        Record::Policy(policy, Some(object)) => (policy_key(&policy.id), serde_json::to_vec(object)),
        Record::Policy(policy, None) => (policy_key(&policy.id), serde_json::to_vec(policy)),
        Record::Staged(staged) => (staged_key(&staged.policy.id), serde_json::to_vec(staged)),
        Record::HostEndpoint(host) => (host_endpoint_key(&host.name), serde_json::to_vec(host)),
        Record::ServiceAccount(account) => (
            service_account_key(&account.namespace, &account.name),
            serde_json::to_vec(account),
        ),
    };
    // Serialising these plain structures to JSON cannot fail.
    (encoded.0, encoded.1.unwrap_or_default())
}
