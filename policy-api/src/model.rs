//! Policy domain types: namespaces, workload endpoints, policies and their rules, already
//! validated (selectors parsed, nets and ports checked), as policy-svc stores and computes them.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use brindle_selector::Selector;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::service_account::{SERVICE_ACCOUNT_LABELS_PREFIX, service_account_scoped};

/// Label every endpoint carries with the name of its namespace.
pub const NAMESPACE_LABEL: &str = "brindle.io/namespace";
/// The same, under Calico's name, so Calico's policies select by namespace as written.
pub const CALICO_NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Prefix under which an endpoint carries its namespace's labels (`brindle.io/ns.<key>`), so one
/// selector can test pod and namespace labels together.
pub const NAMESPACE_LABELS_PREFIX: &str = "brindle.io/ns.";
/// Label Kubernetes puts on every namespace with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Order Kubernetes NetworkPolicies get among brindle policies (Calico's value).
pub const KUBERNETES_POLICY_ORDER: f64 = 1000.0;

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels (the `kubernetes.io/metadata.name` label is always present).
    pub labels: BTreeMap<String, String>,
}

impl Namespace {
    /// A namespace with `labels` plus its `kubernetes.io/metadata.name` label.
    pub fn new(name: impl Into<String>, mut labels: BTreeMap<String, String>) -> Self {
        let name = name.into();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        Self { name, labels }
    }
}

/// An IP protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
    /// ICMP (1).
    Icmp,
    /// ICMPv6 (58).
    Icmpv6,
    /// Any other protocol, by number.
    Number(u8),
}

impl Protocol {
    /// The IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
            Self::Number(n) => n,
        }
    }

    /// Whether rules may match ports of this protocol.
    pub fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp | Self::Sctp)
    }

    /// The protocol with IANA number `n`.
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Self::Tcp,
            17 => Self::Udp,
            132 => Self::Sctp,
            1 => Self::Icmp,
            58 => Self::Icmpv6,
            n => Self::Number(n),
        }
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "SCTP" => Ok(Self::Sctp),
            "ICMP" => Ok(Self::Icmp),
            "ICMPV6" => Ok(Self::Icmpv6),
            _ => match text.parse::<u8>() {
                Ok(n) if n > 0 => Ok(Self::from_number(n)),
                _ => Err(format!(
                    "{text:?} is not a protocol (TCP, UDP, SCTP, ICMP, ICMPv6 or a number 1-255)"
                )),
            },
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("TCP"),
            Self::Udp => f.write_str("UDP"),
            Self::Sctp => f.write_str("SCTP"),
            Self::Icmp => f.write_str("ICMP"),
            Self::Icmpv6 => f.write_str("ICMPv6"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

impl From<Protocol> for String {
    fn from(protocol: Protocol) -> Self {
        protocol.to_string()
    }
}

impl TryFrom<String> for Protocol {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// A port, a range of ports, or a named container port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PortMatch {
    /// Ports `first..=last` (a single port has `first == last`).
    Range {
        /// First port.
        first: u16,
        /// Last port, inclusive.
        last: u16,
    },
    /// A container port by name, resolved against each endpoint's named ports.
    Named(String),
}

impl PortMatch {
    /// Whether `port` falls in a numeric match (never true for a named one).
    pub fn contains(&self, port: u16) -> bool {
        matches!(self, Self::Range { first, last } if (*first..=*last).contains(&port))
    }
}

/// A named container port of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    /// Name (e.g. `http`).
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// Where an endpoint is: the node and its host-side interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointKey {
    /// Node the endpoint lives on.
    pub node: String,
    /// Host-side interface (`brd…`), unique per node.
    pub interface: String,
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.interface)
    }
}

/// Label every endpoint of a Kubernetes pod carries: the pod's service account (Calico's name).
pub const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";

/// Who owns a stored object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Created with `brindle apply` (or the API's Apply without an origin).
    #[default]
    Apply,
    /// Mirrored from the Kubernetes API by kube-sync; Kubernetes is its source of truth.
    Kubernetes,
}

