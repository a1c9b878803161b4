//! `brindle policy trace`: which verdict network policy gives a flow, and why.

use brindle_proto::policy::v1 as policy;
use serde_json::json;

use super::connect::{Clients, Service};
use super::output::{self, Table};
use crate::cli::PolicyTraceArgs;

/// A pod (`namespace/pod`) or an address.
fn peer(text: &str) -> policy::TracePeer {
    let peer = match text.split_once('/') {
        Some((namespace, pod)) if text.parse::<std::net::IpAddr>().is_err() => {
            policy::trace_peer::Peer::Endpoint(policy::EndpointRef {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
            })
        }
        _ => policy::trace_peer::Peer::Ip(text.to_owned()),
    };
    policy::TracePeer { peer: Some(peer) }
}

/// A verdict's name (`allow`, `deny`).
pub(super) fn verdict(value: i32) -> &'static str {
    match policy::Verdict::try_from(value) {
        Ok(policy::Verdict::Allow) => "allow",
        Ok(policy::Verdict::Deny) => "deny",
        _ => "unknown",
    }
}

pub async fn trace(args: PolicyTraceArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    let request = policy::TraceRequest {
        source: Some(peer(&args.from)),
        destination: Some(peer(&args.to)),
        protocol: args.protocol.clone(),
        port: args.port.into(),
        source_port: 0,
        icmp_type: args.icmp_type.map(u32::from),
        icmp_code: args.icmp_code.map(u32::from),
    };
    let traced = clients
        .policy()
        .await?
        .trace(request)
        .await
        .map_err(|s| clients.failed(Service::Policy, s))?
        .into_inner();
    let staged = traced.staged_verdict.is_some();
    let mut table = Table::new(if staged {
        &["AS", "DIRECTION", "ENDPOINT", "POLICY", "RULE", "VERDICT", "WHY"][..]
    } else {
        &["DIRECTION", "ENDPOINT", "POLICY", "RULE", "VERDICT", "WHY"][..]
    });
    let steps = add_steps(&mut table, staged.then_some("enforced"), &traced.steps);
    let mut value = json!({"verdict": verdict(traced.verdict), "source": traced.source_ip,
        "destination": traced.destination_ip, "protocol": args.protocol, "port": args.port, "steps": steps});
    if let Some(staged_verdict) = traced.staged_verdict {
        let steps = add_steps(&mut table, Some("staged"), &traced.staged_steps);
        value["staged"] = json!({"verdict": verdict(staged_verdict), "steps": steps});
    }
    if args.output.output == crate::cli::OutputFormat::Table {
        let staged = traced
            .staged_verdict
            .map(|v| format!(" (with the staged policies: {})", verdict(v).to_uppercase()))
            .unwrap_or_default();
        println!(
            "{} → {} {}/{}: {}{staged}",
            traced.source_ip,
            traced.destination_ip,
            args.protocol,
            args.port,
            verdict(traced.verdict).to_uppercase()
        );
    }
    output::print(args.output.output, &table, &value)
}

/// Adds `steps` to `table` (first column `label` when given); their JSON.
fn add_steps(table: &mut Table, label: Option<&str>, steps: &[policy::TraceStep]) -> Vec<serde_json::Value> {
    let mut json_steps = Vec::new();
    for step in steps {
        let direction = match policy::Direction::try_from(step.direction) {
            Ok(policy::Direction::Egress) => "egress",
            _ => "ingress",
        };
        let mut row: Vec<String> = label.map(str::to_owned).into_iter().collect();
        row.extend([
            direction.into(),
            step.endpoint.clone(),
            if step.policy.is_empty() {
                "-".into()
            } else {
                step.policy.clone()
            },
            if step.rule_index < 0 {
                "-".into()
            } else {
                step.rule_index.to_string()
            },
            verdict(step.verdict).into(),
            step.explanation.clone(),
        ]);
        table.row(row);
        json_steps.push(
            json!({"direction": direction, "endpoint": step.endpoint, "policy": step.policy,
            "rule": step.rule_index, "verdict": verdict(step.verdict), "explanation": step.explanation,
            "logged": step.logged}),
        );
    }
    json_steps
}
