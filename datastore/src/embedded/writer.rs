//! The embedded store's single writer thread: drains queued writes into one redb transaction
//! (group commit, one fsync for many callers), then publishes their watch batches and answers.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{Database, ReadableTable, Table, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::Context;
use super::history::WatchHub;
use super::tables::{self, KV, LEASE_KEYS, LEASES, META, REVISION_KEY};
use crate::error::StoreError;
use crate::types::{EventKind, KeyValue, LeaseId, Op, Revision, Txn, WatchBatch, WatchEvent};
use brindle_backoff::random_u64;

/// Most writes committed together in one redb transaction.
const MAX_GROUP: usize = 256;

/// Where a write's answer goes: a revision for transactions and revokes, the id for grants.
pub(super) type Reply = oneshot::Sender<Result<u64, StoreError>>;

/// A write for the writer thread.
pub(super) enum WriteRequest {
    /// Apply a transaction.
    Txn { txn: Txn, reply: Reply },
    /// Create a lease with this TTL.
    GrantLease { ttl: Duration, reply: Reply },
    /// Delete a lease and its keys (revoke or expiry).
    RevokeLease { lease: LeaseId, reply: Reply },
}

impl WriteRequest {
    fn into_reply(self) -> Reply {
        match self {
            Self::Txn { reply, .. } | Self::GrantLease { reply, .. } | Self::RevokeLease { reply, .. } => {
                reply
            }
        }
    }
}

/// Starts the writer thread; it exits when every sender of `requests` is gone.
pub(super) fn spawn(
    db: Arc<Database>,
    mut requests: mpsc::UnboundedReceiver<WriteRequest>,
    revision: Revision,
    hub: Arc<WatchHub>,
) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name("brindle-store-writer".to_owned())
        .spawn(move || {
            let mut revision = revision;
            while let Some(first) = requests.blocking_recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match requests.try_recv() {
                        Ok(request) => group.push(request),
                        Err(_) => break,
                    }
                }
                commit_group(&db, group, &mut revision, &hub);
            }
        })
        .context("starting the writer thread")
}

fn commit_group(db: &Database, group: Vec<WriteRequest>, revision: &mut Revision, hub: &WatchHub) {
    let mut next_revision = *revision;
    match apply_group(db, &group, &mut next_revision) {
        Ok((answers, batches)) => {
            *revision = next_revision;
            for batch in batches {
                hub.publish(batch);
            }
            for (request, answer) in group.into_iter().zip(answers) {
                let _ = request.into_reply().send(answer);
            }
        }
        Err(failure) => {
            tracing::error!(error = %failure, writes = group.len(), "embedded store commit failed");
            let message = failure.to_string();
            for request in group {
                let error = StoreError::backend("committing to the embedded store", message.clone());
                let _ = request.into_reply().send(Err(error));
            }
        }
    }
}

type Answers = (Vec<Result<u64, StoreError>>, Vec<WatchBatch>);

/// Applies every write of the group in one redb transaction. The outer error is a storage failure
/// (nothing committed); inner errors are per-write refusals (that write changed nothing).
fn apply_group(
    db: &Database,
    group: &[WriteRequest],
    revision: &mut Revision,
) -> Result<Answers, StoreError> {
    let txn = db.begin_write().context("begin write")?;
    let mut answers = Vec::with_capacity(group.len());
    let mut batches = Vec::new();
    {
        let mut state = WriteState::open(&txn, *revision)?;
        for request in group {
            let answer = match request {
                WriteRequest::Txn { txn, .. } => state.apply_txn(txn)?,
                WriteRequest::GrantLease { ttl, .. } => state.grant_lease(*ttl)?,
                WriteRequest::RevokeLease { lease, .. } => state.revoke_lease(*lease)?,
            };
            answers.push(answer.map(|(value, batch)| {
                batches.extend(batch);
                value
            }));
        }
        state.store_revision()?;
        *revision = state.revision;
    }
    txn.commit().context("commit")?;
    Ok((answers, batches))
}

/// A write's result: its answer and the watch batch it produced, or why it was refused.
type Applied = Result<(u64, Option<WatchBatch>), StoreError>;

struct WriteState<'txn> {
    kv: Table<'txn, &'static str, &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    leases: Table<'txn, u64, u64>,
    lease_keys: Table<'txn, (u64, &'static str), ()>,
    revision: Revision,
}

impl<'txn> WriteState<'txn> {
    fn open(txn: &'txn WriteTransaction, revision: Revision) -> Result<Self, StoreError> {
        Ok(Self {
            kv: txn.open_table(KV).context("open kv")?,
            meta: txn.open_table(META).context("open meta")?,
            leases: txn.open_table(LEASES).context("open leases")?,
            lease_keys: txn.open_table(LEASE_KEYS).context("open lease_keys")?,
            revision,
        })
    }

