//! Network policy end to end on the netns lab: namespaces x, y, z × pods a, b, c over 3 nodes,
//! TCP and UDP echo servers on ports 80 and 81 in every pod; for every truth-table case the
//! policies are applied through policy-svc, every pair is probed over every port, and the result
//! must equal the expected matrix (the diff is printed) and agree with policy trace on every cell.
//! Then an allowed long-lived connection survives an unrelated policy change.
//!
//! The same table runs a second time through the Kubernetes path: Namespaces, pod labels and
//! `networking.k8s.io/v1` NetworkPolicies are objects in a Kubernetes API (kube-standin, the
//! tests' stand-in speaking the real list/watch protocol) that the real `kube-sync` binary mirrors,
//! agents take pods' labels from Pod objects; brindle's own policy kinds, which Kubernetes has no
//! object for, still go through `brindle apply`. The matrices must be the same.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use brindle::lab::{EchoServers, Lab, LabSpec, Target, Transport, Workload, probe, serve, test_binaries};
use brindle_proto::policy::v1 as pb;
use k8s_openapi::api::core::v1::{Container, ContainerPort};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube_standin::objects;

mod kubernetes_api;
use kubernetes_api::KubernetesApi;
use policy_api::model::Protocol;
use policy_svc::truth_table::{
    Matrix, NAMESPACES, PODS, PROBES, Probe, Step, load_cases, named_ports, namespaces, pairs, pod_labels,
};

/// How long a probe waits for its echo.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// How long a step may take to show in the data plane.
const CONVERGENCE: Duration = Duration::from_secs(20);

/// What one pod observed: (destination, probe, reachable).
type Observed = Vec<(String, Probe, bool)>;

/// The truth-table world in a lab: pod `ns/pod` → index in `lab.pods`.
struct World {
    lab: Lab,
    pods: BTreeMap<String, usize>,
    inputs: Inputs,
    _servers: Vec<EchoServers>,
}

/// Where namespaces, pod labels and Kubernetes NetworkPolicies are written.
enum Inputs {
    /// policy-svc's API (`brindle apply`, SetEndpointLabels).
    Apply,
    /// A Kubernetes API that kube-sync mirrors.
    Kubernetes(KubernetesApi),
}

impl World {
    /// Whether pod `from` gets an answer to one ping of pod `to`.
    fn pings(&self, from: &str, to: &str) -> bool {
        let (from, to) = (&self.lab.pods[self.pods[from]], &self.lab.pods[self.pods[to]]);
        from.namespace
            .succeeds(&["ping", "-c", "1", "-W", "2", &to.ip.to_string()])
    }

    fn build(kubernetes: bool) -> Self {
        let lab = Lab::up(LabSpec {
            policy: true,
            kubernetes_pods: kubernetes,
            ..LabSpec::new(
                format!("brdt{}{}", std::process::id(), if kubernetes { "k" } else { "p" }),
                test_binaries(),
            )
        })
        .expect("lab up");
        let inputs = if kubernetes {
            Inputs::Kubernetes(kubernetes_api::start(&lab, Duration::from_secs(1)))
        } else {
            Inputs::Apply
        };
        let mut world = Self {
            lab,
            pods: BTreeMap::new(),
            inputs,
            _servers: Vec::new(),
        };
        world.put_namespaces();
        for ns in NAMESPACES {
            for (node, pod) in PODS.iter().enumerate() {
                let name = format!("{ns}/{pod}");
                world.put_pod_labels(&name, pod_labels(pod));
                let workload = Workload {
                    namespace: ns.into(),
                    pod: (*pod).into(),
                    labels: pod_labels(pod).into_iter().collect(),
                    ports: named_ports()
                        .into_iter()
                        .map(|p| (p.name, p.protocol.to_string(), p.port))
                        .collect(),
                    ..Workload::default()
                };
                let lab = &mut world.lab;
                let index = lab
                    .add_workload(node, &workload)
                    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
                world
                    ._servers
                    .push(serve(&lab.pods[index].namespace, &[80, 81]).expect("echo servers"));
                world.pods.insert(name, index);
            }
        }
        world
    }

    fn address(&self, pod: &str) -> Option<IpAddr> {
        self.pods
            .get(pod)
            .map(|index| IpAddr::V4(self.lab.pods[*index].ip))
    }

