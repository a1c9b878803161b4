//! `brindle lab`: an N-node cluster in network namespaces on one machine — an underlay bridge (or
//! two subnets joined by a router namespace), a control plane (`brindle server`, or ipam-svc,
//! route-svc and policy-svc as separate processes, on the embedded store or on an etcd cluster of
//! one or more members), one real `node-agent` per node namespace, pods attached through the real
//! CNI shim, a pool routed directly or over VXLAN / IP-in-IP — and a pod-to-pod reachability
//! matrix. Every daemon can be killed and restarted, a node cut off from the control plane.
//! Everything is removed when the lab is dropped. The end-to-end and chaos tests use it too.

mod netns;
mod probe;
mod process;

use std::ffi::OsString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_proto::ipam::v1 as ipam;
use brindle_proto::policy::v1 as policy;
use brindle_proto::route::v1 as route;

pub use netns::{Namespace, Underlay, run};
pub use probe::{EchoServers, Target, Transport, probe, serve};
use process::{Process, Role};

/// The underlay subnet of the control plane and the first nodes (inside the lab's namespaces only).
const UNDERLAY: &str = "192.168.200";
/// The second underlay subnet, behind the router, when the lab has two.
const SECOND_UNDERLAY: &str = "192.168.201";
/// Host number of the router on each subnet.
const ROUTER_HOST: u8 = 253;
/// Port of `brindle server` (every service).
const CONTROL_PORT: u16 = 7400;
/// Port of `brindle server`'s `/metrics`, inside its namespace.
const SERVER_METRICS_PORT: u16 = 9400;
/// Port of every agent's `/metrics`, inside its node's namespace.
const AGENT_METRICS_PORT: u16 = 9404;
/// The first etcd member's client port on the control plane's loopback; member `i` (from 0)
/// listens for clients on `ETCD_PORT + 2i` and for peers on `ETCD_PORT + 2i + 1`.
const ETCD_PORT: u16 = 2379;
/// The address of the lab's stand-in for "the internet" (TEST-NET-3, outside every pool).
pub const EXTERNAL_ADDRESS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The IPv6 underlay: node `n`'s address is `fd00:200::<host>`.
const IPV6_UNDERLAY: &str = "fd00:200:";
/// The IPv6 pod pool of a dual-stack lab.
pub const IPV6_POOL: &str = "fd00:244::/112";
/// Seconds between the agents' re-reads of the kernel (90 by default; short here, so a test sees
/// what was changed behind an agent's back repaired at the next keepalive tick, every 10 s).
const AGENT_RESYNC_INTERVAL: &str = "5";
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
    /// Members of the etcd cluster (Debian's `etcd`) the control plane runs on; 0: the
    /// embedded store.
    pub etcd_members: usize,
    /// Whether the services run in one process or each in its own.
    pub control_plane: ControlPlane,
    /// Agents register pods with policy-svc and enforce network policy.
    pub policy: bool,
    /// Pods get an IPv6 address too (pool [`IPV6_POOL`], routed like the IPv4 pool: directly over
    /// an IPv6 underlay, or over VXLAN on the IPv4 underlay).
    pub dual_stack: bool,
}

impl LabSpec {
    /// A lab whose namespaces start with `prefix`, run from the binaries in `binaries`: 3 nodes
    /// without pods, pool 10.244.0.0/16 routed directly on one subnet, `brindle server` on the
    /// embedded store, no policy, IPv4 only. Callers change the fields they need.
    pub fn new(prefix: String, binaries: PathBuf) -> Self {
        Self {
            prefix,
            nodes: 3,
            pods_per_node: 0,
            pool: "10.244.0.0/16".into(),
            binaries,
            encapsulation: Encapsulation::Never,
            subnets: 1,
            etcd_members: 0,
            control_plane: ControlPlane::AllInOne,
            policy: false,
            dual_stack: false,
        }
    }
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

/// How the lab's control plane runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ControlPlane {
    /// One `brindle server` process serving every service.
    #[default]
    AllInOne,
    /// `ipam-svc`, `route-svc` and `policy-svc`, each its own process (each can fail alone).
    Separate,
}

/// A control-plane service, as agents and clients address it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// ipam-svc.
    Ipam,
    /// route-svc.
    Route,
    /// policy-svc.
    Policy,
}

