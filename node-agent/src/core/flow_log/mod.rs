//! Flow logs: packets the policy chains sent to NFLOG, read back as (flow, decision) pairs and
//! counted in a table of bounded size until the agent reports them; decisions are named from the
//! node's policy view as `brindle policy trace` names them.

pub mod collector;
mod names;
mod packet;

use std::collections::HashMap;

use policy_api::flow::{FlowCounts, FlowKey, Verdict};
use policy_api::model::Direction;

pub use collector::{FlowCollector, FlowSink};
pub use names::PolicyNames;
pub use packet::flow_of;

/// Flows a table holds by default between two reports.
pub const DEFAULT_FLOW_TABLE_SIZE: usize = 10_000;

/// Who decided, as the NFLOG prefix says (see the policy renderer's `flow_log`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decider {
    /// A rule of a policy (by view id).
    Rule {
        /// The policy's view id.
        policy: String,
        /// The rule's index.
        rule: usize,
    },
    /// The end of an endpoint's policies (by host interface): nothing allowed.
    EndOfPolicies(String),
    /// An endpoint no policy selects (by host interface): the default allowed.
    NoPolicy(String),
}

/// A decision as logged: verdict, whose policies, and who decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoggedDecision {
    /// What happened to the packet.
    pub verdict: Verdict,
    /// The receiver's policies (ingress) or the sender's (egress).
    pub direction: Direction,
    /// Who decided.
    pub decider: Decider,
}

impl LoggedDecision {
    /// Reads a prefix the policy chains write: `DR <policy> <i|e><rule>`, `DX <interface> <i|e>`,
    /// `AR <policy> <i|e><rule>`, `AX <interface> <i|e>`; `None` for anything else.
    pub fn parse(prefix: &str) -> Option<Self> {
        let mut words = prefix.split(' ');
        let (kind, subject, at) = (words.next()?, words.next()?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        let mut at = at.chars();
        let direction = match at.next()? {
            'i' => Direction::Ingress,
            'e' => Direction::Egress,
            _ => return None,
        };
        let rest = at.as_str();
        let subject = subject.to_owned();
        let (verdict, decider) = match kind {
            "DR" | "AR" => (
                if kind == "DR" {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                },
                Decider::Rule {
                    policy: subject,
                    rule: rest.parse().ok()?,
                },
            ),
            "DX" if rest.is_empty() => (Verdict::Deny, Decider::EndOfPolicies(subject)),
            "AX" if rest.is_empty() => (Verdict::Allow, Decider::NoPolicy(subject)),
            _ => return None,
        };
        Some(Self {
            verdict,
            direction,
            decider,
        })
    }
}

/// Counts per flow and decision, at most `capacity` flows; packets of further flows are only
/// counted as unrecorded until the table is drained.
#[derive(Debug)]
pub struct FlowTable {
    capacity: usize,
    flows: HashMap<(FlowKey, LoggedDecision), FlowCounts>,
    unrecorded: u64,
}

impl FlowTable {
    /// An empty table of at most `capacity` flows (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            flows: HashMap::new(),
            unrecorded: 0,
        }
    }

    /// Counts a packet.
    pub fn count(&mut self, key: FlowKey, decision: LoggedDecision, counts: FlowCounts) {
        let full = self.flows.len() >= self.capacity;
        match self.flows.entry((key, decision)) {
            std::collections::hash_map::Entry::Occupied(mut held) => held.get_mut().add(&counts),
            std::collections::hash_map::Entry::Vacant(_) if full => self.unrecorded += counts.packets,
            std::collections::hash_map::Entry::Vacant(new) => {
                new.insert(counts);
            }
        }
    }

    /// Flows held.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether nothing was counted since the last drain.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty() && self.unrecorded == 0
    }

    /// Everything counted since the last drain, and the packets not recorded; empties the table.
    pub fn drain(&mut self) -> (Vec<(FlowKey, LoggedDecision, FlowCounts)>, u64) {
        let flows = self
            .flows
            .drain()
            .map(|((key, decision), counts)| (key, decision, counts))
            .collect();
        (flows, std::mem::take(&mut self.unrecorded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            source_ip: "10.0.0.3".parse().expect("test input"),
            destination_ip: "10.0.0.2".parse().expect("test input"),
            protocol: 17,
            source_port: Some(4000),
            destination_port: Some(port),
            icmp: None,
        }
    }

    #[test]
    fn prefixes_name_verdict_direction_and_decider() {
        assert_eq!(
            LoggedDecision::parse("DR 0123456789abcdef i12"),
            Some(LoggedDecision {
                verdict: Verdict::Deny,
                direction: Direction::Ingress,
                decider: Decider::Rule {
                    policy: "0123456789abcdef".into(),
                    rule: 12
                },
            })
        );
        assert_eq!(
            LoggedDecision::parse("DX brd1234 e").map(|d| d.decider),
            Some(Decider::EndOfPolicies("brd1234".into()))
        );
        assert_eq!(
            LoggedDecision::parse("AX brd1234 i").map(|d| (d.verdict, d.decider)),
            Some((Verdict::Allow, Decider::NoPolicy("brd1234".into())))
        );
        for wrong in [
            "",
            "DR x",
            "DR x q1",
            "DX brd1 i3",
            "DR x ix",
            "ZZ a i",
            "DR a i1 more",
        ] {
            assert_eq!(LoggedDecision::parse(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn packets_of_a_flow_add_up_and_the_table_is_bounded() {
        let denied = LoggedDecision::parse("DX brd1 i").expect("test input");
        let mut table = FlowTable::new(3);
        for _ in 0..1000 {
            table.count(key(80), denied.clone(), FlowCounts::packet(60, 1));
        }
        for port in 1..=10 {
            table.count(key(port), denied.clone(), FlowCounts::packet(60, 2));
        }
        assert_eq!(table.len(), 3);
        let (flows, unrecorded) = table.drain();
        let web = flows
            .iter()
            .find(|(k, ..)| k.destination_port == Some(80))
            .expect("test input");
        assert_eq!((web.2.packets, web.2.bytes), (1000, 60_000));
        assert_eq!(unrecorded, 8);
        assert!(table.is_empty());
    }
}
