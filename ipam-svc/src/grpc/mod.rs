//! `brindle.ipam.v1.Ipam` over gRPC: converts messages to and from `core` types and maps errors to
//! status codes. No logic lives here.

mod convert;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use brindle_grpc_server::auth::Caller;
use brindle_metrics::{Counters, Metrics, labels};
use brindle_proto::ipam::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::validate;
use crate::core::{AssignIpRequest, AssignRequest, Ipam, IpamError, ShowOptions};
use convert::{
    allocation_to, attributes_from, attributes_to, config_to, ip_from, pool_from, pool_to, use_from,
};
use ipam_api::model::{AllowedUse, IpamConfig, Reservation};

/// Fully qualified name of the service, for health and reflection.
pub const SERVICE_NAME: &str = "brindle.ipam.v1.Ipam";

/// The gRPC service.
pub struct IpamService {
    ipam: Arc<Ipam>,
    assigned: Counters,
    released: Counters,
}

/// How often pool usage gauges are recomputed.
const USAGE_REFRESH: Duration = Duration::from_secs(10);

impl IpamService {
    /// Serves `ipam`.
    pub fn new(ipam: Arc<Ipam>) -> Self {
        Self {
            ipam,
            assigned: Counters::default(),
            released: Counters::default(),
        }
    }

    /// Counts addresses assigned and released into `metrics`, and keeps per-pool usage gauges
    /// there (recomputed every 10 s by a background task).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.assigned = metrics.counters("ipam_addresses_assigned", "Addresses handed out");
        self.released = metrics.counters("ipam_addresses_released", "Addresses released");
        let usage = metrics.gauges("ipam_pool_addresses", "Addresses of each pool by state");
        let ipam = Arc::clone(&self.ipam);
        tokio::spawn(async move {
            loop {
                match ipam.show(&ShowOptions::default()).await {
                    Ok(show) => {
                        for pool in show.pools {
                            for (state, count) in [
                                ("in_use", pool.in_use),
                                ("free", pool.free),
                                ("reserved", pool.reserved),
                            ] {
                                usage
                                    .get_or_create(&labels([("pool", &pool.pool), ("state", state)]))
                                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                            }
                        }
                    }
                    Err(error) => tracing::debug!(%error, "pool usage for metrics"),
                }
                tokio::time::sleep(USAGE_REFRESH).await;
            }
        });
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::ipam_server::IpamServer<Self> {
        pb::ipam_server::IpamServer::new(self)
    }
}

