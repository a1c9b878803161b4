//! The reachability truth table shared by the trace tests and the netns lab: a fixed world
//! (namespaces x, y, z × pods a, b, c, TCP and UDP servers on ports 80 and 81), cases read from
//! `policy-svc/truth-table/*.yaml` (steps that apply, delete or relabel, each with the expected
//! reachability), and matrices that print a readable diff.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::PolicyError;
use crate::core::resource::{Resource, parse_documents};
use policy_api::model::{NamedPort, Namespace, PolicyId, Protocol};

/// Namespaces of the world.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// Pods in every namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// What is probed between every pair of pods.
pub const PROBES: [Probe; 4] = [
    Probe {
        protocol: Protocol::Tcp,
        port: 80,
    },
    Probe {
        protocol: Protocol::Tcp,
        port: 81,
    },
    Probe {
        protocol: Protocol::Udp,
        port: 80,
    },
    Probe {
        protocol: Protocol::Udp,
        port: 81,
    },
];

/// A protocol and port a server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// 80 or 81.
    pub port: u16,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.protocol.to_string().to_ascii_lowercase(),
            self.port
        )
    }
}

/// `namespace/pod` of every pod of the world.
pub fn pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |pod| format!("{ns}/{pod}")))
        .collect()
}

/// The namespaces' initial state: label `ns: <name>`.
pub fn namespaces() -> Vec<Namespace> {
    NAMESPACES
        .iter()
        .map(|ns| Namespace::new(*ns, BTreeMap::from([("ns".to_owned(), (*ns).to_owned())])))
        .collect()
}

/// A pod's initial labels: `pod: <name>`.
pub fn pod_labels(pod: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("pod".to_owned(), pod.to_owned())])
}

/// The named container ports every pod has: `serve-<port>-<tcp|udp>`.
pub fn named_ports() -> Vec<NamedPort> {
    PROBES
        .iter()
        .map(|p| NamedPort {
            name: format!("serve-{}-{}", p.port, p.protocol.to_string().to_ascii_lowercase()),
            protocol: p.protocol,
            port: p.port,
        })
        .collect()
}

/// One case: a file of steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// File name without `.yaml`.
    #[serde(skip)]
    pub name: String,
    /// What the case checks (the Kubernetes or brindle rule it stands for).
    pub description: String,
    /// Steps, each checked after it is applied.
    pub steps: Vec<Step>,
}

/// Changes, then the expected reachability.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Step {
    /// Objects to create or replace (any kind `brindle apply` takes). `{{ns/pod}}` in them is
    /// replaced by that pod's address.
    #[serde(default)]
    pub apply: Vec<yaml_serde::Value>,
    /// Policies to delete.
    #[serde(default)]
    pub delete: Vec<PolicyRef>,
    /// New labels of pods (`ns/pod` → labels, replacing the old ones).
    #[serde(default)]
    pub pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// New labels of namespaces (replacing the old ones).
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Exceptions to "everything reachable", applied in order (a later one wins).
    #[serde(default)]
    pub expect: Vec<Expectation>,
}

/// A policy to delete.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// `NetworkPolicy` (Kubernetes), `BrindleNetworkPolicy` or `GlobalNetworkPolicy`.
    pub kind: String,
    /// Namespace (not for global policies).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl PolicyRef {
    /// The kind as policy-svc's API names it.
    pub fn api_kind(&self) -> &str {
        match self.kind.as_str() {
            "NetworkPolicy" => "KubernetesNetworkPolicy",
            "BrindleNetworkPolicy" => "NetworkPolicy",
            other => other,
        }
    }

    /// The policy's id.
    pub fn id(&self) -> Result<PolicyId, String> {
        let namespace = || {
            self.namespace
                .clone()
                .ok_or_else(|| format!("{}: namespace missing", self.name))
        };
        Ok(match self.kind.as_str() {
            "NetworkPolicy" => PolicyId::Kubernetes {
                namespace: namespace()?,
                name: self.name.clone(),
            },
            "BrindleNetworkPolicy" => PolicyId::Namespaced {
                namespace: namespace()?,
                name: self.name.clone(),
            },
            "GlobalNetworkPolicy" => PolicyId::Global {
                name: self.name.clone(),
            },
            other => return Err(format!("unknown kind {other:?}")),
        })
    }
}

/// `from` → `to` over `probes` is (not) reachable. Patterns: `ns/pod` with `*` for either part.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Sender pattern.
    pub from: String,
    /// Receiver pattern.
    pub to: String,
    /// Probes (`tcp/80`, …); omitted: all.
    #[serde(default)]
    pub probes: Option<Vec<String>>,
    /// Whether it is reachable.
    pub allow: bool,
}