impl Origin {
    /// The API's name: `""` for [`Origin::Apply`], `"kubernetes"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "",
            Self::Kubernetes => "kubernetes",
        }
    }

    /// Parses the API's name (`""` or `"apply"`, `"kubernetes"`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "" | "apply" => Ok(Self::Apply),
            "kubernetes" => Ok(Self::Kubernetes),
            other => Err(format!(
                "{other:?}: expected \"\" (brindle apply) or \"kubernetes\""
            )),
        }
    }

    /// Whether this is [`Origin::Apply`] (the default, not stored).
    pub fn is_apply(&self) -> bool {
        *self == Self::Apply
    }
}

/// A Kubernetes Pod as kube-sync mirrors it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.nodeName` (empty while unscheduled).
    #[serde(default)]
    pub node: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `spec.serviceAccountName`.
    #[serde(default)]
    pub service_account: String,
    /// Named container ports.
    #[serde(default)]
    pub ports: Vec<NamedPort>,
    /// Calico's IPAM annotations as written (the pod's own, else its namespace's).
    #[serde(default)]
    pub ipam_annotations: BTreeMap<String, String>,
}

impl Pod {
    /// The labels its endpoints carry: its own and its service account's — which only
    /// `spec.serviceAccountName` gives (a pod label of that key is dropped: policies match service
    /// accounts by it).
    pub fn endpoint_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.remove(SERVICE_ACCOUNT_LABEL);
        if !self.service_account.is_empty() {
            labels.insert(SERVICE_ACCOUNT_LABEL.to_owned(), self.service_account.clone());
        }
        labels
    }
}

/// A pod's network attachment, as the node agent registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Node and interface.
    pub key: EndpointKey,
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container (sandbox) id.
    pub container_id: String,
    /// Addresses of the pod on this attachment.
    pub ips: Vec<IpAddr>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Named container ports.
    pub ports: Vec<NamedPort>,
}

impl Endpoint {
    /// The labels selectors see: the pod's own, its namespace's name (under brindle's and
    /// Calico's key) and its namespace's labels (under [`NAMESPACE_LABELS_PREFIX`]). An endpoint
    /// without a namespace (a host endpoint) has its own labels only, so no namespace selector
    /// matches it. `account` is the labels of its service account (under
    /// [`SERVICE_ACCOUNT_LABELS_PREFIX`]).
    pub fn selector_labels(
        &self,
        namespace: Option<&Namespace>,
        account: Option<&BTreeMap<String, String>>,
    ) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        if self.namespace.is_empty() {
            return labels;
        }
        for (key, value) in account.into_iter().flatten() {
            labels.insert(format!("{SERVICE_ACCOUNT_LABELS_PREFIX}{key}"), value.clone());
        }
        labels.insert(NAMESPACE_LABEL.to_owned(), self.namespace.clone());
        labels.insert(CALICO_NAMESPACE_LABEL.to_owned(), self.namespace.clone());
        let mut namespace_labels = namespace.map(|n| n.labels.clone()).unwrap_or_default();
        namespace_labels.insert(NAMESPACE_NAME_LABEL.to_owned(), self.namespace.clone());
        for (key, value) in namespace_labels {
            labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{key}"), value);
        }
        labels
    }

    /// The port number a named port has on this endpoint.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Accept the packet.
    Allow,
    /// Drop the packet.
    Deny,
    /// Skip the remaining policies: the endpoint's default (allow) decides.
    Pass,
    /// Log the packet and go on with the next rule.
    Log,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "Allow",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
            Self::Log => "Log",
        })
    }
}

/// Direction of traffic relative to the endpoint a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Traffic to the endpoint.
    Ingress,
    /// Traffic from the endpoint.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// One side (source or destination) of a rule. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    /// Endpoints (by their selector labels) this side must be; scoped to the policy's namespace
    /// unless `namespace_selector` is set or the policy is global.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_selector")]
    pub selector: Option<Selector>,
    /// Endpoints this side must not be.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_selector")]
    pub not_selector: Option<Selector>,
    /// Namespaces (by their labels) this side's endpoint must be in.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_selector")]
    pub namespace_selector: Option<Selector>,
    /// Addresses this side must be in (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<IpNet>,
    /// Addresses this side must not be in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<IpNet>,
    /// Ports this side must use (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMatch>,
    /// Ports this side must not use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<PortMatch>,
    /// Service accounts (by name) this side's endpoint must run as, any of them; scoped like
    /// `selector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Service accounts (by their labels) this side's endpoint must run as; scoped like
    /// `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_selector")]
    pub service_account_selector: Option<Selector>,
}

