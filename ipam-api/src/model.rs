//! IPAM records as stored in the datastore (JSON), and their pure logic.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::DecodeError;

/// Encapsulation toward a pool's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum EncapMode {
    /// Plain routing.
    #[default]
    Never,
    /// Always encapsulate.
    Always,
    /// Encapsulate only across subnets.
    CrossSubnet,
}

/// What a pool's addresses may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// Tunnel endpoint addresses (VXLAN / IP-in-IP).
    Tunnel,
}

pub use brindle_selector::NodeSelector;

/// An IP pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// The pool's network (immutable).
    pub cidr: IpNet,
    /// Prefix length of its blocks (immutable).
    pub block_size: u8,
    /// VXLAN encapsulation.
    pub vxlan_mode: EncapMode,
    /// IP-in-IP encapsulation.
    pub ipip_mode: EncapMode,
    /// Masquerade pod traffic leaving the pools.
    pub nat_outgoing: bool,
    /// No new blocks or addresses from this pool.
    pub disabled: bool,
    /// Which nodes may use the pool.
    pub node_selector: NodeSelector,
    /// Permitted uses.
    pub allowed_uses: Vec<AllowedUse>,
    /// Its blocks are not announced over BGP.
    #[serde(default)]
    pub disable_bgp_export: bool,
}

impl Pool {
    /// Whether `use_` is permitted.
    pub fn allows(&self, use_: AllowedUse) -> bool {
        self.allowed_uses.contains(&use_)
    }
}

/// Every pool (stored as one record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSet {
    /// Pools, sorted by name.
    pub pools: Vec<Pool>,
}

/// Cluster-wide IPAM settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// Never borrow from another node's block.
    pub strict_affinity: bool,
    /// Most blocks one node may hold, and most blocks' worth of addresses of a pool it may hold
    /// with borrowed ones; 0 = unlimited.
    pub max_blocks_per_host: u32,
    /// Seconds a released address waits before auto-assignment hands it out again.
    pub release_cooldown_seconds: u32,
}

/// Blocks a node may hold unless the IPAM configuration says otherwise: with /26 blocks, 1,280
/// addresses — far above Kubernetes' 110 pods per node, far below a pool's worth.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;

impl Default for IpamConfig {
    fn default() -> Self {
        Self {
            strict_affinity: false,
            max_blocks_per_host: DEFAULT_MAX_BLOCKS_PER_HOST,
            release_cooldown_seconds: 30,
        }
    }
}

/// CIDRs that are never handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Unique name.
    pub name: String,
    /// Reserved networks.
    pub cidrs: Vec<IpNet>,
}

/// Every reservation (stored as one record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationSet {
    /// Reservations, sorted by name.
    pub reservations: Vec<Reservation>,
}

impl ReservationSet {
    /// The reservation covering `ip`, if any.
    pub fn covering(&self, ip: IpAddr) -> Option<&Reservation> {
        self.reservations
            .iter()
            .find(|r| r.cidrs.iter().any(|c| c.contains(&ip)))
    }
}

/// Who holds a handle's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleAttributes {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Node the addresses were assigned on.
    pub node: String,
    /// Container (sandbox) id.
    pub container_id: String,
    /// Interface inside the pod.
    pub interface: String,
    /// Anything else.
    pub extra: BTreeMap<String, String>,
}

/// One address of a handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleIp {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: IpNet,
    /// Sequence number of the allocation in the block.
    pub sequence: u64,
}

/// Every address allocated under one id (see [`crate::handles`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    /// The id.
    pub id: String,
    /// Who holds it.
    pub attributes: HandleAttributes,
    /// Its addresses.
    pub ips: Vec<HandleIp>,
    /// When it was created (unix ms).
    pub created_unix_ms: u64,
}

/// An allocated address inside a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAllocation {
    /// Handle holding it.
    pub handle_id: String,
    /// Allocation sequence number (unique within the block, never reused).
    pub sequence: u64,
    /// Node it was allocated for (differs from the block's affinity when borrowed).
    pub node: String,
}

/// A block of addresses, normally affine to one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The block's network.
    pub cidr: IpNet,
    /// Pool it belongs to.
    pub pool: String,
    /// Node it is affine to; `None` once that node is gone.
    pub affinity: Option<String>,
    /// Free ordinals, in the order they are handed out (released ones go to the back).
    pub unallocated: VecDeque<u32>,
    /// Allocated ordinals.
    pub allocations: BTreeMap<u32, BlockAllocation>,
    /// Ordinals released recently → unix ms until which auto-assignment avoids them.
    pub cooldown: BTreeMap<u32, u64>,
    /// Next allocation sequence number.
    pub next_sequence: u64,
}

