//! `brindle node status`: every node as route-svc and policy-svc see it — Calico's BGP-peer table,
//! for a control plane that streams state instead of peering; `brindle node label`: a node's
//! labels (what pools' nodeSelectors match), as `calicoctl label nodes` sets them; `brindle node
//! delete`: everything of a node that left, as `calicoctl delete node` removes it.

use std::collections::BTreeMap;

use brindle_grpc::{TRANSPORT_HEADER, Transport};
use brindle_proto::identity::v1 as identity;
use brindle_proto::identity::v1::identity_client::IdentityClient;
use brindle_proto::policy::v1 as policy;
use brindle_proto::route::v1 as route;
use brindle_proto::route::v1::routes_client::RoutesClient;
use brindle_selector::labels;
use serde_json::json;
use tonic::transport::Channel;

use super::connect::{Clients, Service};
use super::output::{self, Table, age_since};
use crate::cli::{NodeDeleteArgs, NodeJoinTokenArgs, NodeLabelArgs, NodeStatusArgs, OutputFormat};

/// One change of `brindle node label`: set a value, or remove the key.
#[derive(Debug, PartialEq, Eq)]
enum LabelChange {
    Set(String, String),
    Remove(String),
}

fn label_change(text: &str) -> anyhow::Result<LabelChange> {
    if text.contains('=') {
        let (key, value) = labels::parse_label(text).map_err(anyhow::Error::msg)?;
        return Ok(LabelChange::Set(key, value));
    }
    match text.strip_suffix('-') {
        Some(key) if labels::is_label_key(key) => Ok(LabelChange::Remove(key.to_owned())),
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
    // Read, change, write only if nobody wrote meanwhile; read again when somebody did.
    let mut attempts = 0;
    let set = loop {
        let (labels, revision) = given_labels(&mut client, &args.node).await.map_err(failed)?;
        let labels = changed(labels, &changes);
        let written = client
            .set_node_labels(route::SetNodeLabelsRequest {
                name: args.node.clone(),
                labels: labels.into_iter().collect(),
                origin: String::new(),
                if_revision: Some(revision),
            })
            .await;
        match written {
            Ok(set) => break set.into_inner(),
            Err(status) if status.code() == tonic::Code::Aborted && attempts < LABEL_ATTEMPTS => {
                attempts += 1
            }
            Err(status) => return Err(failed(status)),
        }
    };
    let mut labels: Vec<String> = set.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    println!("node/{} labeled: {}", args.node, labels.join(","));
    Ok(())
}

pub async fn delete(args: NodeDeleteArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    let mut routes = clients.route().await?;
    let failed = |s| clients.failed(Service::Route, s);
    let labelled = routes
        .list_node_labels(route::ListNodeLabelsRequest {
            origin: String::new(),
        })
        .await
        .map_err(failed)?
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.name == args.node);
    anyhow::ensure!(
        labelled
            .as_ref()
            .is_none_or(|n| n.origin != kube_sync::targets::ORIGIN),
        "node/{0} is a Kubernetes Node: delete it in Kubernetes (kubectl delete node {0}); kube-sync \
         then deletes it here",
        args.node
    );
    let registered = routes
        .list_nodes(route::ListNodesRequest {})
        .await
        .map_err(failed)?
        .into_inner()
        .nodes
        .iter()
        .any(|n| n.node.as_ref().is_some_and(|n| n.name == args.node));
    let mut services = kube_sync::nodes::NodeServices {
        routes,
        ipam: clients.ipam().await?,
        policy: clients.policy().await?,
    };
    let deleted = services.delete_node(&args.node, None).await?;
    anyhow::ensure!(
        registered || labelled.is_some() || deleted != kube_sync::nodes::NodeDeleted::default(),
        "node/{} not found: not registered, not labelled, and holding no address, block or endpoint",
        args.node
    );
    println!(
        "node/{} deleted: {} addresses and {} blocks released, {} endpoints removed",
        args.node, deleted.released_ips, deleted.released_blocks, deleted.endpoints
    );
    Ok(())
}