/// An ICMP type, and optionally code, a rule matches (ICMP or ICMPv6 numbering, after the
/// rule's protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IcmpMatch {
    /// The type (0-254).
    #[serde(rename = "type")]
    pub icmp_type: u8,
    /// The code; `None`: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

impl IcmpMatch {
    /// A type (0-254; 255 is reserved) and optional code (0-255); the error names the part that
    /// is out of range (`type` or `code`) and why.
    pub fn new(icmp_type: u32, code: Option<u32>) -> Result<Self, (&'static str, String)> {
        let icmp_type = u8::try_from(icmp_type)
            .ok()
            .filter(|t| *t < 255)
            .ok_or_else(|| ("type", format!("{icmp_type} is not an ICMP type (0-254)")))?;
        let code = code
            .map(|code| {
                u8::try_from(code).map_err(|_| ("code", format!("{code} is not an ICMP code (0-255)")))
            })
            .transpose()?;
        Ok(Self { icmp_type, code })
    }
}

/// A rule: when the packet matches, `action` applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// What a match does.
    pub action: Action,
    /// Protocol the packet must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Protocol the packet must not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// ICMP type (and code) the packet must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpMatch>,
    /// ICMP type (and code) the packet must not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpMatch>,
    /// The sender.
    #[serde(default)]
    pub source: EntityRule,
    /// The receiver.
    #[serde(default)]
    pub destination: EntityRule,
    /// The rule's annotations (Calico's `metadata.annotations`): kept, never matched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which kind of object a policy came from, and so how it is named and scoped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PolicyId {
    /// A brindle NetworkPolicy in a namespace.
    Namespaced {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A Kubernetes NetworkPolicy in a namespace.
    Kubernetes {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A brindle GlobalNetworkPolicy.
    Global {
        /// Name.
        name: String,
    },
}

impl PolicyId {
    /// The namespace the policy lives in (`None` for a global one).
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Namespaced { namespace, .. } | Self::Kubernetes { namespace, .. } => Some(namespace),
            Self::Global { .. } => None,
        }
    }

    /// Whether this brindle policy's id reads as another kind's: a name starting with
    /// [`KUBERNETES_NAME_PREFIX`] (a Kubernetes NetworkPolicy's), or a NetworkPolicy in the
    /// namespace [`GLOBAL_ID_NAMESPACE`] (a GlobalNetworkPolicy's). Such a policy is refused when
    /// written and not enforced when found stored (written before it was refused).
    pub fn reads_as_another_kind(&self) -> bool {
        match self {
            Self::Namespaced { namespace, name } => {
                namespace == GLOBAL_ID_NAMESPACE || name.starts_with(KUBERNETES_NAME_PREFIX)
            }
            Self::Global { name } => name.starts_with(KUBERNETES_NAME_PREFIX),
            Self::Kubernetes { .. } => false,
        }
    }
}

/// What a Kubernetes NetworkPolicy's name is prefixed with in its id (`namespace/knp.name`): a
/// brindle policy's name may not start with it, or two policies would share an id.
pub const KUBERNETES_NAME_PREFIX: &str = "knp.";

/// What stands for the namespace in a global policy's id (`global/name`): a brindle
/// NetworkPolicy may not live in a namespace of that name, or it would share the id of the
/// GlobalNetworkPolicy of its name.
pub const GLOBAL_ID_NAMESPACE: &str = "global";

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Namespaced { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::Kubernetes { namespace, name } => write!(f, "{namespace}/{KUBERNETES_NAME_PREFIX}{name}"),
            Self::Global { name } => write!(f, "{GLOBAL_ID_NAMESPACE}/{name}"),
        }
    }
}

/// A policy of any kind, in brindle's terms (a Kubernetes NetworkPolicy converted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Kind, namespace and name.
    pub id: PolicyId,
    /// Lower applies first; `None` after every ordered policy; ties by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to (within its namespace unless global).
    #[serde(with = "required_selector")]
    pub selector: Selector,
    /// For a global policy: namespaces whose endpoints it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_selector")]
    pub namespace_selector: Option<Selector>,
    /// Service accounts (by their labels) whose endpoints it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "optional_selector")]
    pub service_account_selector: Option<Selector>,
    /// Whether it governs ingress.
    pub ingress_enabled: bool,
    /// Whether it governs egress.
    pub egress_enabled: bool,
    /// Ingress rules, in order.
    #[serde(default)]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default)]
    pub egress: Vec<Rule>,
}