    /// Probes every pair over every port, all sources at once.
    fn observe(&self) -> Matrix {
        let mut matrix = Matrix::default();
        let results: Vec<(String, Observed)> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .pods
                .keys()
                .map(|from| {
                    scope.spawn(move || {
                        let mut cells = Vec::new();
                        let mut targets = Vec::new();
                        for (source, to) in pairs() {
                            if &source != from {
                                continue;
                            }
                            for probe in PROBES {
                                let transport = if probe.protocol == Protocol::Tcp {
                                    Transport::Tcp
                                } else {
                                    Transport::Udp
                                };
                                targets.push(Target {
                                    ip: self.address(&to).expect("pod"),
                                    transport,
                                    port: probe.port,
                                });
                                cells.push((to.clone(), probe));
                            }
                        }
                        let reached =
                            probe(&self.lab.pods[self.pods[from]].namespace, targets, PROBE_TIMEOUT)
                                .expect("probe");
                        let cells: Observed = cells
                            .into_iter()
                            .zip(reached)
                            .map(|((to, probe), ok)| (to, probe, ok))
                            .collect();
                        (from.clone(), cells)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("prober")).collect()
        });
        for (from, cells) in results {
            for (to, probe, ok) in cells {
                matrix.set(&from, &to, probe, ok);
            }
        }
        matrix
    }

    /// What policy trace says for every cell.
    fn traced(&self) -> Matrix {
        let cells: Vec<(String, String, Probe, String, String)> = pairs()
            .into_iter()
            .flat_map(|(from, to)| {
                let source = self.address(&from).expect("pod").to_string();
                let destination = self.address(&to).expect("pod").to_string();
                PROBES
                    .into_iter()
                    .map(move |p| (from.clone(), to.clone(), p, source.clone(), destination.clone()))
            })
            .collect();
        let verdicts = self
            .lab
            .policy(move |mut client| async move {
                let mut verdicts = Vec::new();
                for (from, to, probe, source, destination) in cells {
                    let request = pb::TraceRequest {
                        source: Some(pb::TracePeer {
                            peer: Some(pb::trace_peer::Peer::Ip(source)),
                        }),
                        destination: Some(pb::TracePeer {
                            peer: Some(pb::trace_peer::Peer::Ip(destination)),
                        }),
                        protocol: probe.protocol.to_string(),
                        port: u32::from(probe.port),
                        source_port: 0,
                        ..Default::default()
                    };
                    let verdict = client.trace(request).await?.into_inner().verdict;
                    verdicts.push((from, to, probe, verdict == pb::Verdict::Allow as i32));
                }
                Ok(verdicts)
            })
            .expect("trace");
        let mut matrix = Matrix::default();
        for (from, to, probe, allow) in verdicts {
            matrix.set(&from, &to, probe, allow);
        }
        matrix
    }

    /// Back to no policies and the initial labels.
    fn reset(&self) {
        let objects = self
            .lab
            .policy(|mut client| async move {
                Ok(client
                    .list(pb::ListRequest::default())
                    .await?
                    .into_inner()
                    .objects)
            })
            .expect("list");
        for object in objects.into_iter().filter(|o| o.kind != "Namespace") {
            self.delete(&object.kind, &object.namespace, &object.name);
        }
        self.put_namespaces();
        for pod in self.pods.keys() {
            let (_, name) = pod.split_once('/').expect("ns/pod");
            self.put_pod_labels(pod, pod_labels(name));
        }
    }

    /// The truth table's namespaces with their initial labels (`ns: <name>`).
    fn put_namespaces(&self) {
        for namespace in namespaces() {
            let labels = namespace
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>();
            self.put_namespace(&namespace.name, &labels);
        }
    }

    fn put_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        match &self.inputs {
            Inputs::Apply => {
                let labels: String = labels.iter().map(|(k, v)| format!("{k}: {v}, ")).collect();
                self.lab
                    .apply(&format!(
                        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"
                    ))
                    .expect("namespace");
            }
            Inputs::Kubernetes(KubernetesApi { api, .. }) => {
                api.put(&objects::namespace(name, labels));
            }
        }
    }

    /// Deletes a policy: in the Kubernetes API when it is a Kubernetes one and that is the path.
    fn delete(&self, kind: &str, namespace: &str, name: &str) {
        if let (Inputs::Kubernetes(KubernetesApi { api, .. }), "KubernetesNetworkPolicy") =
            (&self.inputs, kind)
        {
            api.delete::<NetworkPolicy>(Some(namespace), name);
            return;
        }
        let object = pb::ObjectRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.lab
            .policy(move |mut client| async move {
                client
                    .delete(pb::DeleteRequest {
                        object: Some(object),
                        origin: String::new(),
                    })
                    .await?;
                Ok(())
            })
            .expect("delete");
    }

    /// Sets a pod's labels: SetEndpointLabels, or its Pod object (with its named ports).
    fn put_pod_labels(&self, pod: &str, labels: BTreeMap<String, String>) {
        let (namespace, name) = pod.split_once('/').expect("ns/pod");
        match &self.inputs {
            Inputs::Apply => {
                if !self.pods.contains_key(pod) {
                    return;
                }
                let request = pb::SetEndpointLabelsRequest {
                    namespace: namespace.into(),
                    pod: name.into(),
                    labels: labels.into_iter().collect(),
                };
                self.lab
                    .policy(move |mut client| async move {
                        client.set_endpoint_labels(request).await?;
                        Ok(())
                    })
                    .expect("set labels");
            }
            Inputs::Kubernetes(KubernetesApi { api, .. }) => {
                let node = PODS.iter().position(|p| *p == name).expect("a truth-table pod");
                let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut object = objects::pod(namespace, name, &self.lab.nodes[node].name, &pairs);
                if let Some(spec) = &mut object.spec {
                    spec.containers = vec![Container {
                        name: "serve".into(),
                        ports: Some(
                            named_ports()
                                .into_iter()
                                .map(|p| ContainerPort {
                                    name: Some(p.name),
                                    container_port: i32::from(p.port),
                                    protocol: Some(p.protocol.to_string()),
                                    ..ContainerPort::default()
                                })
                                .collect(),
                        ),
                        ..Container::default()
                    }];
                }
                api.put(&object);
            }
        }
    }

