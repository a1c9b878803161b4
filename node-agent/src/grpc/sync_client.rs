//! The agent's side of a `Sync` stream, shared by the route-svc and policy-svc followers: hello
//! with the revision it applied (so a reconnect resumes), keepalives both ways, a silent server
//! dropped, snapshots put together from their pieces, and the state programmed — coalesced (every
//! message already received is applied first) and at most once per `min_interval` — with an ack
//! of the revision once programmed. Every keepalive tick after the first full state programs
//! again, which retries failures and repairs the kernel; disconnected, it keeps the kernel at the
//! last state it was given (repairing it to that state, changing nothing else).

use std::time::Duration;

use brindle_backoff::Backoff;

use crate::core::follow::SyncTarget;
use brindle_fanout::Mirror;
use brindle_metrics::{
    Counters, Gauges, Histograms, LATENCY_BUCKETS, Metrics, labels, unregistered_histograms,
};
use brindle_proto::common::v1 as common;
use brindle_sync::{SnapshotAssembler, Wire};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The agent's keepalive on a Sync stream.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(10);
/// Silence from the server after which the agent reconnects.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// Why one Sync call ended.
#[derive(Debug, thiserror::Error)]
enum SyncEnded {
    /// The call failed or ended.
    #[error("{0}")]
    Status(#[from] tonic::Status),
    /// The server said nothing for too long.
    #[error("silent for {0:?}")]
    Silent(Duration),
    /// The server sent something the agent cannot use.
    #[error("unusable message: {0}")]
    Unusable(String),
}

/// A stream of client messages for a Sync call.
pub type Outgoing = tokio_stream::wrappers::ReceiverStream<common::SyncClientMessage>;

/// A service with a Sync stream, as a follower uses it.
#[async_trait::async_trait]
pub trait SyncService: Send + Sync {
    /// How its state travels.
    type Wire: Wire<Response: Send + 'static>;
    /// The service, for logs (`route-svc`, `policy-svc`).
    const NAME: &'static str;
    /// Shortest time between two programmings.
    const MIN_INTERVAL: Duration;
    /// Opens a Sync call with the given outgoing messages.
    async fn open(
        &self,
        outgoing: Outgoing,
    ) -> Result<tonic::Streaming<<Self::Wire as Wire>::Response>, tonic::Status>;
}

/// The value of a service's keyed state.
type ValueOf<S> = <<S as SyncService>::Wire as Wire>::Value;

fn client_message(message: common::sync_client_message::Message) -> common::SyncClientMessage {
    common::SyncClientMessage {
        message: Some(message),
    }
}

/// What the followers report, by service (`route-svc`, `policy-svc`). Cloning shares the series.
#[derive(Clone)]
pub struct SyncMetrics {
    connected: Gauges,
    acked_revision: Gauges,
    programmed: Gauges,
    program_durations: Histograms,
    program_failures: Counters,
    reconnects: Counters,
    skipped: Counters,
}

impl Default for SyncMetrics {
    /// Series registered nowhere.
    fn default() -> Self {
        Self {
            connected: Gauges::default(),
            acked_revision: Gauges::default(),
            programmed: Gauges::default(),
            program_durations: unregistered_histograms(LATENCY_BUCKETS),
            program_failures: Counters::default(),
            reconnects: Counters::default(),
            skipped: Counters::default(),
        }
    }
}

impl SyncMetrics {
    /// Registers the series with `metrics` (once per process).
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            connected: metrics.gauges("agent_sync_connected", "1 while the agent's Sync stream is open"),
            acked_revision: metrics.gauges(
                "agent_sync_acked_revision",
                "Last revision the agent programmed and acknowledged",
            ),
            programmed: metrics.gauges(
                "agent_programmed_objects",
                "Kernel objects (routes; iptables rules and ipset members) the last programming holds",
            ),
            program_durations: metrics.histograms(
                "agent_program_duration_seconds",
                "Time to program a state into the kernel (routes; policy applies)",
                LATENCY_BUCKETS,
            ),
            program_failures: metrics.counters(
                "agent_program_failures",
                "Programmings that failed (retried on the next change or tick)",
            ),
            reconnects: metrics.counters(
                "agent_sync_reconnects",
                "Sync streams that ended and were reopened",
            ),
            skipped: metrics.counters(
                "agent_sync_entries_skipped",
                "State entries of a kind newer than the agent, left out",
            ),
        }
    }

    fn program_done(&self, service: &'static str, started: Instant, result: Option<(u64, u64)>) {
        let service_label = labels([("service", service)]);
        self.program_durations
            .get_or_create(&service_label)
            .observe(started.elapsed().as_secs_f64());
        match result {
            Some((revision, programmed)) => {
                let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
                self.acked_revision
                    .get_or_create(&service_label)
                    .set(gauge(revision));
                self.programmed
                    .get_or_create(&service_label)
                    .set(gauge(programmed));
            }
            None => {
                self.program_failures.get_or_create(&service_label).inc();
            }
        }
    }
}