/// Sequence numbers of a block created after revision `revision` start at `(revision + 1) << 16`.
/// A block never allocates more than 2^16 addresses in one transaction and every transaction
/// advances the revision, so every sequence of a deleted block is below the first sequence of any
/// block created after its deletion: a stale release by IP and sequence can never match a new
/// allocation, even when the block was deleted and re-created in between.
pub fn first_sequence_after(revision: u64) -> u64 {
    revision.saturating_add(1).saturating_mul(1 << 16)
}

impl Block {
    /// A new empty block whose first allocation gets `first_sequence`.
    pub fn new(cidr: IpNet, pool: &str, affinity: Option<&str>, first_sequence: u64) -> Self {
        let size = block_size(&cidr);
        Self {
            cidr,
            pool: pool.to_owned(),
            affinity: affinity.map(str::to_owned),
            unallocated: (0..size).collect(),
            allocations: BTreeMap::new(),
            cooldown: BTreeMap::new(),
            next_sequence: first_sequence,
        }
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> u32 {
        block_size(&self.cidr)
    }

    /// The address at `ordinal`.
    pub fn ip_at(&self, ordinal: u32) -> IpAddr {
        match self.cidr.network() {
            IpAddr::V4(base) => IpAddr::V4((u32::from(base) + ordinal).into()),
            IpAddr::V6(base) => IpAddr::V6((u128::from(base) + u128::from(ordinal)).into()),
        }
    }

    /// The ordinal of `ip`, if it is in the block.
    pub fn ordinal_of(&self, ip: IpAddr) -> Option<u32> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let offset = match (ip, self.cidr.network()) {
            (IpAddr::V4(ip), IpAddr::V4(base)) => u128::from(u32::from(ip) - u32::from(base)),
            (IpAddr::V6(ip), IpAddr::V6(base)) => u128::from(ip) - u128::from(base),
            _ => return None,
        };
        u32::try_from(offset).ok()
    }

    /// Allocates the first free ordinal (FIFO) that is not reserved, preferring ones not cooling
    /// down; returns the address and its sequence number.
    pub fn allocate(
        &mut self,
        handle_id: &str,
        node: &str,
        reservations: &ReservationSet,
        now_ms: u64,
    ) -> Option<(IpAddr, u64)> {
        self.cooldown.retain(|_, until| *until > now_ms);
        let usable = |ordinal: &u32| reservations.covering(self.ip_at(*ordinal)).is_none();
        let position = self
            .unallocated
            .iter()
            .position(|o| usable(o) && !self.cooldown.contains_key(o))
            .or_else(|| self.unallocated.iter().position(usable))?;
        let ordinal = self.unallocated.remove(position)?;
        Some((self.ip_at(ordinal), self.take(ordinal, handle_id, node)))
    }

    /// Allocates exactly `ip` if it is free.
    pub fn allocate_ip(&mut self, ip: IpAddr, handle_id: &str, node: &str) -> Option<u64> {
        let ordinal = self.ordinal_of(ip)?;
        let position = self.unallocated.iter().position(|o| *o == ordinal)?;
        self.unallocated.remove(position);
        Some(self.take(ordinal, handle_id, node))
    }

    fn take(&mut self, ordinal: u32, handle_id: &str, node: &str) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.cooldown.remove(&ordinal);
        self.allocations.insert(
            ordinal,
            BlockAllocation {
                handle_id: handle_id.to_owned(),
                sequence,
                node: node.to_owned(),
            },
        );
        sequence
    }

    /// Frees `ip` if it is allocated with `sequence`; it cools down until `cooldown_until_ms`.
    pub fn release(&mut self, ip: IpAddr, sequence: u64, cooldown_until_ms: u64) -> bool {
        let Some(ordinal) = self.ordinal_of(ip) else {
            return false;
        };
        if self.allocations.get(&ordinal).map(|a| a.sequence) != Some(sequence) {
            return false;
        }
        self.allocations.remove(&ordinal);
        self.unallocated.push_back(ordinal);
        self.cooldown.insert(ordinal, cooldown_until_ms);
        true
    }

    /// Number of free addresses that are not reserved.
    pub fn free(&self, reservations: &ReservationSet) -> usize {
        self.unallocated
            .iter()
            .filter(|o| reservations.covering(self.ip_at(**o)).is_none())
            .count()
    }

    /// Whether an allocation belongs to a node other than the block's owner.
    pub fn is_borrowed(&self, allocation: &BlockAllocation) -> bool {
        self.affinity.as_deref() != Some(allocation.node.as_str())
    }
}

