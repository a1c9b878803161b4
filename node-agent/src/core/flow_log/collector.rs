//! The agent's flow log at work: a thread of its own reading NFLOG into the flow table, and a
//! loop reporting the table to policy-svc every [`REPORT_EVERY`], each decision named from the
//! view as last programmed (a report that fails is counted again and retried).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use brindle_metrics::{Counters, Labels, Metrics, labels};
use policy_api::flow::{FlowCounts, FlowRecord, Verdict};

use super::{FlowTable, LoggedDecision, PolicyNames, flow_of};
use crate::core::calls::CallError;
use crate::dataplane::{NflogBatch, NflogSocket};

/// How often the table is reported (a denied packet shows in `brindle flows` within about this
/// and NFLOG's own batching, 100 ms).
pub const REPORT_EVERY: Duration = Duration::from_millis(500);

/// Flows sent in one report at most (a message well under gRPC's 4 MiB).
pub const REPORT_CHUNK: usize = 5_000;

/// Where flows are reported.
#[async_trait::async_trait]
pub trait FlowSink: Send + Sync {
    /// Reports `node`'s flows counted since its last report, and the packets it could not record.
    async fn report(&self, node: &str, flows: Vec<FlowRecord>, unrecorded: u64) -> Result<(), CallError>;
}

#[derive(Clone)]
struct FlowMetrics {
    packets: Counters,
    unrecorded: Counters,
    overruns: Counters,
}

/// The flow table, the names decisions get, and the metrics of both. Cloning shares them.
#[derive(Clone)]
pub struct FlowCollector {
    table: Arc<Mutex<FlowTable>>,
    names: Arc<RwLock<PolicyNames>>,
    metrics: FlowMetrics,
}

impl FlowCollector {
    /// A collector holding at most `capacity` flows between reports, exposing
    /// `brindle_policy_packets_total{policy,verdict}`, `brindle_flow_log_flows`,
    /// `brindle_flow_log_unrecorded_packets_total` and `brindle_flow_log_overruns_total`.
    pub fn new(capacity: usize, metrics: &Metrics) -> Self {
        let collector = Self {
            table: Arc::new(Mutex::new(FlowTable::new(capacity))),
            names: Arc::new(RwLock::new(PolicyNames::default())),
            metrics: FlowMetrics {
                packets: metrics.counters(
                    "policy_packets",
                    "Packets policies decided, as flow logs counted them (rate limited per rule), by \
                     deciding policy (\"none\": no policy selects the endpoint) and verdict",
                ),
                unrecorded: metrics.counters(
                    "flow_log_unrecorded_packets",
                    "Logged packets not attributed to a flow: the flow table was full",
                ),
                overruns: metrics.counters(
                    "flow_log_overruns",
                    "Times logged packets were lost: the agent's socket buffer was full, or reading failed",
                ),
            },
        };
        let flows = metrics.gauges("flow_log_flows", "Flows counted since the last report");
        let table = Arc::clone(&collector.table);
        metrics.on_scrape(move || {
            let held = table.lock().unwrap_or_else(PoisonError::into_inner).len();
            flows
                .get_or_create(&Labels::new())
                .set(i64::try_from(held).unwrap_or(i64::MAX));
        });
        collector
    }

