//! Manifests as operators write them: YAML (or JSON) documents, sorted into the objects ipam-svc
//! takes as typed messages (IPPool, IPAMConfig, IPReservation — also in Calico's
//! `projectcalico.org/v3` form), route-svc's BGP objects (BGPConfiguration, BGPPeer: `bgp`) and the objects policy-svc takes as manifests (Namespace,
//! NetworkPolicy, GlobalNetworkPolicy, Kubernetes NetworkPolicy). A `List` (what `get -o json|yaml` prints for several objects)
//! stands for its items; "document N" in errors counts objects from 0 in that order.

use std::collections::BTreeMap;

use anyhow::Context;
use brindle_proto::ipam::v1 as ipam;
use policy_svc::core::resource::TypeMeta;
use serde::{Deserialize, Serialize};

/// The API version brindle writes.
pub const API_VERSION: &str = "brindle.io/v1";
/// Calico's API version, accepted for IPPool, IPAMConfiguration, IPReservation and BGP objects.
const CALICO_API_VERSION: &str = "projectcalico.org/v3";

/// One object of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    IpPool(ipam::IpPool),
    IpamConfig(ipam::IpamConfig),
    IpReservation(ipam::Reservation),
    BgpConfiguration(brindle_proto::route::v1::BgpConfiguration),
    BgpPeer(brindle_proto::route::v1::BgpPeer),
    /// An object of policy-svc, kept as written.
    Policy(PolicyDocument),
}

/// A policy-svc object: what the CLI needs to name it, and the document itself.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    /// policy-svc's kind name (`KubernetesNetworkPolicy` for `networking.k8s.io/v1`).
    pub kind: &'static str,
    pub name: String,
    /// Empty for cluster-wide kinds and for namespaced objects that name none.
    pub namespace: String,
    pub value: yaml_serde::Value,
}

/// An object's metadata as manifests carry it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Metadata {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) namespace: String,
    #[serde(default, rename = "resourceVersion", skip_serializing_if = "String::is_empty")]
    pub(super) resource_version: String,
}

#[derive(Deserialize)]
struct Items {
    #[serde(default)]
    items: Vec<yaml_serde::Value>,
}

/// Encapsulation mode names as Calico spells them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum EncapName {
    #[default]
    Never,
    Always,
    CrossSubnet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum AllowedUseName {
    Workload,
    Tunnel,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IpPoolSpec {
    cidr: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    block_size: u32,
    #[serde(default)]
    vxlan_mode: EncapName,
    #[serde(default)]
    ipip_mode: EncapName,
    #[serde(default)]
    nat_outgoing: bool,
    #[serde(default)]
    disabled: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    node_selector: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_uses: Vec<AllowedUseName>,
    #[serde(default, rename = "disableBGPExport", skip_serializing_if = "is_false")]
    disable_bgp_export: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IpamConfigSpec {
    #[serde(default)]
    strict_affinity: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_blocks_per_host: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    release_cooldown_seconds: Option<u32>,
}

/// Calico's IPReservation spec: networks IPAM never hands out.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpReservationSpec {
    #[serde(rename = "reservedCIDRs")]
    reserved_cidrs: Vec<String>,
}

/// A typed object of a manifest: kind, metadata and its kind's spec.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Typed<S> {
    pub(super) api_version: String,
    pub(super) kind: String,
    #[serde(default)]
    pub(super) metadata: Metadata,
    pub(super) spec: S,
}

fn is_false(value: &bool) -> bool {
    !value
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Every object of `text`, in order.
pub fn parse(text: &str) -> anyhow::Result<Vec<Document>> {
    let mut values = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = yaml_serde::Value::deserialize(document)
            .with_context(|| format!("document {index}: not valid YAML or JSON"))?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta = yaml_serde::from_value(value.clone())
            .with_context(|| format!("document {index}: apiVersion and kind must be strings"))?;
        if meta.kind == "List" {
            let items: Items = yaml_serde::from_value(value)
                .with_context(|| format!("document {index}: items of a List"))?;
            values.extend(items.items);
        } else {
            values.push(value);
        }
    }
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| document(value).with_context(|| format!("document {index}")))
        .collect()
}

