//! The working state of one batch of IPAM writes: records read from the datastore with their
//! revisions, the changes the batch's jobs made on top, and the single transaction that commits
//! them (every record it read is compared, so a concurrent writer makes it fail and retry).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use brindle_datastore::{MAX_TXN_OPS, Revision, Store, Txn};
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::error::IpamError;
use super::keys;
use super::model::{Affinity, Block, Handle, NodeRecord, decode, encode, first_sequence_after};
use super::settings::{self, Settings};

/// Operations a batch may add before the rest of its jobs wait for the next transaction.
pub const BATCH_OP_BUDGET: usize = MAX_TXN_OPS - 24;

/// A record as read: its value (`None` = absent) and mod-revision (0 = absent).
#[derive(Debug, Clone)]
struct Read<T> {
    value: Option<T>,
    revision: Revision,
}

/// Changes of one job or of a whole batch: `None` deletes.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    blocks: BTreeMap<IpNet, Option<Block>>,
    handles: BTreeMap<String, Option<Handle>>,
    /// Affinity key → block (None deletes).
    affinities: BTreeMap<String, Option<IpNet>>,
}

impl Changes {
    fn len(&self) -> usize {
        self.blocks.len() + self.handles.len() + self.affinities.len()
    }

    fn merge(&mut self, other: Changes) {
        self.blocks.extend(other.blocks);
        self.handles.extend(other.handles);
        self.affinities.extend(other.affinities);
    }
}

/// State read for one batch of one node's jobs.
pub struct Plan {
    store: Arc<dyn Store>,
    /// The node whose jobs these are.
    pub node: String,
    /// Pools, config and reservations.
    pub settings: Settings,
    /// The node's labels (empty when it is not registered).
    pub node_labels: BTreeMap<String, String>,
    /// Current time, unix ms.
    pub now_ms: u64,
    /// First sequence number of blocks this batch creates.
    pub first_sequence: u64,
    blocks: BTreeMap<IpNet, Read<Block>>,
    handles: BTreeMap<String, Read<Handle>>,
    affinity_revisions: BTreeMap<String, Revision>,
    node_blocks: BTreeSet<IpNet>,
    all_blocks_loaded: bool,
    registered_nodes: BTreeMap<String, bool>,
    committed: Changes,
    /// Changes of the job being planned.
    pub job: Changes,
}

impl Plan {
    /// Reads what every job of a batch for `node` needs, plus the given handles.
    pub async fn load(
        store: Arc<dyn Store>,
        node: &str,
        handle_ids: &[&str],
        now_ms: u64,
    ) -> Result<Self, IpamError> {
        let settings = settings::load(store.as_ref());
        let (node_key, affinities_prefix) = (keys::node(node), keys::node_affinities(node));
        let node_record = store.get(&node_key);
        let affinities = store.list(&affinities_prefix);
        let (settings, node_record, affinities) = futures_util::future::try_join3(
            settings,
            async { node_record.await.map_err(IpamError::from) },
            async { affinities.await.map_err(IpamError::from) },
        )
        .await?;
        let node_labels = match node_record {
            Some(kv) => decode::<NodeRecord>(&kv.key, &kv.value)?.labels,
            None => BTreeMap::new(),
        };
        let mut plan = Self {
            store,
            node: node.to_owned(),
            settings,
            node_labels,
            now_ms,
            first_sequence: first_sequence_after(affinities.revision),
            blocks: BTreeMap::new(),
            handles: BTreeMap::new(),
            affinity_revisions: BTreeMap::new(),
            node_blocks: BTreeSet::new(),
            all_blocks_loaded: false,
            registered_nodes: BTreeMap::new(),
            committed: Changes::default(),
            job: Changes::default(),
        };
        for kv in &affinities.kvs {
            let affinity: Affinity = decode(&kv.key, &kv.value)?;
            plan.affinity_revisions.insert(kv.key.clone(), kv.mod_revision);
            plan.node_blocks.insert(affinity.block);
        }
        let blocks: Vec<IpNet> = plan.node_blocks.iter().copied().collect();
        let store = Arc::clone(&plan.store);
        let (block_reads, handle_reads) = futures_util::future::try_join(
            futures_util::future::try_join_all(blocks.iter().map(|cidr| read_block(store.as_ref(), *cidr))),
            futures_util::future::try_join_all(handle_ids.iter().map(|id| read_handle(store.as_ref(), id))),
        )
        .await?;
        plan.blocks.extend(blocks.into_iter().zip(block_reads));
        plan.handles
            .extend(handle_ids.iter().map(|id| (*id).to_owned()).zip(handle_reads));
        Ok(plan)
    }

    /// A block as this job sees it.
    pub async fn block(&mut self, cidr: IpNet) -> Result<Option<Block>, IpamError> {
        if let Some(changed) = self
            .job
            .blocks
            .get(&cidr)
            .or_else(|| self.committed.blocks.get(&cidr))
        {
            return Ok(changed.clone());
        }
        if !self.blocks.contains_key(&cidr) {
            let read = read_block(self.store.as_ref(), cidr).await?;
            self.blocks.insert(cidr, read);
        }
        Ok(self.blocks.get(&cidr).and_then(|r| r.value.clone()))
    }

