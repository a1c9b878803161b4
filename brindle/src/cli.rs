//! Command-line flags of the `brindle` command.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use brindle::lab::{ControlPlane, Encapsulation};
use brindle_grpc::{ClientTlsArgs, LogArgs, ServerTlsArgs};
use brindle_grpc_server::{LimitArgs, StoreArgs};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// brindle: container networking with routable pod IPs, no NAT between pods, and network policy.
#[derive(Debug, Parser)]
#[command(name = "brindle", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub logging: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update the objects of YAML/JSON manifests (IPPool, IPAMConfig, Namespace,
    /// NetworkPolicy, GlobalNetworkPolicy, Kubernetes NetworkPolicy).
    Apply(ApplyArgs),
    /// Show objects of one kind, or one object, as a table, JSON or YAML.
    Get(GetArgs),
    /// Delete objects named on the command line or in manifests.
    Delete(DeleteArgs),
    /// Address management: usage, consistency check, manual release.
    #[command(subcommand)]
    Ipam(IpamCommand),
    /// Nodes as the control plane sees them.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Network policy tools.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Flows the nodes' policies allowed or denied (every node's, as their agents report them),
    /// naming the deciding policy and rule as `policy trace` does.
    Flows(FlowsArgs),
    /// Create a CA (once) and certificates for the services, nodes and administrators (mTLS).
    Certs(CertsArgs),
    /// Print a shell completion script (e.g. `brindle completions bash > /etc/bash_completion.d/brindle`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Run the control plane in one process on one port (embedded store unless --etcd-endpoints).
    Server(ServerArgs),
    /// A multi-node cluster in network namespaces on this machine (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
}

/// Where the control plane is.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Address of `brindle server` (or of every service when they run separately).
    #[arg(long, env = "BRINDLE_SERVER", default_value = "http://127.0.0.1:7400")]
    pub server: String,
    /// Address of ipam-svc, when it runs on its own.
    #[arg(long, env = "BRINDLE_IPAM_SERVER")]
    pub ipam_server: Option<String>,
    /// Address of route-svc, when it runs on its own.
    #[arg(long, env = "BRINDLE_ROUTE_SERVER")]
    pub route_server: Option<String>,
    /// Address of policy-svc, when it runs on its own.
    #[arg(long, env = "BRINDLE_POLICY_SERVER")]
    pub policy_server: Option<String>,
    /// Seconds to wait for a connection and for each call.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// TLS to the services (an administrator's certificate to change pools and policies).
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file; `-` reads standard input.
    #[arg(short, long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Namespace of namespaced objects that name none.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Kind: ippool, ipamconfig, namespace, networkpolicy (brindle and Kubernetes; qualify with
    /// .brindle.io or .networking.k8s.io for one), globalnetworkpolicy; plurals and short names
    /// (ns, netpol, gnp) work.
    pub kind: String,
    /// One object's name; every object of the kind when absent.
    pub name: Option<String>,
    /// Namespace of namespaced kinds.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Every namespace (namespaced kinds, without a name).
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["kind", "file"]))]
pub struct DeleteArgs {
    /// Kind of the objects to delete (as for `get`).
    #[arg(requires = "names")]
    pub kind: Option<String>,
    /// Names of the objects.
    pub names: Vec<String>,
    /// Delete the objects a manifest describes; `-` reads standard input.
    #[arg(short, long = "filename", value_name = "FILE", conflicts_with = "kind")]
    pub file: Option<PathBuf>,
    /// Namespace of namespaced objects.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Delete an IP pool even though addresses are still allocated from it.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Usage per pool; with --blocks per block, with --borrowed the borrowed addresses, with
    /// --ip who holds one address.
    Show(IpamShowArgs),
    /// Checks the IPAM records for inconsistencies; exits 3 when it finds any.
    Check(IpamCheckArgs),
    /// Releases addresses by hand: one address, or the problems of a `check` report.
    Release(IpamReleaseArgs),
}

