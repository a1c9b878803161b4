//! The Kubernetes path end to end on the netns lab (3 nodes, pods through the real shim, real
//! agents, `brindle server`, the real `kube-sync` binary). No Kubernetes API server can be
//! installed here: the API is kube-standin (test support, never shipped), which speaks the real
//! list/watch protocol; kube-sync's client is the real, unmodified kube-rs.
//!
//! Pods get their labels from Pod objects, not CNI args; a NetworkPolicy created in the API
//! changes the reachability matrix and deleting it restores it; relabelling a pod or a namespace
//! moves traffic in and out of a policy; kube-sync SIGKILLed, a policy deleted meanwhile,
//! kube-sync restarted → the matrix is back without it; a forced 410 Gone re-lists with nothing
//! lost or left over; an ADD whose Pod arrives 2 s late succeeds with the right labels, one whose
//! Pod never arrives fails with code 11; a deleted Node has its addresses released and `ipam
//! check` stays clean; a Node's labels select the pool (`nodeSelector`) its pods' addresses may
//! come from.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use brindle::lab::{
    EchoServers, Lab, LabSpec, Namespace, Target, Transport, Workload, probe, serve, test_binaries,
};
use brindle_proto::policy::v1 as pb;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use kube_standin::StandIn;

mod kubernetes_api;
use kube_standin::objects::{meta, namespace, node, pod, selector};
use kubernetes_api::KubernetesApi;

const CONVERGENCE: Duration = Duration::from_secs(20);

/// x/a admits only peers matching `from` (a list of peers: pod or namespace selectors).
fn guard_a(name: &str, from: Vec<NetworkPolicyPeer>) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(Some("x"), name, &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: selector(&[("app", "a")]),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ..NetworkPolicyIngressRule::default()
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn pods_labelled(labels: &[(&str, &str)]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: selector(labels),
        ..NetworkPolicyPeer::default()
    }
}

fn namespaces_labelled(labels: &[(&str, &str)]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: selector(labels),
        ..NetworkPolicyPeer::default()
    }
}

struct World {
    lab: Lab,
    kubernetes: KubernetesApi,
    /// (workload "ns/pod", lab pod index).
    pods: Vec<(String, usize)>,
    _servers: Vec<EchoServers>,
}

impl World {
    /// Which (from, to) pairs cannot reach each other on TCP 80.
    fn blocked(&self) -> BTreeSet<(String, String)> {
        let mut blocked = BTreeSet::new();
        for (from, source) in &self.pods {
            let targets: Vec<Target> = self
                .pods
                .iter()
                .map(|(_, index)| Target {
                    ip: self.lab.pods[*index].ip.into(),
                    transport: Transport::Tcp,
                    port: 80,
                })
                .collect();
            let reached = probe(
                &self.lab.pods[*source].namespace,
                targets,
                Duration::from_millis(700),
            )
            .expect("probe");
            for ((to, _), reached) in self.pods.iter().zip(reached) {
                if !reached && from != to {
                    blocked.insert((from.clone(), to.clone()));
                }
            }
        }
        blocked
    }