/// Number of addresses in a block network (blocks are at most 2^12 addresses).
fn block_size(cidr: &IpNet) -> u32 {
    1u32 << (cidr.max_prefix_len() - cidr.prefix_len())
}

/// A node's registration as IPAM reads it (route-svc writes the full record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's labels, for pool node selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A block affinity record (its key says which node and block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    /// The block.
    pub block: IpNet,
}

/// Decodes a stored record.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Encodes a record for storing.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys, no I/O).
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn allocation_is_fifo_and_released_addresses_go_last() {
        let mut block = Block::new(net("10.0.0.0/30"), "p", Some("n1"), 1);
        let none = ReservationSet::default();
        let (a, seq_a) = block.allocate("h1", "n1", &none, 0).expect("a");
        let (b, _) = block.allocate("h2", "n1", &none, 0).expect("b");
        assert_eq!(
            (a.to_string().as_str(), b.to_string().as_str()),
            ("10.0.0.0", "10.0.0.1")
        );
        assert!(block.release(a, seq_a, 1_000));
        // 10.0.0.0 cools down until t=1000: the next free ones come first.
        assert_eq!(
            block.allocate("h3", "n1", &none, 10).expect("c").0.to_string(),
            "10.0.0.2"
        );
        assert_eq!(
            block.allocate("h4", "n1", &none, 10).expect("d").0.to_string(),
            "10.0.0.3"
        );
        // Nothing else free: the cooling address is handed out rather than failing.
        assert_eq!(
            block.allocate("h5", "n1", &none, 10).expect("e").0.to_string(),
            "10.0.0.0"
        );
        assert!(block.allocate("h6", "n1", &none, 10).is_none());
    }

    #[test]
    fn stale_release_does_not_free_a_reused_address() {
        let mut block = Block::new(net("10.0.0.0/31"), "p", Some("n1"), 1);
        let none = ReservationSet::default();
        let (ip, first) = block.allocate("h1", "n1", &none, 0).expect("first");
        assert!(block.release(ip, first, 0));
        let second = block.allocate_ip(ip, "h2", "n1").expect("reuse");
        assert!(second > first);
        assert!(
            !block.release(ip, first, 0),
            "release with the old sequence must not free it"
        );
        assert_eq!(block.allocations[&0].handle_id, "h2");
    }

    #[test]
    fn reserved_addresses_are_skipped() {
        let mut block = Block::new(net("10.0.0.0/30"), "p", None, 1);
        let reserved = ReservationSet {
            reservations: vec![Reservation {
                name: "r".into(),
                cidrs: vec![net("10.0.0.0/31")],
            }],
        };
        assert_eq!(block.free(&reserved), 2);
        assert_eq!(
            block.allocate("h", "n", &reserved, 0).expect("ip").0.to_string(),
            "10.0.0.2"
        );
    }

    #[test]
    fn a_stored_selector_that_does_not_parse_reads_and_selects_nothing() {
        let pool: NodeSelector = serde_json::from_str("\"zone ==\"").expect("reads");
        assert!(!pool.is_valid());
        assert_eq!(pool.as_str(), "zone ==");
        assert!(!pool.matches(&BTreeMap::new()));
        assert!(NodeSelector::parse("zone ==").is_err(), "refused when written");
        let every: NodeSelector = serde_json::from_str("\"\"").expect("reads");
        assert!(every.is_valid() && every.matches(&BTreeMap::new()));
    }

    #[test]
    fn ipv6_ordinals() {
        let block = Block::new(net("fd00::40/122"), "p", None, 1);
        assert_eq!(block.size(), 64);
        assert_eq!(block.ip_at(3).to_string(), "fd00::43");
        assert_eq!(block.ordinal_of("fd00::7f".parse().expect("ip")), Some(63));
        assert_eq!(block.ordinal_of("fd00::80".parse().expect("ip")), None);
    }
}