    fn load(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let record = self.kv.get(key).context("get")?;
        record.map(|r| tables::decode(key, r.value())).transpose()
    }

    fn lease_exists(&self, lease: LeaseId) -> Result<bool, StoreError> {
        Ok(self.leases.get(lease).context("get lease")?.is_some())
    }

    fn apply_txn(&mut self, txn: &Txn) -> Result<Applied, StoreError> {
        if let Err(refused) = txn.validate() {
            return Ok(Err(refused));
        }
        for compare in &txn.compares {
            if !compare.holds(self.load(compare.key())?.as_ref()) {
                return Ok(Err(StoreError::Conflict {
                    key: compare.key().to_owned(),
                }));
            }
        }
        for op in &txn.ops {
            if let Op::Put {
                lease: Some(lease), ..
            } = op
                && !self.lease_exists(*lease)?
            {
                return Ok(Err(StoreError::LeaseNotFound(*lease)));
            }
        }
        let next = self.revision + 1;
        let mut events = Vec::with_capacity(txn.ops.len());
        for op in &txn.ops {
            let previous = self.load(op.key())?;
            match op {
                Op::Put { key, value, lease } => {
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: previous.as_ref().map_or(next, |p| p.create_revision),
                        mod_revision: next,
                        version: previous.as_ref().map_or(1, |p| p.version + 1),
                        lease: *lease,
                    };
                    self.unlink_lease(previous.as_ref())?;
                    self.write(&kv)?;
                    events.push(WatchEvent {
                        kind: EventKind::Put,
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
                Op::Delete { key } => {
                    if previous.is_some() {
                        self.unlink_lease(previous.as_ref())?;
                        self.kv.remove(key.as_str()).context("remove")?;
                        events.push(WatchEvent {
                            kind: EventKind::Delete,
                            key: key.clone(),
                            value: Vec::new(),
                        });
                    }
                }
            }
        }
        Ok(Ok(self.commit_events(events)))
    }

    fn write(&mut self, kv: &KeyValue) -> Result<(), StoreError> {
        self.kv
            .insert(kv.key.as_str(), tables::encode(kv).as_slice())
            .context("insert")?;
        if let Some(lease) = kv.lease {
            self.lease_keys
                .insert((lease, kv.key.as_str()), ())
                .context("link lease")?;
        }
        Ok(())
    }

    fn unlink_lease(&mut self, previous: Option<&KeyValue>) -> Result<(), StoreError> {
        if let Some(KeyValue {
            key,
            lease: Some(lease),
            ..
        }) = previous
        {
            self.lease_keys
                .remove((*lease, key.as_str()))
                .context("unlink lease")?;
        }
        Ok(())
    }

    /// Gives `events` the next revision; a write that changed nothing keeps the current one.
    fn commit_events(&mut self, events: Vec<WatchEvent>) -> (u64, Option<WatchBatch>) {
        if events.is_empty() {
            return (self.revision, None);
        }
        self.revision += 1;
        let batch = WatchBatch {
            revision: self.revision,
            events,
        };
        (self.revision, Some(batch))
    }

    fn grant_lease(&mut self, ttl: Duration) -> Result<Applied, StoreError> {
        let id = loop {
            // Positive i64 so the id is valid on etcd too.
            let candidate = random_u64() & (i64::MAX as u64);
            if candidate != 0 && !self.lease_exists(candidate)? {
                break candidate;
            }
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.leases.insert(id, ttl_ms).context("insert lease")?;
        Ok(Ok((id, None)))
    }

    fn revoke_lease(&mut self, lease: LeaseId) -> Result<Applied, StoreError> {
        if self.leases.remove(lease).context("remove lease")?.is_none() {
            return Ok(Err(StoreError::LeaseNotFound(lease)));
        }
        let mut keys = Vec::new();
        for entry in self
            .lease_keys
            .range((lease, "")..(lease + 1, ""))
            .context("range lease keys")?
        {
            let (link, _) = entry.context("range lease keys")?;
            keys.push(link.value().1.to_owned());
        }
        let mut events = Vec::with_capacity(keys.len());
        for key in keys {
            self.lease_keys
                .remove((lease, key.as_str()))
                .context("unlink lease")?;
            if self.kv.remove(key.as_str()).context("remove")?.is_some() {
                events.push(WatchEvent {
                    kind: EventKind::Delete,
                    key,
                    value: Vec::new(),
                });
            }
        }
        Ok(Ok(self.commit_events(events)))
    }

    fn store_revision(&mut self) -> Result<(), StoreError> {
        self.meta
            .insert(REVISION_KEY, self.revision)
            .context("store revision")?;
        Ok(())
    }
}
