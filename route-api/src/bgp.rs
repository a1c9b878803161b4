//! BGP as route-svc keeps and distributes it: the cluster's configuration (`BGPConfiguration`)
//! and the peers nodes speak to (`BGPPeer`), their datastore records, keys and messages — each
//! field checked once, here, with an error naming it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brindle_proto::InvalidField;
use brindle_proto::route::v1 as pb;
use brindle_selector::NodeSelector;
use serde::{Deserialize, Serialize};

/// The nodes' AS number unless configured (Calico's default).
pub const DEFAULT_AS_NUMBER: u32 = 64512;
/// The BGP port.
pub const DEFAULT_LISTEN_PORT: u16 = 179;
/// Where the configuration is kept.
pub const CONFIGURATION_KEY: &str = "/brindle/v1/bgp/configuration";
/// Where the peers are kept (`<prefix><name>`).
pub const PEERS_PREFIX: &str = "/brindle/v1/bgp/peers/";

/// How much the BGP daemon logs (Calico's `logSeverityScreen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LogSeverity {
    /// Everything, protocol events included.
    Debug,
    /// State changes.
    #[default]
    Info,
    /// Warnings and errors.
    Warning,
    /// Errors.
    Error,
    /// Fatal errors only.
    Fatal,
}

impl LogSeverity {
    /// Every value, as Calico spells them.
    pub const ALL: [(Self, &'static str); 5] = [
        (Self::Debug, "Debug"),
        (Self::Info, "Info"),
        (Self::Warning, "Warning"),
        (Self::Error, "Error"),
        (Self::Fatal, "Fatal"),
    ];

    /// As Calico spells it.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(severity, _)| *severity == self)
            .map_or("Info", |(_, name)| name)
    }

    /// From Calico's spelling (case-insensitive); `""` is Info.
    pub fn parse(text: &str) -> Result<Self, InvalidField> {
        if text.is_empty() {
            return Ok(Self::Info);
        }
        Self::ALL
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(text))
            .map(|(severity, _)| *severity)
            .ok_or_else(|| {
                InvalidField::new(
                    "logSeverityScreen",
                    format!("{text:?} is not one of Debug, Info, Warning, Error, Fatal"),
                )
            })
    }
}

/// The cluster's BGP configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpConfiguration {
    /// The nodes' AS number unless a node has its own.
    pub as_number: u32,
    /// Port the nodes' daemons listen on.
    pub listen_port: u16,
    /// How much they log.
    pub log_severity_screen: LogSeverity,
    /// Whether nodes route to each other directly as route-svc tells them (brindle's mesh).
    pub node_to_node_mesh_enabled: bool,
}

impl Default for BgpConfiguration {
    fn default() -> Self {
        Self {
            as_number: DEFAULT_AS_NUMBER,
            listen_port: DEFAULT_LISTEN_PORT,
            log_severity_screen: LogSeverity::Info,
            node_to_node_mesh_enabled: true,
        }
    }
}

/// A peer of the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    /// Its name.
    pub name: String,
    /// Its address.
    pub peer_ip: IpAddr,
    /// Its AS number.
    pub as_number: u32,
    /// Only this node peers with it.
    pub node: Option<String>,
    /// Only nodes it selects peer with it (empty: every node).
    pub node_selector: NodeSelector,
    /// TCP MD5 password of the session.
    pub password: Option<String>,
    /// Announce routes with their original next hop.
    pub keep_original_next_hop: bool,
    /// Seconds the peer keeps the node's routes while the node's daemon restarts (`None`: the
    /// daemon's default).
    pub max_restart_time: Option<u16>,
}

impl BgpPeer {
    /// Whether node `node` with `labels` peers with it.
    pub fn applies_to(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node.as_deref().is_none_or(|only| only == node) && self.node_selector.matches(labels)
    }
}

