//! The synthetic cluster bench-scale writes straight into etcd: nodes, namespaces, every pod's
//! endpoint and a mix of Kubernetes, brindle and global policies, as datastore key/values.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use brindle_selector::Selector;
use ipam_api::keys;
use ipam_api::model::Block;
use policy_api::model::{
    Action, Endpoint, EndpointKey, EntityRule, NamedPort, Namespace, Policy, PolicyId, PortMatch, Protocol,
    Rule,
};
use policy_svc::core::kubernetes::NetworkPolicy;
use policy_svc::core::records::{Record, encode, policy_key};
use route_api::Node;
use serde_json::json;

/// Pods per node (Kubernetes allows 110; clusters at the 5,000-node limit average 30).
pub const PODS_PER_NODE: usize = 30;
/// Namespaces, whatever the node count.
pub const NAMESPACES: usize = 500;
/// Apps per namespace (`app: a-N`).
const APPS: usize = 10;
/// Tiers (`tier`), a pod's role in its app.
const TIERS: [&str; 3] = ["web", "api", "db"];
/// Teams owning namespaces (`team: t-N`).
const TEAMS: usize = 25;
/// Environments of namespaces (`env`).
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
/// The first namespaces are labelled `role: monitoring`: their pods may scrape every app.
const MONITORING_NAMESPACES: usize = 2;
/// The namespace of the cluster DNS pods (`k8s-app: kube-dns`, app a-0 of it).
const DNS_NAMESPACE: usize = 2;
/// Global (cluster-wide) policies.
const GLOBAL_POLICIES: usize = 100;
/// Namespaces with an egress Kubernetes policy (the rest of the 2,000).
const EGRESS_NAMESPACES: usize = 400;

/// Nodes, pods and policies of one cluster size.
#[derive(Debug, Clone, Copy)]
pub struct Cluster {
    nodes: usize,
}

impl Cluster {
    /// A cluster of `nodes` nodes with [`PODS_PER_NODE`] pods each.
    pub fn new(nodes: usize) -> Self {
        Self { nodes }
    }

    /// Nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Pods (one endpoint each).
    pub fn pods(&self) -> usize {
        self.nodes * PODS_PER_NODE
    }

    /// Name of node `index`.
    pub fn node_name(index: usize) -> String {
        format!("node-{index:05}")
    }

