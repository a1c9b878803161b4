//! Read-only views: `show` (usage per pool and block, borrowed addresses, one address) and
//! `check` (consistency of blocks, handles and affinities, and leaks against live workloads).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use brindle_datastore::Store;
use ipnet::IpNet;

use super::error::IpamError;
use ipam_api::keys;
use ipam_api::model::{Affinity, Block, Handle, HandleAttributes, PoolSet, ReservationSet, decode};

/// What `show` includes besides pool usage.
#[derive(Debug, Clone, Default)]
pub struct ShowOptions {
    /// Per-block usage.
    pub blocks: bool,
    /// Borrowed addresses.
    pub borrowed: bool,
    /// Details of one address.
    pub ip: Option<IpAddr>,
}

/// Usage of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// Pool name.
    pub pool: String,
    /// Its CIDR.
    pub cidr: IpNet,
    /// Addresses in the pool (saturating).
    pub total: u64,
    /// Allocated.
    pub in_use: u64,
    /// Covered by reservations and not allocated.
    pub reserved: u64,
    /// Neither.
    pub free: u64,
    /// Blocks carved from it.
    pub blocks: u32,
}

/// Usage of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockUsage {
    /// Block CIDR.
    pub cidr: IpNet,
    /// Its pool.
    pub pool: String,
    /// Owner node ("" when none).
    pub node: String,
    /// Addresses.
    pub total: u64,
    /// Allocated.
    pub in_use: u64,
    /// Allocated to other nodes.
    pub borrowed: u64,
}

/// An address used by a node other than its block's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BorrowedIp {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: IpNet,
    /// The block's owner ("" when none).
    pub block_node: String,
    /// Handle holding it.
    pub handle_id: String,
    /// Node using it.
    pub node: String,
}

/// Details of one address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpInfo {
    /// Allocated: (block, sequence, handle id).
    pub allocation: Option<(IpNet, u64, String)>,
    /// The holder's attributes.
    pub attributes: Option<HandleAttributes>,
    /// Covered by a reservation.
    pub reserved: bool,
    /// Released recently and cooling down.
    pub cooling_down: bool,
}

/// The result of `show`.
#[derive(Debug, Clone, Default)]
pub struct Show {
    /// Per pool.
    pub pools: Vec<PoolUsage>,
    /// Per block (when asked).
    pub blocks: Vec<BlockUsage>,
    /// Borrowed addresses (when asked).
    pub borrowed: Vec<BorrowedIp>,
    /// The asked-for address.
    pub ip: Option<IpInfo>,
}

/// What IPAM stores, read at one revision (a usage report leaves out handles and affinities).
struct Snapshot {
    pools: PoolSet,
    reservations: ReservationSet,
    blocks: Vec<Block>,
    handles: Vec<Handle>,
    /// (node, block) of every affinity record.
    affinities: Vec<(String, IpNet)>,
    revision: u64,
}

async fn snapshot(store: &dyn Store) -> Result<Snapshot, IpamError> {
    let listed = store.list("/brindle/v1/ipam/").await?;
    let mut snapshot = Snapshot {
        pools: PoolSet::default(),
        reservations: ReservationSet::default(),
        blocks: Vec::new(),
        handles: Vec::new(),
        affinities: Vec::new(),
        revision: listed.revision,
    };
    for kv in &listed.kvs {
        let key = kv.key.as_str();
        if key == keys::POOLS {
            snapshot.pools = decode(key, &kv.value)?;
        } else if key == keys::RESERVATIONS {
            snapshot.reservations = decode(key, &kv.value)?;
        } else if key.starts_with(keys::BLOCKS) {
            snapshot.blocks.push(decode(key, &kv.value)?);
        } else if key.starts_with(keys::HANDLES) {
            snapshot.handles.push(decode(key, &kv.value)?);
        } else if let Some(rest) = key.strip_prefix(keys::AFFINITIES) {
            let node = rest.split('/').next().unwrap_or_default().to_owned();
            let affinity: Affinity = decode(key, &kv.value)?;
            snapshot.affinities.push((node, affinity.block));
        }
    }
    Ok(snapshot)
}

fn addresses(net: &IpNet) -> u64 {
    let bits = u32::from(net.max_prefix_len() - net.prefix_len());
    1u64.checked_shl(bits).unwrap_or(u64::MAX)
}

/// What a usage report needs, without the handles (one per pod: the bulk of IPAM's records),
/// which it reads only for `--ip`'s holder. Blocks are read at one revision; pools and
/// reservations just after.
async fn usage_snapshot(store: &dyn Store) -> Result<Snapshot, IpamError> {
    let listed = store.list(keys::BLOCKS).await?;
    let mut snapshot = Snapshot {
        pools: PoolSet::default(),
        reservations: ReservationSet::default(),
        blocks: Vec::with_capacity(listed.kvs.len()),
        handles: Vec::new(),
        affinities: Vec::new(),
        revision: listed.revision,
    };
    for kv in &listed.kvs {
        snapshot.blocks.push(decode(&kv.key, &kv.value)?);
    }
    if let Some(kv) = store.get(keys::POOLS).await? {
        snapshot.pools = decode(&kv.key, &kv.value)?;
    }
    if let Some(kv) = store.get(keys::RESERVATIONS).await? {
        snapshot.reservations = decode(&kv.key, &kv.value)?;
    }
    Ok(snapshot)
}