impl Service {
    const ALL: [Self; 3] = [Self::Ipam, Self::Route, Self::Policy];

    /// Its binary (and its process's name when it runs on its own).
    pub fn binary(self) -> &'static str {
        match self {
            Self::Ipam => "ipam-svc",
            Self::Route => "route-svc",
            Self::Policy => "policy-svc",
        }
    }

    /// Its gRPC port when it runs on its own (the binaries' defaults); its `/metrics` port is
    /// 2000 higher.
    fn port(self) -> u16 {
        match self {
            Self::Ipam => 7401,
            Self::Route => 7402,
            Self::Policy => 7403,
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
    /// etcd members, services and agents, in start order (stopped in reverse).
    processes: Mutex<Vec<Process>>,
    router: Option<Namespace>,
    underlays: Vec<Underlay>,
}

/// The directory of the workspace's binaries as a test executable sees it
/// (`target/<profile>/deps/<test>` → `target/<profile>`; `scripts/test.sh` builds them first).
pub fn test_binaries() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .unwrap_or_default()
}

/// The client port of etcd member `member` (from 0); its peer port is the next one.
fn etcd_client_port(member: usize) -> u16 {
    ETCD_PORT + 2 * u16::try_from(member).unwrap_or(u16::MAX / 4)
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

impl Lab {
    /// Builds the lab: underlay, control plane with the pool, nodes, pods.
    pub fn up(spec: LabSpec) -> anyhow::Result<Self> {
        let services = match spec.control_plane {
            ControlPlane::AllInOne => vec!["brindle"],
            ControlPlane::Separate => Service::ALL.iter().map(|s| s.binary()).collect(),
        };
        for binary in ["brindle", "node-agent", "brindle-cni"]
            .into_iter()
            .chain(services)
        {
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
        if spec.control_plane == ControlPlane::Separate && spec.etcd_members == 0 {
            bail!(
                "separate services share their datastore over etcd: give --etcd with \
                 --control-plane separate (the embedded store is one process's file)"
            );
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
        let mut lab = Self {
            spec,
            dir,
            pods: Vec::new(),
            nodes: Vec::new(),
            external: None,
            control,
            processes: Mutex::new(Vec::new()),
            router,
            underlays,
        };
        lab.start_control_plane()?;
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

    fn processes(&self) -> MutexGuard<'_, Vec<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `program args…` in `namespace` as lab process `name`, logging to `<name>.log`.
    fn launch(
        &self,
        name: &str,
        role: Role,
        namespace: &Namespace,
        program: &Path,
        args: Vec<OsString>,
    ) -> anyhow::Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let process = Process::start(name, role, &namespace.name, program, args, log)?;
        self.processes().push(process);
        Ok(())
    }

    /// The client URLs of the etcd members.
    fn etcd_endpoints(&self) -> Vec<String> {
        (0..self.spec.etcd_members)
            .map(|member| format!("http://127.0.0.1:{}", etcd_client_port(member)))
            .collect()
    }

    /// Starts the control plane: the etcd members (the first time: a new cluster) until each
    /// accepts connections, then the services. Running processes are left alone, so this also
    /// restarts what [`Self::stop_control_plane`] or a kill stopped.
    pub fn start_control_plane(&self) -> anyhow::Result<()> {
        if self.processes().is_empty() {
            self.launch_etcd()?;
            self.wait_for_etcd()?;
            self.launch_services()
        } else {
            self.start_role(Role::Etcd)?;
            self.wait_for_etcd()?;
            self.start_role(Role::Service)
        }
    }

    /// Stops the control plane (services and datastore): the data plane must keep working.
    pub fn stop_control_plane(&self) -> anyhow::Result<()> {
        for process in self.processes().iter_mut().rev() {
            if process.role != Role::Agent {
                process.kill()?;
            }
        }
        Ok(())
    }

    fn start_role(&self, role: Role) -> anyhow::Result<()> {
        self.processes()
            .iter_mut()
            .filter(|p| p.role == role)
            .try_for_each(Process::spawn)
    }

    fn launch_etcd(&self) -> anyhow::Result<()> {
        let members = self.spec.etcd_members;
        let peer = |member: usize| format!("http://127.0.0.1:{}", etcd_client_port(member) + 1);
        let cluster: Vec<String> = (0..members)
            .map(|member| format!("etcd-{}={}", member + 1, peer(member)))
            .collect();
        for member in 0..members {
            let name = format!("etcd-{}", member + 1);
            let client = format!("http://127.0.0.1:{}", etcd_client_port(member));
            let args = [
                format!("--name={name}"),
                format!("--data-dir={}", self.dir.path().join(&name).display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={}", peer(member)),
                format!("--initial-advertise-peer-urls={}", peer(member)),
                format!("--initial-cluster={}", cluster.join(",")),
                format!("--initial-cluster-token={}", self.spec.prefix),
            ];
            self.launch(
                &name,
                Role::Etcd,
                &self.control,
                Path::new("etcd"),
                args.into_iter().map(OsString::from).collect(),
            )
            .context("starting etcd (Debian package etcd-server)")?;
        }
        Ok(())
    }

    /// Waits until every etcd member accepts connections.
    fn wait_for_etcd(&self) -> anyhow::Result<()> {
        for member in 0..self.spec.etcd_members {
            let port = etcd_client_port(member);
            let accepts = || {
                self.control
                    .spawn(move || Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()))
                    .join()
                    .is_ok_and(|connected| connected.unwrap_or(false))
            };
            wait_until(
                &format!("etcd-{} accepting connections", member + 1),
                Duration::from_secs(30),
                accepts,
            )?;
        }
        Ok(())
    }

    fn launch_services(&self) -> anyhow::Result<()> {
        let store: Vec<OsString> = if self.spec.etcd_members > 0 {
            vec!["--etcd-endpoints".into(), self.etcd_endpoints().join(",").into()]
        } else {
            vec!["--store-path".into(), self.dir.path().join("store.redb").into()]
        };
        let serve = |listen: u16, metrics: u16| -> Vec<OsString> {
            let mut args: Vec<OsString> = vec![
                "--listen".into(),
                format!("{UNDERLAY}.1:{listen}").into(),
                "--metrics-listen".into(),
                format!("127.0.0.1:{metrics}").into(),
            ];
            args.extend(store.iter().cloned());
            args
        };
        match self.spec.control_plane {
            ControlPlane::AllInOne => {
                let mut args = vec![OsString::from("server")];
                args.extend(serve(CONTROL_PORT, SERVER_METRICS_PORT));
                let brindle = self.spec.binaries.join("brindle");
                self.launch("server", Role::Service, &self.control, &brindle, args)
            }
            ControlPlane::Separate => Service::ALL.iter().try_for_each(|service| {
                let binary = self.spec.binaries.join(service.binary());
                let args = serve(service.port(), service.port() + 2000);
                self.launch(service.binary(), Role::Service, &self.control, &binary, args)
            }),
        }
    }

    /// SIGKILLs lab process `name` (`etcd-2`, `server`, `ipam-svc`, a node's name for its agent),
    /// as a crash would.
    pub fn kill(&self, name: &str) -> anyhow::Result<()> {
        self.with_process(name, Process::kill)
    }

    /// Starts lab process `name` again with its command line, as a supervisor would.
    pub fn restart(&self, name: &str) -> anyhow::Result<()> {
        self.with_process(name, Process::spawn)
    }

    fn with_process(
        &self,
        name: &str,
        act: impl FnOnce(&mut Process) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut processes = self.processes();
        let process = processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("the lab has no process {name}"))?;
        act(process)
    }

    /// The names of the lab's processes that are not running (killed, or exited on their own).
    pub fn not_running(&self) -> Vec<String> {
        self.processes()
            .iter_mut()
            .filter_map(|p| (!p.running()).then(|| p.name.clone()))
            .collect()
    }

    /// Every time a lab process exited without being killed (crashed or stopped on its own),
    /// even if it was started again since: `(name, how it ended)`.
    pub fn exits(&self) -> Vec<(String, String)> {
        let mut processes = self.processes();
        processes.iter_mut().for_each(|p| {
            p.running();
        });
        processes
            .iter()
            .flat_map(|p| p.exits().iter().map(|exit| (p.name.clone(), exit.clone())))
            .collect()
    }

    /// The etcd member that is the cluster's leader now (`etcd_server_is_leader` on its
    /// `/metrics`), if one is.
    pub fn etcd_leader(&self) -> Option<String> {
        (0..self.spec.etcd_members).find_map(|member| {
            let metrics = scrape(&self.control, etcd_client_port(member)).ok()?;
            metrics
                .lines()
                .any(|line| line.trim() == "etcd_server_is_leader 1")
                .then(|| format!("etcd-{}", member + 1))
        })
    }

    /// Compacts the etcd cluster's history up to its current revision (as kube-apiserver does
    /// every few minutes): watches behind it must re-list. Returns that revision.
    pub fn compact_datastore(&self) -> anyhow::Result<u64> {
        anyhow::ensure!(
            self.spec.etcd_members > 0,
            "only an etcd lab's datastore can be compacted from outside"
        );
        let config = brindle_datastore::EtcdConfig::new(self.etcd_endpoints());
        self.control.block_on(move || async move {
            use brindle_datastore::Store;
            let store = brindle_datastore::EtcdStore::connect(&config).await?;
            let revision = store.revision().await?;
            store.compact(revision).await?;
            Ok(revision)
        })
    }

    /// Cuts node `node` off from the control plane (its packets to and from the control plane's
    /// address are dropped in its `raw` table, before connection tracking — a silent partition),
    /// or, with `cut == false`, reconnects it. Pod traffic between nodes is not affected.
    pub fn cut_off(&self, node: usize, cut: bool) -> anyhow::Result<()> {
        let namespace = &self.nodes.get(node).context("no such node")?.namespace;
        let control = format!("{UNDERLAY}.1/32");
        let action = if cut { "-I" } else { "-D" };
        for (chain, side) in [("OUTPUT", "-d"), ("PREROUTING", "-s")] {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &namespace.name,
                    "iptables",
                    "-w",
                    "-t",
                    "raw",
                    action,
                    chain,
                    side,
                    &control,
                    "-j",
                    "DROP",
                ],
            )?;
        }
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
        let ipam_endpoint = self.endpoint(Service::Ipam);
        self.control.block_on(move || async move {
            let mut client = ipam::ipam_client::IpamClient::connect(ipam_endpoint).await?;
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
        let endpoint = self.endpoint(Service::Route);
        self.control.block_on(|| async {
            let mut client = route::routes_client::RoutesClient::connect(endpoint).await?;
            Ok(client
                .list_nodes(route::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes)
        })
    }

    /// What it was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// Where `service` answers, from inside the lab's namespaces.
    pub fn endpoint(&self, service: Service) -> String {
        let port = match self.spec.control_plane {
            ControlPlane::AllInOne => CONTROL_PORT,
            ControlPlane::Separate => service.port(),
        };
        format!("http://{UNDERLAY}.1:{port}")
    }

    /// `brindle <args…> --server …` run in the control plane's namespace against the lab's
    /// services (wherever each runs).
    pub fn cli(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.control.command(&self.spec.binaries.join("brindle"));
        command
            .args(args)
            .args(["--server", &self.endpoint(Service::Ipam)])
            .args(["--route-server", &self.endpoint(Service::Route)])
            .args(["--policy-server", &self.endpoint(Service::Policy)]);
        command
    }

    /// Addresses allocated in the lab's pools (`brindle ipam show`).
    pub fn addresses_in_use(&self) -> anyhow::Result<u64> {
        let shown = self
            .cli(&["ipam", "show", "-o", "json"])
            .output()
            .context("running brindle")?;
        anyhow::ensure!(
            shown.status.success(),
            "brindle ipam show: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).context("ipam show JSON")?;
        Ok(shown["pools"]
            .as_array()
            .map_or(0, |pools| pools.iter().filter_map(|p| p["inUse"].as_u64()).sum()))
    }

    /// `brindle ipam check`: `Ok(None)` when clean, else what it reported.
    pub fn ipam_problems(&self) -> anyhow::Result<Option<String>> {
        let checked = self.cli(&["ipam", "check"]).output().context("running brindle")?;
        Ok((!checked.status.success()).then(|| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&checked.stdout),
                String::from_utf8_lossy(&checked.stderr)
            )
        }))
    }

    fn create_pool(&self) -> anyhow::Result<()> {
        let ipam_endpoint = self.endpoint(Service::Ipam);
        let cidr = self.spec.pool.clone();
        let dual_stack = self.spec.dual_stack;
        let (vxlan_mode, ipip_mode) = self.spec.encapsulation.modes();
        self.control.block_on(move || async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut client = loop {
                match ipam::ipam_client::IpamClient::connect(ipam_endpoint.clone()).await {
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
        let mut args: Vec<OsString> = vec![
            "--node-name".into(),
            name.clone().into(),
            "--cni-socket".into(),
            socket.clone().into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{AGENT_METRICS_PORT}").into(),
            "--state-dir".into(),
            self.dir.path().join(format!("n{index}")).into(),
            "--ipam-endpoint".into(),
            self.endpoint(Service::Ipam).into(),
            "--route-endpoint".into(),
            self.endpoint(Service::Route).into(),
            "--node-address".into(),
            node_addresses.into(),
            "--node-subnet".into(),
            format!("{}.0/24", subnet_prefix(subnet)).into(),
            "--resync-interval".into(),
            AGENT_RESYNC_INTERVAL.into(),
        ];
        if self.spec.policy {
            args.extend(["--policy-endpoint".into(), self.endpoint(Service::Policy).into()]);
        }
        let agent = self.spec.binaries.join("node-agent");
        self.launch(&name, Role::Agent, &namespace, &agent, args)?;
        self.nodes.push(LabNode {
            name,
            namespace,
            address,
            subnet,
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

    /// The lab's running services and agents, by name, with their pids.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes()
            .iter_mut()
            .filter(|p| p.role != Role::Etcd)
            .filter_map(|p| Some((p.name.clone(), p.pid()?)))
            .collect()
    }

    /// Runs the CNI shim of node `node` as a container runtime would: `command` (ADD, DEL,
    /// CHECK) for interface eth0 of `container` in `netns`, with `workload`'s identity, labels and
    /// ports. Returns whether it succeeded and what it printed.
    pub fn cni(
        &self,
        node: usize,
        command: &str,
        container: &str,
        netns: &Path,
        workload: &Workload,
    ) -> anyhow::Result<(bool, String)> {
        let node = self.nodes.get(node).context("no such node")?;
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
        let mut args = vec!["IgnoreUnknown=1".to_owned()];
        if !workload.namespace.is_empty() {
            args.push(format!("K8S_POD_NAMESPACE={}", workload.namespace));
        }
        if !workload.pod.is_empty() {
            args.push(format!("K8S_POD_NAME={}", workload.pod));
        }
        let netns = netns.to_string_lossy();
        let environment = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", &args.join(";")),
        ];
        self.exec_shim(node, &environment, &config)
    }

    /// CNI GC on node `node`: every attachment of the lab's network other than eth0 of the
    /// `valid` containers is freed (what kubelet's runtime does for pods it no longer has).
    pub fn gc(&self, node: usize, valid: &[&str]) -> anyhow::Result<()> {
        let node = self.nodes.get(node).context("no such node")?;
        let mut config = self.network_config(node);
        config["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|container| serde_json::json!({"containerID": container, "ifname": "eth0"}))
            .collect();
        let (ok, printed) = self.exec_shim(node, &[("CNI_COMMAND", "GC")], &config)?;
        anyhow::ensure!(ok, "CNI GC on {} failed: {printed}", node.name);
        Ok(())
    }

    fn exec_shim(
        &self,
        node: &LabNode,
        environment: &[(&str, &str)],
        config: &serde_json::Value,
    ) -> anyhow::Result<(bool, String)> {
        let config = config.to_string();
        let mut child = node
            .namespace
            .command(&self.spec.binaries.join("brindle-cni"))
            .envs(environment.iter().copied())
            .env("CNI_PATH", &self.spec.binaries)
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
            let (ok, result) = self.cni(node, "ADD", &name, &namespace.path(), workload)?;
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
        let endpoint = self.endpoint(Service::Policy);
        self.control.block_on(move || async move {
            let client = policy::policy_client::PolicyClient::connect(endpoint).await?;
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

    /// What `brindle server`'s `/metrics` says now.
    pub fn server_metrics(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.spec.control_plane == ControlPlane::AllInOne,
            "the services run separately: each has its own /metrics"
        );
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
        // Agents first, then the services, then etcd; then the pods, nodes, control plane and
        // underlay namespaces as their fields drop.
        let processes = std::mem::take(&mut *self.processes());
        processes.into_iter().rev().for_each(drop);
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
