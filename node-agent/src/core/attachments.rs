//! Attachment records under the agent's state directory (one JSON file per attachment, written to
//! a temporary file and renamed in, so a record is always whole), so DEL, CHECK and GC work after an
//! agent restart and the agent can reconcile records, kernel and IPAM on start.
//!
//! A record is fsync'd before it is renamed in and its directory after, and so is a removal, so
//! what the agent answered survives the node losing power; only an ADD's intent record is not
//! waited for (see [`AttachmentStore::save_intent`]).

use std::path::{Path, PathBuf};

use brindle_metrics::{Counters, Metrics};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::wiring::AttachmentKey;

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record does not decode.
    #[error("attachment record {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoding error.
        reason: String,
    },
}

/// Where an attachment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// ADD started: addresses may be allocated and the veth may exist; not yet answered.
    Adding,
    /// ADD succeeded.
    Ready,
}

/// One attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// (network, container id, ifname).
    pub key: AttachmentKey,
    /// The pod's network namespace as given at ADD.
    pub netns: String,
    /// IPAM handle holding its addresses.
    pub handle_id: String,
    /// Host-side interface.
    pub host_ifname: String,
    /// Addresses (`/32`, `/128`).
    pub addresses: Vec<IpNet>,
    /// Pod labels and identity from CNI_ARGS (namespace, pod name).
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod labels (from the network configuration's `args.cni.labels`).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Named container ports (from `args.brindle.ports`).
    #[serde(default)]
    pub ports: Vec<policy_api::model::NamedPort>,
    /// Life phase.
    pub phase: Phase,
}

/// How far a write goes before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// The file's bytes and its name (fsync of the file and of the directory).
    Synced,
    /// The page cache only.
    PageCache,
}

/// Where records that do not decode are moved, inside the records' directory.
pub const QUARANTINE_DIR: &str = "corrupt";

/// The records on disk.
#[derive(Debug, Clone)]
pub struct AttachmentStore {
    dir: PathBuf,
    quarantined: Counters,
}

impl AttachmentStore {
    /// Records under `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, RecordError> {
        std::fs::create_dir_all(dir).map_err(|source| RecordError::Io {
            what: "creating",
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            quarantined: Counters::default(),
        })
    }

    /// Counts records moved aside into `metrics` (`brindle_attachment_records_quarantined_total`).
    #[must_use]
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.quarantined = metrics.counters(
            "attachment_records_quarantined",
            "Attachment records that did not decode and were moved aside",
        );
        self
    }

    /// The directory of the records.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records moved aside so far by this process.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.get_or_create(&Vec::new()).get()
    }

    /// Decodes the record at `path`; one that does not decode is logged, counted and moved into
    /// [`QUARANTINE_DIR`] (so one bad file never stops the agent's work on every other
    /// attachment), and reads as absent. Its pod may still be running: until a DEL for it
    /// ([`Self::forget_quarantined`]), its host interface is kept and the node-wide sweep of
    /// unowned addresses is held back (see [`Self::quarantined_interfaces`]).
    fn decode_or_quarantine(&self, path: &Path, bytes: &[u8]) -> Result<Option<Attachment>, RecordError> {
        if bytes.is_empty() {
            // Only an intent record can be empty (a power loss before its bytes reached the
            // disk; durable records are synced before they are named): it reads as absent.
            tracing::warn!(record = %path.display(), "removing an empty attachment record (an ADD's intent lost with the power)");
            remove_if_present(path.to_owned())?;
            return Ok(None);
        }
        let reason = match decode(path, bytes) {
            Ok(attachment) => return Ok(Some(attachment)),
            Err(error) => error.to_string(),
        };
        let aside = self.dir.join(QUARANTINE_DIR);
        let io = |what, source| RecordError::Io {
            what,
            path: aside.clone(),
            source,
        };
        std::fs::create_dir_all(&aside).map_err(|e| io("creating", e))?;
        let target = aside.join(path.file_name().unwrap_or_default());
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            // Another call moved it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("moving a corrupt record into", e)),
        }
        self.quarantined.get_or_create(&Vec::new()).inc();
        tracing::error!(record = %path.display(), moved_to = %target.display(), %reason,
            "moved aside an attachment record that does not decode; its host interface is kept and no address of this node is released as unowned until a DEL for it");
        Ok(None)
    }

    /// Host interfaces of the records moved aside and not yet DELeted.
    pub fn quarantined_interfaces(&self) -> Result<Vec<String>, RecordError> {
        let aside = self.dir.join(QUARANTINE_DIR);
        let entries = match std::fs::read_dir(&aside) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(RecordError::Io {
                    what: "listing",
                    path: aside,
                    source,
                });
            }
        };
        let mut interfaces: Vec<String> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                (path.extension()? == "json").then(|| path.file_stem()?.to_str().map(str::to_owned))?
            })
            .collect();
        interfaces.sort();
        Ok(interfaces)
    }

    /// Forgets the moved-aside record of host interface `host_ifname` (its attachment was
    /// DELeted); absent is fine.
    pub fn forget_quarantined(&self, host_ifname: &str) -> Result<(), RecordError> {
        remove_if_present(self.dir.join(QUARANTINE_DIR).join(format!("{host_ifname}.json")))
    }

    fn path(&self, key: &AttachmentKey) -> PathBuf {
        // The host interface name is a hash of the key: short, unique, safe as a file name.
        self.dir.join(format!("{}.json", key.host_ifname()))
    }

    /// Writes (or replaces) a record atomically and durably: the file is fsync'd before it is
    /// renamed in, and the directory after, so the record survives a power loss.
    pub fn save(&self, attachment: &Attachment) -> Result<(), RecordError> {
        self.write(attachment, Durability::Synced)
    }

    /// Writes the intent record of an ADD (phase [`Phase::Adding`]) atomically, without waiting
    /// for the disk: it guards against the agent crashing mid-ADD, which the page cache
    /// survives. A power loss may lose it or leave an empty file under its name, which reads as
    /// absent: the pod's namespace is gone too and the start-up sweep releases what no record
    /// owns. (Synced too, it took bench-cni's ADD p50 from 0.44–0.46× the reference plugins' to
    /// 0.51–0.56×, past the goal; see BENCHMARKS.md.) The ready record that replaces it is
    /// [`Self::save`]d durably.
    pub fn save_intent(&self, attachment: &Attachment) -> Result<(), RecordError> {
        self.write(attachment, Durability::PageCache)
    }

    fn write(&self, attachment: &Attachment, durability: Durability) -> Result<(), RecordError> {
        let path = self.path(&attachment.key);
        let temporary = path.with_extension("json.tmp");
        let io = |what, source| RecordError::Io {
            what,
            path: temporary.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(attachment).map_err(|e| RecordError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let file = std::fs::File::create(&temporary).map_err(|e| io("creating", e))?;
        std::io::Write::write_all(&mut &file, &bytes).map_err(|e| io("writing", e))?;
        if durability == Durability::PageCache {
            return std::fs::rename(&temporary, &path).map_err(|e| io("renaming", e));
        }
        // The bytes reach the disk before the name points at them, and the name before the
        // record counts as written: a power loss leaves the old record or the new one, whole.
        file.sync_data().map_err(|e| io("syncing", e))?;
        std::fs::rename(&temporary, &path).map_err(|e| io("renaming", e))?;
        self.sync_dir()
    }

    /// Makes the directory's entries (renames, removals) durable.
    fn sync_dir(&self) -> Result<(), RecordError> {
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| RecordError::Io {
                what: "syncing",
                path: self.dir.clone(),
                source,
            })
    }

    /// Reads the record of `key`; one that does not decode is moved aside and reads as absent.
    pub fn load(&self, key: &AttachmentKey) -> Result<Option<Attachment>, RecordError> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => self.decode_or_quarantine(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(RecordError::Io {
                what: "reading",
                path,
                source,
            }),
        }
    }

    /// Removes the record of `key` durably (a DELeted record must not come back after a power
    /// loss); absent is fine.
    pub fn remove(&self, key: &AttachmentKey) -> Result<(), RecordError> {
        remove_if_present(self.path(key))?;
        self.sync_dir()
    }

    /// Every record (records that do not decode are moved aside, see [`Self::load`]).
    pub fn list(&self) -> Result<Vec<Attachment>, RecordError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| RecordError::Io {
            what: "listing",
            path: self.dir.clone(),
            source,
        })?;
        let mut attachments = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path).map_err(|source| RecordError::Io {
                    what: "reading",
                    path: path.clone(),
                    source,
                })?;
                attachments.extend(self.decode_or_quarantine(&path, &bytes)?);
            }
        }
        attachments.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(attachments)
    }
}

