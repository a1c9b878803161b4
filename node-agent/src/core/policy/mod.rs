//! The policy data plane: a node's policy view rendered into brindle's own iptables chains
//! (filter table, hooked from FORWARD, INPUT and OUTPUT) and ipsets, and applied so that only what changed is
//! written — ipsets first (new sets swapped in whole, changed ones by member), then one
//! `iptables-restore --noflush` for the chains whose rules changed, then stale sets destroyed.
//!
//! Every rule carries a `brd:<hash>` comment of its own text, so what the kernel holds is compared
//! by hash (whatever iptables-save prints) and a resync repairs out-of-band changes.
//!
//! The view becomes rules and sets in `render`, what the kernel holds is read back from its own
//! text in `kernel_text`, `apply` writes the differences, and `programmer` is what the agent's
//! policy-svc follower drives.

mod apply;
mod host;
mod kernel_text;
pub mod programmer;
mod render;
#[cfg(test)]
mod tests;

pub use apply::PolicyApplier;
pub use host::{
    DEFAULT_FAILSAFE_INBOUND, DEFAULT_FAILSAFE_OUTBOUND, EndpointToHost, FailsafePort, FailsafePorts,
    HostRules,
};
pub use render::{Rendered, Renderer, SetSpec, render};

/// The chain hooked from FORWARD.
pub const FORWARD_CHAIN: &str = "brd-FORWARD";
/// The chain hooked from INPUT: traffic to the node (from its pods, and through host endpoints).
pub const INPUT_CHAIN: &str = "brd-INPUT";
/// The chain hooked from OUTPUT: traffic from the node through host endpoints.
pub const OUTPUT_CHAIN: &str = "brd-OUTPUT";
/// Built-in chains and the chain of brindle's each jumps to (when rendered).
const HOOKS: [(&str, &str); 3] = [
    ("FORWARD", FORWARD_CHAIN),
    ("INPUT", INPUT_CHAIN),
    ("OUTPUT", OUTPUT_CHAIN),
];
const FROM_WORKLOADS: &str = "brd-from-wl";
const TO_WORKLOADS: &str = "brd-to-wl";
/// Prefix of every chain and ipset brindle owns.
pub const OWNED_PREFIX: &str = "brd-";
/// Host-side interfaces of workloads.
const WORKLOAD_INTERFACES: &str = "brd+";
/// Mark bit: a policy allowed the packet.
const ACCEPT_MARK: u32 = 0x10000;
/// Mark bit: a policy passed the packet on (the endpoint's default, allow, decides).
const PASS_MARK: u32 = 0x20000;
/// Most ports (a range counts two) one multiport match takes.
const MULTIPORT_SLOTS: usize = 15;
/// The NFLOG group policy decisions are logged to (the agent holds it; with the agent stopped,
/// `tcpdump -i nflog:1` reads it).
pub const FLOW_LOG_NFLOG_GROUP: u16 = 1;
/// Packets a rule sends to NFLOG per second by default (a token bucket: bursts of as many).
pub const DEFAULT_FLOW_LOG_RATE: u32 = 1000;

/// What the policy chains send to NFLOG ([`FLOW_LOG_NFLOG_GROUP`]), each packet with a prefix
/// naming the decision: denied packets always, the first packet of allowed connections when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLogRules {
    /// Also the first packet of every allowed connection.
    pub allowed: bool,
    /// Packets per second each logging rule sends at most.
    pub per_second: u32,
}

/// What a renderer makes of a view besides its policies: flow logging, and how traffic to and
/// from the node itself is treated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// What goes to NFLOG.
    pub flow_log: FlowLogRules,
    /// Traffic to and from the node itself.
    pub host: HostRules,
}

impl Default for FlowLogRules {
    fn default() -> Self {
        Self {
            allowed: false,
            per_second: DEFAULT_FLOW_LOG_RATE,
        }
    }
}

/// The address family a renderer and an applier work on: IPv4 (iptables, `inet` sets named
/// `brd-…`) or IPv6 (ip6tables, `inet6` sets named `brd6-…`; the two share the ipset namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Prefix of the family's ipsets.
    fn set_prefix(self) -> &'static str {
        match self {
            Self::V4 => OWNED_PREFIX,
            Self::V6 => "brd6-",
        }
    }

    /// Kernel name of a view's ipset.
    pub fn set_name(self, id: &str) -> String {
        format!("{}{id}", self.set_prefix())
    }

    fn ipset_family(self) -> &'static str {
        match self {
            Self::V4 => "inet",
            Self::V6 => "inet6",
        }
    }

    /// Whether an address, network or set member (`address,proto:port`) is of this family.
    fn holds(self, text: &str) -> bool {
        let is_v6 = text.split(',').next().unwrap_or_default().contains(':');
        is_v6 == (self == Self::V6)
    }

    /// The whole address space as `hash:net` can hold it (no /0: two halves).
    fn everything(self) -> (&'static str, [&'static str; 2]) {
        match self {
            Self::V4 => ("0.0.0.0/0", ["0.0.0.0/1", "128.0.0.0/1"]),
            Self::V6 => ("::/0", ["::/1", "8000::/1"]),
        }
    }

    /// The suffix of a host network, which ipset prints without.
    fn host_suffix(self) -> &'static str {
        match self {
            Self::V4 => "/32",
            Self::V6 => "/128",
        }
    }
}