impl Policy {
    /// Whether the policy governs `direction`.
    pub fn governs(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_enabled,
            Direction::Egress => self.egress_enabled,
        }
    }

    /// Rules for `direction`.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The selector (over [`Endpoint::selector_labels`]) of the endpoints the policy applies to.
    pub fn applies_to(&self) -> Selector {
        let mut parts = Vec::new();
        if let Some(namespace) = self.id.namespace() {
            parts.push(Selector::Equals(NAMESPACE_LABEL.to_owned(), namespace.to_owned()));
        }
        if let Some(namespaces) = &self.namespace_selector {
            parts.push(namespace_scoped(namespaces));
        }
        if let Some(accounts) = &self.service_account_selector {
            parts.push(service_account_scoped(accounts));
        }
        parts.push(self.selector.clone());
        Selector::And(parts).canonical()
    }

    /// The selector of the endpoints `side` must not be, `None` when it has no `notSelector`.
    pub fn entity_not_selector(&self, side: &EntityRule) -> Option<Selector> {
        side.not_selector
            .as_ref()
            .and_then(|not| self.scoped(side, Some(not)))
    }

    /// The selector of the endpoints `side` is limited to, `None` when it is not limited by
    /// identity: its `selector` and service accounts (by name and by labels), within the
    /// namespaces it names or the policy's own.
    pub fn entity_selector(&self, side: &EntityRule) -> Option<Selector> {
        let accounts = (!side.service_accounts.is_empty())
            .then(|| Selector::In(SERVICE_ACCOUNT_LABEL.to_owned(), side.service_accounts.clone()));
        let labelled = side.service_account_selector.as_ref().map(service_account_scoped);
        let identity: Vec<Selector> = side
            .selector
            .iter()
            .cloned()
            .chain(accounts)
            .chain(labelled)
            .collect();
        let identity = (!identity.is_empty()).then_some(Selector::And(identity));
        self.scoped(side, identity.as_ref())
    }

    /// `selector` limited to the namespaces `side` names, or to the policy's own namespace.
    fn scoped(&self, side: &EntityRule, selector: Option<&Selector>) -> Option<Selector> {
        let namespace = match (&side.namespace_selector, self.id.namespace()) {
            (Some(namespaces), _) => Some(namespace_scoped(namespaces)),
            (None, Some(own)) if selector.is_some() => {
                Some(Selector::Equals(NAMESPACE_LABEL.to_owned(), own.to_owned()))
            }
            (None, _) => None,
        };
        let parts: Vec<Selector> = namespace.into_iter().chain(selector.cloned()).collect();
        (!parts.is_empty()).then(|| Selector::And(parts).canonical())
    }
}

/// Rewrites a namespace selector to test the namespace labels endpoints carry; only endpoints in
/// a namespace match it (`all()` included), never a host endpoint.
fn namespace_scoped(namespaces: &Selector) -> Selector {
    Selector::And(vec![
        Selector::Has(NAMESPACE_LABEL.to_owned()),
        namespaces.map_keys(&|key| format!("{NAMESPACE_LABELS_PREFIX}{key}")),
    ])
}

/// Orders policies the way they are evaluated: by `order` (unset last), then by id.
pub fn evaluation_order(a: (&PolicyId, Option<f64>), b: (&PolicyId, Option<f64>)) -> Ordering {
    let rank = |order: Option<f64>| order.unwrap_or(f64::INFINITY);
    rank(a.1).total_cmp(&rank(b.1)).then_with(|| a.0.cmp(b.0))
}

/// Serde for a selector as its text.
mod required_selector {
    use brindle_selector::Selector;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(selector: &Selector, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(selector)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Selector, D::Error> {
        let text = String::deserialize(d)?;
        Selector::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for an optional selector as its text.
mod optional_selector {
    use brindle_selector::Selector;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(selector: &Option<Selector>, s: S) -> Result<S::Ok, S::Error> {
        match selector {
            Some(selector) => s.collect_str(selector),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Selector>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| Selector::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
