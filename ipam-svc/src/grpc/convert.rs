//! Between IPAM's model and `brindle.ipam.v1` messages: pools, the configuration, handle
//! attributes and allocations, show and check reports. A field that does not convert is an
//! [`IpamError::InvalidArgument`] naming it.

use std::net::IpAddr;

use brindle_proto::ipam::v1 as pb;
use ipnet::IpNet;

use crate::core::validate::{self, DEFAULT_IPV4_BLOCK_SIZE, DEFAULT_IPV6_BLOCK_SIZE};
use crate::core::{Allocated, CheckReport, IpamError, ProblemKind, Show};
use ipam_api::model::{AllowedUse, EncapMode, HandleAttributes, IpamConfig, NodeSelector, Pool};

pub(super) fn encap_from(mode: i32, field: &str) -> Result<EncapMode, IpamError> {
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

pub(super) fn encap_to(mode: EncapMode) -> i32 {
    match mode {
        EncapMode::Never => pb::EncapMode::Never,
        EncapMode::Always => pb::EncapMode::Always,
        EncapMode::CrossSubnet => pb::EncapMode::CrossSubnet,
    }
    .into()
}

pub(super) fn use_from(value: i32, field: &str) -> Result<Option<AllowedUse>, IpamError> {
    match pb::AllowedUse::try_from(value) {
        Ok(pb::AllowedUse::Unspecified) => Ok(None),
        Ok(pb::AllowedUse::Workload) => Ok(Some(AllowedUse::Workload)),
        Ok(pb::AllowedUse::Tunnel) => Ok(Some(AllowedUse::Tunnel)),
        Err(_) => Err(IpamError::invalid(field, format!("unknown use {value}"))),
    }
}

pub(super) fn use_to(value: AllowedUse) -> i32 {
    match value {
        AllowedUse::Workload => pb::AllowedUse::Workload,
        AllowedUse::Tunnel => pb::AllowedUse::Tunnel,
    }
    .into()
}

pub(super) fn pool_from(pool: Option<pb::IpPool>) -> Result<Pool, IpamError> {
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
        disable_bgp_export: pool.disable_bgp_export,
    })
}

pub(super) fn pool_to(pool: Pool, revision: u64) -> pb::IpPool {
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
        disable_bgp_export: pool.disable_bgp_export,
    }
}

pub(super) fn config_to(config: IpamConfig) -> pb::IpamConfig {
    pb::IpamConfig {
        strict_affinity: config.strict_affinity,
        max_blocks_per_host: config.max_blocks_per_host,
        release_cooldown_seconds: config.release_cooldown_seconds,
    }
}

pub(super) fn attributes_from(attributes: Option<pb::HandleAttributes>) -> HandleAttributes {
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

pub(super) fn attributes_to(a: HandleAttributes) -> pb::HandleAttributes {
    pb::HandleAttributes {
        namespace: a.namespace,
        pod: a.pod,
        node: a.node,
        container_id: a.container_id,
        interface: a.interface,
        extra: a.extra.into_iter().collect(),
    }
}

pub(super) fn allocation_to(a: Allocated) -> pb::Allocation {
    pb::Allocation {
        ip: a.ip.to_string(),
        block: a.block.to_string(),
        pool: a.pool,
        sequence: a.sequence,
        borrowed: a.borrowed,
        handle_id: a.handle_id,
    }
}

pub(super) fn ip_from(field: &str, text: &str) -> Result<IpAddr, IpamError> {
    text.trim()
        .parse()
        .map_err(|_| IpamError::invalid(field, format!("{text:?} is not an IP address")))
}

pub(super) fn problem_kind(kind: ProblemKind) -> pb::ProblemKind {
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

/// A show report as a message (`ip`: the address asked about, as written).
pub(super) fn show_to(show: Show, ip: &str) -> pb::ShowResponse {
    pb::ShowResponse {
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
                    ip: ip.to_owned(),
                    block: block.to_string(),
                    pool: String::new(),
                    sequence,
                    borrowed: false,
                    handle_id,
                });
            pb::IpInfo {
                ip: ip.to_owned(),
                allocated: allocation.is_some(),
                allocation,
                attributes: info.attributes.map(attributes_to),
                reserved: info.reserved,
                cooling_down: info.cooling_down,
            }
        }),
    }
}

/// A check report as a message.
pub(super) fn check_to(report: CheckReport) -> pb::CheckReport {
    pb::CheckReport {
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
    }
}