    fn expect_blocked(&self, what: &str, expected: &[(&str, &str)]) {
        let expected: BTreeSet<(String, String)> = expected
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        let deadline = Instant::now() + CONVERGENCE;
        loop {
            let blocked = self.blocked();
            if blocked == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: blocked {blocked:?}, expected {expected:?}\n{}",
                self.lab.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn labels_of(&self, pod: &str) -> Vec<(String, String)> {
        let pod = pod.to_owned();
        self.lab
            .policy(move |mut client| async move {
                let endpoints = client
                    .list_endpoints(pb::ListEndpointsRequest::default())
                    .await?
                    .into_inner()
                    .endpoints;
                Ok(endpoints
                    .into_iter()
                    .filter(|e| format!("{}/{}", e.namespace, e.pod) == pod)
                    .flat_map(|e| e.labels.into_iter())
                    .collect())
            })
            .expect("endpoints")
    }
}

fn build() -> World {
    let mut lab = Lab::up(LabSpec {
        policy: true,
        kubernetes_pods: true,
        ..LabSpec::new(format!("brdk{}", std::process::id()), test_binaries())
    })
    .expect("lab up");
    let kubernetes = kubernetes_api::start(&lab, Duration::from_millis(500));
    let api = &kubernetes.api;
    api.put(&namespace("x", &[]));
    api.put(&namespace("y", &[]));
    let placement = [("x", "a", 0), ("x", "b", 1), ("y", "c", 2)];
    for (index, lab_node) in lab.nodes.iter().enumerate() {
        api.put(&node(&lab_node.name, &[("zone", &format!("z{index}"))]));
    }
    for (ns, name, node) in placement {
        let node = lab.nodes[node].name.clone();
        api.put(&pod(ns, name, &node, &[("app", name)]));
    }
    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for (ns, name, node) in placement {
        // The CNI args claim another label: the Pod object's must win.
        let workload = Workload {
            namespace: ns.into(),
            pod: name.into(),
            labels: vec![("app".into(), "claimed-by-cni-args".into())],
            ..Workload::default()
        };
        let index = lab
            .add_workload(node, &workload)
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
        servers.push(serve(&lab.pods[index].namespace, &[80]).expect("echo server"));
        pods.push((format!("{ns}/{name}"), index));
    }
    World {
        lab,
        kubernetes,
        pods,
        _servers: servers,
    }
}

#[test]
fn kubernetes_objects_drive_labels_policy_and_node_lifecycle_end_to_end() {
    let world = build();
    let api = &world.kubernetes.api;
    for (pod, _) in &world.pods {
        let app = pod.rsplit('/').next().unwrap_or_default();
        assert!(
            world.labels_of(pod).contains(&("app".to_owned(), app.to_owned())),
            "{pod} carries its Pod's labels, not the CNI args': {:?}",
            world.labels_of(pod)
        );
    }
    world.expect_blocked("no policy", &[]);

    // A NetworkPolicy created in the API: x/a admits only pods labelled role=client.
    api.put(&guard_a(
        "a-from-clients",
        vec![pods_labelled(&[("role", "client")])],
    ));
    world.expect_blocked("x/a guarded", &[("x/b", "x/a"), ("y/c", "x/a")]);

    // Relabelling a pod in the API moves it into the policy's peers.
    let b_node = world.lab.nodes[1].name.clone();
    api.put(&pod("x", "b", &b_node, &[("app", "b"), ("role", "client")]));
    world.expect_blocked("x/b relabelled a client", &[("y/c", "x/a")]);

    // Relabelling a namespace in the API: a second policy admits namespaces labelled team=friends.
    api.put(&guard_a(
        "a-from-friends",
        vec![namespaces_labelled(&[("team", "friends")])],
    ));
    api.put(&namespace("y", &[("team", "friends")]));
    world.expect_blocked("namespace y relabelled friends", &[]);
    api.put(&namespace("y", &[]));
    world.expect_blocked("namespace y no longer friends", &[("y/c", "x/a")]);

    // Deleting the policy restores the matrix.
    api.delete::<NetworkPolicy>(Some("x"), "a-from-friends");
    api.delete::<NetworkPolicy>(Some("x"), "a-from-clients");
    world.expect_blocked("policies deleted", &[]);

    // kube-sync SIGKILLed; a policy made and deleted meanwhile, another left; kube-sync restarted.
    api.put(&guard_a("while-away", vec![pods_labelled(&[("role", "nobody")])]));
    world.expect_blocked("x/a guarded again", &[("x/b", "x/a"), ("y/c", "x/a")]);
    world.lab.kill("kube-sync").expect("kill kube-sync");
    api.delete::<NetworkPolicy>(Some("x"), "while-away");
    world.lab.restart("kube-sync").expect("restart kube-sync");
    world.expect_blocked("the policy deleted while kube-sync was down is gone", &[]);

    // A forced 410 Gone: the watches stall, changes pile up, the history is compacted.
    let before = api.requests();
    api.hold_watches(true);
    api.put(&guard_a("during-410", vec![pods_labelled(&[("role", "client")])]));
    api.put(&pod("x", "b", &b_node, &[("app", "b")]));
    api.compact();
    world.expect_blocked("after the re-list", &[("x/b", "x/a"), ("y/c", "x/a")]);
    let after = api.requests();
    assert!(
        after.gone > before.gone && after.lists > before.lists,
        "{before:?} → {after:?}"
    );
    api.delete::<NetworkPolicy>(Some("x"), "during-410");
    world.expect_blocked("policy deleted", &[]);

    // An ADD whose Pod arrives 2 s late succeeds with the Pod's labels.
    let mut world = world;
    let late_node = world.lab.nodes[0].name.clone();
    let World { lab, kubernetes, .. } = &mut world;
    let api: &StandIn = &kubernetes.api;
    let added = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            api.put(&pod("x", "late", &late_node, &[("app", "late")]));
        });
        let workload = Workload {
            namespace: "x".into(),
            pod: "late".into(),
            ..Workload::default()
        };
        lab.add_workload(0, &workload)
    });
    added.unwrap_or_else(|e| panic!("the late pod's ADD: {e}\n{}", world.lab.logs()));
    assert!(
        world
            .labels_of("x/late")
            .contains(&("app".to_owned(), "late".to_owned())),
        "{:?}",
        world.labels_of("x/late")
    );

    // One whose Pod never arrives fails with code 11 naming the pod.
    let netns = Namespace::create(format!("brdk{}-ghost", std::process::id())).expect("netns");
    let ghost = Workload {
        namespace: "x".into(),
        pod: "ghost".into(),
        ..Workload::default()
    };
    let (ok, printed) = world
        .lab
        .cni(0, "ADD", "ghost-sandbox", &netns.path(), &ghost)
        .expect("the shim ran");
    assert!(
        !ok && printed.contains("\"code\":11") && printed.contains("x/ghost"),
        "{printed}"
    );
    let _ = world.lab.cni(0, "DEL", "ghost-sandbox", &netns.path(), &ghost);

    // A Node's labels reach IPAM: a pool only nodes of zone z1 may use, chosen by a pod's
    // annotation, gives addresses on node 1 and refuses node 0.
    let pool = "apiVersion: brindle.io/v1\nkind: IPPool\nmetadata: {name: zone-1}\n\
                spec: {cidr: 10.245.0.0/24, blockSize: 26, nodeSelector: \"zone == 'z1'\"}\n";
    let mut apply = world.lab.cli(&["apply", "-f", "-"]);
    let mut child = apply
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("brindle apply");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), pool.as_bytes()).expect("manifest");
    let applied = child.wait_with_output().expect("brindle apply");
    assert!(applied.status.success(), "{applied:?}");
    for (index, name) in [(1, "picky"), (0, "misplaced")] {
        let mut object = pod("x", name, &world.lab.nodes[index].name.clone(), &[("app", name)]);
        object.metadata.annotations = Some(
            [(
                "cni.projectcalico.org/ipv4pools".to_owned(),
                "[\"zone-1\"]".to_owned(),
            )]
            .into(),
        );
        world.kubernetes.api.put(&object);
    }
    let picky = Workload {
        namespace: "x".into(),
        pod: "picky".into(),
        ..Workload::default()
    };
    let index = world
        .lab
        .add_workload(1, &picky)
        .unwrap_or_else(|e| panic!("a z1 node uses the z1 pool: {e}\n{}", world.lab.logs()));
    let address = world.lab.pods[index].ip.to_string();
    assert!(
        address.starts_with("10.245.0."),
        "{address} is not from pool zone-1"
    );
    let netns = Namespace::create(format!("brdk{}-misplaced", std::process::id())).expect("netns");
    let misplaced = Workload {
        namespace: "x".into(),
        pod: "misplaced".into(),
        ..Workload::default()
    };
    let (ok, printed) = world
        .lab
        .cni(0, "ADD", "misplaced-sandbox", &netns.path(), &misplaced)
        .expect("the shim ran");
    assert!(
        !ok && printed.contains("zone-1"),
        "a z0 node may not use the z1 pool: {printed}"
    );
    let _ = world
        .lab
        .cni(0, "DEL", "misplaced-sandbox", &netns.path(), &misplaced);

    // A Node deleted from Kubernetes: its addresses are released, `ipam check` stays clean.
    let in_use = world.lab.addresses_in_use().expect("ipam show");
    let gone = world.lab.nodes[2].name.clone();
    world.kubernetes.api.delete::<Node>(None, &gone);
    let deadline = Instant::now() + CONVERGENCE;
    while world.lab.addresses_in_use().expect("ipam show") != in_use - 1 {
        assert!(
            Instant::now() < deadline,
            "node {gone}'s pod address was not released\n{}",
            world.lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        world.lab.ipam_problems().expect("ipam check"),
        None,
        "ipam check is clean"
    );
}
