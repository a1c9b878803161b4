//! [`IpamApi`] on the IPAM engine itself (embedded store), no gRPC in between.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipam_api::model::{AllowedUse, HandleAttributes};
use ipam_svc::core::{Allocated, AssignIpRequest, AssignRequest, Ipam, IpamError, ShowOptions};
use node_agent::core::calls::{CallError, Service};
use node_agent::core::ipam::{Families, IpamApi, Lease, Owner, PoolChoice};

/// [`IpamApi`] on the IPAM engine itself, no gRPC in between.
pub struct InProcessIpam(pub Arc<Ipam>);

/// What the agent learns of an allocation.
fn lease(allocation: &Allocated) -> Lease {
    Lease {
        ip: allocation.ip,
        block: allocation.block,
        borrowed: allocation.borrowed,
    }
}

fn refused(error: IpamError) -> CallError {
    CallError::refused(Service::Ipam, error)
}

#[async_trait::async_trait]
impl IpamApi for InProcessIpam {
    async fn assign(
        &self,
        handle_id: &str,
        node: &str,
        owner: &Owner,
        requested: &[IpAddr],
        families: Families,
        pools: &PoolChoice,
    ) -> Result<Vec<Lease>, CallError> {
        let attributes = HandleAttributes {
            container_id: owner.container_id.clone(),
            ..HandleAttributes::default()
        };
        if !requested.is_empty() {
            let mut leases = Vec::new();
            for ip in requested {
                let request = AssignIpRequest {
                    handle_id: handle_id.into(),
                    ip: *ip,
                    node: node.into(),
                    use_: AllowedUse::Workload,
                    attributes: attributes.clone(),
                };
                leases.push(lease(&self.0.assign_ip(request).await.map_err(refused)?));
            }
            return Ok(leases);
        }
        let request = AssignRequest {
            handle_id: handle_id.into(),
            node: node.into(),
            num_ipv4: u32::from(families.ipv4),
            num_ipv6: u32::from(families.ipv6),
            ipv4_pools: pools.ipv4.clone(),
            ipv6_pools: pools.ipv6.clone(),
            use_: AllowedUse::Workload,
            attributes,
        };
        let result = self.0.auto_assign(request).await.map_err(refused)?;
        Ok(result.allocations.iter().map(lease).collect())
    }
    async fn assign_tunnel_address(
        &self,
        handle_id: &str,
        node: &str,
        pools: &[String],
        ipv6: bool,
    ) -> Result<Lease, CallError> {
        let (ipv4_pools, ipv6_pools) = if ipv6 {
            (Vec::new(), pools.to_vec())
        } else {
            (pools.to_vec(), Vec::new())
        };
        let request = AssignRequest {
            handle_id: handle_id.into(),
            node: node.into(),
            num_ipv4: u32::from(!ipv6),
            num_ipv6: u32::from(ipv6),
            ipv4_pools,
            ipv6_pools,
            use_: AllowedUse::Tunnel,
            attributes: HandleAttributes::default(),
        };
        let result = self.0.auto_assign(request).await.map_err(refused)?;
        Ok(lease(result.allocations.first().expect("one address")))
    }
    async fn release(&self, handle_id: &str) -> Result<(), CallError> {
        self.0.release_handle(handle_id).await.map(drop).map_err(refused)
    }
    async fn holds(&self, handle_id: &str) -> Result<bool, CallError> {
        Ok(self.0.handle(handle_id).await.is_ok())
    }
    async fn has_free_addresses(&self) -> Result<bool, CallError> {
        let show = self.0.show(&ShowOptions::default()).await.map_err(refused)?;
        Ok(show.pools.iter().any(|p| p.free > 0))
    }
    async fn collect_garbage(
        &self,
        node: &str,
        valid: &[String],
        network: Option<&str>,
    ) -> Result<u64, CallError> {
        let valid: HashSet<String> = valid.iter().cloned().collect();
        let result = self
            .0
            .garbage_collect(node, &valid, network, Duration::ZERO)
            .await
            .map_err(refused)?;
        Ok(result.released_ips)
    }
}
