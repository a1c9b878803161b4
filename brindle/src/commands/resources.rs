//! `brindle apply`, `get` and `delete`: objects of ipam-svc (IP pools, the IPAM configuration, IP
//! reservations) and of policy-svc (namespaces, policies) behind one set of verbs.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use brindle_proto::ipam::v1 as ipam;
use brindle_proto::policy::v1 as policy;
use tonic::Code;

use super::bgp;
use super::connect::{Clients, Service};
use super::kind::{Flavor, Kind};
use super::manifest::{self, Document};
use super::output::{self, Table};
use crate::cli::{ApplyArgs, DeleteArgs, GetArgs, OutputFormat};

/// Reads a manifest file, or standard input for `-`.
fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the manifest from standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn parse_file(path: &Path) -> anyhow::Result<Vec<Document>> {
    let documents = manifest::parse(&read(path)?).with_context(|| path.display().to_string())?;
    anyhow::ensure!(!documents.is_empty(), "{}: no objects in it", path.display());
    Ok(documents)
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let documents = parse_file(&args.file)?;
    let clients = Clients::new(args.client);
    // policy-svc stores its objects all or nothing: they go first, so a policy error leaves
    // everything unchanged. Documents of other services stay in as nulls, so that the positions
    // policy-svc names in errors are the positions in the file.
    let policy_text: Vec<String> = documents
        .iter()
        .map(|d| match d {
            Document::Policy(p) => yaml_serde::to_string(&p.value).map_err(anyhow::Error::from),
            _ => Ok("null\n".to_owned()),
        })
        .collect::<anyhow::Result<_>>()?;
    if documents.iter().any(|d| matches!(d, Document::Policy(_))) {
        let request = policy::ApplyRequest {
            manifest: policy_text.join("---\n"),
            namespace: args.namespace.clone(),
            origin: String::new(),
        };
        let applied = clients
            .policy()
            .await?
            .apply(request)
            .await
            .map_err(|s| clients.failed(Service::Policy, s))?
            .into_inner();
        for object in applied.objects {
            println!("{} applied", object_path(&object));
        }
    }
    for document in documents {
        match document {
            Document::IpPool(pool) => println!("{}", apply_pool(&clients, pool).await?),
            Document::IpamConfig(config) => {
                clients
                    .ipam()
                    .await?
                    .set_config(ipam::SetConfigRequest { config: Some(config) })
                    .await
                    .map_err(|s| clients.failed(Service::Ipam, s))?;
                println!("ipamconfig/default configured");
            }
            Document::IpReservation(reservation) => {
                println!("{}", apply_reservation(&clients, reservation).await?);
            }
            Document::BgpConfiguration(configuration) => {
                println!("{}", bgp::apply_configuration(&clients, configuration).await?);
            }
            Document::BgpPeer(peer) => println!("{}", bgp::apply_peer(&clients, peer).await?),
            Document::Policy(_) => {}
        }
    }
    Ok(())
}

/// Creates the pool, or updates it when it exists; the line to print.
async fn apply_pool(clients: &Clients, pool: ipam::IpPool) -> anyhow::Result<String> {
    let mut client = clients.ipam().await?;
    let name = pool.name.clone();
    let existing = client.get_pool(ipam::GetPoolRequest { name: name.clone() }).await;
    let failed = |s| clients.failed(Service::Ipam, s);
    match existing {
        Ok(_) => {
            client
                .update_pool(ipam::UpdatePoolRequest { pool: Some(pool) })
                .await
                .map_err(failed)?;
            Ok(format!("ippool/{name} configured"))
        }
        Err(status) if status.code() == Code::NotFound => {
            client
                .create_pool(ipam::CreatePoolRequest { pool: Some(pool) })
                .await
                .map_err(failed)?;
            Ok(format!("ippool/{name} created"))
        }
        Err(status) => Err(failed(status)),
    }
}

/// Every reservation ipam-svc holds.
async fn reservations(clients: &Clients) -> anyhow::Result<Vec<ipam::Reservation>> {
    Ok(clients
        .ipam()
        .await?
        .list_reservations(ipam::ListReservationsRequest {})
        .await
        .map_err(|s| clients.failed(Service::Ipam, s))?
        .into_inner()
        .reservations)
}

