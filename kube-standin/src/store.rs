//! The stand-in's objects: one resource version counter for all of them (as etcd has), the
//! event history watches resume from, open watches, and the snapshots behind `continue` tokens.

use std::collections::{BTreeMap, HashMap, VecDeque};

use k8s_openapi::ListableResource;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::Requests;

/// A resource type as URLs and objects name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    /// `v1` or `<group>/<version>`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// `PodList`.
    pub list_kind: String,
    /// `pods`.
    pub plural: String,
}

impl Kind {
    /// The kind of a `k8s-openapi` type.
    pub fn of<K: ListableResource>() -> Self {
        Self {
            api_version: K::API_VERSION.to_owned(),
            kind: K::KIND.to_owned(),
            list_kind: K::LIST_KIND.to_owned(),
            plural: K::URL_PATH_SEGMENT.to_owned(),
        }
    }
}

/// A watch event as sent: its resource version and its JSON line.
#[derive(Debug, Clone)]
pub struct Event {
    revision: u64,
    kind: Kind,
    namespace: String,
    /// The serialised `{"type": …, "object": …}` line.
    pub line: String,
}

/// One open watch: what it follows and where its events go.
pub struct Watch {
    /// Its number, for bookmarks.
    pub id: u64,
    /// The resource type.
    pub kind: Kind,
    /// Only this namespace (empty: all).
    pub namespace: String,
    /// Where its lines go.
    pub lines: UnboundedSender<String>,
}

/// How a watch starts.
pub enum WatchStart {
    /// The history since the requested version, then live events.
    Events(Vec<String>),
    /// The version is older than the history kept: `410 Gone`.
    Gone(String),
}

/// A page of a list.
pub struct Page {
    /// The resource version the list was served at.
    pub revision: u64,
    /// The objects.
    pub items: Vec<Value>,
    /// Token for the next page, if any.
    pub next: Option<String>,
}

/// Every object and what watches need.
#[derive(Default)]
pub struct Objects {
    /// The last resource version given out.
    pub revision: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: VecDeque<Event>,
    /// Watches from a version below this get `410 Gone`.
    compacted_through: u64,
    watches: Vec<Watch>,
    continues: HashMap<String, (u64, VecDeque<Value>)>,
    next_continue: u64,
    /// While set, events are recorded but not sent.
    pub held: bool,
    /// What clients asked.
    pub requests: Requests,
    kinds: Vec<Kind>,
}

const HISTORY: usize = 10_000;

