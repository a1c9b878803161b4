//! The second process of bench-scale: every node's route-svc and policy-svc Sync streams, each
//! node connecting from its own loopback address (as agents would from their own hosts),
//! recording when each datastore revision reached each node and how many bytes it took.
//!
//! It prints `synced <route s> <policy s> <route bytes> <policy bytes> <route entries> <policy
//! entries>` once every stream has its first state, then answers, one line per command read from stdin:
//! `wait <route|policy> <revision> <all|some>` → `waited <nodes>` (`some`: until the nodes that
//! get it stop arriving) and `stats <route|policy> <revision> <t0 ns>` → `stats <nodes> <bytes>
//! <p50 ms> <max ms>`.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use brindle_proto::common::v1 as common;
use brindle_proto::policy::v1 as policy_pb;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use brindle_proto::route::v1 as route_pb;
use brindle_proto::route::v1::routes_client::RoutesClient;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use super::cluster::Cluster;
use super::now_nanos;

/// Which service a stream follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Service {
    Route,
    Policy,
}

impl Service {
    fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "route" => Ok(Self::Route),
            "policy" => Ok(Self::Policy),
            other => bail!("unknown service {other:?}"),
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Route => 0,
            Self::Policy => 1,
        }
    }
}

/// What one Sync message was.
enum Received {
    /// A piece of the snapshot: whether it is the last, and the entries of the whole.
    Snapshot { last: bool, entries: u64 },
    /// A change at the message's revision.
    Delta,
    /// Nothing new.
    Keepalive,
}

fn snapshot(piece: &common::EncodedSnapshot) -> Received {
    Received::Snapshot {
        last: piece.offset + piece.data.len() as u64 >= piece.total_bytes,
        entries: piece.entries,
    }
}

fn route_message(message: &route_pb::SyncResponse) -> Received {
    match &message.payload {
        Some(route_pb::sync_response::Payload::Snapshot(piece)) => snapshot(piece),
        Some(route_pb::sync_response::Payload::Delta(_)) => Received::Delta,
        Some(route_pb::sync_response::Payload::Keepalive(_)) | None => Received::Keepalive,
    }
}

fn policy_message(message: &policy_pb::SyncResponse) -> Received {
    match &message.payload {
        Some(policy_pb::sync_response::Payload::Snapshot(piece)) => snapshot(piece),
        Some(policy_pb::sync_response::Payload::Delta(_)) => Received::Delta,
        Some(policy_pb::sync_response::Payload::Keepalive(_)) | None => Received::Keepalive,
    }
}

type Item = Result<(u64, u64, Received), tonic::Status>;

fn route_item(message: Result<route_pb::SyncResponse, tonic::Status>) -> Item {
    message.map(|m| (m.revision, m.encoded_len() as u64, route_message(&m)))
}

fn policy_item(message: Result<policy_pb::SyncResponse, tonic::Status>) -> Item {
    message.map(|m| (m.revision, m.encoded_len() as u64, policy_message(&m)))
}

/// (revision, encoded bytes, what it was) of each message of one stream.
type Messages = BoxStream<'static, Item>;

/// Deltas that arrived, per (service, revision): when (nanoseconds since the epoch) and their bytes.
type Arrivals = HashMap<(Service, u64), Vec<(u128, u64)>>;

/// What every stream saw.
struct Recorder {
    started: Instant,
    /// Delta arrivals.
    arrivals: Mutex<Arrivals>,
    /// Streams with their first state, per service.
    synced: [AtomicUsize; 2],
    /// Bytes of the first states, per service.
    first_bytes: [AtomicU64; 2],
    /// Entries of the first states, per service.
    first_entries: [AtomicU64; 2],
    /// Milliseconds since start when the last stream of each service got its first state.
    synced_at: [AtomicU64; 2],
}

impl Recorder {
    fn count(&self, service: Service, revision: u64) -> usize {
        self.arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(service, revision))
            .map_or(0, Vec::len)
    }
}

fn hello(node: usize) -> common::SyncClientMessage {
    common::SyncClientMessage {
        message: Some(common::sync_client_message::Message::Hello(common::SyncHello {
            node: Cluster::node_name(node),
            resume_revision: 0,
        })),
    }
}

/// What a node sends: its hello, then what `sent` carries (acks and keepalives, as agents do).
fn requests(
    node: usize,
    sent: tokio::sync::mpsc::Receiver<common::SyncClientMessage>,
) -> impl futures_util::Stream<Item = common::SyncClientMessage> + Send + 'static {
    futures_util::stream::iter([hello(node)]).chain(tokio_stream::wrappers::ReceiverStream::new(sent))
}

fn ack(revision: u64) -> common::SyncClientMessage {
    common::SyncClientMessage {
        message: Some(common::sync_client_message::Message::Ack(common::SyncAck {
            revision,
            programmed: 0,
        })),
    }
}

fn keepalive() -> common::SyncClientMessage {
    common::SyncClientMessage {
        message: Some(common::sync_client_message::Message::Keepalive(
            common::Keepalive {
                sent_unix_ms: (now_nanos() / 1_000_000) as i64,
            },
        )),
    }
}

fn open(
    service: Service,
    channel: Channel,
    node: usize,
    sent: tokio::sync::mpsc::Receiver<common::SyncClientMessage>,
) -> futures_util::future::BoxFuture<'static, Result<Messages, tonic::Status>> {
    match service {
        Service::Route => async move {
            let response = RoutesClient::new(channel)
                .max_decoding_message_size(brindle_grpc::MAX_RESPONSE_BYTES)
                .sync(requests(node, sent))
                .await?;
            Ok(response.into_inner().map(route_item as fn(_) -> _).boxed())
        }
        .boxed(),
        Service::Policy => async move {
            let response = PolicyClient::new(channel)
                .max_decoding_message_size(brindle_grpc::MAX_RESPONSE_BYTES)
                .sync(requests(node, sent))
                .await?;
            Ok(response.into_inner().map(policy_item as fn(_) -> _).boxed())
        }
        .boxed(),
    }
}