/// The key of peer `name`.
pub fn peer_key(name: &str) -> String {
    format!("{PEERS_PREFIX}{name}")
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> InvalidField {
    InvalidField::new(field, reason)
}

/// An AS number (1 to 4294967295; 0 is reserved).
fn as_number(field: &str, value: u32) -> Result<u32, InvalidField> {
    if value == 0 {
        return Err(invalid(field, "0 is not an AS number"));
    }
    Ok(value)
}

/// The configuration a message asks for (zeros and empties mean the defaults).
pub fn configuration_from_proto(message: pb::BgpConfiguration) -> Result<BgpConfiguration, InvalidField> {
    let defaults = BgpConfiguration::default();
    Ok(BgpConfiguration {
        as_number: if message.as_number == 0 {
            defaults.as_number
        } else {
            message.as_number
        },
        listen_port: match message.listen_port {
            0 => defaults.listen_port,
            port => {
                u16::try_from(port).map_err(|_| invalid("listenPort", format!("{port} is not a port")))?
            }
        },
        log_severity_screen: LogSeverity::parse(&message.log_severity_screen)?,
        node_to_node_mesh_enabled: message
            .node_to_node_mesh_enabled
            .unwrap_or(defaults.node_to_node_mesh_enabled),
    })
}

/// The configuration as a message.
pub fn configuration_to_proto(configuration: &BgpConfiguration) -> pb::BgpConfiguration {
    pb::BgpConfiguration {
        as_number: configuration.as_number,
        listen_port: configuration.listen_port.into(),
        log_severity_screen: configuration.log_severity_screen.name().to_owned(),
        node_to_node_mesh_enabled: Some(configuration.node_to_node_mesh_enabled),
    }
}

/// A peer from a message, every field checked.
pub fn peer_from_proto(message: pb::BgpPeer) -> Result<BgpPeer, InvalidField> {
    if !crate::model::valid_node_name(&message.name) {
        return Err(invalid(
            "metadata.name",
            format!("{:?} is not a DNS-1123 subdomain", message.name),
        ));
    }
    let peer_ip: IpAddr = message.peer_ip.parse().map_err(|_| {
        invalid(
            "peerIP",
            format!(
                "{:?} is not an IP address (a port is not supported)",
                message.peer_ip
            ),
        )
    })?;
    let unusable = match peer_ip {
        IpAddr::V4(ip) => {
            ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_link_local()
                || ip.is_broadcast()
        }
        IpAddr::V6(ip) => {
            ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_unicast_link_local()
        }
    };
    if unusable {
        return Err(invalid(
            "peerIP",
            format!(
                "{peer_ip} is not a peer a node can reach (unspecified, loopback, multicast or link-local)"
            ),
        ));
    }
    if message.keep_original_next_hop {
        return Err(invalid(
            "keepOriginalNextHop",
            "brindle's nodes announce only routes they originate (their blocks), whose next hop is the \
             node itself: there is no original next hop to keep",
        ));
    }
    let node = Some(message.node).filter(|n| !n.is_empty());
    if let Some(node) = &node
        && !crate::model::valid_node_name(node)
    {
        return Err(invalid("node", format!("{node:?} is not a node name")));
    }
    let node_selector = NodeSelector::parse(&message.node_selector)
        .map_err(|e| invalid("nodeSelector", format!("{:?}: {e}", message.node_selector)))?;
    if node.is_some() && !message.node_selector.trim().is_empty() {
        return Err(invalid("nodeSelector", "give node or nodeSelector, not both"));
    }
    let password = Some(message.password).filter(|p| !p.is_empty());
    // BIRD takes it in a quoted string, the kernel at most 80 bytes (TCP_MD5SIG_MAXKEYLEN).
    if let Some(password) = &password
        && (password.len() > 80 || password.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
    {
        return Err(invalid(
            "password",
            "at most 80 bytes, without quotes, backslashes or control characters",
        ));
    }
    // RFC 4724's restart time is a 12-bit field.
    let max_restart_time = match message.max_restart_time_seconds {
        0 => None,
        seconds @ 1..=4095 => u16::try_from(seconds).ok(),
        seconds => {
            return Err(invalid(
                "maxRestartTime",
                format!("{seconds}s: graceful restart allows at most 4095s"),
            ));
        }
    };
    Ok(BgpPeer {
        name: message.name,
        peer_ip,
        as_number: as_number("asNumber", message.as_number)?,
        node,
        node_selector,
        password,
        keep_original_next_hop: message.keep_original_next_hop,
        max_restart_time,
    })
}

/// A peer as a message.
pub fn peer_to_proto(peer: &BgpPeer) -> pb::BgpPeer {
    pb::BgpPeer {
        name: peer.name.clone(),
        peer_ip: peer.peer_ip.to_string(),
        as_number: peer.as_number,
        node: peer.node.clone().unwrap_or_default(),
        node_selector: peer.node_selector.as_str().to_owned(),
        password: peer.password.clone().unwrap_or_default(),
        keep_original_next_hop: peer.keep_original_next_hop,
        max_restart_time_seconds: peer.max_restart_time.map_or(0, u32::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> pb::BgpPeer {
        pb::BgpPeer {
            name: "tor-1".into(),
            peer_ip: "192.0.2.1".into(),
            as_number: 64513,
            ..pb::BgpPeer::default()
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let refused = |message: pb::BgpPeer| peer_from_proto(message).expect_err("refused").to_string();
        for unusable in [
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "fe80::1",
            "169.254.0.1",
            "224.0.0.5",
        ] {
            let message = pb::BgpPeer {
                peer_ip: unusable.into(),
                ..peer()
            };
            assert!(refused(message).contains("peerIP"), "{unusable}");
        }
        let keep = pb::BgpPeer {
            keep_original_next_hop: true,
            ..peer()
        };
        assert!(refused(keep).contains("keepOriginalNextHop"));
        let restart = |seconds| pb::BgpPeer {
            max_restart_time_seconds: seconds,
            ..peer()
        };
        assert!(refused(restart(4096)).contains("maxRestartTime"));
        assert_eq!(
            peer_from_proto(restart(4095)).expect("peer").max_restart_time,
            Some(4095)
        );
        assert!(
            refused(pb::BgpPeer {
                peer_ip: "192.0.2.1:179".into(),
                ..peer()
            })
            .contains("peerIP")
        );
        assert!(
            refused(pb::BgpPeer {
                as_number: 0,
                ..peer()
            })
            .contains("asNumber")
        );
        assert!(
            refused(pb::BgpPeer {
                node_selector: "rack ==".into(),
                ..peer()
            })
            .contains("nodeSelector")
        );
        assert!(
            refused(pb::BgpPeer {
                password: "a\"b".into(),
                ..peer()
            })
            .contains("password")
        );
        assert!(
            refused(pb::BgpPeer {
                name: "Tor".into(),
                ..peer()
            })
            .contains("metadata.name")
        );
        let both = pb::BgpPeer {
            node: "a".into(),
            node_selector: "all()".into(),
            ..peer()
        };
        assert!(refused(both).contains("not both"));
        let configuration = pb::BgpConfiguration {
            log_severity_screen: "Loud".into(),
            ..pb::BgpConfiguration::default()
        };
        assert!(
            configuration_from_proto(configuration)
                .expect_err("refused")
                .to_string()
                .contains("logSeverityScreen")
        );
    }

    #[test]
    fn a_peer_applies_to_its_node_or_the_nodes_it_selects() {
        let labels = BTreeMap::from([("rack".to_owned(), "a".to_owned())]);
        let everyone = peer_from_proto(peer()).expect("peer");
        assert!(everyone.applies_to("n1", &BTreeMap::new()));
        let one = peer_from_proto(pb::BgpPeer {
            node: "n1".into(),
            ..peer()
        })
        .expect("peer");
        assert!(one.applies_to("n1", &labels) && !one.applies_to("n2", &labels));
        let rack = peer_from_proto(pb::BgpPeer {
            node_selector: "rack == 'a'".into(),
            ..peer()
        })
        .expect("peer");
        assert!(rack.applies_to("n2", &labels) && !rack.applies_to("n2", &BTreeMap::new()));
        assert_eq!(peer_from_proto(peer_to_proto(&rack)).expect("round trip"), rack);
    }

    #[test]
    fn an_empty_configuration_is_calicos_default() {
        let configuration = configuration_from_proto(pb::BgpConfiguration::default()).expect("default");
        assert_eq!(configuration, BgpConfiguration::default());
        assert_eq!(configuration.as_number, 64512);
        assert!(configuration.node_to_node_mesh_enabled);
    }
}