fn namespace_of(object: &Value) -> String {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

impl Objects {
    /// Objects of the kinds kube-sync follows (Namespaces, Pods, Nodes, NetworkPolicies) and
    /// `brindle certs` writes (Secrets, ConfigMaps); others are served once a test puts one.
    pub fn new() -> Self {
        use k8s_openapi::api::{core::v1, networking::v1 as networking};
        Self {
            kinds: vec![
                Kind::of::<v1::Namespace>(),
                Kind::of::<v1::Pod>(),
                Kind::of::<v1::Node>(),
                Kind::of::<networking::NetworkPolicy>(),
                Kind::of::<v1::Secret>(),
                Kind::of::<v1::ConfigMap>(),
            ],
            ..Self::default()
        }
    }

    /// The kind a URL names by its API version and plural.
    pub fn kind(&self, api_version: &str, plural: &str) -> Option<Kind> {
        self.kinds
            .iter()
            .find(|k| k.api_version == api_version && k.plural == plural)
            .cloned()
    }

    /// Creates or replaces an object; returns its new resource version.
    pub fn put(&mut self, kind: Kind, mut object: Value) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let namespace = namespace_of(&object);
        if !self.kinds.contains(&kind) {
            self.kinds.push(kind.clone());
        }
        let key = (kind.clone(), namespace.clone(), name.clone());
        let previous = self.objects.get(&key);
        let uid = previous
            .and_then(|p| p["metadata"]["uid"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{revision:012}"));
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(revision.to_string());
        metadata["uid"] = json!(uid);
        object["apiVersion"] = json!(kind.api_version);
        object["kind"] = json!(kind.kind);
        let verb = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        self.record(revision, &kind, namespace, verb, &object);
        self.objects.insert(key, object);
        revision
    }

    /// Deletes an object; `false` when there was none.
    pub fn delete(&mut self, kind: &Kind, namespace: &str, name: &str) -> bool {
        let key = (kind.clone(), namespace.to_owned(), name.to_owned());
        let Some(mut object) = self.objects.remove(&key) else {
            return false;
        };
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.record(self.revision, kind, namespace.to_owned(), "DELETED", &object);
        true
    }

    fn record(&mut self, revision: u64, kind: &Kind, namespace: String, verb: &str, object: &Value) {
        let event = Event {
            revision,
            kind: kind.clone(),
            namespace,
            line: json!({"type": verb, "object": object}).to_string(),
        };
        if !self.held {
            self.send(&event);
        }
        self.history.push_back(event);
        if self.history.len() > HISTORY
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted_through = dropped.revision;
        }
    }

    fn send(&mut self, event: &Event) {
        self.watches.retain(|watch| {
            let wanted = watch.kind == event.kind
                && (watch.namespace.is_empty() || watch.namespace == event.namespace);
            !wanted || watch.lines.send(event.line.clone()).is_ok()
        });
    }

    /// Forgets the history and the `continue` snapshots, ends every open watch, releases held
    /// watches.
    pub fn compact(&mut self) {
        self.compacted_through = self.revision;
        self.history.clear();
        self.continues.clear();
        self.watches.clear();
        self.held = false;
    }

    /// Starts a watch of `kind` in `namespace` (empty: all) from resource version `from`.
    pub fn watch(&mut self, watch: Watch, from: u64) -> WatchStart {
        self.requests.watches += 1;
        if from < self.compacted_through {
            self.requests.gone += 1;
            return WatchStart::Gone(gone(format!(
                "too old resource version: {from} ({})",
                self.compacted_through
            )));
        }
        let lines = self
            .history
            .iter()
            .filter(|e| {
                e.revision > from
                    && e.kind == watch.kind
                    && (watch.namespace.is_empty() || watch.namespace == e.namespace)
            })
            .map(|e| e.line.clone())
            .collect();
        if !self.held {
            self.watches.push(watch);
        }
        WatchStart::Events(lines)
    }

    /// One page of `kind` in `namespace` (empty: all): the first when `token` is `None`, else
    /// the next of the snapshot the token stands for. `Err` holds a 410 `Status` for an expired
    /// token.
    pub fn list(
        &mut self,
        kind: &Kind,
        namespace: &str,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page, String> {
        self.requests.lists += 1;
        let (revision, mut rest) = match token {
            Some(token) => self
                .continues
                .remove(token)
                .ok_or_else(|| gone(format!("the continue token {token:?} has expired")))?,
            None => (
                self.revision,
                self.objects
                    .iter()
                    .filter(|((k, ns, _), _)| k == kind && (namespace.is_empty() || ns == namespace))
                    .map(|(_, object)| object.clone())
                    .collect(),
            ),
        };
        let take = limit.unwrap_or(usize::MAX).min(rest.len());
        let items: Vec<Value> = rest.drain(..take).collect();
        let next = (!rest.is_empty()).then(|| {
            self.next_continue += 1;
            let token = format!("standin-{}", self.next_continue);
            self.continues.insert(token.clone(), (revision, rest));
            token
        });
        Ok(Page {
            revision,
            items,
            next,
        })
    }

    /// Sends a `BOOKMARK` at the current version to watch `id`, behind every event it was sent;
    /// `false` when that watch has ended. Held watches get none (a stalled connection).
    pub fn bookmark(&mut self, id: u64) -> bool {
        let Some(watch) = self.watches.iter().find(|w| w.id == id) else {
            return false;
        };
        if self.held {
            return true;
        }
        let line = json!({
            "type": "BOOKMARK",
            "object": {
                "apiVersion": watch.kind.api_version,
                "kind": watch.kind.kind,
                "metadata": {"resourceVersion": self.revision.to_string()},
            },
        });
        watch.lines.send(line.to_string()).is_ok()
    }

    /// A number for a new watch.
    pub fn next_watch_id(&mut self) -> u64 {
        self.next_continue += 1;
        self.next_continue
    }

    /// The current version of one object.
    pub fn get(&self, kind: &Kind, namespace: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&(kind.clone(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}

/// A `Status` object for `410 Gone`.
pub fn gone(message: String) -> String {
    status(410, "Expired", message)
}

/// A failure `Status` object.
pub fn status(code: u16, reason: &str, message: String) -> String {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
    .to_string()
}
