//! `brindle lab`: an N-node cluster in network namespaces on one machine — an underlay bridge (or
//! two subnets joined by a router namespace), a control plane (`brindle server`, or ipam-svc,
//! route-svc and policy-svc as separate processes, on the embedded store or on an etcd cluster of
//! one or more members), one real `node-agent` per node namespace, pods attached through the real
//! CNI shim, a pool routed directly or over VXLAN / IP-in-IP — and a pod-to-pod reachability
//! matrix. Every daemon can be killed and restarted, a node cut off from the control plane.
//! Everything is removed when the lab is dropped. The end-to-end and chaos tests use it too.
//!
//! Here: the topology (namespaces, underlay, nodes). Beside it: the daemons (`control_plane`),
//! their certificates (`identity`: mTLS unless plain text is asked for), calls an operator makes
//! (`calls`), pods through the CNI shim (`cni`) and what reaches what (`reachability`, with the
//! probes of `probe`).

mod bgp;
mod calls;
mod cni;
mod control_plane;
mod identity;
mod netns;
mod probe;
mod process;
mod reachability;

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_proto::ipam::v1 as ipam;

pub use bgp::{OUTSIDE_ADDRESS, ROUTER_AS, RouterRoute, router_address};
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
/// Port of the all-in-one server's bootstrap port (join tokens for node certificates).
const BOOTSTRAP_PORT: u16 = 7409;
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
    /// Pods are Kubernetes pods: agents take their labels and named ports from their Pod objects
    /// (`--kubernetes-pods`, waiting [`POD_WAIT_SECONDS`] for one), which kube-sync mirrors once
    /// started with [`Lab::start_kube_sync`]. Needs `policy`.
    pub kubernetes_pods: bool,
    /// MTU of every underlay link (default: the kernel's 1500).
    pub underlay_mtu: Option<u32>,
    /// The control plane speaks plain text (`--insecure-plaintext`) instead of mTLS with
    /// certificates the lab makes for itself, every node and its administrator.
    pub insecure_plaintext: bool,
    /// Labels of each node (`key=value,…`, by node index: `--node-labels` of its agent).
    pub node_labels: Vec<String>,
    /// Seconds node certificates live. With mTLS, agents get no certificate from the lab: each
    /// trades a join token for its own on the bootstrap port (the all-in-one server's or
    /// ipam-svc's) and renews it at two thirds of this (`None`: the server's default, 6 h).
    pub node_cert_lifetime: Option<u64>,
    /// Nodes announce their blocks over BGP (a BIRD beside each agent) to FRR on the router,
    /// every node's default gateway. Needs 2 subnets.
    pub bgp: bool,
    /// More flags for every agent (e.g. `--flow-log-allowed`).
    pub agent_flags: Vec<String>,
}

/// How long a lab agent's ADD waits for its Pod object with [`LabSpec::kubernetes_pods`].
pub const POD_WAIT_SECONDS: u64 = 3;

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
            kubernetes_pods: false,
            underlay_mtu: None,
            insecure_plaintext: false,
            node_labels: Vec::new(),
            node_cert_lifetime: None,
            bgp: false,
            agent_flags: Vec::new(),
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
    /// Pools its IPv4 address must come from (the network configuration's `ipam.ipv4_pools`).
    pub ipv4_pools: Vec<String>,
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
    /// A host outside the cluster behind the router (a BGP lab), once added.
    pub outside: Option<Namespace>,
    control: Namespace,
    /// etcd members, services and agents, in start order (stopped in reverse).
    processes: Mutex<Vec<Process>>,
    router: Option<Namespace>,
    underlays: Vec<Underlay>,
    /// The lab's certificates (`None`: plain text).
    tls: Option<identity::LabTls>,
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
        if spec.kubernetes_pods && !spec.policy {
            bail!("Kubernetes pods need policy: their labels go to policy-svc");
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
        if spec.subnets == 2 && spec.encapsulation == Encapsulation::Never && !spec.bgp {
            bail!(
                "direct routing cannot cross subnets: with 2 subnets use --bgp (the router learns \
                 the blocks) or --encapsulation vxlan-cross-subnet (or vxlan)"
            );
        }
        if spec.bgp && spec.subnets != 2 {
            bail!("BGP peers the nodes with the router joining the two subnets: give --subnets 2");
        }
        let dir = tempfile::Builder::new().prefix("brindle-lab-").tempdir()?;
        let underlays = (1..=spec.subnets)
            .map(|n| Underlay::create(format!("{}-ul{n}", spec.prefix), spec.underlay_mtu))
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
        let tls = if spec.insecure_plaintext {
            None
        } else {
            Some(identity::LabTls::create(&dir.path().join("pki"))?)
        };
        let mut lab = Self {
            tls,
            spec,
            dir,
            pods: Vec::new(),
            nodes: Vec::new(),
            external: None,
            outside: None,
            control,
            processes: Mutex::new(Vec::new()),
            router,
            underlays,
        };
        lab.start_control_plane()?;
        lab.create_pool()?;
        if lab.spec.bgp {
            lab.start_router_bgp()?;
        }
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

    /// What it was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
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
        args.extend(self.spec.agent_flags.iter().map(OsString::from));
        args.extend(self.node_flags(&name)?);
        if let Some(labels) = self.spec.node_labels.get(index - 1).filter(|l| !l.is_empty()) {
            // A node may register only the labels an administrator gave it (with mTLS).
            let mut grant = vec!["node", "label", name.as_str()];
            grant.extend(labels.split(','));
            let granted = self.cli(&grant).output().context("brindle node label")?;
            if !granted.status.success() {
                bail!("labelling {name}: {}", String::from_utf8_lossy(&granted.stderr));
            }
            args.extend(["--node-labels".into(), labels.into()]);
        }
        if self.spec.kubernetes_pods {
            args.extend([
                "--kubernetes-pods".into(),
                "--pod-wait".into(),
                POD_WAIT_SECONDS.to_string().into(),
            ]);
        }
        if self.spec.bgp {
            args.extend(self.start_bird(&name, &namespace, address)?);
            self.peer_with_router(&name, &namespace, subnet)?;
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
