//! The working state of one batch of IPAM writes: records read from the datastore with their
//! revisions, the changes the batch's jobs made on top, and the single transaction that commits
//! them (every record it read is compared, so a concurrent writer makes it fail and retry).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use brindle_datastore::{MAX_TXN_OPS, Revision, Store, Txn};
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::error::IpamError;
use super::settings::{self, Settings};
use ipam_api::keys;
use ipam_api::model::{Affinity, Block, Handle, NodeRecord, decode, encode, first_sequence_after};

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

/// What a node's writer remembers between batches: the records it read or wrote, with their
/// revisions. Every transaction compares the revisions of what it writes, so a stale cache only
/// costs a conflict and a full re-read, never a wrong write.
#[derive(Debug, Clone)]
pub struct NodeCache {
    settings: Settings,
    node_labels: BTreeMap<String, String>,
    node_revision: Revision,
    affinity_revisions: BTreeMap<String, Revision>,
    node_blocks: BTreeSet<IpNet>,
    blocks: BTreeMap<IpNet, Read<Block>>,
}

/// Which handles a batch reads: the rest are assumed absent (new pods) and compared as absent.
pub struct HandleReads<'a> {
    /// Read before planning.
    pub prefetch: Vec<&'a str>,
    /// Assumed absent without a read.
    pub assume_absent: Vec<&'a str>,
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
    node_revision: Revision,
    /// Current time, unix ms.
    pub now_ms: u64,
    blocks: BTreeMap<IpNet, Read<Block>>,
    /// Blocks that came from the node cache rather than a read in this batch.
    cached_blocks: BTreeSet<IpNet>,
    /// Cached blocks a job looked at: the transaction compares them, so a decision taken on a
    /// stale copy (even one that wrote nothing) fails and is re-planned from fresh reads.
    relied_on: BTreeSet<IpNet>,
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
    /// Prepares a batch for `node`: from `cache` when given, otherwise by reading settings, the
    /// node's record, its affinities and its blocks; then reads the handles to prefetch.
    pub async fn load(
        store: Arc<dyn Store>,
        node: &str,
        handles: HandleReads<'_>,
        now_ms: u64,
        cache: Option<NodeCache>,
    ) -> Result<Self, IpamError> {
        let (cache, cached_blocks) = match cache {
            Some(cache) => {
                let cached = cache.blocks.keys().copied().collect();
                (cache, cached)
            }
            None => (read_node(store.as_ref(), node).await?, BTreeSet::new()),
        };
        let handle_reads = futures_util::future::try_join_all(
            handles.prefetch.iter().map(|id| read_handle(store.as_ref(), id)),
        )
        .await?;
        let mut read: BTreeMap<String, Read<Handle>> = handles
            .prefetch
            .iter()
            .map(|id| (*id).to_owned())
            .zip(handle_reads)
            .collect();
        for id in handles.assume_absent {
            read.entry(id.to_owned()).or_insert(Read {
                value: None,
                revision: 0,
            });
        }
        Ok(Self {
            store,
            node: node.to_owned(),
            settings: cache.settings,
            node_labels: cache.node_labels,
            node_revision: cache.node_revision,
            now_ms,
            blocks: cache.blocks,
            cached_blocks,
            relied_on: BTreeSet::new(),
            handles: read,
            affinity_revisions: cache.affinity_revisions,
            node_blocks: cache.node_blocks,
            all_blocks_loaded: false,
            registered_nodes: BTreeMap::new(),
            committed: Changes::default(),
            job: Changes::default(),
        })
    }

    /// What the node's writer keeps after this batch committed at `revision`.
    pub fn into_cache(self, revision: Revision) -> NodeCache {
        let node_blocks = self.node_blocks();
        let mut blocks = self.blocks;
        for (cidr, block) in self.committed.blocks {
            match block {
                Some(block) => blocks.insert(
                    cidr,
                    Read {
                        value: Some(block),
                        revision,
                    },
                ),
                None => blocks.remove(&cidr),
            };
        }
        blocks.retain(|cidr, _| node_blocks.contains(cidr));
        let mut affinity_revisions = self.affinity_revisions;
        let prefix = keys::node_affinities(&self.node);
        for (key, block) in self.committed.affinities {
            match block {
                Some(_) => affinity_revisions.insert(key, revision),
                None => affinity_revisions.remove(&key),
            };
        }
        affinity_revisions.retain(|key, _| key.starts_with(&prefix));
        NodeCache {
            settings: self.settings,
            node_labels: self.node_labels,
            node_revision: self.node_revision,
            affinity_revisions,
            node_blocks,
            blocks,
        }
    }

    /// The first sequence number for a block created now: derived from the current store
    /// revision, which is past the deletion of any earlier block with the same CIDR.
    pub async fn first_sequence(&self) -> Result<u64, IpamError> {
        Ok(first_sequence_after(self.store.revision().await?))
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
        if self.cached_blocks.contains(&cidr) {
            self.relied_on.insert(cidr);
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

    /// The transaction committing every accepted job, or `None` when there is nothing to write
    /// or validate. Each changed record is compared with the revision it was read at; so are the
    /// settings, the node's record and every cached block a decision relied on.
    pub fn transaction(&self) -> Option<Txn> {
        let unchanged_relied_on: Vec<&IpNet> = self
            .relied_on
            .iter()
            .filter(|cidr| !self.committed.blocks.contains_key(cidr))
            .collect();
        if self.committed.len() == 0 && unchanged_relied_on.is_empty() {
            return None;
        }
        let mut txn = self
            .settings
            .guard(Txn::new())
            .if_mod_revision(keys::node(&self.node), self.node_revision);
        for cidr in unchanged_relied_on {
            let revision = self.blocks.get(cidr).map_or(0, |r| r.revision);
            txn = txn.if_mod_revision(keys::block(cidr), revision);
        }
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
        Some(txn)
    }
}

/// Reads settings, the node's labels, its affinities and its blocks.
async fn read_node(store: &dyn Store, node: &str) -> Result<NodeCache, IpamError> {
    let (node_key, affinities_prefix) = (keys::node(node), keys::node_affinities(node));
    let (settings, node_record, affinities) = futures_util::future::try_join3(
        settings::load(store),
        async { store.get(&node_key).await.map_err(IpamError::from) },
        async { store.list(&affinities_prefix).await.map_err(IpamError::from) },
    )
    .await?;
    let (node_labels, node_revision) = match node_record {
        Some(kv) => (decode::<NodeRecord>(&kv.key, &kv.value)?.labels, kv.mod_revision),
        None => (BTreeMap::new(), 0),
    };
    let mut affinity_revisions = BTreeMap::new();
    let mut node_blocks = BTreeSet::new();
    for kv in &affinities.kvs {
        let affinity: Affinity = decode(&kv.key, &kv.value)?;
        affinity_revisions.insert(kv.key.clone(), kv.mod_revision);
        node_blocks.insert(affinity.block);
    }
    let reads =
        futures_util::future::try_join_all(node_blocks.iter().map(|cidr| read_block(store, *cidr))).await?;
    Ok(NodeCache {
        settings,
        node_labels,
        node_revision,
        affinity_revisions,
        blocks: node_blocks.iter().copied().zip(reads).collect(),
        node_blocks,
    })
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