/// Usage report.
pub async fn show(store: &dyn Store, options: &ShowOptions, now_ms: u64) -> Result<Show, IpamError> {
    let snapshot = usage_snapshot(store).await?;
    let mut show = Show::default();
    for pool in &snapshot.pools.pools {
        let blocks: Vec<&Block> = snapshot.blocks.iter().filter(|b| b.pool == pool.name).collect();
        let in_use: u64 = blocks.iter().map(|b| b.allocations.len() as u64).sum();
        let reserved: u64 = snapshot
            .reservations
            .reservations
            .iter()
            .flat_map(|r| &r.cidrs)
            .filter_map(|c| {
                if pool.cidr.contains(c) {
                    Some(addresses(c))
                } else if c.contains(&pool.cidr) {
                    Some(addresses(&pool.cidr))
                } else {
                    None
                }
            })
            .fold(0u64, u64::saturating_add);
        let total = addresses(&pool.cidr);
        show.pools.push(PoolUsage {
            pool: pool.name.clone(),
            cidr: pool.cidr,
            total,
            in_use,
            reserved,
            free: total.saturating_sub(in_use).saturating_sub(reserved),
            blocks: u32::try_from(blocks.len()).unwrap_or(u32::MAX),
        });
    }
    for block in &snapshot.blocks {
        let owner = block.affinity.clone().unwrap_or_default();
        let borrowed: Vec<_> = block
            .allocations
            .iter()
            .filter(|(_, a)| block.is_borrowed(a))
            .collect();
        if options.blocks {
            show.blocks.push(BlockUsage {
                cidr: block.cidr,
                pool: block.pool.clone(),
                node: owner.clone(),
                total: u64::from(block.size()),
                in_use: block.allocations.len() as u64,
                borrowed: borrowed.len() as u64,
            });
        }
        if options.borrowed {
            show.borrowed
                .extend(borrowed.iter().map(|(ordinal, a)| BorrowedIp {
                    ip: block.ip_at(**ordinal),
                    block: block.cidr,
                    block_node: owner.clone(),
                    handle_id: a.handle_id.clone(),
                    node: a.node.clone(),
                }));
        }
    }
    if let Some(ip) = options.ip {
        let mut info = IpInfo {
            reserved: snapshot.reservations.covering(ip).is_some(),
            ..IpInfo::default()
        };
        if let Some(block) = snapshot.blocks.iter().find(|b| b.cidr.contains(&ip))
            && let Some(ordinal) = block.ordinal_of(ip)
        {
            info.cooling_down = block.cooldown.get(&ordinal).is_some_and(|until| *until > now_ms);
            if let Some(a) = block.allocations.get(&ordinal) {
                info.allocation = Some((block.cidr, a.sequence, a.handle_id.clone()));
                info.attributes = match store.get(&keys::handle(&a.handle_id)).await? {
                    Some(kv) => Some(decode::<Handle>(&kv.key, &kv.value)?.attributes),
                    None => None,
                };
            }
        }
        show.ip = Some(info);
    }
    Ok(show)
}

/// Kinds of inconsistency `check` finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemKind {
    /// A block allocation whose handle does not list it.
    AllocationWithoutHandle,
    /// A handle address its block does not hold for it.
    HandleWithoutAllocation,
    /// An address in two blocks.
    DuplicateIp,
    /// Block affinity and affinity records disagree.
    AffinityMismatch,
    /// A block's free and allocated ordinals do not add up.
    CountMismatch,
    /// A pod handle no live workload uses.
    LeakedHandle,
    /// A block outside every pool.
    BlockOutsidePool,
}

/// One inconsistency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Its kind.
    pub kind: ProblemKind,
    /// What is wrong, for humans.
    pub message: String,
    /// The address, when one is involved.
    pub ip: Option<IpAddr>,
    /// The block, when one is involved.
    pub block: Option<IpNet>,
    /// The handle, when one is involved.
    pub handle_id: Option<String>,
}

/// The result of `check`.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Every problem found.
    pub problems: Vec<Problem>,
    /// Allocations seen.
    pub allocations: u64,
    /// Handles seen.
    pub handles: u64,
    /// Blocks seen.
    pub blocks: u64,
    /// Revision everything was read at.
    pub revision: u64,
}

