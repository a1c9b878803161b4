//! What each IPAM write does to a batch's working state: auto-assign (affine blocks, then a new
//! block, then borrowing), assign a specific address, release by handle or by address, and
//! dropping blocks and affinities.

use std::net::IpAddr;

use ipnet::IpNet;

use super::error::IpamError;
use super::plan::Plan;
use ipam_api::model::{AllowedUse, Block, Handle, HandleAttributes, HandleIp, Pool};

/// Ask for addresses for a handle on a node.
#[derive(Debug, Clone)]
pub struct AssignRequest {
    /// `<network>.<containerID>` or `vxlan-tunnel-addr-<node>`.
    pub handle_id: String,
    /// Node asking.
    pub node: String,
    /// IPv4 addresses wanted.
    pub num_ipv4: u32,
    /// IPv6 addresses wanted.
    pub num_ipv6: u32,
    /// Only these IPv4 pools (empty = any usable).
    pub ipv4_pools: Vec<String>,
    /// Only these IPv6 pools (empty = any usable).
    pub ipv6_pools: Vec<String>,
    /// Workload or tunnel address.
    pub use_: AllowedUse,
    /// Who the addresses are for.
    pub attributes: HandleAttributes,
}

/// Ask for one specific address.
#[derive(Debug, Clone)]
pub struct AssignIpRequest {
    /// Handle the address joins.
    pub handle_id: String,
    /// The address.
    pub ip: IpAddr,
    /// Node asking.
    pub node: String,
    /// Workload or tunnel address: its pool must allow it.
    pub use_: AllowedUse,
    /// Who the address is for.
    pub attributes: HandleAttributes,
}

/// An allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: IpNet,
    /// Its pool.
    pub pool: String,
    /// Its allocation sequence number.
    pub sequence: u64,
    /// Taken from another node's (or no node's) block.
    pub borrowed: bool,
    /// Handle holding it.
    pub handle_id: String,
}

/// Result of an auto-assign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignResult {
    /// The handle's addresses.
    pub allocations: Vec<Allocated>,
    /// The handle already held them (idempotent retry): nothing was allocated.
    pub existing: bool,
}

/// One queued write.
#[derive(Debug, Clone)]
pub enum Work {
    /// Auto-assign.
    Assign(AssignRequest),
    /// Assign a specific address.
    AssignIp(AssignIpRequest),
    /// Release every address of a handle.
    ReleaseHandle(String),
    /// Release one address if it still has this sequence number.
    ReleaseIp {
        /// The address.
        ip: IpAddr,
        /// Its sequence number when it was read.
        sequence: u64,
    },
    /// The node is gone: drop its affinities; delete its empty blocks, keep the others
    /// without affinity until they empty.
    ForgetNode,
    /// Delete a block of a deleted pool once it is empty, with its affinity.
    DropBlock(IpNet),
}

impl Work {
    /// Whether the work creates its handle: the handle is then assumed absent rather than read
    /// (a retried ADD whose handle exists makes the batch conflict and re-read everything).
    pub fn creates_handle(&self) -> bool {
        matches!(self, Self::Assign(_))
    }

    /// The handle this work reads.
    pub fn handle_id(&self) -> Option<&str> {
        match self {
            Self::Assign(request) => Some(&request.handle_id),
            Self::AssignIp(request) => Some(&request.handle_id),
            Self::ReleaseHandle(id) => Some(id),
            Self::ReleaseIp { .. } | Self::ForgetNode | Self::DropBlock(_) => None,
        }
    }
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Auto-assign result.
    Assigned(AssignResult),
    /// Specific address assigned.
    AssignedIp(Allocated),
    /// Addresses released.
    Released(Vec<IpAddr>),
    /// Whether the address was released.
    ReleasedIp(bool),
    /// Blocks deleted, addresses still held by other nodes in kept blocks.
    Forgotten {
        /// Blocks deleted.
        deleted_blocks: u32,
    },
}