pub async fn join_token(args: NodeJoinTokenArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    let made = IdentityClient::new(clients.channel(Service::Identity).await?)
        .create_join_token(identity::CreateJoinTokenRequest {
            node: args.node.clone(),
            ttl_seconds: args.ttl,
        })
        .await
        .map_err(|s| clients.failed(Service::Identity, s))?
        .into_inner();
    eprintln!(
        "join token for node {} (expires at Unix time {}; shown once):",
        args.node, made.expires_unix
    );
    println!("{}", made.token);
    Ok(())
}

/// How often `brindle node label` reads again after losing a race with another writer.
const LABEL_ATTEMPTS: usize = 5;

/// `node`'s labels and the revision of what was given (0: never labelled, so what its agent
/// registered, if anything).
async fn given_labels(
    client: &mut RoutesClient<Channel>,
    node: &str,
) -> Result<(BTreeMap<String, String>, u64), tonic::Status> {
    let given = client
        .list_node_labels(route::ListNodeLabelsRequest::default())
        .await?
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.name == node);
    Ok(match given {
        Some(given) => (given.labels.into_iter().collect(), given.revision),
        None => (
            client
                .list_nodes(route::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes
                .into_iter()
                .filter_map(|status| status.node)
                .find(|registered| registered.name == node)
                .map(|registered| registered.labels.into_iter().collect())
                .unwrap_or_default(),
            0,
        ),
    })
}

/// `labels` with `changes` made.
fn changed(mut labels: BTreeMap<String, String>, changes: &[LabelChange]) -> BTreeMap<String, String> {
    for change in changes {
        match change {
            LabelChange::Set(key, value) => {
                labels.insert(key.clone(), value.clone());
            }
            LabelChange::Remove(key) => {
                labels.remove(key);
            }
        }
    }
    labels
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
        .map_err(|s| clients.failed(Service::Route, s))?;
    // What route-svc says it speaks (an older server says nothing).
    let transport = routes
        .metadata()
        .get(TRANSPORT_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(Transport::from_header_value)
        .map_or("not reported by the server", Transport::describe);
    let routes = routes.into_inner();
    // The cluster's AS, for the nodes that use it (asked only when a node speaks BGP).
    let speaks_bgp = routes
        .nodes
        .iter()
        .any(|s| s.node.as_ref().is_some_and(|n| !n.bgp_router_id.is_empty()));
    let cluster_as = if speaks_bgp {
        super::bgp::configuration_of(&clients).await?.as_number
    } else {
        0
    };
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
    let mut sessions = Table::new(&[
        "NODE",
        "LOCAL-AS",
        "ROUTER-ID",
        "PEER",
        "PEER-ADDRESS",
        "AS",
        "STATE",
        "SINCE",
        "ROUTES-SENT",
        "INFO",
    ]);
    for (name, (route_status, policy_status)) in &by_node {
        let bgp = route_status
            .as_ref()
            .map(|s| s.bgp_sessions.clone())
            .unwrap_or_default();
        let registered = route_status.as_ref().and_then(|s| s.node.as_ref());
        let router_id = registered.map(|n| n.bgp_router_id.clone()).unwrap_or_default();
        let local_as = registered
            .filter(|_| !router_id.is_empty())
            .map(|n| n.bgp_as_number.unwrap_or(cluster_as));
        for session in &bgp {
            sessions.row(vec![
                name.clone(),
                local_as.map(|a| a.to_string()).unwrap_or_default(),
                router_id.clone(),
                session.peer.clone(),
                session.address.clone(),
                session.as_number.to_string(),
                session.state.clone(),
                session.since.clone(),
                session.routes_exported.to_string(),
                session.last_error.clone(),
            ]);
        }
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
            "bgp": local_as.map(|a| json!({"routerId": router_id, "asNumber": a})),
            "bgpSessions": bgp.iter().map(|s| json!({
                "peer": s.peer,
                "address": s.address,
                "asNumber": s.as_number,
                "state": s.state,
                "since": s.since,
                "routesSent": s.routes_exported,
                "info": s.last_error,
            })).collect::<Vec<_>>(),
        }));
    }
    match args.output.output {
        OutputFormat::Table => {
            output::print(args.output.output, &table, &json!({}))?;
            if !sessions.is_empty() {
                println!("\nBGP sessions:");
                output::print(args.output.output, &sessions, &json!({}))?;
            }
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
