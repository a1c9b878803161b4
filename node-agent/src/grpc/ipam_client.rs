//! [`IpamApi`] over ipam-svc's gRPC API (`brindle.ipam.v1`).

use std::net::IpAddr;
use std::time::Duration;

use brindle_grpc::Dialer;
use brindle_proto::ipam::v1 as pb;
use pb::ipam_client::IpamClient;
use tonic::transport::Channel;

use crate::core::calls::{CallError, Service};
use crate::core::ipam::{Families, IpamApi, Lease, Owner, PoolChoice};

/// ipam-svc (or `brindle server`) at an address.
#[derive(Clone)]
pub struct GrpcIpam {
    client: IpamClient<Channel>,
}

impl GrpcIpam {
    /// A client for `endpoint` (with its TLS, if any); connects on first use and reconnects.
    pub fn new(endpoint: Dialer) -> Self {
        Self {
            client: IpamClient::new(endpoint.timeout(Duration::from_secs(20)).connect_lazy()),
        }
    }
}

fn call_error(status: tonic::Status) -> CallError {
    super::call_error::call_error(Service::Ipam, status)
}

/// An answer of ipam-svc the agent cannot use.
fn malformed(what: &str) -> CallError {
    CallError::unavailable(Service::Ipam, format!("ipam-svc returned {what}"))
}

fn lease(allocation: &pb::Allocation) -> Result<Lease, CallError> {
    let bad = |what: &str| malformed(&format!("a malformed {what}"));
    Ok(Lease {
        ip: allocation.ip.parse().map_err(|_| bad("address"))?,
        block: allocation.block.parse().map_err(|_| bad("block"))?,
        borrowed: allocation.borrowed,
    })
}

#[async_trait::async_trait]
impl IpamApi for GrpcIpam {
    async fn assign(
        &self,
        handle_id: &str,
        node: &str,
        owner: &Owner,
        requested: &[IpAddr],
        families: Families,
        pools: &PoolChoice,
    ) -> Result<Vec<Lease>, CallError> {
        let attributes = pb::HandleAttributes {
            namespace: owner.namespace.clone(),
            pod: owner.pod.clone(),
            node: node.to_owned(),
            container_id: owner.container_id.clone(),
            interface: owner.interface.clone(),
            extra: Default::default(),
        };
        let mut client = self.client.clone();
        if requested.is_empty() {
            let request = pb::AutoAssignRequest {
                handle_id: handle_id.to_owned(),
                node: node.to_owned(),
                num_ipv4: u32::from(families.ipv4),
                num_ipv6: u32::from(families.ipv6),
                ipv4_pools: pools.ipv4.clone(),
                ipv6_pools: pools.ipv6.clone(),
                attributes: Some(attributes),
                ..Default::default()
            };
            let response = client
                .auto_assign(request)
                .await
                .map_err(call_error)?
                .into_inner();
            return response.allocations.iter().map(lease).collect();
        }
        let mut leases = Vec::with_capacity(requested.len());
        for ip in requested {
            let request = pb::AssignIpRequest {
                handle_id: handle_id.to_owned(),
                ip: ip.to_string(),
                node: node.to_owned(),
                attributes: Some(attributes.clone()),
                ..Default::default()
            };
            let response = client.assign_ip(request).await.map_err(call_error)?.into_inner();
            let allocation = response.allocation.ok_or_else(|| malformed("no allocation"))?;
            leases.push(lease(&allocation)?);
        }
        Ok(leases)
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
        let request = pb::AutoAssignRequest {
            handle_id: handle_id.to_owned(),
            node: node.to_owned(),
            num_ipv4: u32::from(!ipv6),
            num_ipv6: u32::from(ipv6),
            ipv4_pools,
            ipv6_pools,
            r#use: pb::AllowedUse::Tunnel.into(),
            attributes: Some(pb::HandleAttributes {
                node: node.to_owned(),
                ..Default::default()
            }),
        };
        let response = self
            .client
            .clone()
            .auto_assign(request)
            .await
            .map_err(call_error)?
            .into_inner();
        let allocation = response
            .allocations
            .first()
            .ok_or_else(|| malformed("no tunnel address"))?;
        lease(allocation)
    }

    async fn release(&self, handle_id: &str) -> Result<(), CallError> {
        let request = pb::ReleaseByHandleRequest {
            handle_id: handle_id.to_owned(),
        };
        self.client
            .clone()
            .release_by_handle(request)
            .await
            .map_err(call_error)?;
        Ok(())
    }

    async fn holds(&self, handle_id: &str) -> Result<bool, CallError> {
        let request = pb::GetHandleRequest {
            handle_id: handle_id.to_owned(),
        };
        match self.client.clone().get_handle(request).await {
            Ok(handle) => Ok(!handle.into_inner().allocations.is_empty()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(call_error(status)),
        }
    }

    async fn has_free_addresses(&self) -> Result<bool, CallError> {
        let mut client = self.client.clone();
        let pools = client
            .list_pools(pb::ListPoolsRequest {})
            .await
            .map_err(call_error)?
            .into_inner()
            .pools;
        let show = client
            .show(pb::ShowRequest::default())
            .await
            .map_err(call_error)?
            .into_inner();
        Ok(show
            .pools
            .iter()
            .any(|usage| usage.free > 0 && pools.iter().any(|p| p.name == usage.pool && !p.disabled)))
    }

    async fn collect_garbage(
        &self,
        node: &str,
        valid: &[String],
        network: Option<&str>,
    ) -> Result<u64, CallError> {
        let request = pb::GarbageCollectRequest {
            node: node.to_owned(),
            valid_handle_ids: valid.to_vec(),
            network: network.unwrap_or_default().to_owned(),
            all_networks: network.is_none(),
            min_age_seconds: 0,
        };
        let response = self
            .client
            .clone()
            .garbage_collect(request)
            .await
            .map_err(call_error)?
            .into_inner();
        Ok(response.released_ips)
    }
}
