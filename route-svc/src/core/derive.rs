//! From datastore records to routing items: the pool set gives a pool item each, a block record
//! its block item (when affine to a node) and an item per borrowed address, a node record its
//! node item. Other records give nothing.

use ipam_api::keys;
use ipam_api::model::{Block, EncapMode, PoolSet};

use route_api::bgp;
use route_api::model::{
    BGP_CONFIGURATION_KEY, Encapsulation, Node, PoolRoute, RouteItem, bgp_peer_key, block_key, borrowed_key,
    node_key, pool_key,
};

/// The datastore prefix route-svc watches (everything it derives from lives below it).
pub const WATCHED_PREFIX: &str = "/brindle/v1/";

/// A record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("record {key} does not decode: {reason}")]
pub struct CorruptRecord {
    /// Its key.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The record at `key` decoded.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, CorruptRecord> {
    serde_json::from_slice(value).map_err(|e| CorruptRecord {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Whether the record at `key` contributes routing items.
pub fn is_routing_record(key: &str) -> bool {
    key == keys::POOLS
        || key.starts_with(keys::BLOCKS)
        || key.starts_with(keys::NODES)
        || key == bgp::CONFIGURATION_KEY
        || key.starts_with(bgp::PEERS_PREFIX)
}

fn encapsulation(vxlan: EncapMode, ipip: EncapMode) -> Encapsulation {
    match (vxlan, ipip) {
        (EncapMode::Always, _) => Encapsulation::Vxlan,
        (EncapMode::CrossSubnet, _) => Encapsulation::VxlanCrossSubnet,
        (EncapMode::Never, EncapMode::Always) => Encapsulation::Ipip,
        (EncapMode::Never, EncapMode::CrossSubnet) => Encapsulation::IpipCrossSubnet,
        (EncapMode::Never, EncapMode::Never) => Encapsulation::None,
    }
}

/// The items the record `key` = `value` contributes, keyed.
pub fn items(key: &str, value: &[u8]) -> Result<Vec<(String, RouteItem)>, CorruptRecord> {
    if key == keys::POOLS {
        let pools: PoolSet = decode(key, value)?;
        return Ok(pools
            .pools
            .into_iter()
            .map(|pool| {
                let item = RouteItem::Pool(PoolRoute {
                    name: pool.name.clone(),
                    cidr: pool.cidr,
                    encapsulation: encapsulation(pool.vxlan_mode, pool.ipip_mode),
                    nat_outgoing: pool.nat_outgoing,
                    disabled: pool.disabled,
                    disable_bgp_export: pool.disable_bgp_export,
                });
                (pool_key(&pool.name), item)
            })
            .collect());
    }
    if key.starts_with(keys::BLOCKS) {
        let block: Block = decode(key, value)?;
        let mut items = Vec::new();
        if let Some(node) = &block.affinity {
            items.push((
                block_key(&block.cidr),
                RouteItem::Block {
                    cidr: block.cidr,
                    node: node.clone(),
                    pool: block.pool.clone(),
                },
            ));
        }
        for (ordinal, allocation) in &block.allocations {
            if block.is_borrowed(allocation) {
                let ip = block.ip_at(*ordinal);
                items.push((
                    borrowed_key(&ip),
                    RouteItem::Borrowed {
                        ip,
                        node: allocation.node.clone(),
                        block: block.cidr,
                    },
                ));
            }
        }
        return Ok(items);
    }
    if key == bgp::CONFIGURATION_KEY {
        let configuration: bgp::BgpConfiguration = decode(key, value)?;
        return Ok(vec![(
            BGP_CONFIGURATION_KEY.to_owned(),
            RouteItem::BgpConfiguration(configuration),
        )]);
    }
    if let Some(name) = key.strip_prefix(bgp::PEERS_PREFIX) {
        let peer: bgp::BgpPeer = decode(key, value)?;
        if peer.name != name {
            return Err(CorruptRecord {
                key: key.to_owned(),
                reason: format!("it names peer {:?}", peer.name),
            });
        }
        return Ok(vec![(bgp_peer_key(name), RouteItem::BgpPeer(peer))]);
    }
    if let Some(name) = key.strip_prefix(keys::NODES) {
        let node: Node = decode(key, value)?;
        if node.name != name {
            return Err(CorruptRecord {
                key: key.to_owned(),
                reason: format!("it names node {:?}", node.name),
            });
        }
        return Ok(vec![(node_key(name), RouteItem::Node(node))]);
    }
    Ok(Vec::new())
}