/// Applies `work` to the plan's current job.
pub async fn run(plan: &mut Plan, work: &Work) -> Result<Outcome, IpamError> {
    Ok(match work {
        Work::Assign(request) => Outcome::Assigned(assign(plan, request).await?),
        Work::AssignIp(request) => Outcome::AssignedIp(assign_ip(plan, request).await?),
        Work::ReleaseHandle(id) => Outcome::Released(release_handle(plan, id).await?),
        Work::ReleaseIp { ip, sequence } => Outcome::ReleasedIp(release_ip(plan, *ip, *sequence).await?),
        Work::ForgetNode => forget_node(plan).await?,
        Work::DropBlock(cidr) => drop_block(plan, *cidr).await?,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

fn allocated(block: &Block, ip: IpAddr, sequence: u64, handle_id: &str, node: &str) -> Allocated {
    Allocated {
        ip,
        block: block.cidr,
        pool: block.pool.clone(),
        sequence,
        borrowed: block.affinity.as_deref() != Some(node),
        handle_id: handle_id.to_owned(),
    }
}

/// One of a handle's addresses as an [`Allocated`], given its block (if it still exists).
pub fn held(handle: &Handle, hip: &HandleIp, block: Option<&Block>) -> Allocated {
    Allocated {
        ip: hip.ip,
        block: hip.block,
        pool: block.map(|b| b.pool.clone()).unwrap_or_default(),
        sequence: hip.sequence,
        borrowed: block.is_none_or(|b| b.affinity.as_deref() != Some(handle.attributes.node.as_str())),
        handle_id: handle.id.clone(),
    }
}

async fn handle_allocations(plan: &mut Plan, handle: &Handle) -> Result<Vec<Allocated>, IpamError> {
    let mut allocations = Vec::with_capacity(handle.ips.len());
    for hip in &handle.ips {
        let block = plan.block(hip.block).await?;
        allocations.push(held(handle, hip, block.as_ref()));
    }
    Ok(allocations)
}

/// The pools of `family` this node may allocate `use_` addresses from, honouring `only`.
fn eligible_pools(
    plan: &Plan,
    family: Family,
    use_: AllowedUse,
    only: &[String],
    field: &str,
) -> Result<Vec<Pool>, IpamError> {
    let pools = &plan.settings.pools.value.pools;
    // Calico names a pool by its name or its CIDR.
    let names = |pool: &Pool, name: &str| pool.name == name || pool.cidr.to_string() == name;
    for name in only {
        match pools.iter().find(|p| names(p, name)) {
            None => return Err(IpamError::invalid(field, format!("pool {name:?} does not exist"))),
            Some(pool) if Family::of(&pool.cidr) != family => {
                return Err(IpamError::invalid(
                    field,
                    format!("pool {name:?} is not an {} pool", family.name()),
                ));
            }
            Some(_) => {}
        }
    }
    let mut refusals = Vec::new();
    let mut eligible = Vec::new();
    for pool in pools.iter().filter(|p| Family::of(&p.cidr) == family) {
        if !only.is_empty() && !only.iter().any(|name| names(pool, name)) {
            continue;
        }
        match refusal(plan, pool, use_) {
            Some(why) => refusals.push(why),
            None => eligible.push(pool.clone()),
        }
    }
    if eligible.is_empty() {
        let why = if refusals.is_empty() {
            "there is none".to_owned()
        } else {
            refusals.join("; ")
        };
        return Err(IpamError::FailedPrecondition(format!(
            "no {} pool is usable by node {:?}: {why}",
            family.name(),
            plan.node
        )));
    }
    Ok(eligible)
}

/// Why this node may not take `use_` addresses from `pool`; `None` when it may.
fn refusal(plan: &Plan, pool: &Pool, use_: AllowedUse) -> Option<String> {
    if pool.disabled {
        Some(format!("{} is disabled", pool.name))
    } else if !pool.allows(use_) {
        Some(format!("{} does not allow {use_:?} addresses", pool.name))
    } else if !pool.node_selector.is_valid() {
        Some(format!(
            "{}'s stored node selector {:?} does not parse; set it again",
            pool.name,
            pool.node_selector.as_str()
        ))
    } else if !pool.node_selector.matches(&plan.node_labels) {
        Some(format!(
            "{}'s node selector {:?} does not match",
            pool.name,
            pool.node_selector.as_str()
        ))
    } else {
        None
    }
}

/// A handle is its node's: another node may neither receive its addresses nor add to them.
fn check_owner(plan: &Plan, handle: &Handle) -> Result<(), IpamError> {
    let owner = &handle.attributes.node;
    if owner.is_empty() || *owner == plan.node {
        Ok(())
    } else {
        Err(IpamError::OtherNodesHandle {
            handle: handle.id.clone(),
            owner: owner.clone(),
            node: plan.node.clone(),
        })
    }
}

/// Addresses still wanted for one family, collected into a handle.
struct Want<'a> {
    handle: &'a mut Handle,
    allocations: &'a mut Vec<Allocated>,
    need: u32,
}

impl Want<'_> {
    /// Takes free addresses of `block`, at most `limit`, until satisfied or the block is full;
    /// returns how many it took.
    fn fill(&mut self, plan: &Plan, block: &mut Block, limit: u64) -> u64 {
        let mut taken = 0;
        while self.need > 0 && taken < limit {
            let node = &plan.node;
            let Some((ip, sequence)) = block.allocate(
                &self.handle.id,
                node,
                &plan.settings.reservations.value,
                plan.now_ms,
            ) else {
                break;
            };
            self.handle.ips.push(HandleIp {
                ip,
                block: block.cidr,
                sequence,
            });
            self.allocations
                .push(allocated(block, ip, sequence, &self.handle.id, node));
            self.need -= 1;
            taken += 1;
        }
        taken
    }
}

async fn assign(plan: &mut Plan, request: &AssignRequest) -> Result<AssignResult, IpamError> {
    if let Some(handle) = plan.handle(&request.handle_id).await? {
        check_owner(plan, &handle)?;
        return Ok(AssignResult {
            allocations: handle_allocations(plan, &handle).await?,
            existing: true,
        });
    }
    let mut handle = Handle {
        id: request.handle_id.clone(),
        attributes: request.attributes.clone(),
        ips: Vec::new(),
        created_unix_ms: plan.now_ms,
    };
    let mut allocations = Vec::new();
    let families = [
        (Family::V4, request.num_ipv4, &request.ipv4_pools, "ipv4_pools"),
        (Family::V6, request.num_ipv6, &request.ipv6_pools, "ipv6_pools"),
    ];
    for (family, count, only, field) in families {
        if count == 0 {
            continue;
        }
        let pools = eligible_pools(plan, family, request.use_, only, field)?;
        let mut want = Want {
            handle: &mut handle,
            allocations: &mut allocations,
            need: count,
        };
        fill_affine(plan, &pools, &mut want).await?;
        while want.need > 0 && claim_block(plan, &pools).await? {
            fill_affine(plan, &pools, &mut want).await?;
        }
        if want.need > 0 && !plan.settings.config.value.strict_affinity {
            borrow(plan, &pools, &mut want).await?;
        }
        let max_blocks = plan.settings.config.value.max_blocks_per_host;
        if want.need > 0 && max_blocks > 0 && plan.node_blocks().len() >= max_blocks as usize {
            return Err(IpamError::NodeLimit {
                node: plan.node.clone(),
                max_blocks,
            });
        }
        if want.need > 0 {
            return Err(IpamError::Exhausted {
                family: family.name(),
                node: plan.node.clone(),
                pools_tried: pools.iter().map(|p| p.name.clone()).collect(),
            });
        }
    }
    plan.set_handle(&request.handle_id, Some(handle));
    Ok(AssignResult {
        allocations,
        existing: false,
    })
}

fn in_pools(pools: &[Pool], block: &Block) -> bool {
    pools
        .iter()
        .any(|p| p.name == block.pool && p.cidr.contains(&block.cidr))
}

async fn fill_affine(plan: &mut Plan, pools: &[Pool], want: &mut Want<'_>) -> Result<(), IpamError> {
    for cidr in plan.node_blocks() {
        if want.need == 0 {
            break;
        }
        let Some(mut block) = plan.block(cidr).await? else {
            continue;
        };
        if in_pools(pools, &block) && want.fill(plan, &mut block, u64::MAX) > 0 {
            plan.set_block(cidr, Some(block));
        }
    }
    Ok(())
}

/// Takes free addresses of other nodes' blocks. With `max_blocks_per_host` set, a node never
/// holds more than that many blocks' worth of addresses of a pool, borrowed ones included, so
/// one node cannot drain the other nodes' blocks either.
async fn borrow(plan: &mut Plan, pools: &[Pool], want: &mut Want<'_>) -> Result<(), IpamError> {
    let all = plan.all_blocks().await?;
    let mut room: std::collections::BTreeMap<String, u64> = pools
        .iter()
        .map(|p| (p.name.clone(), room_in_pool(plan, p, &all)))
        .collect();
    for mut block in all {
        if want.need == 0 {
            break;
        }
        if block.affinity.as_deref() == Some(plan.node.as_str()) || !in_pools(pools, &block) {
            continue;
        }
        let Some(left) = room.get_mut(&block.pool) else {
            continue;
        };
        let taken = want.fill(plan, &mut block, *left);
        if taken > 0 {
            *left -= taken;
            plan.set_block(block.cidr, Some(block));
        }
    }
    Ok(())
}

/// How many more addresses of `pool` the node may hold (`blocks`: every block): at most
/// `max_blocks_per_host` blocks' worth, borrowed ones included (unlimited when 0).
fn room_in_pool(plan: &Plan, pool: &Pool, blocks: &[Block]) -> u64 {
    let max_blocks = u64::from(plan.settings.config.value.max_blocks_per_host);
    if max_blocks == 0 {
        return u64::MAX;
    }
    let per_block = 1u64 << (pool.cidr.max_prefix_len() - pool.block_size);
    let held = blocks
        .iter()
        .filter(|b| b.pool == pool.name)
        .flat_map(|b| b.allocations.values())
        .filter(|a| a.node == plan.node)
        .count() as u64;
    (max_blocks * per_block).saturating_sub(held)
}

/// Claims one block for the node: a free CIDR of an eligible pool, else an empty block of a node
/// that is gone. Returns whether a block was claimed.
async fn claim_block(plan: &mut Plan, pools: &[Pool]) -> Result<bool, IpamError> {
    let max = plan.settings.config.value.max_blocks_per_host;
    if max > 0 && plan.node_blocks().len() >= max as usize {
        return Ok(false);
    }
    let node = plan.node.clone();
    // A few point reads of the node's first candidates usually find a free CIDR: every block is
    // read only when they are all taken (a dense pool), so a claim costs the same at any size.
    for pool in pools {
        for cidr in candidates(pool, &node).take(PROBED_CANDIDATES) {
            if plan.block(cidr).await?.is_none() {
                claim_free(plan, pool, cidr).await?;
                return Ok(true);
            }
        }
    }
    let all = plan.all_blocks().await?;
    for pool in pools {
        if let Some(cidr) = free_block(pool, &all, &node) {
            claim_free(plan, pool, cidr).await?;
            return Ok(true);
        }
    }
    for mut block in all {
        if !in_pools(pools, &block)
            || !block.allocations.is_empty()
            || block.affinity.as_deref() == Some(&node)
        {
            continue;
        }
        let orphaned = match block.affinity.clone() {
            None => true,
            Some(owner) => !plan.node_registered(&owner).await?,
        };
        if orphaned {
            if let Some(owner) = block.affinity.take() {
                plan.set_affinity(&owner, block.cidr, false).await?;
            }
            tracing::info!(block = %block.cidr, %node, "reclaiming an empty block of a node that is gone");
            block.affinity = Some(node.clone());
            plan.set_affinity(&node, block.cidr, true).await?;
            plan.set_block(block.cidr, Some(block));
            return Ok(true);
        }
    }
    Ok(false)
}

/// Candidates probed with point reads before every block is read.
const PROBED_CANDIDATES: usize = 4;

/// Claims the free CIDR `cidr` of `pool` for the node (the transaction fails, and the job is
/// retried, if another node claimed it meanwhile: it compares the block as absent).
async fn claim_free(plan: &mut Plan, pool: &Pool, cidr: IpNet) -> Result<(), IpamError> {
    let node = plan.node.clone();
    let first_sequence = plan.first_sequence().await?;
    plan.set_block(
        cidr,
        Some(Block::new(cidr, &pool.name, Some(&node), first_sequence)),
    );
    plan.set_affinity(&node, cidr, true).await
}

/// Every block CIDR of `pool` in the order `node` tries them: from an offset derived from the
/// node name, so that nodes claiming at once rarely pick the same block.
fn candidates(pool: &Pool, node: &str) -> impl Iterator<Item = IpNet> {
    let bits = u32::from(pool.block_size - pool.cidr.prefix_len());
    let count: u128 = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
    let start = u128::from(fnv1a(node)) % count;
    let pool = pool.clone();
    (0..count).map(move |i| nth_block(&pool, (start + i) % count))
}

/// A block CIDR of `pool` no block uses, in `node`'s order.
fn free_block(pool: &Pool, blocks: &[Block], node: &str) -> Option<IpNet> {
    let used: std::collections::HashSet<IpNet> = blocks.iter().map(|b| b.cidr).collect();
    let in_pool = blocks.iter().filter(|b| pool.cidr.contains(&b.cidr)).count();
    candidates(pool, node)
        .take(in_pool.saturating_add(1))
        .find(|cidr| !used.contains(cidr))
}

fn nth_block(pool: &Pool, n: u128) -> IpNet {
    let shift = u32::from(pool.cidr.max_prefix_len() - pool.block_size);
    let address = match pool.cidr.network() {
        IpAddr::V4(base) => IpAddr::V4((u32::from(base) + ((n as u32) << shift)).into()),
        IpAddr::V6(base) => IpAddr::V6((u128::from(base) + (n << shift)).into()),
    };
    // The prefix length is the pool's validated block size.
    IpNet::new(address, pool.block_size).unwrap_or(pool.cidr)
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn assign_ip(plan: &mut Plan, request: &AssignIpRequest) -> Result<Allocated, IpamError> {
    let ip = request.ip;
    let pool = plan
        .settings
        .pool_of(ip)
        .cloned()
        .ok_or_else(|| IpamError::invalid("ip", format!("{ip} is not in any pool")))?;
    if let Some(reservation) = plan.settings.reservations.value.covering(ip) {
        return Err(IpamError::FailedPrecondition(format!(
            "{ip} is reserved by reservation {:?}",
            reservation.name
        )));
    }
    let existing = plan.handle(&request.handle_id).await?;
    if let Some(handle) = &existing {
        check_owner(plan, handle)?;
        if let Some(hip) = handle.ips.iter().find(|h| h.ip == ip) {
            let block = plan.block(hip.block).await?;
            return Ok(held(handle, hip, block.as_ref()));
        }
    }
    if let Some(why) = refusal(plan, &pool, request.use_) {
        return Err(IpamError::FailedPrecondition(format!(
            "{ip} may not be assigned to node {:?}: pool {why}",
            plan.node
        )));
    }
    let cidr = IpNet::new(ip, pool.block_size)
        .map_err(|e| IpamError::invalid("ip", e.to_string()))?
        .trunc();
    let config = plan.settings.config.value;
    let node = plan.node.clone();
    let mut block = match plan.block(cidr).await? {
        Some(block) => block,
        None => {
            let max = config.max_blocks_per_host as usize;
            let affine = max == 0 || plan.node_blocks().len() < max;
            if !affine && config.strict_affinity {
                return Err(IpamError::FailedPrecondition(format!(
                    "{ip} needs a new block {cidr}, but node {node:?} holds max_blocks_per_host ({max}) blocks and strict affinity is on"
                )));
            }
            if affine {
                plan.set_affinity(&node, cidr, true).await?;
            }
            Block::new(
                cidr,
                &pool.name,
                affine.then_some(node.as_str()),
                plan.first_sequence().await?,
            )
        }
    };
    if config.strict_affinity
        && let Some(owner) = block.affinity.as_deref().filter(|owner| *owner != node)
    {
        return Err(IpamError::FailedPrecondition(format!(
            "{ip} is in block {cidr} of node {owner:?} and strict affinity is on"
        )));
    }
    // An address outside the node's own blocks counts against its limit as a borrowed one does.
    if block.affinity.as_deref() != Some(node.as_str()) && {
        let all = plan.all_blocks().await?;
        room_in_pool(plan, &pool, &all) == 0
    } {
        return Err(IpamError::NodeLimit {
            node,
            max_blocks: config.max_blocks_per_host,
        });
    }
    if let Some(taken) = block.ordinal_of(ip).and_then(|o| block.allocations.get(&o)) {
        return Err(IpamError::AlreadyExists(format!(
            "{ip} is already allocated to handle {:?}",
            taken.handle_id
        )));
    }
    let sequence = block
        .allocate_ip(ip, &request.handle_id, &node)
        .ok_or_else(|| IpamError::FailedPrecondition(format!("{ip} is not free in block {cidr}")))?;
    let result = allocated(&block, ip, sequence, &request.handle_id, &node);
    plan.set_block(cidr, Some(block));
    let mut handle = existing.unwrap_or_else(|| Handle {
        id: request.handle_id.clone(),
        attributes: request.attributes.clone(),
        ips: Vec::new(),
        created_unix_ms: plan.now_ms,
    });
    handle.ips.push(HandleIp {
        ip,
        block: cidr,
        sequence,
    });
    plan.set_handle(&request.handle_id, Some(handle));
    Ok(result)
}

fn cooldown_until(plan: &Plan) -> u64 {
    plan.now_ms + u64::from(plan.settings.config.value.release_cooldown_seconds) * 1000
}

/// Stores a block after a release: an empty block with no owner is deleted.
fn store_released(plan: &mut Plan, block: Block) {
    let delete = block.allocations.is_empty() && block.affinity.is_none();
    plan.set_block(block.cidr, (!delete).then_some(block));
}

async fn release_handle(plan: &mut Plan, id: &str) -> Result<Vec<IpAddr>, IpamError> {
    let Some(handle) = plan.handle(id).await? else {
        return Ok(Vec::new());
    };
    let until = cooldown_until(plan);
    let mut released = Vec::new();
    for hip in &handle.ips {
        if let Some(mut block) = plan.block(hip.block).await?
            && block.release(hip.ip, hip.sequence, until)
        {
            released.push(hip.ip);
            store_released(plan, block);
        }
    }
    plan.set_handle(id, None);
    Ok(released)
}

async fn block_containing(plan: &mut Plan, ip: IpAddr) -> Result<Option<Block>, IpamError> {
    if let Some(pool) = plan.settings.pool_of(ip).cloned()
        && let Ok(cidr) = IpNet::new(ip, pool.block_size)
    {
        return plan.block(cidr.trunc()).await;
    }
    Ok(plan
        .all_blocks()
        .await?
        .into_iter()
        .find(|b| b.cidr.contains(&ip)))
}

async fn release_ip(plan: &mut Plan, ip: IpAddr, sequence: u64) -> Result<bool, IpamError> {
    let Some(mut block) = block_containing(plan, ip).await? else {
        return Ok(false);
    };
    let Some(allocation) = block
        .ordinal_of(ip)
        .and_then(|o| block.allocations.get(&o))
        .cloned()
    else {
        return Ok(false);
    };
    if !block.release(ip, sequence, cooldown_until(plan)) {
        return Ok(false);
    }
    store_released(plan, block);
    if let Some(mut handle) = plan.handle(&allocation.handle_id).await? {
        handle.ips.retain(|h| !(h.ip == ip && h.sequence == sequence));
        let keep = !handle.ips.is_empty();
        plan.set_handle(&allocation.handle_id, keep.then_some(handle));
    }
    Ok(true)
}

async fn forget_node(plan: &mut Plan) -> Result<Outcome, IpamError> {
    let node = plan.node.clone();
    let mut deleted_blocks = 0;
    for cidr in plan.node_blocks() {
        plan.set_affinity(&node, cidr, false).await?;
        if let Some(mut block) = plan.block(cidr).await? {
            block.affinity = None;
            if block.allocations.is_empty() {
                deleted_blocks += 1;
            }
            store_released(plan, block);
        }
    }
    Ok(Outcome::Forgotten { deleted_blocks })
}

async fn drop_block(plan: &mut Plan, cidr: IpNet) -> Result<Outcome, IpamError> {
    let Some(block) = plan.block(cidr).await? else {
        return Ok(Outcome::Forgotten { deleted_blocks: 0 });
    };
    if !block.allocations.is_empty() {
        return Err(IpamError::FailedPrecondition(format!(
            "block {cidr} still has allocations"
        )));
    }
    if let Some(owner) = block.affinity.as_deref() {
        plan.set_affinity(owner, cidr, false).await?;
    }
    plan.set_block(cidr, None);
    Ok(Outcome::Forgotten { deleted_blocks: 1 })
}
