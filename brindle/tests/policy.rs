//! Network policy end to end on the netns lab: namespaces x, y, z × pods a, b, c over 3 nodes,
//! TCP and UDP echo servers on ports 80 and 81 in every pod; for every truth-table case the
//! policies are applied through policy-svc, every pair is probed over every port, and the result
//! must equal the expected matrix (the diff is printed) and agree with policy trace on every cell.
//! Then an allowed long-lived connection survives an unrelated policy change.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use brindle::lab::{EchoServers, Lab, LabSpec, Target, Transport, Workload, probe, serve, test_binaries};
use brindle_proto::policy::v1 as pb;
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
    _servers: Vec<EchoServers>,
}

impl World {
    fn build() -> Self {
        let mut lab = Lab::up(LabSpec {
            policy: true,
            ..LabSpec::new(format!("brdt{}p", std::process::id()), test_binaries())
        })
        .expect("lab up");
        lab.apply(&namespace_manifest()).expect("namespaces");
        let mut pods = BTreeMap::new();
        let mut servers = Vec::new();
        for ns in NAMESPACES {
            for (node, pod) in PODS.iter().enumerate() {
                let workload = Workload {
                    namespace: ns.into(),
                    pod: (*pod).into(),
                    labels: pod_labels(pod).into_iter().collect(),
                    ports: named_ports()
                        .into_iter()
                        .map(|p| (p.name, p.protocol.to_string(), p.port))
                        .collect(),
                };
                let index = lab
                    .add_workload(node, &workload)
                    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
                servers.push(serve(&lab.pods[index].namespace, &[80, 81]).expect("echo servers"));
                pods.insert(format!("{ns}/{pod}"), index);
            }
        }
        Self {
            lab,
            pods,
            _servers: servers,
        }
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
        self.lab.apply(&namespace_manifest()).expect("namespaces");
        for pod in self.pods.keys() {
            let (ns, name) = pod.split_once('/').expect("ns/pod");
            self.set_labels(ns, name, pod_labels(name));
        }
    }

    fn delete(&self, kind: &str, namespace: &str, name: &str) {
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

    fn set_labels(&self, namespace: &str, pod: &str, labels: BTreeMap<String, String>) {
        let request = pb::SetEndpointLabelsRequest {
            namespace: namespace.into(),
            pod: pod.into(),
            labels: labels.into_iter().collect(),
        };
        self.lab
            .policy(move |mut client| async move {
                client.set_endpoint_labels(request).await?;
                Ok(())
            })
            .expect("set labels");
    }

    fn apply_step(&self, step: &Step) {
        let manifest = step.manifest(&|pod| self.address(pod)).expect("manifest");
        if !manifest.trim().is_empty() {
            self.lab.apply(&manifest).expect("apply");
        }
        for reference in &step.delete {
            self.delete(
                reference.api_kind(),
                reference.namespace.as_deref().unwrap_or_default(),
                &reference.name,
            );
        }
        for (name, labels) in &step.namespace_labels {
            let labels: String = labels.iter().map(|(k, v)| format!("{k}: {v}, ")).collect();
            self.lab
                .apply(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"
                ))
                .expect("namespace labels");
        }
        for (pod, labels) in &step.pod_labels {
            let (ns, name) = pod.split_once('/').expect("ns/pod");
            self.set_labels(ns, name, labels.clone());
        }
    }
}

fn namespace_manifest() -> String {
    namespaces()
        .iter()
        .map(|ns| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {{ns: {}}}}}\n",
                ns.name, ns.name
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
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

#[test]
fn every_truth_table_case_holds_in_the_kernel_and_agrees_with_trace() {
    let world = World::build();
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
