//! Test support only, never shipped as a feature: a stand-in for the Kubernetes API server.
//!
//! No API server can be installed on the machines brindle is tested on, so kube-sync's tests run
//! the real, unmodified kube-rs client against this server. It speaks the API's list/watch
//! protocol for Namespaces, Pods, Nodes and `networking.k8s.io/v1` NetworkPolicies (and any other
//! `k8s-openapi` type a test puts): lists with `metadata.resourceVersion` and paging by
//! `limit`/`continue`; `watch=true` streams of `ADDED`/`MODIFIED`/`DELETED` events from a
//! resource version, `BOOKMARK` events when `allowWatchBookmarks=true`, and an `ERROR` event
//! carrying a `Status` with code 410 when the requested version is older than the history it
//! keeps. Objects are `k8s-openapi` values serialised as the API server serialises them. Tests
//! change objects through [`StandIn::put`] and [`StandIn::delete`] and force the failures a
//! client must survive with [`StandIn::hold_watches`] and [`StandIn::compact`].
//!
//! It also reviews the ServiceAccount tokens a test issues ([`StandIn::issue_token`]): `POST`
//! of an `authentication.k8s.io/v1` TokenReview answers as the API server does for a bound,
//! projected token (service account, pod name and uid, audiences).
//!
//! Clients may create (`POST`, 409 `AlreadyExists` when the name is taken) and replace (`PUT`)
//! objects of the kinds it serves, as `brindle certs --kubernetes-namespace` does with Secrets.
//!
//! Not covered: authenticating its own clients, field and label selectors, patches and deletes
//! over HTTP, server-side apply, optimistic concurrency on replace, streaming lists
//! (`sendInitialEvents`), and protobuf encoding.

mod http;
pub mod objects;
mod store;
mod token_review;

pub use token_review::BoundToken;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::ListableResource;
use serde::Serialize;
use tokio::net::TcpListener;

use store::Objects;

/// Counts of what clients asked, for tests that check a re-list happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// List requests answered (every page counts).
    pub lists: u64,
    /// Watch requests started.
    pub watches: u64,
    /// Watches answered with `410 Gone`.
    pub gone: u64,
}

/// A running stand-in API server on a loopback port; stops when dropped.
pub struct StandIn {
    address: SocketAddr,
    objects: Arc<Mutex<Objects>>,
    tokens: Arc<Mutex<token_review::Tokens>>,
    server: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// Starts a stand-in on a free loopback port. `bookmark_every` is how often open watches
    /// that asked for bookmarks get one (a real server sends one about every minute).
    pub async fn start(bookmark_every: std::time::Duration) -> std::io::Result<Self> {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0")?, bookmark_every)
    }

    /// Starts a stand-in on `listener` (bound by the caller, e.g. inside a network namespace).
    pub fn start_on(
        listener: std::net::TcpListener,
        bookmark_every: std::time::Duration,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let address = listener.local_addr()?;
        let objects = Arc::new(Mutex::new(Objects::new()));
        let tokens = Arc::new(Mutex::new(token_review::Tokens::default()));
        let server = tokio::spawn(http::serve(
            listener,
            objects.clone(),
            tokens.clone(),
            bookmark_every,
        ));
        Ok(Self {
            address,
            objects,
            tokens,
            server,
        })
    }

    /// The server's URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Writes a kubeconfig that points at the stand-in into `dir`; returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n\
             users:\n- name: standin\n  user: {{}}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n\
             current-context: standin\n",
            self.url()
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn objects(&self) -> MutexGuard<'_, Objects> {
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates or replaces an object (ADDED or MODIFIED); returns its new resource version.
    pub fn put<K: ListableResource + Serialize>(&self, object: &K) -> u64 {
        let value = serde_json::to_value(object).unwrap_or_default();
        self.objects().put(store::Kind::of::<K>(), value)
    }

    /// An object as stored, if there is one.
    pub fn get<K: ListableResource + serde::de::DeserializeOwned>(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        self.objects()
            .get(&store::Kind::of::<K>(), namespace.unwrap_or_default(), name)
            .and_then(|object| serde_json::from_value(object).ok())
    }

    /// The uid the stand-in gave an object when it was created (as the API server does).
    pub fn uid<K: ListableResource>(&self, namespace: Option<&str>, name: &str) -> Option<String> {
        self.objects()
            .get(&store::Kind::of::<K>(), namespace.unwrap_or_default(), name)
            .and_then(|object| object["metadata"]["uid"].as_str().map(str::to_owned))
    }

    /// Deletes an object (DELETED); `false` when there was none.
    pub fn delete<K: ListableResource>(&self, namespace: Option<&str>, name: &str) -> bool {
        self.objects()
            .delete(&store::Kind::of::<K>(), namespace.unwrap_or_default(), name)
    }

    /// While held, changes are recorded but not sent to open watches (a stalled connection).
    pub fn hold_watches(&self, held: bool) {
        self.objects().held = held;
    }

    /// Forgets the event history and ends every open watch: a client that comes back from an
    /// older resource version gets `410 Gone` and must re-list. Releases held watches.
    pub fn compact(&self) {
        self.objects().compact();
    }

    /// Issues a ServiceAccount token bound to a pod, for `bound.audiences` (what the kubelet
    /// projects into the pod); TokenReviews then authenticate it.
    pub fn issue_token(&self, bound: BoundToken) -> String {
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .issue(bound)
    }

    /// Revokes a token issued before.
    pub fn revoke_token(&self, token: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .revoke(token);
    }

    /// What clients asked so far.
    pub fn requests(&self) -> Requests {
        self.objects().requests
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.objects().revision
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}