    fn apply_step(&self, step: &Step) {
        let manifest = step.manifest(&|pod| self.address(pod)).expect("manifest");
        let mut applied = Vec::new();
        for document in manifest.split("---\n").filter(|d| !d.trim().is_empty()) {
            match &self.inputs {
                Inputs::Kubernetes(KubernetesApi { api, .. })
                    if document.contains("apiVersion: networking.k8s.io/v1") =>
                {
                    let value: serde_json::Value = yaml_serde::from_str(document).expect("YAML");
                    api.put(
                        &serde_json::from_value::<NetworkPolicy>(value).expect("a Kubernetes NetworkPolicy"),
                    );
                }
                _ => applied.push(document),
            }
        }
        if !applied.is_empty() {
            self.lab.apply(&applied.join("---\n")).expect("apply");
        }
        for reference in &step.delete {
            self.delete(
                reference.api_kind(),
                reference.namespace.as_deref().unwrap_or_default(),
                &reference.name,
            );
        }
        for (name, labels) in &step.namespace_labels {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>();
            self.put_namespace(name, &labels);
        }
        for (pod, labels) in &step.pod_labels {
            self.put_pod_labels(pod, labels.clone());
        }
    }
}

/// A TCP connection held open from inside a pod, echoing on demand.
fn open_connection(
    world: &World,
    from: &str,
    to: &str,
    port: u16,
) -> std::sync::mpsc::Sender<std::sync::mpsc::Sender<bool>> {
    let (requests, incoming) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<bool>>();
    let target = (world.address(to).expect("pod"), port);
    let (ready, connected) = std::sync::mpsc::channel();
    let _thread = world.lab.pods[world.pods[from]].namespace.spawn(move || {
        let mut stream = std::net::TcpStream::connect_timeout(&target.into(), Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let _ = ready.send(());
        for reply in incoming {
            let mut byte = [0u8; 1];
            let ok = stream.write_all(b"k").is_ok() && stream.read_exact(&mut byte).is_ok() && byte == *b"k";
            let _ = reply.send(ok);
        }
        anyhow::Ok(())
    });
    connected.recv_timeout(Duration::from_secs(5)).expect("connected");
    requests
}

fn still_echoes(connection: &std::sync::mpsc::Sender<std::sync::mpsc::Sender<bool>>) -> bool {
    let (reply, answer) = std::sync::mpsc::channel();
    connection.send(reply).is_ok() && answer.recv_timeout(Duration::from_secs(5)).unwrap_or(false)
}

/// Runs every case on `world`; panics naming each difference.
fn run_truth_table(world: &World) {
    let cases = load_cases().expect("cases");
    let mut failures = Vec::new();
    for case in &cases {
        world.reset();
        for (index, step) in case.steps.iter().enumerate() {
            world.apply_step(step);
            let expected = step.expected();
            let deadline = Instant::now() + CONVERGENCE;
            let observed = loop {
                let observed = world.observe();
                if observed == expected || Instant::now() > deadline {
                    break observed;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            let context = format!("{} step {index} ({})", case.name, case.description);
            if let Some(diff) = expected.diff(&observed) {
                failures.push(format!("{context}: probes differ from the expectation:\n{diff}"));
            }
            if let Some(diff) = observed.diff(&world.traced()) {
                failures.push(format!(
                    "{context}: trace (! allows, ? denies) differs from the probes:\n{diff}"
                ));
            }
            // Calico's allow-ping: where TCP and UDP are denied, an echo request (ICMP type 8,
            // code 0) passes the first step's rule and not the second's (type 8, code 1).
            if case.name == "42-calico-icmp" {
                let (expected, pinged) = (index == 0, world.pings("x/a", "y/c"));
                if pinged != expected {
                    failures.push(format!(
                        "{context}: x/a pinging y/c: {pinged}, expected {expected}"
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        panic!(
            "{} of {} cases failed:\n{}\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n"),
            world.lab.logs()
        );
    }
}

#[test]
fn every_truth_table_case_holds_in_the_kernel_and_agrees_with_trace() {
    let world = World::build(false);
    run_truth_table(&world);

    // An allowed long-lived connection survives an unrelated policy change.
    world.reset();
    let connection = open_connection(&world, "x/a", "y/b", 80);
    assert!(still_echoes(&connection));
    world.lab
        .apply("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-z, namespace: z}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n")
        .expect("unrelated policy");
    let deadline = Instant::now() + CONVERGENCE;
    while world.observe().get("x/a", "z/b", PROBES[0]) != Some(false) {
        assert!(Instant::now() < deadline, "the unrelated policy never applied");
    }
    assert!(
        still_echoes(&connection),
        "the established connection was cut by an unrelated change"
    );
}

#[test]
fn the_truth_table_through_the_kubernetes_api_gives_the_same_matrices() {
    let world = World::build(true);
    run_truth_table(&world);
}
