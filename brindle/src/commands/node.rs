//! `brindle node status`: every node as route-svc and policy-svc see it — Calico's BGP-peer table,
//! for a control plane that streams state instead of peering; `brindle node label`: a node's
//! labels (what pools' nodeSelectors match), as `calicoctl label nodes` sets them.

use std::collections::BTreeMap;

use brindle_proto::policy::v1 as policy;
use brindle_proto::route::v1 as route;
use serde_json::json;

use super::connect::{Clients, Service};
use super::output::{self, Table, age_since};
use crate::cli::{NodeLabelArgs, NodeStatusArgs, OutputFormat};

/// One change of `brindle node label`: set a value, or remove the key.
#[derive(Debug, PartialEq, Eq)]
enum LabelChange {
    Set(String, String),
    Remove(String),
}

fn label_change(text: &str) -> anyhow::Result<LabelChange> {
    if let Some((key, value)) = text.split_once('=') {
        anyhow::ensure!(!key.is_empty(), "{text:?}: the key is empty");
        return Ok(LabelChange::Set(key.to_owned(), value.to_owned()));
    }
    match text.strip_suffix('-') {
        Some(key) if !key.is_empty() => Ok(LabelChange::Remove(key.to_owned())),
        _ => anyhow::bail!("{text:?} is neither key=value (set) nor key- (remove)"),
    }
}

pub async fn label(args: NodeLabelArgs) -> anyhow::Result<()> {
    let changes = args
        .changes
        .iter()
        .map(|text| label_change(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let clients = Clients::new(args.client);
    let mut client = clients.route().await?;
    let failed = |s| clients.failed(Service::Route, s);
    // The labels given so far; a node never labelled keeps what its agent registered.
    let given = client
        .list_node_labels(route::ListNodeLabelsRequest::default())
        .await
        .map_err(failed)?
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.name == args.node);
    let mut labels: BTreeMap<String, String> = match given {
        Some(given) => given.labels.into_iter().collect(),
        None => client
            .list_nodes(route::ListNodesRequest {})
            .await
            .map_err(failed)?
            .into_inner()
            .nodes
            .into_iter()
            .filter_map(|status| status.node)
            .find(|node| node.name == args.node)
            .map(|node| node.labels.into_iter().collect())
            .unwrap_or_default(),
    };
    for change in changes {
        match change {
            LabelChange::Set(key, value) => {
                labels.insert(key, value);
            }
            LabelChange::Remove(key) => {
                labels.remove(&key);
            }
        }
    }
    let set = client
        .set_node_labels(route::SetNodeLabelsRequest {
            name: args.node.clone(),
            labels: labels.into_iter().collect(),
            origin: String::new(),
        })
        .await
        .map_err(failed)?
        .into_inner();
    let mut labels: Vec<String> = set.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    println!("node/{} labeled: {}", args.node, labels.join(","));
    Ok(())
}

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
    let transport = clients.transport(Service::Route).describe();
    match args.output.output {
        OutputFormat::Table => {
            output::print(args.output.output, &table, &json!({}))?;
            println!("\ncontrol plane: {transport}");
            Ok(())
        }
        format => output::print(
            format,
            &table,
            &json!({ "nodes": values, "controlPlane": {"transport": transport} }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_read_as_kubectl_writes_them() {
        assert_eq!(
            label_change("rack=a").expect("set"),
            LabelChange::Set("rack".into(), "a".into())
        );
        assert_eq!(
            label_change("rack=").expect("empty value"),
            LabelChange::Set("rack".into(), String::new())
        );
        assert_eq!(
            label_change("rack-").expect("remove"),
            LabelChange::Remove("rack".into())
        );
        for bad in ["rack", "=a", "-"] {
            assert!(format!("{:#}", label_change(bad).expect_err(bad)).contains(bad));
        }
    }
}