fn document(value: yaml_serde::Value) -> anyhow::Result<Document> {
    let meta: TypeMeta = yaml_serde::from_value(value.clone())?;
    let brindle_or_calico = meta.api_version == API_VERSION || meta.api_version == CALICO_API_VERSION;
    match (meta.api_version.as_str(), meta.kind.as_str()) {
        (_, "IPPool") if brindle_or_calico => ip_pool(value).map(Document::IpPool),
        (_, "IPAMConfig" | "IPAMConfiguration") if brindle_or_calico => {
            ipam_config(value).map(Document::IpamConfig)
        }
        (_, "IPReservation") if brindle_or_calico => ip_reservation(value).map(Document::IpReservation),
        (_, "BGPConfiguration") if brindle_or_calico => {
            super::bgp::configuration(value).map(Document::BgpConfiguration)
        }
        (_, "BGPPeer") if brindle_or_calico => super::bgp::peer(value).map(Document::BgpPeer),
        ("v1" | API_VERSION, "Namespace") => policy_document("Namespace", value),
        ("v1", "ServiceAccount") => policy_document("ServiceAccount", value),
        (_, "NetworkPolicy") if brindle_or_calico => policy_document("NetworkPolicy", value),
        (_, "GlobalNetworkPolicy") if brindle_or_calico => policy_document("GlobalNetworkPolicy", value),
        (_, "StagedNetworkPolicy") if brindle_or_calico => policy_document("StagedNetworkPolicy", value),
        (_, "StagedGlobalNetworkPolicy") if brindle_or_calico => {
            policy_document("StagedGlobalNetworkPolicy", value)
        }
        (_, "HostEndpoint") if brindle_or_calico => policy_document("HostEndpoint", value),
        (CALICO_API_VERSION, "StagedKubernetesNetworkPolicy") => {
            policy_document("StagedKubernetesNetworkPolicy", value)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => policy_document("KubernetesNetworkPolicy", value),
        (version, kind) => anyhow::bail!(
            "kind: {kind:?} of apiVersion {version:?} is not a kind brindle knows ({API_VERSION} IPPool, \
             IPAMConfig, IPReservation, BGPConfiguration, BGPPeer, Namespace, NetworkPolicy, \
             GlobalNetworkPolicy, StagedNetworkPolicy, StagedGlobalNetworkPolicy, HostEndpoint; networking.k8s.io/v1 \
             NetworkPolicy; v1 Namespace, ServiceAccount; {CALICO_API_VERSION} \
             IPPool, IPAMConfiguration, IPReservation, BGPConfiguration, BGPPeer, NetworkPolicy, \
             GlobalNetworkPolicy, StagedNetworkPolicy, StagedGlobalNetworkPolicy, \
             StagedKubernetesNetworkPolicy, HostEndpoint)"
        ),
    }
}

fn policy_document(kind: &'static str, value: yaml_serde::Value) -> anyhow::Result<Document> {
    #[derive(Deserialize)]
    struct WithMetadata {
        #[serde(default)]
        metadata: Metadata,
    }
    let WithMetadata { metadata } = yaml_serde::from_value(value.clone())?;
    anyhow::ensure!(!metadata.name.is_empty(), "metadata.name: required");
    Ok(Document::Policy(PolicyDocument {
        kind,
        name: metadata.name,
        namespace: metadata.namespace,
        value,
    }))
}

fn ip_pool(value: yaml_serde::Value) -> anyhow::Result<ipam::IpPool> {
    let typed: Typed<IpPoolSpec> = yaml_serde::from_value(value)?;
    anyhow::ensure!(!typed.metadata.name.is_empty(), "metadata.name: required");
    let spec = typed.spec;
    let mode = |name: EncapName| match name {
        EncapName::Never => ipam::EncapMode::Never,
        EncapName::Always => ipam::EncapMode::Always,
        EncapName::CrossSubnet => ipam::EncapMode::CrossSubnet,
    } as i32;
    Ok(ipam::IpPool {
        name: typed.metadata.name,
        cidr: spec.cidr,
        block_size: spec.block_size,
        vxlan_mode: mode(spec.vxlan_mode),
        ipip_mode: mode(spec.ipip_mode),
        nat_outgoing: spec.nat_outgoing,
        disabled: spec.disabled,
        node_selector: spec.node_selector,
        allowed_uses: spec
            .allowed_uses
            .into_iter()
            .map(|u| match u {
                AllowedUseName::Workload => ipam::AllowedUse::Workload,
                AllowedUseName::Tunnel => ipam::AllowedUse::Tunnel,
            } as i32)
            .collect(),
        revision: 0,
        disable_bgp_export: spec.disable_bgp_export,
    })
}

fn ip_reservation(value: yaml_serde::Value) -> anyhow::Result<ipam::Reservation> {
    let typed: Typed<IpReservationSpec> = yaml_serde::from_value(value)?;
    anyhow::ensure!(!typed.metadata.name.is_empty(), "metadata.name: required");
    let cidrs = typed.spec.reserved_cidrs;
    anyhow::ensure!(!cidrs.is_empty(), "spec.reservedCIDRs: list at least one CIDR");
    for (index, cidr) in cidrs.iter().enumerate() {
        anyhow::ensure!(
            is_cidr(cidr),
            "spec.reservedCIDRs[{index}]: {cidr:?} is not a CIDR (address/prefix length)"
        );
    }
    Ok(ipam::Reservation {
        name: typed.metadata.name,
        cidrs,
    })
}

/// Whether `text` is `<IP address>/<prefix length>` with a length the family allows.
fn is_cidr(text: &str) -> bool {
    let Some((address, length)) = text.split_once('/') else {
        return false;
    };
    match (address.parse::<std::net::IpAddr>(), length.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(length)) => length <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(length)) => length <= 128,
        _ => false,
    }
}