    /// The loopback address node `index`'s subscribers connect from (`127.1.0.1` onwards).
    pub fn node_source(index: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            127,
            1,
            (index / 250) as u8,
            (index % 250 + 1) as u8,
        ))
    }

    /// Node `index` as route-svc stores it.
    fn node(index: usize) -> Node {
        Node {
            name: Self::node_name(index),
            addresses: vec![IpAddr::V4(Ipv4Addr::new(
                172,
                16 + (index / 65_536) as u8,
                (index / 256 % 256) as u8,
                (index % 256) as u8,
            ))],
            ipv4_subnet: None,
            ipv6_subnet: None,
            labels: [(
                "topology.kubernetes.io/zone".to_owned(),
                format!("zone-{}", index % 3),
            )]
            .into(),
            vtep_mac: None,
            vtep_ipv4: None,
            vtep_ipv6: None,
            ipip_tunnel_ipv4: None,
            bgp: None,
            lease: 0,
        }
    }

    /// Namespace `index`.
    fn namespace(index: usize) -> Namespace {
        let mut labels = BTreeMap::from([
            ("team".to_owned(), format!("t-{}", index % TEAMS)),
            ("env".to_owned(), ENVS[index % ENVS.len()].to_owned()),
        ]);
        if index < MONITORING_NAMESPACES {
            labels.insert("role".to_owned(), "monitoring".to_owned());
        }
        Namespace::new(namespace_name(index), labels)
    }

    /// Pod `k`'s endpoint: namespace `k % 500`, on node `k / 30`; `relabelled` moves it to the
    /// next tier.
    pub fn endpoint(&self, k: usize, relabelled: bool) -> Endpoint {
        let namespace = k % NAMESPACES;
        let within = k / NAMESPACES;
        let tier = (within / APPS + usize::from(relabelled)) % TIERS.len();
        let mut labels = BTreeMap::from([
            ("app".to_owned(), format!("a-{}", within % APPS)),
            ("tier".to_owned(), TIERS[tier].to_owned()),
        ]);
        if namespace == DNS_NAMESPACE && within.is_multiple_of(APPS) {
            labels.insert("k8s-app".to_owned(), "kube-dns".to_owned());
        }
        Endpoint {
            key: EndpointKey {
                node: Self::node_name(k / PODS_PER_NODE),
                interface: format!("brd{k:08x}"),
            },
            namespace: namespace_name(namespace),
            pod: format!("pod-{k}"),
            container_id: format!("c{k:012x}"),
            ips: vec![IpAddr::V4(Ipv4Addr::new(
                10,
                128 + (k / 65_536) as u8,
                (k / 256 % 256) as u8,
                (k % 256) as u8,
            ))],
            labels,
            ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
            }],
        }
    }

    /// The datastore key/value of an endpoint.
    pub fn endpoint_record(&self, k: usize, relabelled: bool) -> (String, Vec<u8>) {
        encode(&Record::Endpoint(self.endpoint(k, relabelled)))
    }

    /// Every node (route-svc's records).
    pub fn node_records(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        (0..self.nodes)
            .map(|index| {
                let node = Self::node(index);
                Ok((keys::node(&node.name), serde_json::to_vec(&node)?))
            })
            .collect()
    }

    /// Namespaces, policies and endpoints (policy-svc's records).
    pub fn policy_records(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut records: Vec<(String, Vec<u8>)> = (0..NAMESPACES)
            .map(|i| encode(&Record::Namespace(Self::namespace(i))))
            .collect();
        for i in 0..NAMESPACES {
            records.push(kubernetes_policy(i, "default-deny", default_deny())?);
            records.push(kubernetes_policy(i, "allow-web", allow_web(i))?);
            records.push(encode(&Record::Policy(db_from_api(i)?, None)));
        }
        for i in 0..EGRESS_NAMESPACES {
            records.push(kubernetes_policy(i, "api-egress", api_egress())?);
        }
        for g in 0..GLOBAL_POLICIES {
            records.push(encode(&Record::Policy(global(g)?, None)));
        }
        records.extend((0..self.pods()).map(|k| self.endpoint_record(k, false)));
        Ok(records)
    }

    /// The `n`-th policy added while measuring: pods of one app admit one tier of their
    /// namespace on a port of their own.
    pub fn added_policy(n: usize) -> anyhow::Result<(String, Vec<u8>)> {
        let spec = json!({
            "podSelector": {"matchLabels": {"app": format!("a-{}", n % APPS)}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"tier": "api"}}}],
                "ports": [{"protocol": "TCP", "port": 9000 + n % 1000}],
            }],
        });
        kubernetes_policy(Self::added_policy_namespace(n), &format!("added-{n}"), spec)
    }

    /// The namespace of the `n`-th policy added.
    pub fn added_policy_namespace(n: usize) -> usize {
        (n * 7) % NAMESPACES
    }

    /// A block claimed by node `index` for the route measurement (outside the IPAM pool).
    pub fn claimed_block(probe: usize, node: usize) -> anyhow::Result<(String, Vec<u8>)> {
        let cidr = format!("10.{}.{}.0/26", 240 + probe / 256, probe % 256).parse()?;
        let block = Block::new(cidr, "bench-claims", Some(&Self::node_name(node)), 1);
        Ok((keys::block(&block.cidr), serde_json::to_vec(&block)?))
    }

    /// Policies in the mix.
    pub fn policy_count() -> usize {
        3 * NAMESPACES + EGRESS_NAMESPACES + GLOBAL_POLICIES
    }
}

fn namespace_name(index: usize) -> String {
    format!("ns-{index:03}")
}

/// A Kubernetes NetworkPolicy record, validated as policy-svc will read it.
fn kubernetes_policy(
    namespace: usize,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<(String, Vec<u8>)> {
    let object = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace_name(namespace)},
        "spec": spec,
    });
    let policy: NetworkPolicy = serde_json::from_value(object.clone())?;
    policy.to_policy()?;
    let id = PolicyId::Kubernetes {
        namespace: namespace_name(namespace),
        name: name.to_owned(),
    };
    Ok((policy_key(&id), serde_json::to_vec(&object)?))
}

