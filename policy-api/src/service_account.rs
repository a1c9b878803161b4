//! Kubernetes ServiceAccounts as policies see them: their labels, which the endpoints of pods
//! running as the account carry under [`SERVICE_ACCOUNT_LABELS_PREFIX`] (Calico's `pcsa.`), so
//! that `serviceAccountSelector` and a rule's `serviceAccounts.selector` select by them.

use std::collections::BTreeMap;

use brindle_selector::Selector;
use serde::{Deserialize, Serialize};

use crate::model::SERVICE_ACCOUNT_LABEL;

/// What an endpoint's copy of its service account's labels starts with.
pub const SERVICE_ACCOUNT_LABELS_PREFIX: &str = "pcsa.";

/// A ServiceAccount: its namespace, name and labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Rewrites a service account selector to test the labels endpoints carry of their account; only
/// endpoints running as an account match it (`all()` included).
pub fn service_account_scoped(accounts: &Selector) -> Selector {
    Selector::And(vec![
        Selector::Has(SERVICE_ACCOUNT_LABEL.to_owned()),
        accounts.map_keys(&|key| format!("{SERVICE_ACCOUNT_LABELS_PREFIX}{key}")),
    ])
}
