//! `brindle flows`: the flows nodes' policies allowed or denied, as policy-svc holds them, or
//! followed as nodes report them.

use brindle_proto::policy::v1 as policy;
use futures_util::StreamExt;
use policy_api::flow::{FlowRecord, flow_from_proto};
use serde_json::{Value, json};

use super::connect::{Clients, Service};
use super::output::{self, Table};
use crate::cli::{FlowsArgs, OutputFormat};

const HEADER: &[&str] = &[
    "NODE",
    "SOURCE",
    "DESTINATION",
    "PROTOCOL",
    "DIRECTION",
    "VERDICT",
    "POLICY",
    "RULE",
    "PACKETS",
    "BYTES",
    "LAST-SEEN",
    "STAGED",
];

/// One end of a flow: `namespace/pod` or `outside`, with its address and port.
fn end(pod: Option<&String>, ip: std::net::IpAddr, port: Option<u16>) -> String {
    let who = pod.map_or("outside", String::as_str);
    match port {
        Some(port) if ip.is_ipv6() => format!("{who} [{ip}]:{port}"),
        Some(port) => format!("{who} {ip}:{port}"),
        None => format!("{who} {ip}"),
    }
}

fn rule(rule: Option<usize>) -> String {
    rule.map_or_else(|| "-".into(), |r| r.to_string())
}

fn protocol(flow: &FlowRecord) -> String {
    let name = flow.key.protocol().to_string();
    match flow.key.icmp {
        Some(icmp) => format!("{name} {}/{}", icmp.icmp_type, icmp.code.unwrap_or(0)),
        None => name,
    }
}

fn row(flow: &FlowRecord) -> Vec<String> {
    let key = &flow.key;
    vec![
        flow.node.clone(),
        end(flow.source.as_ref(), key.source_ip, key.source_port),
        end(
            flow.destination.as_ref(),
            key.destination_ip,
            key.destination_port,
        ),
        protocol(flow),
        flow.decision.direction.to_string(),
        flow.decision.verdict.to_string(),
        flow.decision.policy.clone().unwrap_or_else(|| "-".into()),
        rule(flow.decision.rule),
        flow.counts.packets.to_string(),
        flow.counts.bytes.to_string(),
        output::age_since(flow.counts.last_seen_ms),
        flow.staged
            .as_ref()
            .map_or_else(|| "-".into(), |s| s.verdict.to_string()),
    ]
}

fn value(flow: &FlowRecord) -> Value {
    let key = &flow.key;
    let mut value = json!({
        "node": flow.node,
        "source": {"pod": flow.source, "ip": key.source_ip.to_string(), "port": key.source_port},
        "destination": {"pod": flow.destination, "ip": key.destination_ip.to_string(),
            "port": key.destination_port},
        "protocol": key.protocol().to_string(),
        "direction": flow.decision.direction.to_string(),
        "verdict": flow.decision.verdict.to_string(),
        "policy": flow.decision.policy,
        "rule": flow.decision.rule,
        "packets": flow.counts.packets,
        "bytes": flow.counts.bytes,
        "firstSeenUnixMs": flow.counts.first_seen_ms,
        "lastSeenUnixMs": flow.counts.last_seen_ms,
    });
    if let Some(icmp) = key.icmp {
        value["icmp"] = json!({"type": icmp.icmp_type, "code": icmp.code.unwrap_or(0)});
    }
    if let Some(staged) = &flow.staged {
        value["staged"] = json!({"verdict": staged.verdict.to_string(), "policy": staged.policy,
            "rule": staged.rule});
    }
    value
}

fn parsed(flow: policy::FlowRecord) -> anyhow::Result<FlowRecord> {
    flow_from_proto(flow).map_err(|e| anyhow::anyhow!("policy-svc sent a flow with {e}"))
}

pub async fn flows(args: FlowsArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    let request = policy::ListFlowsRequest {
        denied: args.denied,
        namespace: args.namespace.unwrap_or_default(),
        limit: args.limit,
    };
    let mut client = clients.policy().await?;
    if args.follow {
        let mut updates = client
            .watch_flows(request)
            .await
            .map_err(|s| clients.failed(Service::Policy, s))?
            .into_inner();
        if args.output.output == OutputFormat::Table {
            println!("{}", HEADER.join("\t"));
        }
        while let Some(update) = updates.next().await {
            let flow = parsed(update.map_err(|s| clients.failed(Service::Policy, s))?)?;
            match args.output.output {
                OutputFormat::Table => println!("{}", row(&flow).join("\t")),
                OutputFormat::Json => println!("{}", serde_json::to_string(&value(&flow))?),
                OutputFormat::Yaml => print!("---\n{}", yaml_serde::to_string(&value(&flow))?),
            }
        }
        return Ok(());
    }
    let listed = client
        .list_flows(request)
        .await
        .map_err(|s| clients.failed(Service::Policy, s))?
        .into_inner();
    let mut table = Table::new(HEADER);
    let values_len = listed.flows.len() as u64;
    let mut values = Vec::new();
    for flow in listed.flows {
        let flow = parsed(flow)?;
        table.row(row(&flow));
        values.push(value(&flow));
    }
    output::print(
        args.output.output,
        &table,
        &json!({"flows": values, "matched": listed.matched, "evicted": listed.evicted}),
    )?;
    if args.output.output == OutputFormat::Table && listed.matched > values_len {
        eprintln!(
            "({} more flows match; the most recently seen {values_len} are shown: --limit)",
            listed.matched - values_len
        );
    }
    Ok(())
}
