//! `brindle lab`: an N-node cluster in network namespaces on one machine — an underlay bridge (or
//! two subnets joined by a router namespace), a control plane (`brindle server` on the embedded
//! store or on etcd), one real `node-agent` per node namespace, pods attached through the real CNI
//! shim, a pool routed directly or over VXLAN / IP-in-IP — and a pod-to-pod reachability matrix.
//! Everything is removed when the lab is dropped. The end-to-end tests use it too.

mod netns;
mod probe;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_proto::ipam::v1 as ipam;
use brindle_proto::policy::v1 as policy;
use brindle_proto::route::v1 as route;

pub use netns::{Namespace, Underlay, run};
pub use probe::{EchoServers, Target, Transport, probe, serve};

/// The underlay subnet of the control plane and the first nodes (inside the lab's namespaces only).
const UNDERLAY: &str = "192.168.200";
/// The second underlay subnet, behind the router, when the lab has two.
const SECOND_UNDERLAY: &str = "192.168.201";
/// Host number of the router on each subnet.
const ROUTER_HOST: u8 = 253;
/// Port of the control plane.
const CONTROL_PORT: u16 = 7400;
/// Port of the control plane's `/metrics`, inside its namespace.
const SERVER_METRICS_PORT: u16 = 9400;
/// Port of every agent's `/metrics`, inside its node's namespace.
const AGENT_METRICS_PORT: u16 = 9404;
/// etcd's client port on the control plane's loopback.
const ETCD_PORT: u16 = 2379;
/// The address of the lab's stand-in for "the internet" (TEST-NET-3, outside every pool).
pub const EXTERNAL_ADDRESS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The IPv6 underlay: node `n`'s address is `fd00:200::<host>`.
const IPV6_UNDERLAY: &str = "fd00:200:";
/// The IPv6 pod pool of a dual-stack lab.
pub const IPV6_POOL: &str = "fd00:244::/112";
/// The CNI network name pods are attached to.
const NETWORK: &str = "brindle-lab";

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Prefix of every namespace (unique per lab).
    pub prefix: String,
    /// Nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// The pod address pool.
    pub pool: String,
    /// Directory with the `brindle`, `node-agent` and `brindle-cni` binaries.
    pub binaries: PathBuf,
    /// How the pool's traffic crosses between nodes.
    pub encapsulation: Encapsulation,
    /// Underlay subnets (1, or 2 joined by a router); nodes alternate between them.
    pub subnets: usize,
    /// Run the control plane on etcd (Debian's `etcd`) instead of the embedded store.
    pub etcd: bool,
    /// Agents register pods with policy-svc and enforce network policy.
    pub policy: bool,
    /// Pods get an IPv6 address too (pool [`IPV6_POOL`], routed like the IPv4 pool: directly over
    /// an IPv6 underlay, or over VXLAN on the IPv4 underlay).
    pub dual_stack: bool,
}

/// A pod to add: its Kubernetes identity, labels and named container ports.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Kubernetes namespace (`K8S_POD_NAMESPACE`); `default` when empty.
    pub namespace: String,
    /// Pod name (`K8S_POD_NAME`); the lab's own name when empty.
    pub pod: String,
    /// Labels (the network configuration's `args.cni.labels`).
    pub labels: Vec<(String, String)>,
    /// Named ports `(name, protocol, port)` (`args.brindle.ports`).
    pub ports: Vec<(String, String, u16)>,
}

/// How the lab pool's traffic crosses between nodes (its vxlanMode / ipipMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Encapsulation {
    /// Routed directly via the node's address (one subnet only).
    #[default]
    Never,
    /// Always over VXLAN.
    Vxlan,
    /// Direct inside a subnet, VXLAN across subnets.
    VxlanCrossSubnet,
    /// Always IP-in-IP (needs the kernel's ipip module).
    Ipip,
    /// Direct inside a subnet, IP-in-IP across subnets.
    IpipCrossSubnet,
}

