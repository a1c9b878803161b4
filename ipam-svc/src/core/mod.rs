//! IPAM logic over the [`Store`] trait, with no gRPC and no kernel: [`Ipam`] queues every write
//! per node and commits each batch of queued writes in one compare-and-swap transaction (group
//! commit), retrying the batch with backoff when another writer got there first.

pub mod error;
mod jobs;
mod plan;
mod report;
mod settings;
pub mod validate;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use brindle_backoff::Backoff;
use brindle_datastore::{Store, StoreError};
use ipam_api::handles::{WorkloadHandle, is_tunnel_handle};
use tokio::sync::{mpsc, oneshot};

pub use error::IpamError;

pub use jobs::{Allocated, AssignIpRequest, AssignRequest, AssignResult};
pub use report::{
    BlockUsage, BorrowedIp, CheckReport, IpInfo, PoolUsage, Problem, ProblemKind, Show, ShowOptions,
};

use ipam_api::keys;
use ipam_api::model::{self, Block, Handle, IpamConfig, Pool, Reservation, decode};
use jobs::{Outcome, Work};
use plan::{HandleReads, NodeCache, Plan};

/// Jobs of one node committed together at most.
const MAX_BATCH_JOBS: usize = 64;
/// Jobs one node may have waiting; more are refused as [`IpamError::Overloaded`].
pub const MAX_QUEUED_JOBS: usize = 1024;
/// How long a node's writer waits for work before it stops (a later job starts a new one);
/// [`Ipam::with_writer_idle`] changes it.
const WRITER_IDLE: Duration = Duration::from_secs(30);
/// Conflicting attempts before a batch gives up with [`IpamError::Contention`].
const MAX_BATCH_ATTEMPTS: u32 = 30;

/// Milliseconds since the Unix epoch; injectable so cooldowns can be tested.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

/// Each node's writer, by node: present while the writer runs.
type Writers = Arc<Mutex<HashMap<String, mpsc::Sender<Job>>>>;

/// The IPAM engine.
pub struct Ipam {
    engine: Arc<Engine>,
    writers: Writers,
    writer_idle: Duration,
}

struct Engine {
    store: Arc<dyn Store>,
    clock: Clock,
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Result<Outcome, IpamError>>,
}

/// Result of a garbage collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcResult {
    /// Handles released.
    pub released_handle_ids: Vec<String>,
    /// Addresses released.
    pub released_ips: u64,
}

