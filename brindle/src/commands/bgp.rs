//! BGP objects on the command line: `BGPConfiguration` and `BGPPeer` manifests (brindle's
//! `brindle.io/v1` and Calico's `projectcalico.org/v3`, the same fields), printed back in that
//! shape, applied, listed and deleted through route-svc.

use brindle_proto::route::v1 as route;
use serde::{Deserialize, Serialize};

use super::connect::{Clients, Service};
use super::manifest::{API_VERSION, Metadata, Typed};
use super::output::{self, Table};
use crate::cli::OutputFormat;

/// Calico's BGPConfiguration spec, as far as brindle implements it (any other field is refused).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfigurationSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    as_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    listen_port: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    log_severity_screen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_to_node_mesh_enabled: Option<bool>,
}

/// Calico's BGPPeer spec, as far as brindle implements it (any other field is refused).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PeerSpec {
    #[serde(rename = "peerIP")]
    peer_ip: String,
    as_number: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    node_selector: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<Password>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    keep_original_next_hop: bool,
    /// A Go duration, as Calico writes it (`120s`, `2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_restart_time: Option<String>,
}

/// A password as written inline. (Calico reads it from a Secret, `secretKeyRef`; brindle keeps
/// no Kubernetes Secrets, so that form is refused by name.)
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Password {
    value: String,
}

/// Whole seconds of a Go duration (`90s`, `1m30s`, `1.5m`, `1h`, `0`), as Calico's durations are
/// written: added up in integer nanoseconds, as Go does.
fn duration_seconds(field: &str, text: &str) -> anyhow::Result<u64> {
    let bad = |why: &str| anyhow::anyhow!("{field}: {text:?}: {why}");
    let mut rest = text.trim().strip_prefix('+').unwrap_or(text.trim());
    anyhow::ensure!(!rest.is_empty(), bad("empty"));
    if rest == "0" {
        return Ok(0);
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("a number needs a unit (h, m, s, ms, us, ns)"))?;
        let (whole, fraction) = rest[..number_len]
            .split_once('.')
            .unwrap_or((&rest[..number_len], ""));
        anyhow::ensure!(
            !(fraction.contains('.') || whole.is_empty() && fraction.is_empty()),
            bad("not a duration such as 120s or 2m")
        );
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..unit_len] {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        rest = &rest[unit_len..];
        let digits = |text: &str| -> anyhow::Result<u128> {
            if text.is_empty() {
                return Ok(0);
            }
            text.parse().map_err(|_| bad("too large"))
        };
        let scale = 10_u128
            .checked_pow(u32::try_from(fraction.len()).unwrap_or(u32::MAX))
            .ok_or_else(|| bad("too many decimals"))?;
        let part = digits(whole)?
            .checked_mul(unit)
            .and_then(|n| n.checked_add(digits(fraction).ok()?.checked_mul(unit)? / scale))
            .ok_or_else(|| bad("too large"))?;
        nanos = nanos.checked_add(part).ok_or_else(|| bad("too large"))?;
    }
    anyhow::ensure!(
        nanos.is_multiple_of(1_000_000_000),
        bad("brindle needs whole seconds")
    );
    u64::try_from(nanos / 1_000_000_000).map_err(|_| bad("too large"))
}

/// The configuration a manifest asks for.
pub fn configuration(value: yaml_serde::Value) -> anyhow::Result<route::BgpConfiguration> {
    let typed: Typed<ConfigurationSpec> = yaml_serde::from_value(value)?;
    anyhow::ensure!(
        typed.metadata.name.is_empty() || typed.metadata.name == "default",
        "metadata.name: {:?}: the BGP configuration is a singleton named \"default\"",
        typed.metadata.name
    );
    let spec = typed.spec;
    Ok(route::BgpConfiguration {
        as_number: spec.as_number.unwrap_or(0),
        listen_port: spec.listen_port.unwrap_or(0),
        log_severity_screen: spec.log_severity_screen,
        node_to_node_mesh_enabled: spec.node_to_node_mesh_enabled,
    })
}

/// The peer a manifest asks for.
pub fn peer(value: yaml_serde::Value) -> anyhow::Result<route::BgpPeer> {
    let typed: Typed<PeerSpec> = yaml_serde::from_value(value)?;
    anyhow::ensure!(!typed.metadata.name.is_empty(), "metadata.name: required");
    let spec = typed.spec;
    Ok(route::BgpPeer {
        name: typed.metadata.name,
        peer_ip: spec.peer_ip,
        as_number: spec.as_number,
        node: spec.node,
        node_selector: spec.node_selector,
        password: spec.password.map(|p| p.value).unwrap_or_default(),
        keep_original_next_hop: spec.keep_original_next_hop,
        max_restart_time_seconds: match spec.max_restart_time {
            None => 0,
            Some(text) => match duration_seconds("spec.maxRestartTime", &text)? {
                0 => anyhow::bail!("spec.maxRestartTime: {text:?}: at least 1s (omit it for BIRD's 120s)"),
                seconds => u32::try_from(seconds)
                    .map_err(|_| anyhow::anyhow!("spec.maxRestartTime: {text:?}: at most 4095s"))?,
            },
        },
    })
}

fn configuration_manifest(configuration: &route::BgpConfiguration) -> serde_json::Value {
    let typed = Typed {
        api_version: API_VERSION.into(),
        kind: "BGPConfiguration".into(),
        metadata: Metadata {
            name: "default".into(),
            ..Metadata::default()
        },
        spec: ConfigurationSpec {
            as_number: Some(configuration.as_number),
            listen_port: Some(configuration.listen_port),
            log_severity_screen: configuration.log_severity_screen.clone(),
            node_to_node_mesh_enabled: configuration.node_to_node_mesh_enabled,
        },
    };
    serde_json::to_value(typed).unwrap_or_default()
}