impl Encapsulation {
    /// The pool's (vxlanMode, ipipMode).
    fn modes(self) -> (ipam::EncapMode, ipam::EncapMode) {
        use ipam::EncapMode::{Always, CrossSubnet, Never};
        match self {
            Self::Never => (Never, Never),
            Self::Vxlan => (Always, Never),
            Self::VxlanCrossSubnet => (CrossSubnet, Never),
            Self::Ipip => (Never, Always),
            Self::IpipCrossSubnet => (Never, CrossSubnet),
        }
    }
}

/// A node of the lab.
pub struct LabNode {
    /// Node name (also its agent's `--node-name`).
    pub name: String,
    /// Its namespace.
    pub namespace: Namespace,
    /// Its underlay address.
    pub address: Ipv4Addr,
    /// Index of its underlay subnet.
    pub subnet: usize,
    agent: Child,
    socket: PathBuf,
}

/// A pod of the lab.
pub struct LabPod {
    /// Pod name.
    pub name: String,
    /// Index of its node.
    pub node: usize,
    /// Its namespace.
    pub namespace: Namespace,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address (dual-stack labs).
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// `namespace/pod` as policy sees it.
    pub workload: String,
}

/// A running lab; dropping it tears everything down.
pub struct Lab {
    spec: LabSpec,
    dir: tempfile::TempDir,
    /// Pods, in creation order (dropped first).
    pub pods: Vec<LabPod>,
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// A namespace standing in for "the internet", once added.
    pub external: Option<Namespace>,
    control: Namespace,
    server: Child,
    etcd: Option<Child>,
    router: Option<Namespace>,
    underlays: Vec<Underlay>,
}