/// Creates the reservation, or replaces the one of its name; the line to print.
async fn apply_reservation(clients: &Clients, reservation: ipam::Reservation) -> anyhow::Result<String> {
    let name = reservation.name.clone();
    let existed = reservations(clients).await?.iter().any(|r| r.name == name);
    clients
        .ipam()
        .await?
        .create_reservation(ipam::CreateReservationRequest {
            reservation: Some(reservation),
            replace: true,
        })
        .await
        .map_err(|s| clients.failed(Service::Ipam, s))?;
    Ok(format!(
        "ipreservation/{name} {}",
        if existed { "configured" } else { "created" }
    ))
}

async fn get_reservations(
    clients: &Clients,
    name: Option<String>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let mut found = reservations(clients).await?;
    if let Some(name) = &name {
        found.retain(|r| &r.name == name);
        anyhow::ensure!(!found.is_empty(), "ipreservation {name:?} not found");
    }
    let mut table = Table::new(&["NAME", "RESERVED-CIDRS"]);
    let mut manifests = Vec::new();
    for reservation in &found {
        table.row(vec![reservation.name.clone(), reservation.cidrs.join(",")]);
        manifests.push(manifest::ip_reservation_manifest(reservation));
    }
    let value = match (name, manifests.len()) {
        (Some(_), 1) => manifests.remove(0),
        _ => manifest::list(manifests),
    };
    output::print(format, &table, &value)
}

/// `kind/name` or `kind/namespace/name` of a policy-svc object.
fn object_path(object: &policy::Object) -> String {
    let kind = Kind::of_policy_kind(&object.kind).short();
    if object.namespace.is_empty() {
        format!("{kind}/{}", object.name)
    } else {
        format!("{kind}/{}/{}", object.namespace, object.name)
    }
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let kind = Kind::parse(&args.kind)?;
    let clients = Clients::new(args.client);
    let format = args.output.output;
    match kind {
        Kind::IpPool => get_pools(&clients, args.name, format).await,
        Kind::IpReservation => get_reservations(&clients, args.name, format).await,
        Kind::BgpConfiguration => bgp::get_configuration(&clients, format).await,
        Kind::BgpPeer => bgp::get_peers(&clients, args.name, format).await,
        Kind::IpamConfig => {
            let config = clients
                .ipam()
                .await?
                .get_config(ipam::GetConfigRequest {})
                .await
                .map_err(|s| clients.failed(Service::Ipam, s))?
                .into_inner();
            let mut table = Table::new(&[
                "NAME",
                "STRICT-AFFINITY",
                "MAX-BLOCKS-PER-HOST",
                "RELEASE-COOLDOWN",
            ]);
            table.row(vec![
                "default".into(),
                config.strict_affinity.to_string(),
                config.max_blocks_per_host.to_string(),
                format!("{}s", config.release_cooldown_seconds),
            ]);
            output::print(format, &table, &manifest::ipam_config_manifest(&config))
        }
        _ => {
            let namespace = if args.all_namespaces { "" } else { &args.namespace };
            let objects = match &args.name {
                Some(name) => vec![find_policy_object(&clients, kind, namespace, name).await?],
                None => list_policy_objects(&clients, kind, namespace).await?,
            };
            print_policy_objects(kind, args.name.is_some(), args.all_namespaces, &objects, format)
        }
    }
}

