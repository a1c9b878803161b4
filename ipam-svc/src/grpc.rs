//! `brindle.ipam.v1.Ipam` over gRPC: converts messages to and from `core` types and maps errors to
//! status codes. No logic lives here.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use brindle_grpc_server::auth::Caller;
use brindle_metrics::{Counters, Metrics, labels};
use brindle_proto::ipam::v1 as pb;
use ipnet::IpNet;
use tonic::{Request, Response, Status};

use crate::core::model::{
    AllowedUse, EncapMode, HandleAttributes, IpamConfig, NodeSelector, Pool, Reservation,
};
use crate::core::validate::{self, DEFAULT_IPV4_BLOCK_SIZE, DEFAULT_IPV6_BLOCK_SIZE};
use crate::core::{Allocated, AssignIpRequest, AssignRequest, Ipam, IpamError, ProblemKind, ShowOptions};

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

fn encap_from(mode: i32, field: &str) -> Result<EncapMode, IpamError> {
    match pb::EncapMode::try_from(mode) {
        Ok(pb::EncapMode::Unspecified | pb::EncapMode::Never) => Ok(EncapMode::Never),
        Ok(pb::EncapMode::Always) => Ok(EncapMode::Always),
        Ok(pb::EncapMode::CrossSubnet) => Ok(EncapMode::CrossSubnet),
        Err(_) => Err(IpamError::invalid(
            field,
            format!("unknown encapsulation mode {mode}"),
        )),
    }
}

fn encap_to(mode: EncapMode) -> i32 {
    match mode {
        EncapMode::Never => pb::EncapMode::Never,
        EncapMode::Always => pb::EncapMode::Always,
        EncapMode::CrossSubnet => pb::EncapMode::CrossSubnet,
    }
    .into()
}

fn use_from(value: i32, field: &str) -> Result<Option<AllowedUse>, IpamError> {
    match pb::AllowedUse::try_from(value) {
        Ok(pb::AllowedUse::Unspecified) => Ok(None),
        Ok(pb::AllowedUse::Workload) => Ok(Some(AllowedUse::Workload)),
        Ok(pb::AllowedUse::Tunnel) => Ok(Some(AllowedUse::Tunnel)),
        Err(_) => Err(IpamError::invalid(field, format!("unknown use {value}"))),
    }
}

fn use_to(value: AllowedUse) -> i32 {
    match value {
        AllowedUse::Workload => pb::AllowedUse::Workload,
        AllowedUse::Tunnel => pb::AllowedUse::Tunnel,
    }
    .into()
}

fn pool_from(pool: Option<pb::IpPool>) -> Result<Pool, IpamError> {
    let pool = pool.ok_or_else(|| IpamError::invalid("pool", "is required"))?;
    let cidr = validate::cidr("pool.cidr", &pool.cidr)?;
    let block_size = match (pool.block_size, cidr) {
        (0, IpNet::V4(_)) => DEFAULT_IPV4_BLOCK_SIZE,
        (0, IpNet::V6(_)) => DEFAULT_IPV6_BLOCK_SIZE,
        (size, _) => u8::try_from(size)
            .map_err(|_| IpamError::invalid("pool.block_size", format!("{size} is not a prefix length")))?,
    };
    let mut allowed_uses = Vec::new();
    for value in &pool.allowed_uses {
        if let Some(use_) = use_from(*value, "pool.allowed_uses")?
            && !allowed_uses.contains(&use_)
        {
            allowed_uses.push(use_);
        }
    }
    if allowed_uses.is_empty() {
        allowed_uses = vec![AllowedUse::Workload, AllowedUse::Tunnel];
    }
    Ok(Pool {
        name: pool.name,
        cidr,
        block_size,
        vxlan_mode: encap_from(pool.vxlan_mode, "pool.vxlan_mode")?,
        ipip_mode: encap_from(pool.ipip_mode, "pool.ipip_mode")?,
        nat_outgoing: pool.nat_outgoing,
        disabled: pool.disabled,
        node_selector: NodeSelector::parse(&pool.node_selector)
            .map_err(|e| IpamError::invalid("pool.node_selector", e.to_string()))?,
        allowed_uses,
    })
}

fn pool_to(pool: Pool, revision: u64) -> pb::IpPool {
    pb::IpPool {
        name: pool.name,
        cidr: pool.cidr.to_string(),
        block_size: u32::from(pool.block_size),
        vxlan_mode: encap_to(pool.vxlan_mode),
        ipip_mode: encap_to(pool.ipip_mode),
        nat_outgoing: pool.nat_outgoing,
        disabled: pool.disabled,
        node_selector: pool.node_selector.as_str().to_owned(),
        allowed_uses: pool.allowed_uses.into_iter().map(use_to).collect(),
        revision,
    }
}

fn config_to(config: IpamConfig) -> pb::IpamConfig {
    pb::IpamConfig {
        strict_affinity: config.strict_affinity,
        max_blocks_per_host: config.max_blocks_per_host,
        release_cooldown_seconds: config.release_cooldown_seconds,
    }
}

