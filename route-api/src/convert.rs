//! Between the routing model and `brindle.route.v1` messages, both ways (route-svc encodes, the
//! node agent decodes).

use std::net::{IpAddr, Ipv4Addr};

use brindle_proto::InvalidField;
use brindle_proto::route::v1 as pb;
use ipnet::IpNet;

use crate::model::{Encapsulation, Node, NodeBgp, PoolRoute, RouteItem};

fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> InvalidField {
    InvalidField::new(field, reason)
}

fn parse<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, InvalidField>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| invalid(field, format!("{text:?}: {e}")))
}

fn parse_optional<T: std::str::FromStr>(field: &str, text: &str) -> Result<Option<T>, InvalidField>
where
    T::Err: std::fmt::Display,
{
    if text.is_empty() {
        Ok(None)
    } else {
        parse(field, text).map(Some)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(field: &str, text: &str) -> Result<Option<[u8; 6]>, InvalidField> {
    if text.is_empty() {
        return Ok(None);
    }
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| u8::from_str_radix(part, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            invalid(
                field,
                format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
            )
        })?;
    <[u8; 6]>::try_from(bytes).map(Some).map_err(|_| {
        invalid(
            field,
            format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        )
    })
}

fn text<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// A node as a message.
pub fn node_to_proto(node: &Node) -> pb::Node {
    pb::Node {
        name: node.name.clone(),
        addresses: node.addresses.iter().map(ToString::to_string).collect(),
        ipv4_subnet: text(node.ipv4_subnet),
        ipv6_subnet: text(node.ipv6_subnet),
        labels: node.labels.clone().into_iter().collect(),
        vtep_mac: node.vtep_mac.as_ref().map(format_mac).unwrap_or_default(),
        vtep_ipv4: text(node.vtep_ipv4),
        vtep_ipv6: text(node.vtep_ipv6),
        ipip_tunnel_ipv4: text(node.ipip_tunnel_ipv4),
        revision: 0,
        bgp_router_id: text(node.bgp.map(|b| b.router_id)),
        bgp_as_number: node.bgp.and_then(|b| b.as_number),
    }
}

/// A node from a message (`field` prefixes the names of invalid fields).
pub fn node_from_proto(node: pb::Node, field: &str) -> Result<Node, InvalidField> {
    Ok(Node {
        addresses: node
            .addresses
            .iter()
            .map(|a| parse::<IpAddr>(&format!("{field}.addresses"), a))
            .collect::<Result<_, _>>()?,
        ipv4_subnet: parse_optional(&format!("{field}.ipv4_subnet"), &node.ipv4_subnet)?,
        ipv6_subnet: parse_optional(&format!("{field}.ipv6_subnet"), &node.ipv6_subnet)?,
        labels: node.labels.into_iter().collect(),
        vtep_mac: parse_mac(&format!("{field}.vtep_mac"), &node.vtep_mac)?,
        vtep_ipv4: parse_optional(&format!("{field}.vtep_ipv4"), &node.vtep_ipv4)?,
        vtep_ipv6: parse_optional(&format!("{field}.vtep_ipv6"), &node.vtep_ipv6)?,
        ipip_tunnel_ipv4: parse_optional(&format!("{field}.ipip_tunnel_ipv4"), &node.ipip_tunnel_ipv4)?,
        bgp: node_bgp(field, &node.bgp_router_id, node.bgp_as_number)?,
        name: node.name,
        lease: 0,
    })
}

/// A node's BGP identity: a router id, and an AS number only with one (never 0).
fn node_bgp(field: &str, router_id: &str, as_number: Option<u32>) -> Result<Option<NodeBgp>, InvalidField> {
    let router_id = parse_optional::<Ipv4Addr>(&format!("{field}.bgp_router_id"), router_id)?;
    match (router_id, as_number) {
        (_, Some(0)) => Err(invalid(format!("{field}.bgp_as_number"), "0 is not an AS number")),
        (None, Some(_)) => Err(invalid(
            format!("{field}.bgp_as_number"),
            "given without bgp_router_id",
        )),
        (None, None) => Ok(None),
        (Some(router_id), as_number) => Ok(Some(NodeBgp { router_id, as_number })),
    }
}

fn encapsulation_to_proto(encapsulation: Encapsulation) -> pb::Encapsulation {
    match encapsulation {
        Encapsulation::None => pb::Encapsulation::None,
        Encapsulation::Vxlan => pb::Encapsulation::Vxlan,
        Encapsulation::VxlanCrossSubnet => pb::Encapsulation::VxlanCrossSubnet,
        Encapsulation::Ipip => pb::Encapsulation::Ipip,
        Encapsulation::IpipCrossSubnet => pb::Encapsulation::IpipCrossSubnet,
    }
}

fn encapsulation_from_proto(value: i32) -> Result<Encapsulation, InvalidField> {
    match pb::Encapsulation::try_from(value) {
        Ok(pb::Encapsulation::Unspecified | pb::Encapsulation::None) => Ok(Encapsulation::None),
        Ok(pb::Encapsulation::Vxlan) => Ok(Encapsulation::Vxlan),
        Ok(pb::Encapsulation::VxlanCrossSubnet) => Ok(Encapsulation::VxlanCrossSubnet),
        Ok(pb::Encapsulation::Ipip) => Ok(Encapsulation::Ipip),
        Ok(pb::Encapsulation::IpipCrossSubnet) => Ok(Encapsulation::IpipCrossSubnet),
        Err(_) => Err(invalid("pool.encapsulation", format!("unknown value {value}"))),
    }
}

/// An item as a keyed message.
pub fn entry_to_proto(key: &str, item: &RouteItem) -> pb::RouteEntry {
    let value = match item {
        RouteItem::Node(node) => pb::route_entry::Value::Node(node_to_proto(node)),
        RouteItem::Block { cidr, node, pool } => pb::route_entry::Value::Block(pb::BlockRoute {
            cidr: cidr.to_string(),
            node: node.clone(),
            pool: pool.clone(),
        }),
        RouteItem::Borrowed { ip, node, block } => pb::route_entry::Value::Borrowed(pb::BorrowedRoute {
            ip: ip.to_string(),
            node: node.clone(),
            block: block.to_string(),
        }),
        RouteItem::Pool(pool) => pb::route_entry::Value::Pool(pb::PoolRoute {
            name: pool.name.clone(),
            cidr: pool.cidr.to_string(),
            encapsulation: encapsulation_to_proto(pool.encapsulation).into(),
            nat_outgoing: pool.nat_outgoing,
            disabled: pool.disabled,
            disable_bgp_export: pool.disable_bgp_export,
        }),
        RouteItem::BgpConfiguration(configuration) => {
            pb::route_entry::Value::BgpConfiguration(crate::bgp::configuration_to_proto(configuration))
        }
        RouteItem::BgpPeer(peer) => pb::route_entry::Value::BgpPeer(crate::bgp::peer_to_proto(peer)),
    };
    pb::RouteEntry {
        key: key.to_owned(),
        value: Some(value),
    }
}

/// A keyed item from a message.
pub fn entry_from_proto(entry: pb::RouteEntry) -> Result<(String, RouteItem), InvalidField> {
    let item = match entry.value {
        None => {
            return Err(invalid(
                "entry.value",
                format!("entry {:?} has no value", entry.key),
            ));
        }
        Some(pb::route_entry::Value::Node(node)) => RouteItem::Node(node_from_proto(node, "node")?),
        Some(pb::route_entry::Value::Block(block)) => RouteItem::Block {
            cidr: parse::<IpNet>("block.cidr", &block.cidr)?,
            node: block.node,
            pool: block.pool,
        },
        Some(pb::route_entry::Value::Borrowed(borrowed)) => RouteItem::Borrowed {
            ip: parse("borrowed.ip", &borrowed.ip)?,
            node: borrowed.node,
            block: parse("borrowed.block", &borrowed.block)?,
        },
        Some(pb::route_entry::Value::Pool(pool)) => RouteItem::Pool(PoolRoute {
            cidr: parse("pool.cidr", &pool.cidr)?,
            encapsulation: encapsulation_from_proto(pool.encapsulation)?,
            nat_outgoing: pool.nat_outgoing,
            disabled: pool.disabled,
            disable_bgp_export: pool.disable_bgp_export,
            name: pool.name,
        }),
        Some(pb::route_entry::Value::BgpConfiguration(configuration)) => {
            RouteItem::BgpConfiguration(crate::bgp::configuration_from_proto(configuration)?)
        }
        Some(pb::route_entry::Value::BgpPeer(peer)) => RouteItem::BgpPeer(crate::bgp::peer_from_proto(peer)?),
    };
    Ok((entry.key, item))
}

/// The routing state's `Sync` messages.
pub struct RouteWire;

brindle_sync::impl_wire!(
    RouteWire,
    value: RouteItem,
    entry: pb::RouteEntry,
    state: pb::RouteState,
    delta: pb::RouteDelta,
    response: pb::SyncResponse,
    payload: pb::sync_response::Payload,
    entry_to_proto: entry_to_proto,
    entry_from_proto: entry_from_proto,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_bgp_identity_round_trips_and_bad_ones_are_named() {
        let message = pb::Node {
            name: "n1".into(),
            addresses: vec!["192.0.2.1".into()],
            bgp_router_id: "192.0.2.1".into(),
            bgp_as_number: Some(65010),
            ..pb::Node::default()
        };
        let node = node_from_proto(message.clone(), "node").expect("valid");
        assert_eq!(
            node.bgp,
            Some(NodeBgp {
                router_id: Ipv4Addr::new(192, 0, 2, 1),
                as_number: Some(65010)
            })
        );
        assert_eq!(node_to_proto(&node).bgp_as_number, Some(65010));
        for (bad, named) in [
            (
                pb::Node {
                    bgp_as_number: Some(0),
                    ..message.clone()
                },
                "node.bgp_as_number",
            ),
            (
                pb::Node {
                    bgp_router_id: String::new(),
                    ..message.clone()
                },
                "node.bgp_as_number",
            ),
            (
                pb::Node {
                    bgp_router_id: "fd00::1".into(),
                    ..message
                },
                "node.bgp_router_id",
            ),
        ] {
            let error = node_from_proto(bad, "node").expect_err(named).to_string();
            assert!(error.contains(named), "{error}");
        }
    }
}