fn peer_manifest(peer: &route::BgpPeer) -> serde_json::Value {
    let typed = Typed {
        api_version: API_VERSION.into(),
        kind: "BGPPeer".into(),
        metadata: Metadata {
            name: peer.name.clone(),
            ..Metadata::default()
        },
        spec: PeerSpec {
            peer_ip: peer.peer_ip.clone(),
            as_number: peer.as_number,
            node: peer.node.clone(),
            node_selector: peer.node_selector.clone(),
            password: Some(&peer.password)
                .filter(|p| !p.is_empty())
                .map(|p| Password { value: p.clone() }),
            keep_original_next_hop: peer.keep_original_next_hop,
            max_restart_time: Some(peer.max_restart_time_seconds)
                .filter(|s| *s > 0)
                .map(|s| format!("{s}s")),
        },
    };
    serde_json::to_value(typed).unwrap_or_default()
}

/// Sets the configuration; the line to print.
pub async fn apply_configuration(
    clients: &Clients,
    configuration: route::BgpConfiguration,
) -> anyhow::Result<String> {
    clients
        .route()
        .await?
        .set_bgp_configuration(configuration)
        .await
        .map_err(|s| clients.failed(Service::Route, s))?;
    Ok("bgpconfiguration/default configured".into())
}

/// Creates or replaces a peer; the line to print.
pub async fn apply_peer(clients: &Clients, peer: route::BgpPeer) -> anyhow::Result<String> {
    let name = peer.name.clone();
    clients
        .route()
        .await?
        .apply_bgp_peer(peer)
        .await
        .map_err(|s| clients.failed(Service::Route, s))?;
    Ok(format!("bgppeer/{name} applied"))
}

/// The cluster's BGP configuration, as route-svc holds it.
pub async fn configuration_of(clients: &Clients) -> anyhow::Result<route::BgpConfiguration> {
    Ok(clients
        .route()
        .await?
        .get_bgp_configuration(route::GetBgpConfigurationRequest {})
        .await
        .map_err(|s| clients.failed(Service::Route, s))?
        .into_inner())
}

/// Prints the configuration.
pub async fn get_configuration(clients: &Clients, format: OutputFormat) -> anyhow::Result<()> {
    let configuration = configuration_of(clients).await?;
    let mut table = Table::new(&["NAME", "AS", "LISTEN-PORT", "LOG", "NODE-TO-NODE-MESH"]);
    table.row(vec![
        "default".into(),
        configuration.as_number.to_string(),
        configuration.listen_port.to_string(),
        configuration.log_severity_screen.clone(),
        configuration
            .node_to_node_mesh_enabled
            .unwrap_or(true)
            .to_string(),
    ]);
    output::print(format, &table, &configuration_manifest(&configuration))
}

/// Prints the peers (one when `name` is given: NOT_FOUND naming it when there is none).
pub async fn get_peers(clients: &Clients, name: Option<String>, format: OutputFormat) -> anyhow::Result<()> {
    let mut peers = clients
        .route()
        .await?
        .list_bgp_peers(route::ListBgpPeersRequest {})
        .await
        .map_err(|s| clients.failed(Service::Route, s))?
        .into_inner()
        .peers;
    if let Some(name) = &name {
        peers.retain(|p| p.name == *name);
        anyhow::ensure!(!peers.is_empty(), "bgppeer/{name} not found");
    }
    let mut table = Table::new(&["NAME", "PEER-IP", "AS", "NODE", "NODE-SELECTOR", "PASSWORD"]);
    for peer in &peers {
        table.row(vec![
            peer.name.clone(),
            peer.peer_ip.clone(),
            peer.as_number.to_string(),
            peer.node.clone(),
            peer.node_selector.clone(),
            if peer.password.is_empty() { "" } else { "set" }.into(),
        ]);
    }
    let manifests: Vec<serde_json::Value> = peers.iter().map(peer_manifest).collect();
    let value = match (name.is_some(), manifests.as_slice()) {
        (true, [one]) => one.clone(),
        _ => super::manifest::list(manifests),
    };
    output::print(format, &table, &value)
}

/// Deletes a peer; the line to print.
pub async fn delete_peer(clients: &Clients, name: &str) -> anyhow::Result<String> {
    clients
        .route()
        .await?
        .delete_bgp_peer(route::DeleteBgpPeerRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(|s| clients.failed(Service::Route, s))?;
    Ok(format!("bgppeer/{name} deleted"))
}

#[cfg(test)]
mod tests {
    use super::duration_seconds;

    #[test]
    fn go_durations_become_whole_seconds_and_anything_else_is_named() {
        for (text, seconds) in [
            ("120s", 120),
            ("2m", 120),
            ("1m30s", 90),
            ("1.5m", 90),
            ("1.1m", 66),
            ("8.2m", 492),
            ("1.1h", 3960),
            ("1h", 3600),
            ("+5s", 5),
            ("1500ms500ms", 2),
            ("0", 0),
        ] {
            assert_eq!(duration_seconds("maxRestartTime", text).expect(text), seconds);
        }
        for bad in ["", "120", "2x", "500ms", "s", "1..5s", ".s", "-5s"] {
            let error = duration_seconds("maxRestartTime", bad)
                .expect_err(bad)
                .to_string();
            assert!(error.contains("maxRestartTime"), "{error}");
        }
    }
}