fn attributes_from(attributes: Option<pb::HandleAttributes>) -> HandleAttributes {
    let a = attributes.unwrap_or_default();
    HandleAttributes {
        namespace: a.namespace,
        pod: a.pod,
        node: a.node,
        container_id: a.container_id,
        interface: a.interface,
        extra: a.extra.into_iter().collect(),
    }
}

fn attributes_to(a: HandleAttributes) -> pb::HandleAttributes {
    pb::HandleAttributes {
        namespace: a.namespace,
        pod: a.pod,
        node: a.node,
        container_id: a.container_id,
        interface: a.interface,
        extra: a.extra.into_iter().collect(),
    }
}

fn allocation_to(a: Allocated) -> pb::Allocation {
    pb::Allocation {
        ip: a.ip.to_string(),
        block: a.block.to_string(),
        pool: a.pool,
        sequence: a.sequence,
        borrowed: a.borrowed,
        handle_id: a.handle_id,
    }
}

fn ip_from(field: &str, text: &str) -> Result<IpAddr, IpamError> {
    text.trim()
        .parse()
        .map_err(|_| IpamError::invalid(field, format!("{text:?} is not an IP address")))
}

fn problem_kind(kind: ProblemKind) -> pb::ProblemKind {
    match kind {
        ProblemKind::AllocationWithoutHandle => pb::ProblemKind::AllocationWithoutHandle,
        ProblemKind::HandleWithoutAllocation => pb::ProblemKind::HandleWithoutAllocation,
        ProblemKind::DuplicateIp => pb::ProblemKind::DuplicateIp,
        ProblemKind::AffinityMismatch => pb::ProblemKind::AffinityMismatch,
        ProblemKind::CountMismatch => pb::ProblemKind::CountMismatch,
        ProblemKind::LeakedHandle => pb::ProblemKind::LeakedHandle,
        ProblemKind::BlockOutsidePool => pb::ProblemKind::BlockOutsidePool,
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
        let r = request
            .into_inner()
            .reservation
            .ok_or_else(|| Status::invalid_argument("reservation: is required"))?;
        let mut cidrs = Vec::new();
        for (i, cidr) in r.cidrs.iter().enumerate() {
            cidrs.push(validate::cidr(&format!("reservation.cidrs[{i}]"), cidr).map_err(status)?);
        }
        let reservation = self
            .ipam
            .create_reservation(Reservation { name: r.name, cidrs })
            .await
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
        Ok(Response::new(pb::ShowResponse {
            pools: show
                .pools
                .into_iter()
                .map(|p| pb::PoolUsage {
                    pool: p.pool,
                    cidr: p.cidr.to_string(),
                    total: p.total,
                    in_use: p.in_use,
                    reserved: p.reserved,
                    free: p.free,
                    blocks: p.blocks,
                })
                .collect(),
            blocks: show
                .blocks
                .into_iter()
                .map(|b| pb::BlockUsage {
                    cidr: b.cidr.to_string(),
                    pool: b.pool,
                    node: b.node,
                    total: b.total,
                    in_use: b.in_use,
                    borrowed: b.borrowed,
                })
                .collect(),
            borrowed: show
                .borrowed
                .into_iter()
                .map(|b| pb::BorrowedIp {
                    ip: b.ip.to_string(),
                    block: b.block.to_string(),
                    block_node: b.block_node,
                    handle_id: b.handle_id,
                    node: b.node,
                })
                .collect(),
            ip: show.ip.map(|info| {
                let allocation = info
                    .allocation
                    .map(|(block, sequence, handle_id)| pb::Allocation {
                        ip: r.ip.clone(),
                        block: block.to_string(),
                        pool: String::new(),
                        sequence,
                        borrowed: false,
                        handle_id,
                    });
                pb::IpInfo {
                    ip: r.ip.clone(),
                    allocated: allocation.is_some(),
                    allocation,
                    attributes: info.attributes.map(attributes_to),
                    reserved: info.reserved,
                    cooling_down: info.cooling_down,
                }
            }),
        }))
    }

    async fn check(&self, request: Request<pb::CheckRequest>) -> Reply<pb::CheckReport> {
        Caller::of(&request)?;
        let r = request.into_inner();
        let live: Option<HashSet<String>> = r
            .against_live_workloads
            .then(|| r.live_handle_ids.into_iter().collect());
        let report = self.ipam.check(live.as_ref()).await.map_err(status)?;
        Ok(Response::new(pb::CheckReport {
            clean: report.is_clean(),
            problems: report
                .problems
                .into_iter()
                .map(|p| pb::Problem {
                    kind: problem_kind(p.kind).into(),
                    message: p.message,
                    ip: p.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    block: p.block.map(|b| b.to_string()).unwrap_or_default(),
                    handle_id: p.handle_id.unwrap_or_default(),
                })
                .collect(),
            allocations: report.allocations,
            handles: report.handles,
            blocks: report.blocks,
            revision: report.revision,
        }))
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