/// How often a node says it is alive (servers close streams silent for 30 s, and a starting
/// service may take longer than that to send the first state).
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Follows one node's stream of one service, opening it again while the service is starting.
async fn follow(service: Service, address: SocketAddr, node: usize, total: usize, recorder: Arc<Recorder>) {
    let channel = match Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint
            .local_address(Some(Cluster::node_source(node)))
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy(),
        Err(error) => {
            eprintln!("node {node}: {error}");
            return;
        }
    };
    let (send, mut messages) = loop {
        let (send, sent) = tokio::sync::mpsc::channel(64);
        match open(service, channel.clone(), node, sent).await {
            Ok(messages) => break (send, messages),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let alive = send.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEEPALIVE).await;
            if alive.send(keepalive()).await.is_err() {
                return;
            }
        }
    });
    let mut first_bytes = 0;
    let mut synced = false;
    while let Some(message) = messages.next().await {
        let (revision, bytes, received) = match message {
            Ok(message) => message,
            Err(status) => {
                eprintln!("node {node} {service:?}: {status}");
                return;
            }
        };
        let now = now_nanos();
        let applied = match received {
            Received::Keepalive => false,
            Received::Snapshot { last, entries } => {
                if last && !synced {
                    recorder.first_entries[service.index()].fetch_add(entries, Ordering::SeqCst);
                }
                last
            }
            Received::Delta => {
                if synced {
                    recorder
                        .arrivals
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry((service, revision))
                        .or_default()
                        .push((now, bytes));
                }
                true
            }
        };
        first_bytes += bytes;
        if applied {
            let _ = send.try_send(ack(revision));
        }
        if !synced && applied {
            synced = true;
            let index = service.index();
            recorder.first_bytes[index].fetch_add(first_bytes, Ordering::SeqCst);
            if recorder.synced[index].fetch_add(1, Ordering::SeqCst) + 1 == total {
                let millis = recorder.started.elapsed().as_millis() as u64;
                recorder.synced_at[index].store(millis, Ordering::SeqCst);
            }
        }
    }
}

/// Runs the subscribers of `nodes` nodes until stdin closes.
pub async fn run(nodes: usize, route: SocketAddr, policy: SocketAddr) -> anyhow::Result<()> {
    let recorder = Arc::new(Recorder {
        started: Instant::now(),
        arrivals: Mutex::new(HashMap::new()),
        synced: Default::default(),
        first_bytes: Default::default(),
        first_entries: Default::default(),
        synced_at: Default::default(),
    });
    for node in 0..nodes {
        for (service, address) in [(Service::Route, route), (Service::Policy, policy)] {
            tokio::spawn(follow(service, address, node, nodes, Arc::clone(&recorder)));
        }
    }
    while recorder.synced.iter().any(|s| s.load(Ordering::SeqCst) < nodes) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "synced {:.3} {:.3} {} {} {} {}",
        recorder.synced_at[0].load(Ordering::SeqCst) as f64 / 1000.0,
        recorder.synced_at[1].load(Ordering::SeqCst) as f64 / 1000.0,
        recorder.first_bytes[0].load(Ordering::SeqCst),
        recorder.first_bytes[1].load(Ordering::SeqCst),
        recorder.first_entries[0].load(Ordering::SeqCst),
        recorder.first_entries[1].load(Ordering::SeqCst),
    );
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["wait", service, revision, until] => {
                let (service, revision) = (Service::parse(service)?, revision.parse()?);
                let count = wait(&recorder, service, revision, *until == "all", nodes).await;
                println!("waited {count}");
            }
            ["stats", service, revision, t0] => {
                let (service, revision, t0): (Service, u64, u128) =
                    (Service::parse(service)?, revision.parse()?, t0.parse()?);
                println!("{}", stats(&recorder, service, revision, t0));
            }
            _ => bail!("unknown command {line:?}"),
        }
    }
    Ok(())
}

/// Waits until every node (`all`) or every node that gets it has `revision`; how many did.
async fn wait(recorder: &Recorder, service: Service, revision: u64, all: bool, nodes: usize) -> usize {
    const QUIET: Duration = Duration::from_millis(300);
    const GIVE_UP: Duration = Duration::from_secs(30);
    let started = Instant::now();
    let (mut last_count, mut last_change) = (0, Instant::now());
    loop {
        let count = recorder.count(service, revision);
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
        let settled = if all {
            count >= nodes
        } else {
            count > 0 && last_change.elapsed() >= QUIET
        };
        if settled || started.elapsed() >= GIVE_UP {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `stats <nodes> <bytes> <p50 ms> <max ms>` of `revision` written at `t0`.
fn stats(recorder: &Recorder, service: Service, revision: u64, t0: u128) -> String {
    let arrivals = recorder
        .arrivals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(service, revision))
        .cloned()
        .unwrap_or_default();
    let bytes: u64 = arrivals.iter().map(|(_, b)| b).sum();
    let mut millis: Vec<f64> = arrivals
        .iter()
        .map(|(at, _)| at.saturating_sub(t0) as f64 / 1e6)
        .collect();
    millis.sort_by(f64::total_cmp);
    let p50 = millis.get(millis.len() / 2).copied().unwrap_or(0.0);
    let max = millis.last().copied().unwrap_or(0.0);
    format!("stats {} {bytes} {p50:.3} {max:.3}", arrivals.len())
}