/// The status code and message for an IPAM error.
pub fn status(error: IpamError) -> Status {
    let message = error.to_string();
    match error {
        IpamError::InvalidArgument { .. } => Status::invalid_argument(message),
        IpamError::NotFound(_) => Status::not_found(message),
        IpamError::AlreadyExists(_) => Status::already_exists(message),
        IpamError::OtherNodesHandle { .. } => Status::permission_denied(message),
        IpamError::FailedPrecondition(_) => Status::failed_precondition(message),
        IpamError::Exhausted { .. } | IpamError::NodeLimit { .. } => Status::resource_exhausted(message),
        // Waiting requests are a moment's load: retrying later works.
        IpamError::Overloaded { .. } => Status::unavailable(message),
        IpamError::Contention { .. } => Status::aborted(message),
        IpamError::Corrupt { .. } => Status::data_loss(message),
        IpamError::Store(error) => brindle_grpc_server::store_status(&error, message),
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::ipam_server::Ipam for IpamService {
    async fn create_pool(&self, request: Request<pb::CreatePoolRequest>) -> Reply<pb::IpPool> {
        Caller::of(&request)?.require_admin("change IP pools")?;
        let pool = pool_from(request.into_inner().pool).map_err(status)?;
        let (pool, revision) = self.ipam.create_pool(pool).await.map_err(status)?;
        Ok(Response::new(pool_to(pool, revision)))
    }

    async fn get_pool(&self, request: Request<pb::GetPoolRequest>) -> Reply<pb::IpPool> {
        Caller::of(&request)?;
        let (pool, revision) = self
            .ipam
            .get_pool(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pool_to(pool, revision)))
    }

    async fn list_pools(&self, request: Request<pb::ListPoolsRequest>) -> Reply<pb::ListPoolsResponse> {
        Caller::of(&request)?;
        let (pools, revision) = self.ipam.list_pools().await.map_err(status)?;
        Ok(Response::new(pb::ListPoolsResponse {
            pools: pools.into_iter().map(|p| pool_to(p, revision)).collect(),
        }))
    }

    async fn update_pool(&self, request: Request<pb::UpdatePoolRequest>) -> Reply<pb::IpPool> {
        Caller::of(&request)?.require_admin("change IP pools")?;
        let pool = pool_from(request.into_inner().pool).map_err(status)?;
        let (pool, revision) = self.ipam.update_pool(pool).await.map_err(status)?;
        Ok(Response::new(pool_to(pool, revision)))
    }

    async fn delete_pool(&self, request: Request<pb::DeletePoolRequest>) -> Reply<pb::DeletePoolResponse> {
        Caller::of(&request)?.require_admin("change IP pools")?;
        let request = request.into_inner();
        self.ipam
            .delete_pool(&request.name, request.force)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeletePoolResponse {}))
    }

    async fn get_config(&self, request: Request<pb::GetConfigRequest>) -> Reply<pb::IpamConfig> {
        Caller::of(&request)?;
        Ok(Response::new(config_to(
            self.ipam.config().await.map_err(status)?,
        )))
    }

    async fn set_config(&self, request: Request<pb::SetConfigRequest>) -> Reply<pb::IpamConfig> {
        Caller::of(&request)?.require_admin("change the IPAM configuration")?;
        let config = request
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("config: is required"))?;
        let config = IpamConfig {
            strict_affinity: config.strict_affinity,
            max_blocks_per_host: config.max_blocks_per_host,
            release_cooldown_seconds: config.release_cooldown_seconds,
        };
        Ok(Response::new(config_to(
            self.ipam.set_config(config).await.map_err(status)?,
        )))
    }

    async fn auto_assign(&self, request: Request<pb::AutoAssignRequest>) -> Reply<pb::AutoAssignResponse> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        caller.require_node(&r.node, "assign addresses")?;
        let request = AssignRequest {
            handle_id: r.handle_id,
            node: r.node,
            num_ipv4: r.num_ipv4,
            num_ipv6: r.num_ipv6,
            ipv4_pools: r.ipv4_pools,
            ipv6_pools: r.ipv6_pools,
            use_: use_from(r.r#use, "use")
                .map_err(status)?
                .unwrap_or(AllowedUse::Workload),
            attributes: attributes_from(r.attributes),
        };
        let result = self.ipam.auto_assign(request).await.map_err(status)?;
        if !result.existing {
            self.assigned
                .get_or_create(&Vec::new())
                .inc_by(result.allocations.len() as u64);
        }
        Ok(Response::new(pb::AutoAssignResponse {
            allocations: result.allocations.into_iter().map(allocation_to).collect(),
            existing: result.existing,
        }))
    }

    async fn assign_ip(&self, request: Request<pb::AssignIpRequest>) -> Reply<pb::AssignIpResponse> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        caller.require_node(&r.node, "assign addresses")?;
        let request = AssignIpRequest {
            handle_id: r.handle_id,
            ip: ip_from("ip", &r.ip).map_err(status)?,
            node: r.node,
            use_: use_from(r.r#use, "use")
                .map_err(status)?
                .unwrap_or(AllowedUse::Workload),
            attributes: attributes_from(r.attributes),
        };
        let allocation = self.ipam.assign_ip(request).await.map_err(status)?;
        self.assigned.get_or_create(&Vec::new()).inc();
        Ok(Response::new(pb::AssignIpResponse {
            allocation: Some(allocation_to(allocation)),
        }))
    }

    async fn release_by_handle(
        &self,
        request: Request<pb::ReleaseByHandleRequest>,
    ) -> Reply<pb::ReleaseByHandleResponse> {
        let caller = Caller::of(&request)?;
        let handle_id = request.into_inner().handle_id;
        if let Caller::Node(_) = caller {
            // A node releases only what it holds; a handle already gone releases nothing.
            match self.ipam.handle(&handle_id).await {
                Ok(handle) => caller.require_node(&handle.attributes.node, "release addresses")?,
                Err(IpamError::NotFound(_)) => {}
                Err(error) => return Err(status(error)),
            }
        }
        let released = self.ipam.release_handle(&handle_id).await.map_err(status)?;
        self.released
            .get_or_create(&Vec::new())
            .inc_by(released.len() as u64);
        Ok(Response::new(pb::ReleaseByHandleResponse {
            released_ips: released.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn release_ips(&self, request: Request<pb::ReleaseIpsRequest>) -> Reply<pb::ReleaseIpsResponse> {
        Caller::of(&request)?.require_admin("release addresses by IP")?;
        let mut ips = Vec::new();
        for (i, release) in request.into_inner().ips.into_iter().enumerate() {
            let field = format!("ips[{i}].ip");
            ips.push((ip_from(&field, &release.ip).map_err(status)?, release.sequence));
        }
        let (released, skipped) = self.ipam.release_ips(&ips).await.map_err(status)?;
        self.released
            .get_or_create(&Vec::new())
            .inc_by(released.len() as u64);
        Ok(Response::new(pb::ReleaseIpsResponse {
            released_ips: released.iter().map(ToString::to_string).collect(),
            skipped_ips: skipped.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn get_handle(&self, request: Request<pb::GetHandleRequest>) -> Reply<pb::Handle> {
        Caller::of(&request)?;
        let handle = self
            .ipam
            .handle(&request.into_inner().handle_id)
            .await
            .map_err(status)?;
        let allocations = self.ipam.allocations_of(&handle).await.map_err(status)?;
        Ok(Response::new(pb::Handle {
            id: handle.id,
            attributes: Some(attributes_to(handle.attributes)),
            allocations: allocations.into_iter().map(allocation_to).collect(),
        }))
    }

    async fn create_reservation(
        &self,
        request: Request<pb::CreateReservationRequest>,
    ) -> Reply<pb::Reservation> {
        Caller::of(&request)?.require_admin("change reservations")?;
        let request = request.into_inner();
        let r = request
            .reservation
            .ok_or_else(|| Status::invalid_argument("reservation: is required"))?;
        let mut cidrs = Vec::new();
        for (i, cidr) in r.cidrs.iter().enumerate() {
            cidrs.push(validate::cidr(&format!("reservation.cidrs[{i}]"), cidr).map_err(status)?);
        }
        let reservation = Reservation { name: r.name, cidrs };
        let reservation = if request.replace {
            self.ipam.apply_reservation(reservation).await
        } else {
            self.ipam.create_reservation(reservation).await
        }
        .map_err(status)?;
        Ok(Response::new(pb::Reservation {
            name: reservation.name,
            cidrs: reservation.cidrs.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn delete_reservation(
        &self,
        request: Request<pb::DeleteReservationRequest>,
    ) -> Reply<pb::DeleteReservationResponse> {
        Caller::of(&request)?.require_admin("change reservations")?;
        self.ipam
            .delete_reservation(&request.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteReservationResponse {}))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Reply<pb::ListReservationsResponse> {
        Caller::of(&request)?;
        let reservations = self.ipam.reservations().await.map_err(status)?;
        Ok(Response::new(pb::ListReservationsResponse {
            reservations: reservations
                .into_iter()
                .map(|r| pb::Reservation {
                    name: r.name,
                    cidrs: r.cidrs.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }))
    }

    async fn show(&self, request: Request<pb::ShowRequest>) -> Reply<pb::ShowResponse> {
        Caller::of(&request)?;
        let r = request.into_inner();
        let ip = if r.ip.is_empty() {
            None
        } else {
            Some(ip_from("ip", &r.ip).map_err(status)?)
        };
        let show = self
            .ipam
            .show(&ShowOptions {
                blocks: r.blocks,
                borrowed: r.borrowed,
                ip,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(convert::show_to(show, &r.ip)))
    }

    async fn check(&self, request: Request<pb::CheckRequest>) -> Reply<pb::CheckReport> {
        Caller::of(&request)?;
        let r = request.into_inner();
        let live: Option<HashSet<String>> = r
            .against_live_workloads
            .then(|| r.live_handle_ids.into_iter().collect());
        let report = self.ipam.check(live.as_ref()).await.map_err(status)?;
        Ok(Response::new(convert::check_to(report)))
    }

    async fn garbage_collect(
        &self,
        request: Request<pb::GarbageCollectRequest>,
    ) -> Reply<pb::GarbageCollectResponse> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        caller.require_node(&r.node, "garbage-collect addresses")?;
        let valid: HashSet<String> = r.valid_handle_ids.into_iter().collect();
        let network = match (r.network.as_str(), r.all_networks) {
            ("", true) => None,
            (network, false) if !network.is_empty() => Some(network),
            _ => {
                return Err(Status::invalid_argument(
                    "network, all_networks: exactly one is required (a CNI network's name, or every network)",
                ));
            }
        };
        let result = self
            .ipam
            .garbage_collect(
                &r.node,
                &valid,
                network,
                Duration::from_secs(u64::from(r.min_age_seconds)),
            )
            .await
            .map_err(status)?;
        self.released
            .get_or_create(&Vec::new())
            .inc_by(result.released_ips);
        Ok(Response::new(pb::GarbageCollectResponse {
            released_handle_ids: result.released_handle_ids,
            released_ips: result.released_ips,
        }))
    }

    async fn delete_node(&self, request: Request<pb::DeleteNodeRequest>) -> Reply<pb::DeleteNodeResponse> {
        Caller::of(&request)?.require_admin("delete a node's addresses")?;
        let (released_ips, released_blocks) = self
            .ipam
            .delete_node(&request.into_inner().node)
            .await
            .map_err(status)?;
        self.released.get_or_create(&Vec::new()).inc_by(released_ips);
        Ok(Response::new(pb::DeleteNodeResponse {
            released_ips,
            released_blocks,
        }))
    }
}