/// Follows `service` for node `me` into `target` until the task is dropped.
pub async fn follow<S: SyncService, T: SyncTarget<ValueOf<S>>>(
    service: S,
    me: String,
    mut target: T,
    metrics: SyncMetrics,
) {
    let mut mirror = Mirror::default();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let connected = metrics
        .connected
        .get_or_create_owned(&labels([("service", S::NAME)]));
    let mut last_tick = Instant::now();
    loop {
        connected.set(1);
        let error = sync_once(&service, &me, &mut target, &mut mirror, &mut backoff, &metrics).await;
        connected.set(0);
        metrics
            .reconnects
            .get_or_create(&labels([("service", S::NAME)]))
            .inc();
        tracing::warn!(service = S::NAME, %error, revision = mirror.revision(), "sync stream ended; the kernel stays as it is; reconnecting");
        // Disconnected, the kernel keeps the last state it was given — and is still held to it:
        // a keepalive tick's worth of time on, what changed behind the agent's back is repaired.
        if mirror.revision() > 0 && last_tick.elapsed() >= KEEPALIVE_EVERY {
            program(S::NAME, &mut target, &mirror, true, &metrics).await;
            last_tick = Instant::now();
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Programs `mirror` into `target`, timed and counted; what to acknowledge.
async fn program<V: Clone + PartialEq + Send + Sync, T: SyncTarget<V>>(
    service: &'static str,
    target: &mut T,
    mirror: &Mirror<V>,
    tick: bool,
    metrics: &SyncMetrics,
) -> Option<(u64, u64)> {
    let started = Instant::now();
    let result = target
        .program(mirror, tick)
        .await
        .map(|programmed| (mirror.revision(), programmed));
    metrics.program_done(service, started, result);
    result
}

async fn sync_once<S: SyncService, T: SyncTarget<ValueOf<S>>>(
    service: &S,
    me: &str,
    target: &mut T,
    mirror: &mut Mirror<ValueOf<S>>,
    backoff: &mut Backoff,
    metrics: &SyncMetrics,
) -> SyncEnded {
    let (to_server, queued) = mpsc::channel(8);
    let hello = common::sync_client_message::Message::Hello(common::SyncHello {
        node: me.to_owned(),
        resume_revision: mirror.revision(),
    });
    if to_server.send(client_message(hello)).await.is_err() {
        return SyncEnded::Unusable("request stream closed".into());
    }
    let outgoing = Outgoing::new(queued);
    let mut incoming = match service.open(outgoing).await {
        Ok(incoming) => incoming,
        Err(status) => return status.into(),
    };
    let mut keepalive = tokio::time::interval(KEEPALIVE_EVERY);
    let mut pieces = SnapshotAssembler::default();
    let mut pending = false;
    let mut next_program = Instant::now();
    let acknowledge = |revision: u64, programmed: u64| {
        let ack = common::sync_client_message::Message::Ack(common::SyncAck { revision, programmed });
        let _ = to_server.try_send(client_message(ack));
    };
    loop {
        tokio::select! {
            biased;
            message = tokio::time::timeout(SILENCE_LIMIT, incoming.next()) => {
                let message = match message {
                    Err(_) => return SyncEnded::Silent(SILENCE_LIMIT),
                    Ok(None) => return tonic::Status::unavailable("stream ended").into(),
                    Ok(Some(Err(status))) => return status.into(),
                    Ok(Some(Ok(message))) => message,
                };
                backoff.reset();
                match brindle_sync::apply_response::<S::Wire>(mirror, &mut pieces, message) {
                    Ok(applied) => {
                        pending |= applied.changed;
                        for key in applied.skipped {
                            metrics.skipped.get_or_create(&labels([("service", S::NAME)])).inc();
                            tracing::warn!(
                                service = S::NAME,
                                key,
                                "state entry of a kind this agent does not know left out: is it older than the service?"
                            );
                        }
                    }
                    Err(error) => return SyncEnded::Unusable(error.to_string()),
                }
            }
            _ = tokio::time::sleep_until(next_program), if pending => {
                pending = false;
                if let Some((revision, programmed)) = program(S::NAME, target, mirror, false, metrics).await {
                    acknowledge(revision, programmed);
                }
                next_program = Instant::now() + S::MIN_INTERVAL;
            }
            _ = keepalive.tick() => {
                let alive = common::sync_client_message::Message::Keepalive(common::Keepalive::default());
                let _ = to_server.try_send(client_message(alive));
                // Never before the first full state.
                if mirror.revision() > 0
                    && let Some((revision, programmed)) = program(S::NAME, target, mirror, true, metrics).await
                {
                    acknowledge(revision, programmed);
                }
            }
        }
    }
}