/// Every pod of a namespace denies ingress unless another policy allows it.
fn default_deny() -> serde_json::Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"]})
}

/// One app of a namespace admits its namespace's web tier on 8080 and the monitoring
/// namespaces' pods on the named port `http`.
fn allow_web(namespace: usize) -> serde_json::Value {
    json!({
        "podSelector": {"matchLabels": {"app": format!("a-{}", namespace % APPS)}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}],
             "ports": [{"protocol": "TCP", "port": 8080}]},
            {"from": [{"namespaceSelector": {"matchLabels": {"role": "monitoring"}}}],
             "ports": [{"protocol": "TCP", "port": "http"}]},
        ],
    })
}

/// The api tier reaches its namespace's databases and HTTPS outside the cluster.
fn api_egress() -> serde_json::Value {
    json!({
        "podSelector": {"matchLabels": {"tier": "api"}},
        "policyTypes": ["Egress"],
        "egress": [
            {"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}],
             "ports": [{"protocol": "TCP", "port": 5432}]},
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
             "ports": [{"protocol": "TCP", "port": 443}]},
        ],
    })
}

fn allow(protocol: Protocol, source: EntityRule, destination: EntityRule) -> Rule {
    Rule {
        action: Action::Allow,
        protocol: Some(protocol),
        not_protocol: None,
        icmp: None,
        not_icmp: None,
        source,
        destination,
        annotations: BTreeMap::new(),
    }
}

fn port(number: u16) -> Vec<PortMatch> {
    vec![PortMatch::Range {
        first: number,
        last: number,
    }]
}

/// brindle policy of a namespace: its databases admit its api tier on 5432.
fn db_from_api(namespace: usize) -> anyhow::Result<Policy> {
    Ok(Policy {
        id: PolicyId::Namespaced {
            namespace: namespace_name(namespace),
            name: "db-from-api".into(),
        },
        order: Some(100.0),
        selector: Selector::parse("tier == 'db'")?,
        namespace_selector: None,
        service_account_selector: None,
        ingress_enabled: true,
        egress_enabled: false,
        ingress: vec![allow(
            Protocol::Tcp,
            EntityRule {
                selector: Some(Selector::parse("tier == 'api'")?),
                ..EntityRule::default()
            },
            EntityRule {
                ports: port(5432),
                ..EntityRule::default()
            },
        )],
        egress: Vec::new(),
    })
}

/// Global policy `g`: the first lets every pod reach the cluster DNS; the others deny a
/// block-list of networks to one app's pods of one environment.
fn global(g: usize) -> anyhow::Result<Policy> {
    let (selector, ingress, egress) = if g == 0 {
        let dns = EntityRule {
            selector: Some(Selector::parse("k8s-app == 'kube-dns'")?),
            ports: port(53),
            ..EntityRule::default()
        };
        (
            Selector::All,
            Vec::new(),
            vec![
                allow(Protocol::Udp, EntityRule::default(), dns.clone()),
                allow(Protocol::Tcp, EntityRule::default(), dns),
            ],
        )
    } else {
        let blocked = EntityRule {
            nets: vec![
                format!("198.51.{}.0/24", g).parse()?,
                format!("203.0.{g}.0/24").parse()?,
            ],
            ..EntityRule::default()
        };
        let deny = Rule {
            action: Action::Deny,
            ..allow(Protocol::Tcp, blocked, EntityRule::default())
        };
        (
            Selector::parse(&format!("app == 'a-{}' && tier != 'db'", g % APPS))?,
            vec![deny],
            Vec::new(),
        )
    };
    Ok(Policy {
        id: PolicyId::Global {
            name: format!("global-{g:03}"),
        },
        order: Some(10.0),
        namespace_selector: if g == 0 {
            None
        } else {
            Some(Selector::parse(&format!("env == '{}'", ENVS[g % ENVS.len()]))?)
        },
        selector,
        service_account_selector: None,
        ingress_enabled: !ingress.is_empty(),
        egress_enabled: !egress.is_empty(),
        ingress,
        egress,
    })
}