/// Removes the file at `path`; absent is fine.
fn remove_if_present(path: PathBuf) -> Result<(), RecordError> {
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Io {
            what: "removing",
            path,
            source,
        }),
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Attachment, RecordError> {
    serde_json::from_slice(bytes).map_err(|e| RecordError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(container: &str) -> Attachment {
        let key = AttachmentKey {
            network: "net".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
        };
        Attachment {
            host_ifname: key.host_ifname(),
            key,
            netns: "/proc/1/ns/net".into(),
            handle_id: format!("net.{container}"),
            addresses: vec!["10.244.0.5/32".parse().expect("net")],
            namespace: "default".into(),
            pod: "web".into(),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            ports: Vec::new(),
            phase: Phase::Ready,
        }
    }

    #[test]
    fn records_round_trip_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("brindle-records-{}", std::process::id()));
        let store = AttachmentStore::open(&dir).expect("open");
        store.save(&attachment("a")).expect("save");
        store.save(&attachment("b")).expect("save");
        let reopened = AttachmentStore::open(&dir).expect("reopen");
        assert_eq!(
            reopened.load(&attachment("a").key).expect("load"),
            Some(attachment("a"))
        );
        assert_eq!(reopened.list().expect("list").len(), 2);
        reopened.remove(&attachment("a").key).expect("remove");
        reopened.remove(&attachment("a").key).expect("remove twice");
        assert_eq!(reopened.list().expect("list"), vec![attachment("b")]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_corrupt_record_is_moved_aside_and_the_others_are_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = AttachmentStore::open(dir.path()).expect("open");
        store.save(&attachment("a")).expect("save");
        store.save(&attachment("b")).expect("save");
        let broken = dir
            .path()
            .join(format!("{}.json", attachment("b").key.host_ifname()));
        std::fs::write(&broken, b"{\"key\": 7").expect("corrupt b");
        assert_eq!(store.list().expect("list"), vec![attachment("a")]);
        assert_eq!(store.quarantined(), 1);
        assert!(!broken.exists());
        assert!(
            dir.path()
                .join(QUARANTINE_DIR)
                .join(broken.file_name().expect("name"))
                .exists()
        );
        assert_eq!(store.list().expect("list again"), vec![attachment("a")]);
        assert_eq!(store.quarantined(), 1, "moved once");
        std::fs::write(&broken, b"").expect("an intent lost with the power");
        assert_eq!(store.load(&attachment("b").key).expect("load"), None);
        assert!(!broken.exists(), "an empty record is removed");
        assert_eq!(store.quarantined(), 1, "and not moved aside");
        std::fs::write(&broken, b"not json").expect("corrupt b again");
        assert_eq!(store.load(&attachment("b").key).expect("load"), None);
        assert_eq!(store.quarantined(), 2);
    }
}
