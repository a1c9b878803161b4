//! A node's policy view — what its agent renders into iptables and ipsets: for each local
//! endpoint the policies that apply (ordered), each such policy compiled to rules that refer to
//! ipsets instead of selectors, and those ipsets with their members.

use crate::model::{Action, IcmpMatch, Protocol};

/// Key prefixes of a view's entries.
pub mod keys {
    /// `endpoint/<interface>`.
    pub const ENDPOINT: &str = "endpoint/";
    /// `policy/<policy view id>`.
    pub const POLICY: &str = "policy/";
    /// `ipset/<set id>`.
    pub const IPSET: &str = "ipset/";
    /// `member/<set id>/<member>`.
    pub const MEMBER: &str = "member/";
    /// `hostendpoint/<name>`.
    pub const HOST_ENDPOINT: &str = "hostendpoint/";
}

/// One entry of a node's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewEntry {
    /// The policies of a local endpoint.
    Endpoint(EndpointView),
    /// A compiled policy.
    Policy(PolicyView),
    /// An ipset (its members are separate entries).
    IpSet(IpSetView),
    /// One member of an ipset.
    Member(MemberView),
    /// The policies of one of the node's host endpoints.
    HostEndpoint(HostEndpointView),
}

/// Which policies govern traffic to and from the node itself through one interface (or all of
/// them), in evaluation order (policy view ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndpointView {
    /// The HostEndpoint's name.
    pub name: String,
    /// The interface; `None`: every interface of the node.
    pub interface: Option<String>,
    /// Policies governing traffic to the node.
    pub ingress: Vec<String>,
    /// Policies governing traffic from the node.
    pub egress: Vec<String>,
}

/// Which policies apply to a local endpoint, in evaluation order (policy view ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    /// Host-side interface.
    pub interface: String,
    /// `namespace/pod`.
    pub name: String,
    /// Policies governing traffic to it.
    pub ingress: Vec<String>,
    /// Policies governing traffic from it.
    pub egress: Vec<String>,
}

/// A policy's rules with selectors replaced by ipset ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    /// Short stable id (for chain names): 16 hex digits of the policy id's SHA-1.
    pub id: String,
    /// The policy (`namespace/name`, `namespace/knp.name`, `global/name`).
    pub name: String,
    /// Ingress rules.
    pub ingress: Vec<CompiledRule>,
    /// Egress rules.
    pub egress: Vec<CompiledRule>,
}

/// A rule in terms the kernel can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// What a match does.
    pub action: Action,
    /// Protocol the packet must have.
    pub protocol: Option<Protocol>,
    /// Protocol the packet must not have.
    pub not_protocol: Option<Protocol>,
    /// ICMP type (and code) the packet must have.
    pub icmp: Option<IcmpMatch>,
    /// ICMP type (and code) the packet must not have.
    pub not_icmp: Option<IcmpMatch>,
    /// Conditions on the sender.
    pub source: CompiledSide,
    /// Conditions on the receiver.
    pub destination: CompiledSide,
    /// Which policy rule this is: `<policy>/<direction>/<index>`.
    pub origin: String,
}

/// Conditions on one side of a packet. Everything set must hold; within `ports` and
/// `named_port_sets` any one match suffices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledSide {
    /// Address sets (hash:net) the address must be in, all of them.
    pub sets: Vec<String>,
    /// Address sets the address must not be in.
    pub not_sets: Vec<String>,
    /// Networks the address must be in, one of them.
    pub nets: Vec<String>,
    /// Networks the address must not be in.
    pub not_nets: Vec<String>,
    /// Port ranges (inclusive).
    pub ports: Vec<(u16, u16)>,
    /// Named-port sets (hash:ip,port) the address and port must be in, one of them.
    pub named_port_sets: Vec<String>,
    /// Port ranges the port must not be in.
    pub not_ports: Vec<(u16, u16)>,
    /// Named-port sets the address and port must not be in.
    pub not_named_port_sets: Vec<String>,
}

impl CompiledSide {
    /// Whether the side restricts the port.
    pub fn matches_ports(&self) -> bool {
        !self.ports.is_empty() || !self.named_port_sets.is_empty()
    }
}

/// What an ipset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSetKind {
    /// hash:net — addresses.
    Net,
    /// hash:ip,port — `address,protocol:port`.
    IpPort,
}

/// An ipset's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSetView {
    /// Set id (the kernel set is `brd-<id>`).
    pub id: String,
    /// Type.
    pub kind: IpSetKind,
    /// What it stands for, for humans.
    pub source: String,
}

/// One member of an ipset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Set id.
    pub set: String,
    /// `address` or `address,protocol:port`.
    pub member: String,
}