impl CheckReport {
    /// No problems.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Consistency report at one revision.
pub async fn check(
    store: &dyn Store,
    live_handles: Option<&HashSet<String>>,
) -> Result<CheckReport, IpamError> {
    let snapshot = snapshot(store).await?;
    let mut report = CheckReport {
        handles: snapshot.handles.len() as u64,
        blocks: snapshot.blocks.len() as u64,
        revision: snapshot.revision,
        ..CheckReport::default()
    };
    let problem = |kind, message: String, ip, block, handle_id| Problem {
        kind,
        message,
        ip,
        block,
        handle_id,
    };
    let handles: HashMap<&str, &Handle> = snapshot.handles.iter().map(|h| (h.id.as_str(), h)).collect();
    let blocks: HashMap<IpNet, &Block> = snapshot.blocks.iter().map(|b| (b.cidr, b)).collect();
    let affinities: HashSet<(&str, IpNet)> = snapshot
        .affinities
        .iter()
        .map(|(node, block)| (node.as_str(), *block))
        .collect();
    let mut owners: BTreeMap<IpAddr, IpNet> = BTreeMap::new();
    for block in &snapshot.blocks {
        if !snapshot
            .pools
            .pools
            .iter()
            .any(|p| p.name == block.pool && p.cidr.contains(&block.cidr))
        {
            report.problems.push(problem(
                ProblemKind::BlockOutsidePool,
                format!("block {} belongs to no pool (pool {:?})", block.cidr, block.pool),
                None,
                Some(block.cidr),
                None,
            ));
        }
        let free: HashSet<u32> = block.unallocated.iter().copied().collect();
        let overlap = block.allocations.keys().any(|o| free.contains(o));
        if overlap
            || free.len() != block.unallocated.len()
            || free.len() + block.allocations.len() != block.size() as usize
        {
            report.problems.push(problem(
                ProblemKind::CountMismatch,
                format!(
                    "block {}: {} free + {} allocated ≠ {} addresses (or an ordinal is both)",
                    block.cidr,
                    block.unallocated.len(),
                    block.allocations.len(),
                    block.size()
                ),
                None,
                Some(block.cidr),
                None,
            ));
        }
        match &block.affinity {
            Some(node) if !affinities.contains(&(node.as_str(), block.cidr)) => {
                report.problems.push(problem(
                    ProblemKind::AffinityMismatch,
                    format!(
                        "block {} is affine to {node:?} but that node has no affinity record",
                        block.cidr
                    ),
                    None,
                    Some(block.cidr),
                    None,
                ));
            }
            _ => {}
        }
        for (ordinal, allocation) in &block.allocations {
            let ip = block.ip_at(*ordinal);
            report.allocations += 1;
            if let Some(other) = owners.insert(ip, block.cidr) {
                report.problems.push(problem(
                    ProblemKind::DuplicateIp,
                    format!("{ip} is in blocks {other} and {}", block.cidr),
                    Some(ip),
                    Some(block.cidr),
                    None,
                ));
            }
            let listed = handles.get(allocation.handle_id.as_str()).is_some_and(|h| {
                h.ips
                    .iter()
                    .any(|x| x.ip == ip && x.sequence == allocation.sequence)
            });
            if !listed {
                report.problems.push(problem(
                    ProblemKind::AllocationWithoutHandle,
                    format!(
                        "{ip} is allocated to handle {:?}, which does not list it",
                        allocation.handle_id
                    ),
                    Some(ip),
                    Some(block.cidr),
                    Some(allocation.handle_id.clone()),
                ));
            }
        }
    }
    for (node, cidr) in &snapshot.affinities {
        let agrees = blocks
            .get(cidr)
            .is_some_and(|b| b.affinity.as_deref() == Some(node.as_str()));
        if !agrees {
            report.problems.push(problem(
                ProblemKind::AffinityMismatch,
                format!("node {node:?} has an affinity to block {cidr}, which is not affine to it"),
                None,
                Some(*cidr),
                None,
            ));
        }
    }
    for handle in &snapshot.handles {
        for hip in &handle.ips {
            let held = blocks.get(&hip.block).is_some_and(|b| {
                b.ordinal_of(hip.ip)
                    .and_then(|o| b.allocations.get(&o))
                    .is_some_and(|a| a.handle_id == handle.id && a.sequence == hip.sequence)
            });
            if !held {
                report.problems.push(problem(
                    ProblemKind::HandleWithoutAllocation,
                    format!(
                        "handle {:?} lists {} but block {} does not hold it for it",
                        handle.id, hip.ip, hip.block
                    ),
                    Some(hip.ip),
                    Some(hip.block),
                    Some(handle.id.clone()),
                ));
            }
        }
        if let Some(live) = live_handles
            && !live.contains(&handle.id)
            && !ipam_api::handles::is_tunnel_handle(&handle.id)
        {
            report.problems.push(problem(
                ProblemKind::LeakedHandle,
                format!(
                    "handle {:?} ({} addresses) belongs to no live workload",
                    handle.id,
                    handle.ips.len()
                ),
                handle.ips.first().map(|h| h.ip),
                None,
                Some(handle.id.clone()),
            ));
        }
    }
    Ok(report)
}