/// An IP reservation as a manifest `apply` takes back.
pub fn ip_reservation_manifest(reservation: &ipam::Reservation) -> serde_json::Value {
    let typed = Typed {
        api_version: API_VERSION.into(),
        kind: "IPReservation".into(),
        metadata: Metadata {
            name: reservation.name.clone(),
            ..Metadata::default()
        },
        spec: IpReservationSpec {
            reserved_cidrs: reservation.cidrs.clone(),
        },
    };
    serde_json::to_value(typed).unwrap_or_default()
}

fn ipam_config(value: yaml_serde::Value) -> anyhow::Result<ipam::IpamConfig> {
    let typed: Typed<IpamConfigSpec> = yaml_serde::from_value(value)?;
    anyhow::ensure!(
        typed.metadata.name.is_empty() || typed.metadata.name == "default",
        "metadata.name: {:?}: the IPAM configuration is a singleton named \"default\"",
        typed.metadata.name
    );
    let defaults = ipam_api::model::IpamConfig::default();
    Ok(ipam::IpamConfig {
        strict_affinity: typed.spec.strict_affinity,
        max_blocks_per_host: typed
            .spec
            .max_blocks_per_host
            .unwrap_or(defaults.max_blocks_per_host),
        release_cooldown_seconds: typed
            .spec
            .release_cooldown_seconds
            .unwrap_or(defaults.release_cooldown_seconds),
    })
}

/// An IP pool as a manifest `apply` takes back.
pub fn ip_pool_manifest(pool: &ipam::IpPool) -> serde_json::Value {
    let mode = |mode: i32| match ipam::EncapMode::try_from(mode) {
        Ok(ipam::EncapMode::Always) => EncapName::Always,
        Ok(ipam::EncapMode::CrossSubnet) => EncapName::CrossSubnet,
        _ => EncapName::Never,
    };
    let typed = Typed {
        api_version: API_VERSION.into(),
        kind: "IPPool".into(),
        metadata: Metadata {
            name: pool.name.clone(),
            namespace: String::new(),
            resource_version: revision(pool.revision),
        },
        spec: IpPoolSpec {
            cidr: pool.cidr.clone(),
            block_size: pool.block_size,
            vxlan_mode: mode(pool.vxlan_mode),
            ipip_mode: mode(pool.ipip_mode),
            nat_outgoing: pool.nat_outgoing,
            disabled: pool.disabled,
            node_selector: pool.node_selector.clone(),
            allowed_uses: pool
                .allowed_uses
                .iter()
                .filter_map(|u| match ipam::AllowedUse::try_from(*u) {
                    Ok(ipam::AllowedUse::Workload) => Some(AllowedUseName::Workload),
                    Ok(ipam::AllowedUse::Tunnel) => Some(AllowedUseName::Tunnel),
                    _ => None,
                })
                .collect(),
            disable_bgp_export: pool.disable_bgp_export,
        },
    };
    serde_json::to_value(typed).unwrap_or_default()
}

