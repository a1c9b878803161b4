//! The crate graph says what the architecture says: the node agent is built from the services'
//! model crates and the Sync protocol's client half, never from a service, the datastore or the
//! etcd client (a node has no business linking them); route-svc reads IPAM's model, not ipam-svc.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Names of the packages `package` depends on for its normal (not dev, not build) dependencies,
/// directly or not, from `cargo metadata`.
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let nodes: BTreeMap<&str, Vec<&str>> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .map(|node| {
            let normal = node["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|dep| {
                    dep["dep_kinds"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|kind| kind["kind"].is_null())
                })
                .map(|dep| dep["pkg"].as_str().expect("pkg"))
                .collect();
            (node["id"].as_str().expect("id"), normal)
        })
        .collect();
    let root = names
        .iter()
        .find(|(_, name)| **name == package)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("no package {package}"));
    let mut seen = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        for dep in nodes.get(id).into_iter().flatten() {
            if seen.insert(*dep) {
                todo.push(dep);
            }
        }
    }
    seen.into_iter().map(|id| names[id].to_owned()).collect()
}

#[test]
fn the_agent_links_no_service_no_datastore_and_route_svc_no_ipam_svc() {
    let agent = normal_dependencies("node-agent");
    for forbidden in [
        "redb",
        "etcd-client",
        "brindle-datastore",
        "brindle-grpc-server",
        "ipam-svc",
        "route-svc",
        "policy-svc",
    ] {
        assert!(!agent.contains(forbidden), "node-agent depends on {forbidden}");
    }
    for model in ["ipam-api", "route-api", "policy-api", "brindle-sync"] {
        assert!(agent.contains(model), "node-agent is built on {model}");
    }
    let route_svc = normal_dependencies("route-svc");
    assert!(!route_svc.contains("ipam-svc"), "route-svc depends on ipam-svc");
    assert!(route_svc.contains("ipam-api"));
}