fn pattern_matches(pattern: &str, pod: &str) -> bool {
    let (pattern_ns, pattern_pod) = pattern.split_once('/').unwrap_or((pattern, "*"));
    let (ns, name) = pod.split_once('/').unwrap_or((pod, ""));
    (pattern_ns == "*" || pattern_ns == ns) && (pattern_pod == "*" || pattern_pod == name)
}

/// Where the case files are.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("truth-table")
}

/// Every case, by name.
pub fn load_cases() -> Result<Vec<Case>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .map_err(|e| format!("{}: {e}", cases_dir().display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut case: Case =
                yaml_serde::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            case.name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(case)
        })
        .collect()
}

impl Step {
    /// The objects to apply as YAML documents, with `{{ns/pod}}` replaced by `address(ns/pod)`.
    pub fn manifest(&self, address: &dyn Fn(&str) -> Option<IpAddr>) -> Result<String, PolicyError> {
        let mut documents = Vec::new();
        for value in &self.apply {
            let mut text = yaml_serde::to_string(value).map_err(|e| PolicyError::Invalid {
                field: "apply".to_owned(),
                reason: e.to_string(),
            })?;
            for pod in pods() {
                if let Some(ip) = address(&pod) {
                    text = text.replace(&format!("{{{{{pod}}}}}"), &ip.to_string());
                }
            }
            documents.push(text);
        }
        Ok(documents.join("---\n"))
    }

    /// The objects to apply (see [`Step::manifest`]).
    pub fn resources(&self, address: &dyn Fn(&str) -> Option<IpAddr>) -> Result<Vec<Resource>, PolicyError> {
        parse_documents(&self.manifest(address)?, "")
    }

    /// The expected matrix.
    pub fn expected(&self) -> Matrix {
        let mut matrix = Matrix::default();
        for (from, to) in pairs() {
            for probe in PROBES {
                let mut allow = true;
                for e in &self.expect {
                    let probe_listed = e.probes.as_ref().is_none_or(|p| p.contains(&probe.to_string()));
                    if pattern_matches(&e.from, &from) && pattern_matches(&e.to, &to) && probe_listed {
                        allow = e.allow;
                    }
                }
                matrix.set(&from, &to, probe, allow);
            }
        }
        matrix
    }
}

/// Every ordered pair of distinct pods (a pod reaching itself never leaves its namespace, so no
/// policy applies and nothing is probed).
pub fn pairs() -> Vec<(String, String)> {
    let pods = pods();
    pods.iter()
        .flat_map(|from| {
            pods.iter()
                .filter(move |to| *to != from)
                .map(move |to| (from.clone(), to.clone()))
        })
        .collect()
}

/// Reachability of every pair over every probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matrix(BTreeMap<(String, String, Probe), bool>);

impl Matrix {
    /// Records one cell.
    pub fn set(&mut self, from: &str, to: &str, probe: Probe, allow: bool) {
        self.0.insert((from.to_owned(), to.to_owned(), probe), allow);
    }

    /// One cell.
    pub fn get(&self, from: &str, to: &str, probe: Probe) -> Option<bool> {
        self.0.get(&(from.to_owned(), to.to_owned(), probe)).copied()
    }

    /// `None` when equal; else, per probe that differs, a table (rows: from, columns: to) where
    /// `.` is reachable, `X` is not, `!` observed reachable but expected not, `?` the other way,
    /// `-` a pod and itself (not probed).
    pub fn diff(&self, observed: &Matrix) -> Option<String> {
        if self == observed {
            return None;
        }
        let pods = pods();
        let mut out = String::new();
        for probe in PROBES {
            if pods.iter().all(|f| {
                pods.iter()
                    .all(|t| self.get(f, t, probe) == observed.get(f, t, probe))
            }) {
                continue;
            }
            let _ = writeln!(
                out,
                "{probe} (rows from, columns to; . reachable, X not; ! reachable but expected not, ? expected but not reachable):"
            );
            let _ = writeln!(out, "      {}", pods.join(" "));
            for from in &pods {
                let _ = write!(out, "  {from}");
                for to in &pods {
                    let cell = match (self.get(from, to, probe), observed.get(from, to, probe)) {
                        (Some(true), Some(true)) => '.',
                        (Some(false), Some(false)) => 'X',
                        (Some(false), Some(true)) => '!',
                        (Some(true), Some(false)) => '?',
                        _ => '-',
                    };
                    let _ = write!(out, "  {cell} ");
                }
                out.push('\n');
            }
        }
        Some(out)
    }
}
