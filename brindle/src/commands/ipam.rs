//! `brindle ipam show|check|release`: address usage, the consistency check and its report, and
//! releasing addresses by hand.

use std::path::Path;

use anyhow::Context;
use brindle_proto::ipam::v1 as ipam;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::connect::{Clients, Service};
use super::output::{self, Table};
use crate::cli::{IpamCheckArgs, IpamReleaseArgs, IpamShowArgs};

/// `ipam check` found problems (exit status 3).
#[derive(Debug, thiserror::Error)]
#[error("IPAM check found {0} problems")]
pub struct ProblemsFound(pub usize);

pub async fn show(args: IpamShowArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    let request = ipam::ShowRequest {
        blocks: args.blocks,
        borrowed: args.borrowed,
        ip: args.ip.map(|ip| ip.to_string()).unwrap_or_default(),
    };
    let shown = clients
        .ipam()
        .await?
        .show(request)
        .await
        .map_err(|s| clients.failed(Service::Ipam, s))?
        .into_inner();
    let format = args.output.output;
    if let Some(info) = shown.ip.filter(|_| args.ip.is_some()) {
        let (table, value) = ip_info(&info);
        return output::print(format, &table, &value);
    }
    if args.blocks {
        let mut table = Table::new(&["BLOCK", "POOL", "NODE", "IN-USE", "TOTAL", "BORROWED"]);
        let mut values = Vec::new();
        for block in &shown.blocks {
            table.row(vec![
                block.cidr.clone(),
                block.pool.clone(),
                or_dash(&block.node),
                block.in_use.to_string(),
                block.total.to_string(),
                block.borrowed.to_string(),
            ]);
            values.push(json!({"cidr": block.cidr, "pool": block.pool, "node": block.node,
                "inUse": block.in_use, "total": block.total, "borrowed": block.borrowed}));
        }
        return output::print(format, &table, &json!({ "blocks": values }));
    }
    if args.borrowed {
        let mut table = Table::new(&["IP", "BLOCK", "BLOCK-NODE", "NODE", "HANDLE"]);
        let mut values = Vec::new();
        for borrowed in &shown.borrowed {
            table.row(vec![
                borrowed.ip.clone(),
                borrowed.block.clone(),
                or_dash(&borrowed.block_node),
                borrowed.node.clone(),
                borrowed.handle_id.clone(),
            ]);
            values.push(
                json!({"ip": borrowed.ip, "block": borrowed.block, "blockNode": borrowed.block_node,
                "node": borrowed.node, "handleId": borrowed.handle_id}),
            );
        }
        return output::print(format, &table, &json!({ "borrowed": values }));
    }
    let mut table = Table::new(&["POOL", "CIDR", "IN-USE", "FREE", "RESERVED", "TOTAL", "BLOCKS"]);
    let mut values = Vec::new();
    for pool in &shown.pools {
        let percent = if pool.total == 0 {
            0.0
        } else {
            pool.in_use as f64 * 100.0 / pool.total as f64
        };
        table.row(vec![
            pool.pool.clone(),
            pool.cidr.clone(),
            format!("{} ({percent:.1}%)", pool.in_use),
            pool.free.to_string(),
            pool.reserved.to_string(),
            pool.total.to_string(),
            pool.blocks.to_string(),
        ]);
        values.push(
            json!({"pool": pool.pool, "cidr": pool.cidr, "inUse": pool.in_use, "free": pool.free,
            "reserved": pool.reserved, "total": pool.total, "blocks": pool.blocks}),
        );
    }
    output::print(format, &table, &json!({ "pools": values }))
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

fn ip_info(info: &ipam::IpInfo) -> (Table, serde_json::Value) {
    let allocation = info.allocation.clone().unwrap_or_default();
    let owner = info.attributes.clone().unwrap_or_default();
    let state = match (info.allocated, info.reserved, info.cooling_down) {
        (true, _, _) => "allocated",
        (false, true, _) => "reserved",
        (false, false, true) => "cooling down",
        (false, false, false) => "free",
    };
    let mut table = Table::new(&["IP", "STATE", "BLOCK", "HANDLE", "POD", "NODE"]);
    let pod = if owner.pod.is_empty() {
        "-".to_owned()
    } else {
        format!("{}/{}", owner.namespace, owner.pod)
    };
    table.row(vec![
        info.ip.clone(),
        state.into(),
        or_dash(&allocation.block),
        or_dash(&allocation.handle_id),
        pod,
        or_dash(&owner.node),
    ]);
    let value = json!({"ip": info.ip, "state": state, "block": allocation.block, "pool": allocation.pool,
        "handleId": allocation.handle_id, "sequence": allocation.sequence, "borrowed": allocation.borrowed,
        "namespace": owner.namespace, "pod": owner.pod, "node": owner.node,
        "containerId": owner.container_id, "interface": owner.interface});
    (table, value)
}

/// The report `ipam check -o FILE` writes and `ipam release --from-report` reads.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    revision: u64,
    clean: bool,
    allocations: u64,
    handles: u64,
    blocks: u64,
    problems: Vec<ReportedProblem>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportedProblem {
    kind: String,
    message: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    block: String,
    #[serde(default)]
    handle_id: String,
}

pub async fn check(args: IpamCheckArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    let checked = clients
        .ipam()
        .await?
        .check(ipam::CheckRequest::default())
        .await
        .map_err(|s| clients.failed(Service::Ipam, s))?
        .into_inner();
    let report = Report {
        revision: checked.revision,
        clean: checked.clean,
        allocations: checked.allocations,
        handles: checked.handles,
        blocks: checked.blocks,
        problems: checked
            .problems
            .iter()
            .map(|p| ReportedProblem {
                kind: problem_kind(p.kind).to_owned(),
                message: p.message.clone(),
                ip: p.ip.clone(),
                block: p.block.clone(),
                handle_id: p.handle_id.clone(),
            })
            .collect(),
    };
    let to_stdout = args.report.as_deref() == Some(Path::new("-"));
    if let Some(path) = args.report.as_deref().filter(|_| !to_stdout) {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    if to_stdout {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "checked {} allocations, {} handles, {} blocks at revision {}: {}",
            report.allocations,
            report.handles,
            report.blocks,
            report.revision,
            if report.clean { "clean" } else { "problems found" }
        );
        if !report.problems.is_empty() {
            let mut table = Table::new(&["PROBLEM", "IP", "BLOCK", "HANDLE", "DETAIL"]);
            for problem in &report.problems {
                table.row(vec![
                    problem.kind.clone(),
                    or_dash(&problem.ip),
                    or_dash(&problem.block),
                    or_dash(&problem.handle_id),
                    problem.message.clone(),
                ]);
            }
            print!("{table}");
        }
    }
    if report.clean {
        Ok(())
    } else {
        Err(ProblemsFound(report.problems.len()).into())
    }
}

/// A problem kind's name without the enum prefix (`LEAKED_HANDLE`).
fn problem_kind(kind: i32) -> &'static str {
    ipam::ProblemKind::try_from(kind)
        .unwrap_or(ipam::ProblemKind::Unspecified)
        .as_str_name()
        .trim_start_matches("PROBLEM_KIND_")
}