#[derive(Debug, Args)]
pub struct IpamShowArgs {
    /// Every block: pool, node it is affine to, usage.
    #[arg(long, conflicts_with = "ip")]
    pub blocks: bool,
    /// Every address allocated from another node's block.
    #[arg(long, conflicts_with = "ip")]
    pub borrowed: bool,
    /// One address: allocated or not, to which handle and pod.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct IpamCheckArgs {
    /// Writes the full report as JSON to this file (`-`: standard output), for `ipam release
    /// --from-report`.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["ip", "from_report"]))]
pub struct IpamReleaseArgs {
    /// The address to release (whoever holds it).
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// Releases the leaked handles and the allocations without a handle that a report of
    /// `ipam check -o FILE` lists; addresses re-used since the report are left alone.
    #[arg(long, value_name = "FILE")]
    pub from_report: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node: address, how far its agent follows route-svc and policy-svc (revision and
    /// age of its last acknowledgement), routes and policy objects programmed, endpoints.
    Status(NodeStatusArgs),
    /// Sets (`key=value`) or removes (`key-`) labels of a node, as `kubectl label` does: pools'
    /// nodeSelectors match them for the node's next allocations (its addresses stay). Labels
    /// Kubernetes owns (kube-sync) are changed in Kubernetes, not here.
    Label(NodeLabelArgs),
    /// Makes a join token for a node: its agent (`--join-token-file`, `--bootstrap-endpoint`,
    /// `--cert-dir`) trades it for the node's certificate and renews that on its own. Prints the
    /// token (shown once; administrators only).
    JoinToken(NodeJoinTokenArgs),
    /// Deletes a node that left the cluster, as `calicoctl delete node` does: releases its
    /// addresses and blocks (their routes withdrawn from every node and BGP peer), removes its
    /// workload endpoints, its registration and its labels. A Kubernetes Node is deleted in
    /// Kubernetes (kube-sync then deletes it here). An agent still running registers its node
    /// again, without the released addresses.
    Delete(NodeDeleteArgs),
}

#[derive(Debug, Args)]
pub struct NodeDeleteArgs {
    /// The node.
    pub node: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct NodeJoinTokenArgs {
    /// The node the token is for.
    pub node: String,
    /// Seconds the token may be used (at most 7 days).
    #[arg(long, default_value_t = 3600)]
    pub ttl: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct NodeLabelArgs {
    /// The node.
    pub node: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub changes: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct NodeStatusArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The verdict network policy gives a flow, and the policy and rule that decide it.
    Trace(PolicyTraceArgs),
}

#[derive(Debug, Args)]
pub struct PolicyTraceArgs {
    /// Source: a pod as NAMESPACE/POD, or an IP address.
    #[arg(long)]
    pub from: String,
    /// Destination: a pod as NAMESPACE/POD, or an IP address.
    #[arg(long)]
    pub to: String,
    /// Protocol: TCP, UDP, SCTP, ICMP or a number.
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
    /// Destination port.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// ICMP type of the packet (protocol ICMP or ICMPv6; default: an echo request, 8 or 128).
    #[arg(long)]
    pub icmp_type: Option<u8>,
    /// ICMP code of the packet (with --icmp-type).
    #[arg(long, requires = "icmp_type")]
    pub icmp_code: Option<u8>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Only denied flows.
    #[arg(long)]
    pub denied: bool,
    /// Only flows with a pod of this namespace at either end.
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Keep printing flows as nodes report them (each line holds the flow's totals so far).
    #[arg(long, short)]
    pub follow: bool,
    /// Show the most recently seen this many flows (at most 10000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory of the CA (ca.crt, ca.key: created when absent) and the certificates.
    #[arg(long, default_value = "brindle-certs")]
    pub dir: PathBuf,
    /// A host name or address the services answer on (repeatable): issues server.crt for them
    /// (and localhost, 127.0.0.1).
    #[arg(long = "server", value_name = "HOST")]
    pub servers: Vec<String>,
    /// A node whose agent needs a certificate (repeatable): node-NAME.crt.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// An administrator (repeatable): admin-NAME.crt, allowed to change pools and policies.
    #[arg(long = "admin", value_name = "NAME")]
    pub admins: Vec<String>,
    /// Keep the CA and certificates as Secrets in this Kubernetes namespace instead of --dir (what
    /// deploy/kubernetes' bootstrap Job runs): `brindle-ca` (CA and key, for the signer),
    /// `brindle-services-tls` (--server's), `brindle-admin-NAME-tls` per --admin, and the
    /// ConfigMap `brindle-ca` (the CA certificate, for agents). Secrets that exist are kept.
    /// Nodes need none: their agents bootstrap with their ServiceAccount tokens.
    #[arg(long, env = "BRINDLE_KUBERNETES_NAMESPACE", conflicts_with_all = ["dir", "nodes"])]
    pub kubernetes_namespace: Option<String>,
    /// The Kubernetes API for --kubernetes-namespace (default: in a pod its service account, else
    /// `$KUBECONFIG` or `~/.kube/config`).
    #[arg(long, requires = "kubernetes_namespace")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab, print the pod-to-pod reachability matrix, keep it running until Ctrl-C
    /// (or tear it down at once with --once).
    Up(LabUpArgs),
    /// Remove the namespaces of a lab that was not torn down (e.g. after a crash).
    Down {
        /// Name prefix of the lab's namespaces.
        #[arg(long, default_value = "brdlab")]
        prefix: String,
    },
}

#[derive(Debug, Args)]
pub struct LabUpArgs {
    /// Nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=200))]
    pub nodes: u8,
    /// Pods per node.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=50))]
    pub pods_per_node: u8,
    /// Pod address pool.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pool: String,
    /// Name prefix of the lab's namespaces.
    #[arg(long, default_value = "brdlab")]
    pub prefix: String,
    /// How pod traffic crosses between nodes (the pool's encapsulation).
    #[arg(long, value_enum, default_value_t = Encapsulation::Never)]
    pub encapsulation: Encapsulation,
    /// Underlay subnets: 1, or 2 joined by a router namespace (nodes alternate between them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub subnets: u8,
    /// Run the control plane on an etcd cluster of this many members (Debian's etcd-server;
    /// `--etcd` alone: one) instead of the embedded store.
    #[arg(long, value_name = "MEMBERS", num_args = 0..=1, default_value_t = 0, default_missing_value = "1")]
    pub etcd: u8,
    /// Run the services in one `brindle server` or each in its own process.
    #[arg(long, value_enum, default_value_t = ControlPlane::AllInOne)]
    pub control_plane: ControlPlane,
    /// Register pods with policy-svc and enforce network policy on every node.
    #[arg(long)]
    pub policy: bool,
    /// Give pods an IPv6 address too (an IPv6 pool routed like the IPv4 one: directly over an
    /// IPv6 underlay, or over VXLAN).
    #[arg(long)]
    pub dual_stack: bool,
    /// MTU of the underlay links (pods get it minus the encapsulation's overhead: the network
    /// configuration sets no `mtu`, so the agents detect it).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1280..=9000))]
    pub underlay_mtu: Option<u32>,
    /// Run the control plane in plain text (the default: mTLS, with a CA and certificates the lab
    /// makes for the control plane, every node and its administrator).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Seconds node certificates live (with mTLS, agents trade a join token for their node's
    /// certificate on the server's bootstrap port and renew it at two thirds of this).
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..))]
    pub node_cert_lifetime: Option<u64>,
    /// Nodes announce their pod blocks over BGP (BIRD beside each agent) to FRR on the router
    /// joining the two subnets, their default gateway: with --subnets 2 a pool with
    /// --encapsulation never crosses subnets unencapsulated.
    #[arg(long)]
    pub bgp: bool,
    /// Tear the lab down right after printing the matrix.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address the gRPC server listens on (default: 0.0.0.0:7400 with TLS, 127.0.0.1:7400
    /// without; plain text elsewhere needs --insecure-plaintext).
    #[arg(long, env = "BRINDLE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "BRINDLE_METRICS_LISTEN", default_value = "0.0.0.0:9400")]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// mTLS (a client certificate is then required: node agents', administrators').
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// Node certificates: signing, renewal, the bootstrap port.
    #[command(flatten)]
    pub signing: brindle_identity::SigningArgs,
    /// What each caller may take.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Follow the Kubernetes API reached with this kubeconfig (kube-sync inside the server):
    /// Namespaces, NetworkPolicies, Pods and Nodes are mirrored into the services.
    #[arg(long, env = "BRINDLE_KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Follow the Kubernetes API found in the environment (in a pod: its service account;
    /// else `$KUBECONFIG` or `~/.kube/config`).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub kube_sync: bool,
}