impl Ipam {
    /// An engine on `store` with the system clock.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_clock(store, system_clock())
    }

    /// An engine on `store` with `clock`.
    pub fn with_clock(store: Arc<dyn Store>, clock: Clock) -> Self {
        Self {
            engine: Arc::new(Engine { store, clock }),
            writers: Writers::default(),
            writer_idle: WRITER_IDLE,
        }
    }

    /// Stops a node's writer after `idle` without work instead of 30 s.
    #[must_use]
    pub fn with_writer_idle(mut self, idle: Duration) -> Self {
        self.writer_idle = idle;
        self
    }

    /// The datastore.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.engine.store
    }

    /// Nodes whose writer is running (each stops after a while without work).
    pub fn active_writers(&self) -> usize {
        lock(&self.writers).len()
    }

    /// Queues `work` on `node`'s writer (starting one if none runs) and waits for its batch to
    /// commit.
    async fn submit(&self, node: &str, work: Work) -> Result<Outcome, IpamError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { work, reply };
        {
            // Sends happen under the lock a stopping writer takes, so none lands in a writer
            // that has decided to stop.
            let mut writers = lock(&self.writers);
            let sender = writers.entry(node.to_owned()).or_insert_with(|| {
                let (sender, jobs) = mpsc::channel(MAX_QUEUED_JOBS);
                tokio::spawn(node_writer(
                    Arc::clone(&self.engine),
                    Arc::clone(&self.writers),
                    node.to_owned(),
                    jobs,
                    self.writer_idle,
                ));
                sender
            });
            sender.try_send(job).map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => IpamError::Overloaded {
                    node: node.to_owned(),
                    queued: MAX_QUEUED_JOBS,
                },
                mpsc::error::TrySendError::Closed(_) => writer_stopped(),
            })?;
        }
        answer.await.map_err(|_| writer_stopped())?
    }

    /// Creates a pool.
    pub async fn create_pool(&self, pool: Pool) -> Result<(Pool, u64), IpamError> {
        settings::create_pool(self.store(), pool).await
    }

    /// Reads a pool.
    pub async fn get_pool(&self, name: &str) -> Result<(Pool, u64), IpamError> {
        settings::get_pool(self.store().as_ref(), name).await
    }

    /// Reads every pool and the revision of the pool record.
    pub async fn list_pools(&self) -> Result<(Vec<Pool>, u64), IpamError> {
        let pools = settings::list_pools(self.store().as_ref()).await?;
        Ok((pools.value.pools, pools.revision))
    }

    /// Changes a pool's mutable fields.
    pub async fn update_pool(&self, pool: Pool) -> Result<(Pool, u64), IpamError> {
        settings::update_pool(self.store(), pool).await
    }

    /// Deletes a pool: refused while it has allocations unless `force`, which releases them.
    pub async fn delete_pool(&self, name: &str, force: bool) -> Result<(), IpamError> {
        let (pool, _) = self.get_pool(name).await?;
        let blocks = self.blocks_of_pool(&pool).await?;
        let allocated: usize = blocks.iter().map(|b| b.allocations.len()).sum();
        if allocated > 0 && !force {
            return Err(IpamError::FailedPrecondition(format!(
                "pool {name:?} still has {allocated} allocated addresses; release them or delete with force"
            )));
        }
        settings::update(self.store(), keys::POOLS, |set: &mut model::PoolSet| {
            set.pools.retain(|p| p.name != name);
            Ok(())
        })
        .await?;
        // In-flight allocations compare the pool record, so none lands in these blocks any more.
        for block in self.blocks_of_pool(&pool).await? {
            let owner = block.affinity.clone().unwrap_or_default();
            for (ordinal, allocation) in &block.allocations {
                let ip = block.ip_at(*ordinal);
                self.submit(
                    &owner,
                    Work::ReleaseIp {
                        ip,
                        sequence: allocation.sequence,
                    },
                )
                .await?;
            }
            self.submit(&owner, Work::DropBlock(block.cidr)).await?;
        }
        Ok(())
    }

    async fn blocks_of_pool(&self, pool: &Pool) -> Result<Vec<Block>, IpamError> {
        let listed = self.store().list(keys::BLOCKS).await?;
        let mut blocks = Vec::new();
        for kv in listed.kvs {
            let block: Block = decode(&kv.key, &kv.value)?;
            if block.pool == pool.name && pool.cidr.contains(&block.cidr) {
                blocks.push(block);
            }
        }
        Ok(blocks)
    }

    /// Reads the IPAM config.
    pub async fn config(&self) -> Result<IpamConfig, IpamError> {
        settings::config(self.store().as_ref()).await
    }

    /// Replaces the IPAM config.
    pub async fn set_config(&self, config: IpamConfig) -> Result<IpamConfig, IpamError> {
        settings::set_config(self.store(), config).await
    }

    /// Adds a reservation.
    pub async fn create_reservation(&self, reservation: Reservation) -> Result<Reservation, IpamError> {
        settings::create_reservation(self.store(), reservation, false).await
    }

    /// Adds a reservation or replaces the one of its name (addresses already handed out in its
    /// CIDRs stay, as in Calico: a reservation only stops new allocations).
    pub async fn apply_reservation(&self, reservation: Reservation) -> Result<Reservation, IpamError> {
        settings::create_reservation(self.store(), reservation, true).await
    }

    /// Removes a reservation.
    pub async fn delete_reservation(&self, name: &str) -> Result<(), IpamError> {
        settings::delete_reservation(self.store(), name).await
    }

    /// Every reservation.
    pub async fn reservations(&self) -> Result<Vec<Reservation>, IpamError> {
        Ok(settings::reservations(self.store().as_ref()).await?.reservations)
    }

    /// Allocates addresses for a handle; returns the handle's existing addresses instead when it
    /// already holds some (a retried CNI ADD never allocates twice).
    pub async fn auto_assign(&self, request: AssignRequest) -> Result<AssignResult, IpamError> {
        validate::handle_id(&request.handle_id)?;
        validate::name("node", &request.node)?;
        validate::address_count("num_ipv4", request.num_ipv4)?;
        validate::address_count("num_ipv6", request.num_ipv6)?;
        if request.num_ipv4 == 0 && request.num_ipv6 == 0 {
            return Err(IpamError::invalid(
                "num_ipv4",
                "ask for at least one IPv4 or IPv6 address",
            ));
        }
        let mut request = request;
        owner_node(&mut request.attributes, &request.node)?;
        let node = request.node.clone();
        match self.submit(&node, Work::Assign(request)).await? {
            Outcome::Assigned(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Allocates one specific address.
    pub async fn assign_ip(&self, request: AssignIpRequest) -> Result<Allocated, IpamError> {
        validate::handle_id(&request.handle_id)?;
        validate::name("node", &request.node)?;
        let mut request = request;
        owner_node(&mut request.attributes, &request.node)?;
        let node = request.node.clone();
        match self.submit(&node, Work::AssignIp(request)).await? {
            Outcome::AssignedIp(allocated) => Ok(allocated),
            other => Err(unexpected(other)),
        }
    }

    /// Releases every address of a handle; releasing an unknown handle releases nothing.
    pub async fn release_handle(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        validate::handle_id(handle_id)?;
        let node = match self.handle(handle_id).await {
            Ok(handle) => handle.attributes.node,
            Err(IpamError::NotFound(_)) => return Ok(Vec::new()),
            Err(other) => return Err(other),
        };
        match self
            .submit(&node, Work::ReleaseHandle(handle_id.to_owned()))
            .await?
        {
            Outcome::Released(ips) => Ok(ips),
            other => Err(unexpected(other)),
        }
    }

    /// Releases addresses that still carry the given sequence numbers; returns (released, skipped).
    pub async fn release_ips(&self, ips: &[(IpAddr, u64)]) -> Result<(Vec<IpAddr>, Vec<IpAddr>), IpamError> {
        let (mut released, mut skipped) = (Vec::new(), Vec::new());
        let (pools, _) = self.list_pools().await?;
        for (ip, sequence) in ips {
            let owner = self.block_owner(&pools, *ip).await?;
            match self
                .submit(
                    &owner,
                    Work::ReleaseIp {
                        ip: *ip,
                        sequence: *sequence,
                    },
                )
                .await?
            {
                Outcome::ReleasedIp(true) => released.push(*ip),
                Outcome::ReleasedIp(false) => skipped.push(*ip),
                other => return Err(unexpected(other)),
            }
        }
        Ok((released, skipped))
    }

    /// The node whose writer handles `ip`'s block ("" when the block has no owner or is unknown).
    async fn block_owner(&self, pools: &[Pool], ip: IpAddr) -> Result<String, IpamError> {
        let Some(pool) = pools.iter().find(|p| p.cidr.contains(&ip)) else {
            return Ok(String::new());
        };
        let cidr = ipnet::IpNet::new(ip, pool.block_size)
            .map_err(|e| IpamError::invalid("ip", e.to_string()))?
            .trunc();
        let key = keys::block(&cidr);
        Ok(match self.store().get(&key).await? {
            Some(kv) => decode::<Block>(&key, &kv.value)?.affinity.unwrap_or_default(),
            None => String::new(),
        })
    }

    /// Reads a handle.
    pub async fn handle(&self, handle_id: &str) -> Result<Handle, IpamError> {
        validate::handle_id(handle_id)?;
        let key = keys::handle(handle_id);
        let kv = self
            .store()
            .get(&key)
            .await?
            .ok_or_else(|| IpamError::NotFound(format!("handle {handle_id:?}")))?;
        Ok(decode(&key, &kv.value)?)
    }

    /// The addresses of a handle with their pools, and whether each is borrowed.
    pub async fn allocations_of(&self, handle: &Handle) -> Result<Vec<Allocated>, IpamError> {
        let mut allocations = Vec::with_capacity(handle.ips.len());
        for hip in &handle.ips {
            let key = keys::block(&hip.block);
            let block: Option<Block> = match self.store().get(&key).await? {
                Some(kv) => Some(decode(&key, &kv.value)?),
                None => None,
            };
            allocations.push(jobs::held(handle, hip, block.as_ref()));
        }
        Ok(allocations)
    }

    /// Usage per pool and block, borrowed addresses, one address's details.
    pub async fn show(&self, options: &ShowOptions) -> Result<Show, IpamError> {
        report::show(self.store().as_ref(), options, (self.engine.clock)()).await
    }

    /// Cross-checks blocks, handles and affinities (and live handles when given).
    pub async fn check(&self, live_handles: Option<&HashSet<String>>) -> Result<CheckReport, IpamError> {
        report::check(self.store().as_ref(), live_handles).await
    }

    /// Releases every pod handle of `node` on `network` (every network when `None`) that is not
    /// in `valid` and is older than `min_age`. Tunnel handles are never released here. A handle
    /// is on a network when its id names it and its attributes (container, interface) agree, so
    /// an id formed before ids were unambiguous is never taken for another network's.
    pub async fn garbage_collect(
        &self,
        node: &str,
        valid: &HashSet<String>,
        network: Option<&str>,
        min_age: Duration,
    ) -> Result<GcResult, IpamError> {
        validate::name("node", node)?;
        let now = (self.engine.clock)();
        let min_age_ms = u64::try_from(min_age.as_millis()).unwrap_or(u64::MAX);
        let on_network = |handle: &model::Handle| {
            let Some(network) = network else {
                return true;
            };
            let attributes = &handle.attributes;
            WorkloadHandle::parse(&handle.id).is_some_and(|parsed| {
                parsed.network == network
                    && (attributes.container_id.is_empty() || attributes.container_id == parsed.container_id)
                    && (attributes.interface.is_empty() || attributes.interface == parsed.ifname)
            })
        };
        let mut result = GcResult::default();
        for handle in self.handles_of(node).await? {
            let old_enough = now.saturating_sub(handle.created_unix_ms) >= min_age_ms;
            if !is_tunnel_handle(&handle.id)
                && on_network(&handle)
                && !valid.contains(&handle.id)
                && old_enough
            {
                let released = self.release_handle(&handle.id).await?;
                result.released_ips += released.len() as u64;
                result.released_handle_ids.push(handle.id);
            }
        }
        Ok(result)
    }

    /// Releases everything of a node that left the cluster: its handles, its affinities, and its
    /// blocks once empty. Returns (addresses released, blocks deleted).
    pub async fn delete_node(&self, node: &str) -> Result<(u64, u32), IpamError> {
        validate::name("node", node)?;
        let mut released = 0;
        for handle in self.handles_of(node).await? {
            released += self.release_handle(&handle.id).await?.len() as u64;
        }
        match self.submit(node, Work::ForgetNode).await? {
            Outcome::Forgotten { deleted_blocks } => Ok((released, deleted_blocks)),
            other => Err(unexpected(other)),
        }
    }

    async fn handles_of(&self, node: &str) -> Result<Vec<Handle>, IpamError> {
        let listed = self.store().list(keys::HANDLES).await?;
        let mut handles = Vec::new();
        for kv in listed.kvs {
            let handle: Handle = decode(&kv.key, &kv.value)?;
            if handle.attributes.node == node {
                handles.push(handle);
            }
        }
        Ok(handles)
    }
}

/// A handle belongs to the node that allocated it: fills `attributes.node`, refuses another node.
fn owner_node(attributes: &mut model::HandleAttributes, node: &str) -> Result<(), IpamError> {
    if attributes.node.is_empty() {
        attributes.node = node.to_owned();
    } else if attributes.node != node {
        return Err(IpamError::invalid(
            "attributes.node",
            format!("{:?} differs from the requesting node {node:?}", attributes.node),
        ));
    }
    Ok(())
}

fn lock(writers: &Writers) -> MutexGuard<'_, HashMap<String, mpsc::Sender<Job>>> {
    writers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn writer_stopped() -> IpamError {
    IpamError::Store(StoreError::Unavailable("IPAM writer stopped".to_owned()))
}

fn unexpected(outcome: Outcome) -> IpamError {
    IpamError::Store(StoreError::Backend {
        context: "IPAM writer",
        source: format!("unexpected outcome {outcome:?}").into(),
    })
}

/// One node's writer: takes every job queued meanwhile and commits them as one batch; stops
/// after `idle` without work.
async fn node_writer(
    engine: Arc<Engine>,
    writers: Writers,
    node: String,
    mut jobs: mpsc::Receiver<Job>,
    idle: Duration,
) {
    let mut cache = None;
    loop {
        let first = match tokio::time::timeout(idle, jobs.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_idle) => {
                let mut writers = lock(&writers);
                if jobs.is_empty() {
                    writers.remove(&node);
                    return;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_JOBS {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        engine.commit_batch(&node, batch, &mut cache).await;
    }
}

impl Engine {
    /// Plans and commits `pending` jobs in as few transactions as possible. With a `cache` from
    /// the previous batch, new handles are assumed absent and nothing else is read; after a
    /// conflict or an error everything is read again.
    async fn commit_batch(&self, node: &str, mut pending: Vec<Job>, cache: &mut Option<NodeCache>) {
        let mut backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
        let mut conflicts = 0;
        while !pending.is_empty() {
            let trusted = cache.take();
            let used_cache = trusted.is_some();
            let mut prefetch = BTreeSet::new();
            let mut assume_absent = BTreeSet::new();
            for job in &pending {
                match job.work.handle_id() {
                    Some(id) if trusted.is_some() && job.work.creates_handle() => assume_absent.insert(id),
                    Some(id) => prefetch.insert(id),
                    None => false,
                };
            }
            let handles = HandleReads {
                prefetch: prefetch.into_iter().collect(),
                assume_absent: assume_absent.into_iter().collect(),
            };
            let now = (self.clock)();
            let mut plan = match Plan::load(Arc::clone(&self.store), node, handles, now, trusted).await {
                Ok(plan) => plan,
                Err(error) => {
                    for job in pending {
                        let _ = job.reply.send(Err(copy_error(&error)));
                    }
                    return;
                }
            };
            let mut planned = Vec::new();
            let mut deferred = Vec::new();
            let mut refused = Vec::new();
            for job in pending {
                if !plan.has_room() {
                    deferred.push(job);
                    continue;
                }
                match jobs::run(&mut plan, &job.work).await {
                    Ok(outcome) => {
                        plan.accept_job();
                        planned.push((job, outcome));
                    }
                    Err(error) => {
                        plan.reject_job();
                        refused.push((job, error));
                    }
                }
            }
            if used_cache && !refused.is_empty() {
                // A refusal may come from a stale cache (a pool added meanwhile): decide again
                // from fresh reads before answering.
                pending = planned.into_iter().map(|(job, _)| job).collect();
                pending.extend(refused.into_iter().map(|(job, _)| job));
                pending.extend(deferred);
                continue;
            }
            for (job, error) in refused {
                let _ = job.reply.send(Err(error));
            }
            let committed = match plan.transaction() {
                Some(txn) => self.store.txn(txn).await,
                None => Ok(0),
            };
            pending = deferred;
            match committed {
                Ok(revision) => {
                    backoff.reset();
                    *cache = Some(plan.into_cache(revision));
                    for (job, outcome) in planned {
                        let _ = job.reply.send(Ok(outcome));
                    }
                }
                Err(StoreError::Conflict { key }) if conflicts < MAX_BATCH_ATTEMPTS => {
                    conflicts += 1;
                    tracing::debug!(%node, %key, conflicts, jobs = planned.len(), "IPAM batch conflicted; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    pending.extend(planned.into_iter().map(|(job, _)| job));
                }
                Err(error) => {
                    let error = match error {
                        StoreError::Conflict { .. } => IpamError::Contention { attempts: conflicts },
                        other => IpamError::Store(other),
                    };
                    for (job, _) in planned {
                        let _ = job.reply.send(Err(copy_error(&error)));
                    }
                }
            }
        }
    }
}

/// An error to hand to each job of a failed batch (store errors are not `Clone`).
fn copy_error(error: &IpamError) -> IpamError {
    match error {
        IpamError::Contention { attempts } => IpamError::Contention { attempts: *attempts },
        IpamError::Store(store) if store.is_retryable() => {
            IpamError::Store(StoreError::Unavailable(store.to_string()))
        }
        IpamError::Corrupt { key, reason } => IpamError::Corrupt {
            key: key.clone(),
            reason: reason.clone(),
        },
        IpamError::Store(StoreError::TooLarge { size, limit }) => IpamError::Store(StoreError::TooLarge {
            size: *size,
            limit: *limit,
        }),
        IpamError::Store(StoreError::InvalidRequest(why)) => {
            IpamError::Store(StoreError::InvalidRequest(why.clone()))
        }
        other => IpamError::Store(StoreError::Backend {
            context: "IPAM batch",
            source: other.to_string().into(),
        }),
    }
}