async fn get_pools(clients: &Clients, name: Option<String>, format: OutputFormat) -> anyhow::Result<()> {
    let mut client = clients.ipam().await?;
    let failed = |s| clients.failed(Service::Ipam, s);
    let pools = match &name {
        Some(name) => vec![
            client
                .get_pool(ipam::GetPoolRequest { name: name.clone() })
                .await
                .map_err(failed)?
                .into_inner(),
        ],
        None => {
            client
                .list_pools(ipam::ListPoolsRequest {})
                .await
                .map_err(failed)?
                .into_inner()
                .pools
        }
    };
    let mut table = Table::new(&[
        "NAME", "CIDR", "BLOCK", "VXLAN", "IPIP", "NAT", "DISABLED", "NODES",
    ]);
    let mut manifests = Vec::new();
    for pool in &pools {
        let manifest = manifest::ip_pool_manifest(pool);
        let spec = &manifest["spec"];
        let text = |field: &str| spec[field].as_str().unwrap_or("").to_owned();
        table.row(vec![
            pool.name.clone(),
            pool.cidr.clone(),
            pool.block_size.to_string(),
            text("vxlanMode"),
            text("ipipMode"),
            pool.nat_outgoing.to_string(),
            pool.disabled.to_string(),
            if pool.node_selector.is_empty() {
                "all()".into()
            } else {
                pool.node_selector.clone()
            },
        ]);
        manifests.push(manifest);
    }
    let value = match (name, manifests.len()) {
        (Some(_), 1) => manifests.remove(0),
        _ => manifest::list(manifests),
    };
    output::print(format, &table, &value)
}

/// The one object named `name` of `kind` (for NetworkPolicy of either flavour: the one that exists).
async fn find_policy_object(
    clients: &Clients,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> anyhow::Result<policy::Object> {
    let mut client = clients.policy().await?;
    let mut found = Vec::new();
    for policy_kind in kind.policy_kinds() {
        let object = policy::ObjectRef {
            kind: (*policy_kind).to_owned(),
            namespace: kind.namespace_for(namespace),
            name: name.to_owned(),
        };
        match client.get(policy::GetRequest { object: Some(object) }).await {
            Ok(object) => found.push(object.into_inner()),
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(clients.failed(Service::Policy, status)),
        }
    }
    let where_ = if kind.namespaced() {
        format!(" in namespace {namespace}")
    } else {
        String::new()
    };
    match found.len() {
        0 => anyhow::bail!("{} {name:?} not found{where_}", kind.short()),
        1 => Ok(found.remove(0)),
        _ => anyhow::bail!(
            "{name:?}{where_} is both a brindle and a Kubernetes NetworkPolicy: name one kind, \
             networkpolicy.brindle.io or networkpolicy.networking.k8s.io"
        ),
    }
}

async fn list_policy_objects(
    clients: &Clients,
    kind: Kind,
    namespace: &str,
) -> anyhow::Result<Vec<policy::Object>> {
    let request = policy::ListRequest {
        kind: String::new(),
        namespace: kind.namespace_for(namespace),
        origin: String::new(),
    };
    let objects = clients
        .policy()
        .await?
        .list(request)
        .await
        .map_err(|s| clients.failed(Service::Policy, s))?
        .into_inner()
        .objects;
    Ok(objects
        .into_iter()
        .filter(|o| kind.policy_kinds().contains(&o.kind.as_str()))
        .collect())
}

fn print_policy_objects(
    kind: Kind,
    named: bool,
    all_namespaces: bool,
    objects: &[policy::Object],
    format: OutputFormat,
) -> anyhow::Result<()> {
    let mut header = Vec::new();
    if kind.namespaced() && all_namespaces {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    if matches!(kind, Kind::NetworkPolicy(_)) {
        header.push("KIND");
    }
    if kind == Kind::Namespace {
        header.push("LABELS");
    }
    header.push("ORIGIN");
    header.push("REVISION");
    let mut table = Table::new(&header);
    let mut manifests = Vec::new();
    for object in objects {
        let mut row = Vec::new();
        if kind.namespaced() && all_namespaces {
            row.push(object.namespace.clone());
        }
        row.push(object.name.clone());
        if matches!(kind, Kind::NetworkPolicy(_)) {
            row.push(match object.kind.as_str() {
                "KubernetesNetworkPolicy" => "networking.k8s.io/v1".into(),
                _ => "brindle.io/v1".into(),
            });
        }
        let manifest = manifest::yaml_to_json(&object.manifest)?;
        if kind == Kind::Namespace {
            let labels = manifest["metadata"]["labels"].as_object().map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            });
            row.push(labels.filter(|l| !l.is_empty()).unwrap_or_else(|| "-".into()));
        }
        row.push(if object.origin.is_empty() {
            "apply".into()
        } else {
            object.origin.clone()
        });
        row.push(object.revision.to_string());
        table.row(row);
        manifests.push(manifest);
    }
    let value = if named && manifests.len() == 1 {
        manifests.remove(0)
    } else {
        manifest::list(manifests)
    };
    output::print(format, &table, &value)
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let clients = Clients::new(args.client);
    // What to delete, all named before anything is deleted: (kind, namespace, name).
    let targets: Vec<(Kind, String, String)> = match (&args.file, &args.kind) {
        (Some(path), _) => parse_file(path)?
            .into_iter()
            .filter_map(|document| match document {
                Document::IpPool(pool) => Some((Kind::IpPool, String::new(), pool.name)),
                Document::IpReservation(reservation) => {
                    Some((Kind::IpReservation, String::new(), reservation.name))
                }
                Document::IpamConfig(_) => {
                    eprintln!("ipamconfig/default left as it is: it always exists");
                    None
                }
                Document::BgpConfiguration(_) => {
                    eprintln!("bgpconfiguration/default left as it is: it always exists");
                    None
                }
                Document::BgpPeer(peer) => Some((Kind::BgpPeer, String::new(), peer.name)),
                Document::Policy(object) => {
                    let kind = Kind::of_policy_kind(object.kind);
                    let namespace = kind.namespace_for(if object.namespace.is_empty() {
                        &args.namespace
                    } else {
                        &object.namespace
                    });
                    Some((kind, namespace, object.name))
                }
            })
            .collect(),
        (None, Some(kind)) => {
            let kind = Kind::parse(kind)?;
            anyhow::ensure!(
                !matches!(kind, Kind::IpamConfig | Kind::BgpConfiguration),
                "{}/default cannot be deleted: it always exists; apply the settings you want",
                kind.short()
            );
            args.names
                .iter()
                .map(|name| (kind, args.namespace.clone(), name.clone()))
                .collect()
        }
        (None, None) => anyhow::bail!("name a kind and objects, or a manifest with -f"),
    };
    let mut failures = 0;
    for (kind, namespace, name) in targets {
        match delete_one(&clients, kind, &namespace, &name, args.force).await {
            Ok(line) => println!("{line}"),
            Err(error) => {
                eprintln!("error: {error:#}");
                failures += 1;
            }
        }
    }
    anyhow::ensure!(failures == 0, "{failures} objects not deleted");
    Ok(())
}

