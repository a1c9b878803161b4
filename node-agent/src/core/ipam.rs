//! The agent's view of ipam-svc: the few calls CNI operations need, behind a trait so the
//! operations can be tested against the real IPAM logic in-process.

use std::net::IpAddr;

use ipnet::IpNet;

use super::calls::CallError;

/// Who the addresses are for.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    /// Pod namespace (K8S_POD_NAMESPACE).
    pub namespace: String,
    /// Pod name (K8S_POD_NAME).
    pub pod: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub interface: String,
}

/// An address the pod got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address.
    pub ip: IpAddr,
    /// Its block.
    pub block: IpNet,
    /// Taken from another node's block (no local blackhole for it).
    pub borrowed: bool,
}

/// Which address families an attachment gets (the network configuration's `ipam.assign_ipv4` /
/// `ipam.assign_ipv6`, Calico's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// One IPv4 address (default).
    pub ipv4: bool,
    /// One IPv6 address.
    pub ipv6: bool,
}

impl Default for Families {
    fn default() -> Self {
        Self {
            ipv4: true,
            ipv6: false,
        }
    }
}

/// The pools a pod's addresses must come from (names or CIDRs, as Calico takes them); empty:
/// any pool usable by the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolChoice {
    /// IPv4 pools.
    pub ipv4: Vec<String>,
    /// IPv6 pools.
    pub ipv6: Vec<String>,
}

/// The IPAM calls of CNI operations.
#[async_trait::async_trait]
pub trait IpamApi: Send + Sync {
    /// Allocates (idempotently per handle) one address of each of `families` from `pools`, or
    /// exactly `requested` addresses.
    async fn assign(
        &self,
        handle_id: &str,
        node: &str,
        owner: &Owner,
        requested: &[IpAddr],
        families: Families,
        pools: &PoolChoice,
    ) -> Result<Vec<Lease>, CallError>;
    /// Allocates (idempotently per handle) one tunnel-endpoint address for `node` from one of
    /// `pools` (IPv6 when `ipv6`, else IPv4).
    async fn assign_tunnel_address(
        &self,
        handle_id: &str,
        node: &str,
        pools: &[String],
        ipv6: bool,
    ) -> Result<Lease, CallError>;
    /// Releases a handle's addresses (unknown handle: nothing to do).
    async fn release(&self, handle_id: &str) -> Result<(), CallError>;
    /// Whether the handle still holds addresses.
    async fn holds(&self, handle_id: &str) -> Result<bool, CallError>;
    /// Whether some enabled pool has a free address.
    async fn has_free_addresses(&self) -> Result<bool, CallError>;
    /// Releases the node's pod handles of CNI network `network` (of every network when `None`)
    /// that are not in `valid`; returns the addresses released.
    async fn collect_garbage(
        &self,
        node: &str,
        valid: &[String],
        network: Option<&str>,
    ) -> Result<u64, CallError>;
}