    /// Every block (read once per batch), as this job sees them, sorted by CIDR.
    pub async fn all_blocks(&mut self) -> Result<Vec<Block>, IpamError> {
        if !self.all_blocks_loaded {
            let listed = self.store.list(keys::BLOCKS).await?;
            for kv in listed.kvs {
                let block: Block = decode(&kv.key, &kv.value)?;
                self.blocks.entry(block.cidr).or_insert(Read {
                    value: Some(block),
                    revision: kv.mod_revision,
                });
            }
            self.all_blocks_loaded = true;
        }
        let mut cidrs: BTreeSet<IpNet> = self.blocks.keys().copied().collect();
        cidrs.extend(self.committed.blocks.keys());
        cidrs.extend(self.job.blocks.keys());
        let mut blocks = Vec::with_capacity(cidrs.len());
        for cidr in cidrs {
            if let Some(block) = self.block(cidr).await? {
                blocks.push(block);
            }
        }
        Ok(blocks)
    }

    /// Records a new or changed block (or deletes it with `None`).
    pub fn set_block(&mut self, cidr: IpNet, block: Option<Block>) {
        self.job.blocks.insert(cidr, block);
    }

    /// A handle as this job sees it.
    pub async fn handle(&mut self, id: &str) -> Result<Option<Handle>, IpamError> {
        if let Some(changed) = self
            .job
            .handles
            .get(id)
            .or_else(|| self.committed.handles.get(id))
        {
            return Ok(changed.clone());
        }
        if !self.handles.contains_key(id) {
            let read = read_handle(self.store.as_ref(), id).await?;
            self.handles.insert(id.to_owned(), read);
        }
        Ok(self.handles.get(id).and_then(|r| r.value.clone()))
    }

    /// Records a new or changed handle (or deletes it with `None`).
    pub fn set_handle(&mut self, id: &str, handle: Option<Handle>) {
        self.job.handles.insert(id.to_owned(), handle);
    }

    /// The blocks affine to this batch's node, as this job sees them.
    pub fn node_blocks(&self) -> BTreeSet<IpNet> {
        let mut blocks = self.node_blocks.clone();
        for changes in [&self.committed, &self.job] {
            for (key, block) in &changes.affinities {
                if let Some(cidr) = key.strip_prefix(&keys::node_affinities(&self.node)) {
                    match block {
                        Some(block) => {
                            blocks.insert(*block);
                        }
                        None => blocks.retain(|b| keys::block_name(b) != cidr),
                    }
                }
            }
        }
        blocks
    }

    /// Makes `node` affine to `cidr` (or removes that affinity with `present = false`).
    pub async fn set_affinity(&mut self, node: &str, cidr: IpNet, present: bool) -> Result<(), IpamError> {
        let key = keys::affinity(node, &cidr);
        if !self.affinity_revisions.contains_key(&key) {
            let revision = self.store.get(&key).await?.map_or(0, |kv| kv.mod_revision);
            self.affinity_revisions.insert(key.clone(), revision);
        }
        self.job.affinities.insert(key, present.then_some(cidr));
        Ok(())
    }

    /// Whether `node` is registered (cached per batch).
    pub async fn node_registered(&mut self, node: &str) -> Result<bool, IpamError> {
        if let Some(known) = self.registered_nodes.get(node) {
            return Ok(*known);
        }
        let registered = self.store.get(&keys::node(node)).await?.is_some();
        self.registered_nodes.insert(node.to_owned(), registered);
        Ok(registered)
    }

    /// Keeps the current job's changes for the batch transaction.
    pub fn accept_job(&mut self) {
        let job = std::mem::take(&mut self.job);
        self.committed.merge(job);
    }

    /// Drops the current job's changes (it failed).
    pub fn reject_job(&mut self) {
        self.job = Changes::default();
    }

    /// Whether the batch has room for another job.
    pub fn has_room(&self) -> bool {
        self.committed.len() < BATCH_OP_BUDGET
    }

    /// Whether the batch changed anything.
    pub fn is_empty(&self) -> bool {
        self.committed.len() == 0
    }

    /// The transaction committing every accepted job: each changed record is compared with the
    /// revision it was read at; the settings are compared too.
    pub fn transaction(&self) -> Txn {
        let mut txn = self.settings.guard(Txn::new());
        for (cidr, block) in &self.committed.blocks {
            let key = keys::block(cidr);
            let revision = self.blocks.get(cidr).map_or(0, |r| r.revision);
            txn = txn.if_mod_revision(key.clone(), revision);
            txn = match block {
                Some(block) => txn.put(key, encode(block)),
                None => txn.delete(key),
            };
        }
        for (id, handle) in &self.committed.handles {
            let key = keys::handle(id);
            let revision = self.handles.get(id).map_or(0, |r| r.revision);
            txn = txn.if_mod_revision(key.clone(), revision);
            txn = match handle {
                Some(handle) => txn.put(key, encode(handle)),
                None => txn.delete(key),
            };
        }
        for (key, block) in &self.committed.affinities {
            let revision = self.affinity_revisions.get(key).copied().unwrap_or(0);
            txn = txn.if_mod_revision(key.clone(), revision);
            txn = match block {
                Some(block) => txn.put(key.clone(), encode(&Affinity { block: *block })),
                None => txn.delete(key.clone()),
            };
        }
        txn
    }
}

async fn read_block(store: &dyn Store, cidr: IpNet) -> Result<Read<Block>, IpamError> {
    read(store, keys::block(&cidr)).await
}

async fn read_handle(store: &dyn Store, id: &str) -> Result<Read<Handle>, IpamError> {
    read(store, keys::handle(id)).await
}

async fn read<T: DeserializeOwned>(store: &dyn Store, key: String) -> Result<Read<T>, IpamError> {
    Ok(match store.get(&key).await? {
        Some(kv) => Read {
            value: Some(decode(&key, &kv.value)?),
            revision: kv.mod_revision,
        },
        None => Read {
            value: None,
            revision: 0,
        },
    })
}