async fn delete_one(
    clients: &Clients,
    kind: Kind,
    namespace: &str,
    name: &str,
    force: bool,
) -> anyhow::Result<String> {
    if kind == Kind::IpPool {
        clients
            .ipam()
            .await?
            .delete_pool(ipam::DeletePoolRequest {
                name: name.to_owned(),
                force,
            })
            .await
            .map_err(|s| clients.failed(Service::Ipam, s))?;
        return Ok(format!("ippool/{name} deleted"));
    }
    if kind == Kind::BgpPeer {
        return bgp::delete_peer(clients, name).await;
    }
    if kind == Kind::IpReservation {
        clients
            .ipam()
            .await?
            .delete_reservation(ipam::DeleteReservationRequest {
                name: name.to_owned(),
            })
            .await
            .map_err(|s| clients.failed(Service::Ipam, s))?;
        return Ok(format!("ipreservation/{name} deleted"));
    }
    let object = match kind {
        Kind::NetworkPolicy(Flavor::Any) => find_policy_object(clients, kind, namespace, name).await?,
        _ => policy::Object {
            kind: kind
                .policy_kinds()
                .first()
                .copied()
                .unwrap_or_default()
                .to_owned(),
            namespace: kind.namespace_for(namespace),
            name: name.to_owned(),
            ..policy::Object::default()
        },
    };
    let reference = policy::ObjectRef {
        kind: object.kind.clone(),
        namespace: object.namespace.clone(),
        name: object.name.clone(),
    };
    clients
        .policy()
        .await?
        .delete(policy::DeleteRequest {
            object: Some(reference),
            origin: String::new(),
        })
        .await
        .map_err(|s| clients.failed(Service::Policy, s))?;
    Ok(format!("{} deleted", object_path(&object)))
}