    /// The names decisions get: what the policy programmer updates.
    pub fn names(&self) -> Arc<RwLock<PolicyNames>> {
        Arc::clone(&self.names)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, FlowTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a batch read from NFLOG (packets with a prefix or payload not of brindle's are
    /// skipped).
    pub fn take(&self, batch: NflogBatch) {
        if batch.overrun {
            self.metrics.overruns.get_or_create(&Labels::new()).inc();
        }
        let now = brindle_sync::unix_ms(SystemTime::now());
        let mut table = self.table();
        for packet in batch.packets {
            let (Some(decision), Some((key, bytes))) =
                (LoggedDecision::parse(&packet.prefix), flow_of(&packet.payload))
            else {
                continue;
            };
            table.count(key, decision, FlowCounts::packet(bytes, now));
        }
    }

    /// Reads `socket` into the table from a thread of its own, forever (a failed read is counted
    /// in `brindle_flow_log_overruns_total` and retried a second later).
    pub fn read_from(&self, mut socket: NflogSocket) -> std::thread::JoinHandle<()> {
        let collector = self.clone();
        std::thread::spawn(move || {
            loop {
                match socket.receive() {
                    Ok(batch) => collector.take(batch),
                    Err(error) => {
                        // Counted and retried: flow logs never stop for good on one failure.
                        collector.metrics.overruns.get_or_create(&Labels::new()).inc();
                        tracing::warn!(%error, "reading flow logs; retrying in a second");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })
    }

    /// Reports the table to `sink` every [`REPORT_EVERY`], forever.
    pub async fn report_to(self, node: String, sink: Arc<dyn FlowSink>) {
        let mut ticks = tokio::time::interval(REPORT_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.report_once(&node, sink.as_ref()).await;
        }
    }

    /// Reports what was counted since the last report, in messages of at most [`REPORT_CHUNK`]
    /// flows. A report policy-svc could not take now is counted again (to be reported next time,
    /// within the table's bound); one it refuses is dropped, said in the log.
    pub async fn report_once(&self, node: &str, sink: &dyn FlowSink) {
        let (drained, mut unrecorded) = {
            let mut table = self.table();
            if table.is_empty() {
                return;
            }
            table.drain()
        };
        if unrecorded > 0 {
            self.metrics
                .unrecorded
                .get_or_create(&Labels::new())
                .inc_by(unrecorded);
        }
        let mut chunks = drained.chunks(REPORT_CHUNK).peekable();
        if chunks.peek().is_none() {
            // Only unrecorded packets: said once, with no flow.
            let _ = sink.report(node, Vec::new(), unrecorded).await;
            return;
        }
        while let Some(chunk) = chunks.next() {
            let flows: Vec<FlowRecord> = {
                let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
                chunk
                    .iter()
                    .map(|(key, logged, counts)| FlowRecord {
                        node: node.to_owned(),
                        key: *key,
                        decision: names.name(logged),
                        counts: *counts,
                        source: None,
                        destination: None,
                        staged: None,
                    })
                    .collect()
            };
            let mut packets: BTreeMap<(String, Verdict), u64> = BTreeMap::new();
            for flow in &flows {
                let policy = flow.decision.policy.clone().unwrap_or_else(|| "none".into());
                *packets.entry((policy, flow.decision.verdict)).or_default() += flow.counts.packets;
            }
            match sink.report(node, flows, std::mem::take(&mut unrecorded)).await {
                Ok(()) => {
                    for ((policy, verdict), count) in packets {
                        self.metrics
                            .packets
                            .get_or_create(&labels([("policy", &policy), ("verdict", &verdict.to_string())]))
                            .inc_by(count);
                    }
                }
                Err(error) if error.is_refused() => {
                    tracing::warn!(%error, flows = chunk.len(), "policy-svc refused a flow report; dropped");
                }
                Err(error) => {
                    tracing::warn!(%error, "reporting flows; retrying with the next report");
                    let mut table = self.table();
                    for (key, logged, counts) in chunk.iter().chain(chunks.flatten()) {
                        table.count(*key, logged.clone(), *counts);
                    }
                    return;
                }
            }
        }
    }

    /// Binds the flow-log NFLOG group in the agent's namespace and reads it from a thread of its
    /// own; a node where another process holds the group runs without flow logs (said once).
    pub fn start_reading(&self, group: u16) {
        match NflogSocket::bind(group) {
            Ok(socket) => {
                self.read_from(socket);
            }
            Err(error) => {
                tracing::error!(%error, group, "flow logs off: NFLOG group unavailable");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::core::calls::Service;
    use crate::dataplane::LoggedPacket;

    use super::*;

    #[derive(Default)]
    struct Recorded {
        reports: Mutex<Vec<(Vec<FlowRecord>, u64)>>,
        failing: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl FlowSink for Recorded {
        async fn report(&self, _: &str, flows: Vec<FlowRecord>, unrecorded: u64) -> Result<(), CallError> {
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(CallError::unavailable(Service::Policy, "down"));
            }
            self.reports.lock().expect("test input").push((flows, unrecorded));
            Ok(())
        }
    }

    fn udp(destination_port: u16) -> Vec<u8> {
        let mut packet = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 0, 0, 3], [10, 0, 0, 2], 64)
            .udp(4000, destination_port)
            .write(&mut packet, &[0; 10])
            .expect("test input");
        packet
    }

    #[tokio::test]
    async fn logged_packets_are_reported_as_named_flows_and_kept_when_a_report_fails() {
        let metrics = Metrics::new();
        let collector = FlowCollector::new(100, &metrics);
        *collector.names.write().expect("test input") = PolicyNames::of(&BTreeMap::new());
        let packets = (0..5)
            .map(|_| LoggedPacket {
                prefix: "DR aaaa i0".into(),
                payload: udp(9000),
            })
            .chain([LoggedPacket {
                prefix: "not ours".into(),
                payload: udp(9001),
            }])
            .collect();
        collector.take(NflogBatch {
            packets,
            overrun: false,
        });
        let sink = Recorded::default();
        sink.failing.store(true, std::sync::atomic::Ordering::Relaxed);
        collector.report_once("n1", &sink).await;
        sink.failing.store(false, std::sync::atomic::Ordering::Relaxed);
        collector.report_once("n1", &sink).await;
        let reports = sink.reports.lock().expect("test input");
        assert_eq!(reports.len(), 1);
        let (flows, unrecorded) = &reports[0];
        assert_eq!((flows.len(), *unrecorded), (1, 0));
        assert_eq!(flows[0].counts.packets, 5);
        assert_eq!(flows[0].decision.policy.as_deref(), Some("aaaa"));
        assert_eq!(flows[0].key.destination_port, Some(9000));
        let text = metrics.encode();
        assert!(
            text.contains("brindle_policy_packets_total{policy=\"aaaa\",verdict=\"deny\"} 5"),
            "counted once, when reported: {text}"
        );
    }
}