/// The first three octets of underlay subnet `index`.
fn subnet_prefix(index: usize) -> &'static str {
    if index == 0 { UNDERLAY } else { SECOND_UNDERLAY }
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("{what} (waited {timeout:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A process's log file, appended to (a restarted process keeps its earlier lines).
fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

impl Lab {
    /// Builds the lab: underlay, control plane with the pool, nodes, pods.
    pub fn up(spec: LabSpec) -> anyhow::Result<Self> {
        for binary in ["brindle", "node-agent", "brindle-cni"] {
            let path = spec.binaries.join(binary);
            if !path.exists() {
                bail!(
                    "{} is missing (build the workspace's binaries first)",
                    path.display()
                );
            }
        }
        if !(1..=2).contains(&spec.subnets) {
            bail!("a lab has 1 or 2 underlay subnets, not {}", spec.subnets);
        }
        if spec.dual_stack
            && matches!(
                spec.encapsulation,
                Encapsulation::Ipip | Encapsulation::IpipCrossSubnet
            )
        {
            bail!("IP-in-IP carries IPv4 only: a dual-stack lab routes directly or over VXLAN");
        }
        if spec.subnets == 2 && spec.encapsulation == Encapsulation::Never {
            bail!(
                "direct routing cannot cross subnets: with 2 subnets use --encapsulation \
                 vxlan-cross-subnet (or vxlan)"
            );
        }
        let dir = tempfile::Builder::new().prefix("brindle-lab-").tempdir()?;
        let underlays = (1..=spec.subnets)
            .map(|n| Underlay::create(format!("{}-ul{n}", spec.prefix)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let control = Namespace::create(format!("{}-cp", spec.prefix))?;
        underlays[0].plug(&control, "cp", "eth0", &format!("{UNDERLAY}.1/24"))?;
        let router = match &underlays[..] {
            [first, second] => {
                let router = Namespace::create(format!("{}-rt", spec.prefix))?;
                first.plug(&router, "rt", "eth0", &format!("{UNDERLAY}.{ROUTER_HOST}/24"))?;
                second.plug(
                    &router,
                    "rt",
                    "eth1",
                    &format!("{SECOND_UNDERLAY}.{ROUTER_HOST}/24"),
                )?;
                router.sysctl("net.ipv4.ip_forward", "1")?;
                Self::route_to_other_subnet(&control, 0)?;
                Some(router)
            }
            _ => None,
        };
        let etcd = if spec.etcd {
            Some(Self::spawn_etcd(&spec, &control, dir.path())?)
        } else {
            None
        };
        let server = Self::spawn_server(&spec, &control, dir.path())?;
        let mut lab = Self {
            spec,
            dir,
            pods: Vec::new(),
            nodes: Vec::new(),
            external: None,
            control,
            server,
            etcd,
            router,
            underlays,
        };
        lab.create_pool()?;
        for _ in 0..lab.spec.nodes {
            lab.add_node()?;
        }
        for node in 0..lab.nodes.len() {
            for _ in 0..lab.spec.pods_per_node {
                lab.add_pod(node)?;
            }
        }
        Ok(lab)
    }

    /// In a two-subnet lab, routes `namespace` (on subnet `subnet`) to the other subnet via the
    /// router.
    fn route_to_other_subnet(namespace: &Namespace, subnet: usize) -> anyhow::Result<()> {
        let other = subnet_prefix(1 - subnet);
        let router = format!("{}.{ROUTER_HOST}", subnet_prefix(subnet));
        namespace.ip(&["route", "replace", &format!("{other}.0/24"), "via", &router])?;
        Ok(())
    }

    /// Starts a one-member etcd on the control plane's loopback and waits until it accepts
    /// connections.
    fn spawn_etcd(spec: &LabSpec, control: &Namespace, dir: &Path) -> anyhow::Result<Child> {
        let client = format!("http://127.0.0.1:{ETCD_PORT}");
        let peer = format!("http://127.0.0.1:{}", ETCD_PORT + 1);
        let etcd = control
            .command(Path::new("etcd"))
            .arg(format!("--name={}", spec.prefix))
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}={peer}", spec.prefix))
            .stdout(Stdio::null())
            .stderr(log_file(&dir.join("etcd.log"))?)
            .spawn()
            .context("starting etcd (Debian package etcd-server)")?;
        let accepts = || {
            control
                .spawn(|| Ok(std::net::TcpStream::connect(("127.0.0.1", ETCD_PORT)).is_ok()))
                .join()
                .is_ok_and(|connected| connected.unwrap_or(false))
        };
        wait_until("etcd accepting connections", Duration::from_secs(30), accepts)?;
        Ok(etcd)
    }

    fn spawn_server(spec: &LabSpec, control: &Namespace, dir: &Path) -> anyhow::Result<Child> {
        let log = log_file(&dir.join("server.log"))?;
        let mut command = control.command(&spec.binaries.join("brindle"));
        command.args([
            "server",
            "--listen",
            &format!("{UNDERLAY}.1:{CONTROL_PORT}"),
            "--metrics-listen",
            &format!("127.0.0.1:{SERVER_METRICS_PORT}"),
        ]);
        if spec.etcd {
            command.args(["--etcd-endpoints", &format!("http://127.0.0.1:{ETCD_PORT}")]);
        } else {
            command.arg("--store-path").arg(dir.join("store.redb"));
        }
        command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting brindle server")
    }

    /// Stops the control plane (services and datastore): the data plane must keep working.
    pub fn stop_control_plane(&mut self) -> anyhow::Result<()> {
        self.server.kill().context("stopping brindle server")?;
        self.server.wait()?;
        if let Some(etcd) = &mut self.etcd {
            etcd.kill().context("stopping etcd")?;
            etcd.wait()?;
        }
        Ok(())
    }

    /// Starts the control plane again on the same store.
    pub fn start_control_plane(&mut self) -> anyhow::Result<()> {
        if self.etcd.is_some() {
            self.etcd = Some(Self::spawn_etcd(&self.spec, &self.control, self.dir.path())?);
        }
        self.server = Self::spawn_server(&self.spec, &self.control, self.dir.path())?;
        Ok(())
    }

    /// Adds a namespace standing in for "the internet": on the underlay, holding
    /// [`EXTERNAL_ADDRESS`] outside every pool, with no route back to the pods; every node routes
    /// toward it. Returns that address.
    pub fn add_external(&mut self) -> anyhow::Result<Ipv4Addr> {
        let namespace = Namespace::create(format!("{}-ext", self.spec.prefix))?;
        self.underlays[0].plug(&namespace, "ext", "eth0", &format!("{UNDERLAY}.254/24"))?;
        namespace.ip(&["addr", "add", &format!("{EXTERNAL_ADDRESS}/32"), "dev", "lo"])?;
        let external = format!("{EXTERNAL_ADDRESS}/32");
        if let Some(router) = &self.router {
            Self::route_to_other_subnet(&namespace, 0)?;
            router.ip(&["route", "replace", &external, "via", &format!("{UNDERLAY}.254")])?;
        }
        for node in &self.nodes {
            let gateway = match node.subnet {
                0 => format!("{UNDERLAY}.254"),
                _ => format!("{SECOND_UNDERLAY}.{ROUTER_HOST}"),
            };
            node.namespace
                .ip(&["route", "replace", &external, "via", &gateway])?;
        }
        self.external = Some(namespace);
        Ok(EXTERNAL_ADDRESS)
    }

    /// Turns natOutgoing of the lab's pool on or off.
    pub fn set_nat_outgoing(&self, enabled: bool) -> anyhow::Result<()> {
        self.control.block_on(move || async move {
            let mut client = ipam::ipam_client::IpamClient::connect(Self::endpoint()).await?;
            let mut pool = client
                .get_pool(ipam::GetPoolRequest { name: "lab".into() })
                .await?
                .into_inner();
            pool.nat_outgoing = enabled;
            client
                .update_pool(ipam::UpdatePoolRequest { pool: Some(pool) })
                .await?;
            Ok(())
        })
    }

    /// Every registered node with its sync status, from route-svc's `ListNodes`.
    pub fn node_status(&self) -> anyhow::Result<Vec<route::NodeStatus>> {
        self.control.block_on(|| async {
            let mut client = route::routes_client::RoutesClient::connect(Self::endpoint()).await?;
            Ok(client
                .list_nodes(route::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes)
        })
    }

    /// The control plane's address, from inside the lab's namespaces.
    pub fn endpoint() -> String {
        format!("http://{UNDERLAY}.1:{CONTROL_PORT}")
    }

    fn create_pool(&self) -> anyhow::Result<()> {
        let cidr = self.spec.pool.clone();
        let dual_stack = self.spec.dual_stack;
        let (vxlan_mode, ipip_mode) = self.spec.encapsulation.modes();
        self.control.block_on(move || async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut client = loop {
                match ipam::ipam_client::IpamClient::connect(Self::endpoint()).await {
                    Ok(client) => break client,
                    Err(error) if Instant::now() > deadline => {
                        bail!("the control plane did not come up: {error}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let pool = ipam::IpPool {
                name: "lab".into(),
                cidr,
                block_size: 26,
                vxlan_mode: vxlan_mode.into(),
                ipip_mode: ipip_mode.into(),
                ..Default::default()
            };
            client
                .create_pool(ipam::CreatePoolRequest { pool: Some(pool) })
                .await
                .context("creating the lab's pool")?;
            if dual_stack {
                // IPv6 pods go the IPv4 pods' way: directly (over the IPv6 underlay) or over VXLAN.
                let pool = ipam::IpPool {
                    name: "lab-v6".into(),
                    cidr: IPV6_POOL.into(),
                    block_size: 122,
                    vxlan_mode: vxlan_mode.into(),
                    ..Default::default()
                };
                client
                    .create_pool(ipam::CreatePoolRequest { pool: Some(pool) })
                    .await
                    .context("creating the lab's IPv6 pool")?;
            }
            Ok(())
        })
    }

    /// Adds a node (namespace on the underlay, agent registered with the control plane).
    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        let index = self.nodes.len() + 1;
        let name = format!("{}-n{index}", self.spec.prefix);
        let subnet = (index - 1) % self.underlays.len();
        let host = u8::try_from(10 + index)
            .ok()
            .filter(|h| *h < ROUTER_HOST)
            .context("too many nodes")?;
        let address: Ipv4Addr = format!("{}.{host}", subnet_prefix(subnet)).parse()?;
        let namespace = Namespace::create(name.clone())?;
        self.underlays[subnet].plug(&namespace, &format!("n{index}"), "eth0", &format!("{address}/24"))?;
        let mut node_addresses = address.to_string();
        if self.spec.dual_stack {
            let address6 = format!("{IPV6_UNDERLAY}:{host}");
            namespace.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{address6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            node_addresses = format!("{node_addresses},{address6}");
        }
        if self.router.is_some() {
            Self::route_to_other_subnet(&namespace, subnet)?;
        }
        let socket = self.dir.path().join(format!("n{index}.sock"));
        let agent = namespace
            .command(&self.spec.binaries.join("node-agent"))
            .args(["--node-name", &name, "--cni-socket"])
            .arg(&socket)
            .args(["--metrics-listen", &format!("127.0.0.1:{AGENT_METRICS_PORT}")])
            .arg("--state-dir")
            .arg(self.dir.path().join(format!("n{index}")))
            .args([
                "--ipam-endpoint",
                &Self::endpoint(),
                "--route-endpoint",
                &Self::endpoint(),
            ])
            .args([
                "--node-address",
                &node_addresses,
                "--node-subnet",
                &format!("{}.0/24", subnet_prefix(subnet)),
            ])
            .args(if self.spec.policy {
                vec!["--policy-endpoint".to_owned(), Self::endpoint()]
            } else {
                Vec::new()
            })
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir.path().join(format!("{name}.log")))?)
            .spawn()
            .context("starting node-agent")?;
        self.nodes.push(LabNode {
            name,
            namespace,
            address,
            subnet,
            agent,
            socket,
        });
        let node = self.nodes.last().context("node")?;
        wait_until(
            &format!("{}'s agent socket", node.name),
            Duration::from_secs(30),
            || node.socket.exists(),
        )?;
        Ok(self.nodes.len() - 1)
    }

    /// The CNI network configuration of pods on `node`.
    fn network_config(&self, node: &LabNode) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "brindle-cni",
            "agentSocket": node.socket,
            "mtu": 1450,
            "ipam": {"assign_ipv4": "true", "assign_ipv6": if self.spec.dual_stack { "true" } else { "false" }},
        })
    }

    /// The CNI network configuration for pods of node `node` (for running the shim directly: it
    /// needs only the agent's socket, not the node's namespace).
    pub fn cni_config(&self, node: usize) -> anyhow::Result<String> {
        let node = self.nodes.get(node).context("no such node")?;
        Ok(self.network_config(node).to_string())
    }

    /// The processes of the lab: `server` and each node's agent, by name, with their pids.
    pub fn processes(&self) -> Vec<(String, u32)> {
        std::iter::once(("server".to_owned(), self.server.id()))
            .chain(self.nodes.iter().map(|n| (n.name.clone(), n.agent.id())))
            .collect()
    }

    fn cni(
        &self,
        node: &LabNode,
        command: &str,
        pod: &str,
        netns: &Path,
        workload: &Workload,
    ) -> anyhow::Result<(bool, String)> {
        let labels: Vec<serde_json::Value> = workload
            .labels
            .iter()
            .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
            .collect();
        let ports: Vec<serde_json::Value> = workload
            .ports
            .iter()
            .map(|(name, protocol, port)| serde_json::json!({"name": name, "protocol": protocol, "port": port}))
            .collect();
        let mut config = self.network_config(node);
        config["args"] = serde_json::json!({"cni": {"labels": labels}, "brindle": {"ports": ports}});
        let config = config.to_string();
        let mut args = vec!["IgnoreUnknown=1".to_owned()];
        if !workload.namespace.is_empty() {
            args.push(format!("K8S_POD_NAMESPACE={}", workload.namespace));
        }
        if !workload.pod.is_empty() {
            args.push(format!("K8S_POD_NAME={}", workload.pod));
        }
        let mut child = node
            .namespace
            .command(&self.spec.binaries.join("brindle-cni"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.spec.binaries)
            .env("CNI_ARGS", args.join(";"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running brindle-cni")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(config.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// Adds a pod on node `node` through the CNI shim, as containerd would. The pod carries the label `node: <node name>`.
    pub fn add_pod(&mut self, node: usize) -> anyhow::Result<usize> {
        let host = self.nodes.get(node).context("no such node")?;
        let workload = Workload {
            labels: vec![("node".to_owned(), host.name.clone())],
            ..Workload::default()
        };
        self.add_workload(node, &workload)
    }

    /// Adds a pod with a Kubernetes identity, labels and named ports on node `node` through the
    /// CNI shim, as the CRI path of containerd would.
    pub fn add_workload(&mut self, node: usize, workload: &Workload) -> anyhow::Result<usize> {
        let host = self.nodes.get(node).context("no such node")?;
        let name = format!(
            "{}-p{}",
            host.name,
            self.pods.iter().filter(|p| p.node == node).count() + 1
        );
        let namespace = Namespace::create(name.clone())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let result = loop {
            let (ok, result) = self.cni(host, "ADD", &name, &namespace.path(), workload)?;
            if ok {
                break result;
            }
            // 11: the agent is up but its control plane is not reachable yet.
            if Instant::now() > deadline || !result.contains("\"code\":11") {
                bail!("CNI ADD of {name} failed: {result}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let parsed: serde_json::Value = serde_json::from_str(&result).context("CNI result")?;
        let address = parsed["ips"][0]["address"]
            .as_str()
            .context("CNI result without an IP")?;
        let ip = address
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .context("pod IP")?;
        let ipv6 = parsed["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .next();
        let namespace_name = if workload.namespace.is_empty() {
            "default"
        } else {
            &workload.namespace
        };
        let pod_name = if workload.pod.is_empty() {
            &name
        } else {
            &workload.pod
        };
        let workload = format!("{namespace_name}/{pod_name}");
        self.pods.push(LabPod {
            name,
            node,
            namespace,
            ip,
            ipv6,
            workload,
        });
        Ok(self.pods.len() - 1)
    }

    /// Runs `call` with a policy-svc client inside the control plane's namespace.
    pub fn policy<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(policy::policy_client::PolicyClient<tonic::transport::Channel>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        self.control.block_on(move || async move {
            let client = policy::policy_client::PolicyClient::connect(Self::endpoint()).await?;
            call(client).await
        })
    }

    /// Applies a manifest (YAML documents, as `brindle apply` takes) to policy-svc.
    pub fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        let manifest = manifest.to_owned();
        self.policy(move |mut client| async move {
            client
                .apply(policy::ApplyRequest {
                    manifest,
                    namespace: String::new(),
                })
                .await?;
            Ok(())
        })
    }

    /// Whether pod `from` reaches pod `to` (one ping).
    pub fn reaches(&self, from: usize, to: usize) -> bool {
        self.pods[from]
            .namespace
            .succeeds(&["ping", "-c", "1", "-W", "1", &self.pods[to].ip.to_string()])
    }

    /// Whether pod `from` gets a ping answer from pod `to`'s IPv6 address (dual-stack labs).
    pub fn reaches_ipv6(&self, from: usize, to: usize) -> bool {
        self.pods[to].ipv6.is_some_and(|address| {
            self.pods[from]
                .namespace
                .succeeds(&["ping", "-6", "-c", "1", "-W", "1", &address.to_string()])
        })
    }

    /// How node `node` forwards to pod `pod`: the `via … dev …` of `ip route get` inside the node.
    pub fn path(&self, node: usize, pod: usize) -> anyhow::Result<String> {
        let route = self.nodes[node]
            .namespace
            .ip(&["route", "get", &self.pods[pod].ip.to_string()])?;
        let words: Vec<&str> = route.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|at| words.get(at + 1))
                .copied()
        };
        Ok(match (after("via"), after("dev")) {
            (Some(via), Some(dev)) => format!("via {via} dev {dev}"),
            (None, Some(dev)) => format!("dev {dev}"),
            _ => route.trim().to_owned(),
        })
    }

    /// The reachability matrix: `matrix[i][j]` = pod i reaches pod j.
    pub fn matrix(&self) -> Vec<Vec<bool>> {
        self.matrix_of(|from, to| self.reaches(from, to))
    }

    /// The pod-to-pod reachability matrix over IPv6 (dual-stack labs).
    pub fn matrix_ipv6(&self) -> Vec<Vec<bool>> {
        self.matrix_of(|from, to| from == to || self.reaches_ipv6(from, to))
    }

    fn matrix_of(&self, reaches: impl Fn(usize, usize) -> bool) -> Vec<Vec<bool>> {
        (0..self.pods.len())
            .map(|from| (0..self.pods.len()).map(|to| reaches(from, to)).collect())
            .collect()
    }

    /// Waits until every pod reaches every other (routes converge), up to `timeout`.
    pub fn wait_full_mesh(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_full(timeout, "", || self.matrix())
    }

    /// Waits until every pod reaches every other over IPv6 (dual-stack labs; the first packet to
    /// a node's IPv6 address waits for neighbour discovery), up to `timeout`.
    pub fn wait_full_mesh_ipv6(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_full(timeout, " over IPv6", || self.matrix_ipv6())
    }

    fn wait_full(
        &self,
        timeout: Duration,
        over: &str,
        matrix: impl Fn() -> Vec<Vec<bool>>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let matrix = matrix();
            if matrix.iter().all(|row| row.iter().all(|ok| *ok)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pods do not all reach each other{over}:\n{}",
                    self.render(&matrix)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The matrix as a table (rows: from, columns: to).
    pub fn render(&self, matrix: &[Vec<bool>]) -> String {
        let labels: Vec<String> = self
            .pods
            .iter()
            .enumerate()
            .map(|(index, pod)| format!("{index} {} {}", pod.name, pod.ip))
            .collect();
        let width = labels.iter().map(String::len).max().unwrap_or(0).max(9);
        let mut out = format!("{:width$} ", "from \\ to");
        for index in 0..self.pods.len() {
            out.push_str(&format!("{index:>3}"));
        }
        out.push('\n');
        for (label, row) in labels.iter().zip(matrix) {
            out.push_str(&format!("{label:width$} "));
            for ok in row {
                out.push_str(if *ok { "  ✓" } else { "  ✗" });
            }
            out.push('\n');
        }
        out
    }

    /// Logs of the control plane and every agent, for failure reports.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                logs.push_str(&format!("== {}\n", entry.path().display()));
                logs.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        logs
    }

    /// The control plane's namespace (to run clients inside).
    pub fn control(&self) -> &Namespace {
        &self.control
    }

    /// What the control plane's `/metrics` says now.
    pub fn server_metrics(&self) -> anyhow::Result<String> {
        scrape(&self.control, SERVER_METRICS_PORT)
    }

    /// What node `node`'s agent's `/metrics` says now.
    pub fn agent_metrics(&self, node: usize) -> anyhow::Result<String> {
        scrape(&self.nodes[node].namespace, AGENT_METRICS_PORT)
    }
}

/// The body of `GET /metrics` on `port` of the loopback of `namespace`.
fn scrape(namespace: &Namespace, port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    namespace
        .spawn(move || {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
                .with_context(|| format!("connecting to the metrics endpoint on port {port}"))?;
            stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: lab\r\nconnection: close\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
            anyhow::ensure!(
                head.starts_with("HTTP/1.1 200"),
                "metrics endpoint answered {head}"
            );
            Ok(body.to_owned())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the scrape thread panicked"))?
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.agent.kill();
            let _ = node.agent.wait();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
        if let Some(etcd) = &mut self.etcd {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
        // Pods, nodes, control plane and underlay namespaces are deleted as their fields drop.
        self.pods.clear();
    }
}

/// Deletes every namespace whose name starts with `prefix` (a lab that was not torn down).
pub fn down(prefix: &str) -> anyhow::Result<usize> {
    let listed = run("ip", &["netns", "list"])?;
    let mut removed = 0;
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(prefix) {
            run("ip", &["netns", "del", name])?;
            removed += 1;
        }
    }
    Ok(removed)
}
