//! `brindle node status`: every node as route-svc and policy-svc see it — Calico's BGP-peer table,
//! for a control plane that streams state instead of peering.

use std::collections::BTreeMap;

use brindle_proto::policy::v1 as policy;
use brindle_proto::route::v1 as route;
use serde_json::json;

use super::connect::{Clients, Service};
use super::output::{self, Table, age_since};
use crate::cli::NodeStatusArgs;

/// How far an agent follows one service.
fn sync_state(connected: bool, acked: u64, current: u64) -> &'static str {
    match (connected, acked >= current) {
        (false, _) if acked == 0 => "never synced",
        (false, _) => "disconnected",
        (true, true) => "in sync",
        (true, false) => "behind",
    }
}

pub async fn status(args: NodeStatusArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    let routes = clients
        .route()
        .await?
        .list_nodes(route::ListNodesRequest {})
        .await
        .map_err(|s| clients.failed(Service::Route, s))?
        .into_inner();
    let policies = clients
        .policy()
        .await?
        .list_nodes(policy::ListNodesRequest {})
        .await
        .map_err(|s| clients.failed(Service::Policy, s))?
        .into_inner();
    let mut by_node: BTreeMap<String, (Option<route::NodeStatus>, Option<policy::NodeStatus>)> =
        BTreeMap::new();
    for status in routes.nodes {
        let name = status.node.as_ref().map(|n| n.name.clone()).unwrap_or_default();
        by_node.entry(name).or_default().0 = Some(status);
    }
    for status in policies.nodes {
        let name = status.node.clone();
        by_node.entry(name).or_default().1 = Some(status);
    }
    let mut table = Table::new(&[
        "NODE",
        "ADDRESSES",
        "ROUTES",
        "ROUTE-SYNC",
        "LAST-ACK",
        "ENDPOINTS",
        "POLICY-OBJECTS",
        "POLICY-SYNC",
        "LAST-ACK",
    ]);
    let mut values = Vec::new();
    for (name, (route_status, policy_status)) in &by_node {
        let addresses = route_status
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .map(|n| n.addresses.join(","))
            .unwrap_or_default();
        let route_sync = route_status.as_ref().map_or("not registered", |s| {
            sync_state(s.connected, s.acked_revision, s.sent_revision)
        });
        let policy_sync = policy_status.as_ref().map_or("never synced", |s| {
            sync_state(s.connected, s.acked_revision, s.sent_revision)
        });
        let route_ack = route_status.as_ref().map_or(0, |s| s.acked_unix_ms);
        let policy_ack = policy_status.as_ref().map_or(0, |s| s.acked_unix_ms);
        table.row(vec![
            name.clone(),
            if addresses.is_empty() {
                "-".into()
            } else {
                addresses.clone()
            },
            route_status
                .as_ref()
                .map_or(0, |s| s.programmed_routes)
                .to_string(),
            route_sync.into(),
            age_since(route_ack),
            policy_status.as_ref().map_or(0, |s| s.endpoints).to_string(),
            policy_status.as_ref().map_or(0, |s| s.programmed).to_string(),
            policy_sync.into(),
            age_since(policy_ack),
        ]);
        values.push(json!({
            "node": name,
            "addresses": addresses.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>(),
            "routes": {
                "sync": route_sync,
                "ackedRevision": route_status.as_ref().map_or(0, |s| s.acked_revision),
                "sentRevision": route_status.as_ref().map_or(0, |s| s.sent_revision),
                "revision": routes.revision,
                "ackedUnixMs": route_ack,
                "programmed": route_status.as_ref().map_or(0, |s| s.programmed_routes),
            },
            "policy": {
                "sync": policy_sync,
                "ackedRevision": policy_status.as_ref().map_or(0, |s| s.acked_revision),
                "sentRevision": policy_status.as_ref().map_or(0, |s| s.sent_revision),
                "ackedUnixMs": policy_ack,
                "programmed": policy_status.as_ref().map_or(0, |s| s.programmed),
                "endpoints": policy_status.as_ref().map_or(0, |s| s.endpoints),
            },
        }));
    }
    output::print(args.output.output, &table, &json!({ "nodes": values }))
}