pub async fn release(args: IpamReleaseArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    if let Some(ip) = args.ip {
        let info = show_ip(&clients, &ip.to_string()).await?;
        let allocation = info
            .allocation
            .filter(|_| info.allocated)
            .with_context(|| format!("{ip} is not allocated"))?;
        let released = release_allocation(&clients, &allocation).await?;
        anyhow::ensure!(released, "{ip} was released or re-used meanwhile: left alone");
        println!("released {ip} (handle {})", allocation.handle_id);
        return Ok(());
    }
    let path = args.from_report.context("--ip or --from-report")?;
    let report: Report = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not a report of `brindle ipam check -o FILE`", path.display()))?;
    let mut ipam_client = clients.ipam().await?;
    for problem in &report.problems {
        match problem.kind.as_str() {
            "LEAKED_HANDLE" | "HANDLE_WITHOUT_ALLOCATION" => {
                let released = ipam_client
                    .release_by_handle(ipam::ReleaseByHandleRequest {
                        handle_id: problem.handle_id.clone(),
                    })
                    .await
                    .map_err(|s| clients.failed(Service::Ipam, s))?
                    .into_inner();
                println!(
                    "released handle {} ({} addresses)",
                    problem.handle_id,
                    released.released_ips.len()
                );
            }
            "ALLOCATION_WITHOUT_HANDLE" => {
                let info = show_ip(&clients, &problem.ip).await?;
                // Only the allocation the report saw: one that names the same missing handle.
                match info
                    .allocation
                    .filter(|a| info.allocated && a.handle_id == problem.handle_id)
                {
                    Some(allocation) if release_allocation(&clients, &allocation).await? => {
                        println!("released {} (no handle)", problem.ip);
                    }
                    _ => println!("{}: re-used or released since the report: left alone", problem.ip),
                }
            }
            other => println!(
                "{other} ({}): not released: needs an operator's decision",
                problem.message
            ),
        }
    }
    Ok(())
}

async fn show_ip(clients: &Clients, ip: &str) -> anyhow::Result<ipam::IpInfo> {
    let shown = clients
        .ipam()
        .await?
        .show(ipam::ShowRequest {
            ip: ip.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|s| clients.failed(Service::Ipam, s))?
        .into_inner();
    shown
        .ip
        .with_context(|| format!("ipam-svc said nothing about {ip}"))
}

/// Releases exactly this allocation (its sequence number guards against re-use); whether it was.
async fn release_allocation(clients: &Clients, allocation: &ipam::Allocation) -> anyhow::Result<bool> {
    let released = clients
        .ipam()
        .await?
        .release_ips(ipam::ReleaseIpsRequest {
            ips: vec![ipam::IpRelease {
                ip: allocation.ip.clone(),
                sequence: allocation.sequence,
            }],
        })
        .await
        .map_err(|s| clients.failed(Service::Ipam, s))?
        .into_inner();
    Ok(released.released_ips.contains(&allocation.ip))
}