/// The IPAM configuration as a manifest `apply` takes back.
pub fn ipam_config_manifest(config: &ipam::IpamConfig) -> serde_json::Value {
    let typed = Typed {
        api_version: API_VERSION.into(),
        kind: "IPAMConfig".into(),
        metadata: Metadata {
            name: "default".into(),
            ..Metadata::default()
        },
        spec: IpamConfigSpec {
            strict_affinity: config.strict_affinity,
            max_blocks_per_host: Some(config.max_blocks_per_host),
            release_cooldown_seconds: Some(config.release_cooldown_seconds),
        },
    };
    serde_json::to_value(typed).unwrap_or_default()
}

/// A stored manifest (YAML) as a JSON value.
pub fn yaml_to_json(yaml: &str) -> anyhow::Result<serde_json::Value> {
    yaml_serde::from_str(yaml).context("a manifest the server returned")
}

fn revision(revision: u64) -> String {
    if revision == 0 {
        String::new()
    } else {
        revision.to_string()
    }
}

/// Several objects as one value: the object itself when there is one, a `List` otherwise.
pub fn list(items: Vec<serde_json::Value>) -> serde_json::Value {
    let mut list = BTreeMap::new();
    list.insert("apiVersion", serde_json::Value::from(API_VERSION));
    list.insert("kind", serde_json::Value::from("List"));
    list.insert("items", serde_json::Value::from(items));
    serde_json::to_value(list).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_round_trip_through_their_manifest() {
        let text = "apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, blockSize: 24, vxlanMode: CrossSubnet, natOutgoing: true, nodeSelector: \"zone == 'a'\"}
";
        let documents = parse(text).expect("valid");
        let [Document::IpPool(pool)] = documents.as_slice() else {
            panic!("one IP pool: {documents:?}");
        };
        assert_eq!(pool.vxlan_mode, ipam::EncapMode::CrossSubnet as i32);
        let manifest = yaml_serde::to_string(&ip_pool_manifest(pool)).expect("yaml");
        assert_eq!(parse(&manifest).expect("valid"), documents);
    }

    #[test]
    fn reservations_in_either_shape_round_trip_and_name_a_bad_cidr() {
        let text = "apiVersion: projectcalico.org/v3\nkind: IPReservation\nmetadata: {name: infra}\n\
                    spec: {reservedCIDRs: [10.244.0.0/28, \"fd00::/120\"]}\n";
        let documents = parse(text).expect("valid");
        let [Document::IpReservation(reservation)] = documents.as_slice() else {
            panic!("one reservation: {documents:?}");
        };
        assert_eq!(reservation.cidrs, ["10.244.0.0/28", "fd00::/120"]);
        let manifest = yaml_serde::to_string(&ip_reservation_manifest(reservation)).expect("yaml");
        assert!(manifest.contains("brindle.io/v1"), "{manifest}");
        assert_eq!(parse(&manifest).expect("valid"), documents);
        for (spec, field) in [
            ("{reservedCIDRs: [10.0.0.0/33]}", "spec.reservedCIDRs[0]"),
            ("{reservedCIDRs: []}", "spec.reservedCIDRs"),
            ("{reservedCidrs: [10.0.0.0/8]}", "reservedCidrs"),
        ] {
            let text = format!(
                "apiVersion: brindle.io/v1\nkind: IPReservation\nmetadata: {{name: r}}\nspec: {spec}\n"
            );
            let error = format!("{:#}", parse(&text).expect_err(field));
            assert!(error.contains(field), "{field}: {error}");
        }
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\
                    apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8, blocksize: 24}\n";
        let error = format!("{:#}", parse(text).expect_err("typo"));
        assert!(
            error.starts_with("document 1") && error.contains("blocksize"),
            "{error}"
        );
        let error = format!("{:#}", parse("apiVersion: v9\nkind: Pod\n").expect_err("unknown"));
        assert!(error.contains("\"Pod\" of apiVersion \"v9\""), "{error}");
    }

    #[test]
    fn a_list_stands_for_its_items() {
        let text = "{\"kind\": \"List\", \"items\": [{\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \
                    \"metadata\": {\"name\": \"a\"}}, {\"apiVersion\": \"networking.k8s.io/v1\", \
                    \"kind\": \"NetworkPolicy\", \"metadata\": {\"name\": \"p\", \"namespace\": \"a\"}, \"spec\": {}}]}";
        let kinds: Vec<&str> = parse(text)
            .expect("valid")
            .iter()
            .map(|d| match d {
                Document::Policy(p) => p.kind,
                _ => "ipam",
            })
            .collect();
        assert_eq!(kinds, ["Namespace", "KubernetesNetworkPolicy"]);
    }
}
