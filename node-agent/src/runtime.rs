//! Flags and wiring of the `node-agent` binary: records, kernel access, the IPAM client, start-up
//! reconciliation, the route-svc and policy-svc followers, and the CNI service on a root-only
//! unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;

use crate::core::attachments::AttachmentStore;
use crate::core::bgp::{BgpSpeaker, Bird, LocalBgp};
use crate::core::cni::{CniOps, FlowSweeper};
use crate::core::flow_log::{DEFAULT_FLOW_TABLE_SIZE, FlowCollector};
use crate::core::follow::DEFAULT_RESYNC_EVERY;
use crate::core::mtu::MtuDetector;
use crate::core::pods::KubernetesPods;
use crate::core::policy::programmer::PolicyProgrammer;
use crate::core::policy::{
    DEFAULT_FAILSAFE_INBOUND, DEFAULT_FAILSAFE_OUTBOUND, DEFAULT_FLOW_LOG_RATE, EndpointToHost,
    FLOW_LOG_NFLOG_GROUP, FailsafePorts, Family, FlowLogRules, HostRules, RenderOptions,
};
use crate::dataplane::{
    IpsetCommands, Iptables, IptablesCommands, NetlinkConntrack, ProcSysctl, RtNetlink, Sysctl,
};
use crate::grpc::cni_service::{CniService, SERVICE_NAME};
use crate::grpc::ipam_client::GrpcIpam;
use crate::grpc::node_certificate::{CertificateSource, NodeCertificate};
use crate::grpc::policy_client::GrpcPolicy;
use crate::grpc::route_client::RouteFollower;
use crate::grpc::sync_client::SyncMetrics;
use brindle_grpc::{ClientTlsArgs, Dialer, LogArgs, tls};
use brindle_metrics::{GrpcMetricsLayer, Metrics};
use brindle_selector::labels;
use route_api::Node;
use route_api::model::NodeBgp;

/// brindle's per-node agent.
#[derive(Debug, Parser)]
#[command(name = "node-agent", version, about)]
pub struct Args {
    /// This node's name (default: the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Unix socket the CNI shim talks to (created mode 0600).
    #[arg(long, env = "BRINDLE_CNI_SOCKET", default_value = "/run/brindle/cni.sock")]
    pub cni_socket: PathBuf,
    /// Directory of the agent's durable state (attachment records).
    #[arg(long, env = "BRINDLE_STATE_DIR", default_value = "/var/lib/brindle")]
    pub state_dir: PathBuf,
    /// ipam-svc (or `brindle server`) gRPC endpoint.
    #[arg(long, env = "BRINDLE_IPAM_ENDPOINT", default_value = "http://127.0.0.1:7400")]
    pub ipam_endpoint: String,
    /// route-svc (or `brindle server`) gRPC endpoint; when set, the agent registers its node and
    /// programs routes to other nodes' pods.
    #[arg(long, env = "BRINDLE_ROUTE_ENDPOINT", requires = "node_address")]
    pub route_endpoint: Option<String>,
    /// policy-svc (or `brindle server`) gRPC endpoint; when set, the agent registers its pods as
    /// workload endpoints and enforces network policy on them.
    #[arg(long, env = "BRINDLE_POLICY_ENDPOINT")]
    pub policy_endpoint: Option<String>,
    /// Kubernetes sync is on (kube-sync runs): a pod's labels, named ports and requested
    /// addresses come from its Pod object, not from the CNI request, and an ADD waits up to
    /// --pod-wait for kube-sync to have mirrored it (then fails with CNI error 11, and the
    /// runtime retries). Pods without K8S_POD_NAME in CNI_ARGS keep their CNI labels.
    #[arg(long, env = "BRINDLE_KUBERNETES_PODS", requires = "policy_endpoint")]
    pub kubernetes_pods: bool,
    /// Seconds an ADD waits for its Pod object with --kubernetes-pods (at most 60).
    #[arg(long, env = "BRINDLE_POD_WAIT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub pod_wait: u64,
    /// This node's underlay addresses, one per family (other nodes route its pods' blocks of
    /// that family via it); repeat the flag or separate with commas for dual-stack nodes.
    #[arg(long, env = "BRINDLE_NODE_ADDRESS", value_delimiter = ',')]
    pub node_address: Vec<std::net::IpAddr>,
    /// This node's labels, `key=value` separated by commas (a pool's `nodeSelector` matches them;
    /// a change affects only later allocations). Labels an administrator or Kubernetes gave the
    /// node take their place; with mTLS, route-svc accepts only labels it was given.
    #[arg(long, env = "BRINDLE_NODE_LABELS", value_delimiter = ',', value_parser = labels::parse_label)]
    pub node_labels: Vec<(String, String)>,
    /// This node's underlay IPv4 subnet (decides CrossSubnet encapsulation).
    #[arg(long, env = "BRINDLE_NODE_SUBNET")]
    pub node_subnet: Option<ipnet::Ipv4Net>,
    /// TLS to the services: this node's certificate (CN brindle:node:<node name>).
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Keep the node's certificate here instead of --tls-cert/--tls-key: obtained with
    /// --join-token-file through --bootstrap-endpoint when missing or expired, renewed through
    /// the control plane before it expires (needs --tls-ca).
    #[arg(long, env = "BRINDLE_CERT_DIR", requires = "tls_ca", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub cert_dir: Option<PathBuf>,
    /// A join token for this node (`brindle node join-token NODE`), in a file.
    #[arg(long, env = "BRINDLE_JOIN_TOKEN_FILE", requires_all = ["cert_dir", "bootstrap_endpoint"])]
    pub join_token_file: Option<PathBuf>,
    /// The agent pod's projected ServiceAccount token (audience `brindle`), in a file: proves to
    /// the bootstrap port which node the pod runs on (instead of a join token).
    #[arg(long, env = "BRINDLE_SERVICE_ACCOUNT_TOKEN_FILE", conflicts_with = "join_token_file",
          requires_all = ["cert_dir", "bootstrap_endpoint"])]
    pub service_account_token_file: Option<PathBuf>,
    /// The control plane's bootstrap port (`https://host:7409`), where a join token buys the
    /// first certificate.
    #[arg(long, env = "BRINDLE_BOOTSTRAP_ENDPOINT", requires = "cert_dir")]
    pub bootstrap_endpoint: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "BRINDLE_METRICS_LISTEN", default_value = "0.0.0.0:9404")]
    pub metrics_listen: std::net::SocketAddr,
    /// Seconds between re-reads of the kernel that repair routes, VXLAN endpoints, iptables rules
    /// and ipsets changed behind the agent's back (Felix's route and iptables refresh); checked
    /// at each keepalive tick (10 s), also while route-svc or policy-svc is unreachable (then to
    /// the last state they gave).
    #[arg(long, env = "BRINDLE_RESYNC_INTERVAL", default_value_t = DEFAULT_RESYNC_EVERY.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_interval: u64,
    /// The configuration file of the node's BIRD 2 daemon (run beside the agent, e.g.
    /// `bird -c FILE -s SOCKET`): with it and --bird-socket the agent writes it from the cluster's
    /// BGP configuration and peers and the node's blocks, and reloads BIRD when it changes.
    #[arg(long, env = "BRINDLE_BIRD_CONFIG", requires_all = ["bird_socket", "route_endpoint"])]
    pub bird_config: Option<PathBuf>,
    /// BIRD's control socket (`birdc -s`).
    #[arg(long, env = "BRINDLE_BIRD_SOCKET", requires = "bird_config")]
    pub bird_socket: Option<PathBuf>,
    /// The node's BGP router id (default: its first IPv4 --node-address).
    #[arg(long, env = "BRINDLE_BGP_ROUTER_ID", requires = "bird_config")]
    pub bgp_router_id: Option<std::net::Ipv4Addr>,
    /// The node's own AS number, instead of the cluster's (BGPConfiguration asNumber).
    #[arg(long, env = "BRINDLE_BGP_AS_NUMBER", requires = "bird_config",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub bgp_as_number: Option<u32>,
    /// Flow logs also count allowed connections (their first packet), not only denied packets
    /// (with --policy-endpoint; Calico Enterprise's flow logs of allowed traffic).
    #[arg(long, env = "BRINDLE_FLOW_LOG_ALLOWED", requires = "policy_endpoint")]
    pub flow_log_allowed: bool,
    /// Packets per second each policy rule sends to the flow log at most (a token bucket with
    /// bursts of as many; iptables' limit match takes at most 10000): what the agent's CPU spends
    /// on flow logs is bounded by it times the logging rules a flood hits.
    #[arg(long, env = "BRINDLE_FLOW_LOG_RATE", default_value_t = DEFAULT_FLOW_LOG_RATE,
          value_parser = clap::value_parser!(u32).range(1..=10_000), requires = "policy_endpoint")]
    pub flow_log_rate: u32,
    /// Flows the agent counts between two reports to policy-svc (every 0.5 s) at most; packets of
    /// further flows are counted as unrecorded (`brindle_flow_log_unrecorded_packets_total`).
    #[arg(long, env = "BRINDLE_FLOW_LOG_MAX_FLOWS", default_value_t = DEFAULT_FLOW_TABLE_SIZE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub flow_log_max_flows: usize,
    /// What happens to a pod's traffic to its own node once its egress policies allowed it:
    /// Drop, Accept or Return (to the host's own INPUT rules, the default) — Calico's
    /// `defaultEndpointToHostAction` (Calico's Kubernetes manifests set Accept).
    #[arg(long, env = "BRINDLE_DEFAULT_ENDPOINT_TO_HOST_ACTION", default_value_t = EndpointToHost::Return,
          requires = "policy_endpoint")]
    pub default_endpoint_to_host_action: EndpointToHost,
    /// Ports open to the node whatever host endpoint policies say (`tcp:22,udp:68,…`; `none`) —
    /// Calico's `failsafeInboundHostPorts`, with brindle's services' ports.
    #[arg(long, env = "BRINDLE_FAILSAFE_INBOUND_HOST_PORTS", default_value = DEFAULT_FAILSAFE_INBOUND,
          requires = "policy_endpoint")]
    pub failsafe_inbound_host_ports: FailsafePorts,
    /// Ports the node reaches whatever host endpoint policies say — Calico's
    /// `failsafeOutboundHostPorts`, with brindle's services' ports.
    #[arg(long, env = "BRINDLE_FAILSAFE_OUTBOUND_HOST_PORTS", default_value = DEFAULT_FAILSAFE_OUTBOUND,
          requires = "policy_endpoint")]
    pub failsafe_outbound_host_ports: FailsafePorts,
    /// How logs look.
    #[command(flatten)]
    pub log: LogArgs,
}

/// How long a connection to a service may take to set up.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn hostname() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname (or pass --node-name)")?
        .trim()
        .to_owned())
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    args.log.init().map_err(anyhow::Error::msg)?;
    let metrics = Metrics::new();
    brindle_metrics::serve(args.metrics_listen, metrics.clone()).await?;
    let sync_metrics = SyncMetrics::new(&metrics);
    let node = match args.node_name {
        Some(name) => name,
        None => hostname()?,
    };
    let records = AttachmentStore::open(&args.state_dir.join("attachments"))?.with_metrics(&metrics);
    let netlink = Arc::new(RtNetlink::new()?);
    let sysctl = Arc::new(ProcSysctl);
    // Pods on this node are routed by it.
    sysctl.set("net/ipv4/ip_forward", "1")?;
    // IPv6 pods too, where the kernel has IPv6.
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        sysctl.set("net/ipv6/conf/all/forwarding", "1")?;
    }
    let resync_every = std::time::Duration::from_secs(args.resync_interval);
    let tls = args.tls.config()?;
    let certificate = match &args.cert_dir {
        Some(dir) => {
            let ca = args.tls.tls_ca.as_ref().context("--cert-dir needs --tls-ca")?;
            let source = CertificateSource {
                node: node.clone(),
                dir: dir.clone(),
                ca_pem: std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?,
                join_token_file: args.join_token_file.clone(),
                service_account_token_file: args.service_account_token_file.clone(),
                bootstrap_endpoint: args.bootstrap_endpoint.clone(),
                server_name: args.tls.tls_server_name.clone(),
            };
            Some(NodeCertificate::obtain(source).await?)
        }
        None => None,
    };
    let connector = certificate.as_ref().map(NodeCertificate::connector).transpose()?;
    let endpoint = |address: &str| -> anyhow::Result<Dialer> {
        Ok(match &connector {
            Some(connector) => Dialer::through(address, connector.clone(), CONNECT_TIMEOUT)?,
            None => tls::endpoint(address, tls.as_ref(), CONNECT_TIMEOUT)?.into(),
        })
    };
    if let Some(certificate) = certificate {
        tokio::spawn(certificate.keep_renewed(endpoint(&args.ipam_endpoint)?));
    }
    let ipam = Arc::new(GrpcIpam::new(endpoint(&args.ipam_endpoint)?));
    // Runs iptables-save: off the async workers.
    let commands = tokio::task::spawn_blocking(IptablesCommands::detect)
        .await
        .context("detecting the iptables backend")?;
    let ipv6_tables = Arc::new(commands.for_ipv6());
    let iptables: Arc<dyn Iptables> = Arc::new(commands);
    let (mtu, encapsulation) = if args.route_endpoint.is_some() {
        let (detector, sender) = MtuDetector::following_routes(netlink.clone(), args.node_address.clone());
        (detector, Some(sender))
    } else {
        (
            MtuDetector::without_routing(netlink.clone(), args.node_address.clone()),
            None,
        )
    };
    let mut ops = CniOps::new(&node, netlink.clone(), sysctl, ipam.clone(), records)
        .with_mtu_detector(mtu)
        .with_flow_sweeper(FlowSweeper::start(Arc::new(NetlinkConntrack)));
    if let Some(policy_endpoint) = &args.policy_endpoint {
        let policy = GrpcPolicy::new(endpoint(policy_endpoint)?);
        ops = ops.with_endpoints(Arc::new(policy.clone()));
        if args.kubernetes_pods {
            let wait = std::time::Duration::from_secs(args.pod_wait);
            ops = ops.with_kubernetes_pods(KubernetesPods::new(Arc::new(policy.clone()), wait));
        }
        let mut families = vec![(Family::V4, iptables.clone())];
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            families.push((Family::V6, ipv6_tables as Arc<dyn Iptables>));
        }
        let flows = FlowCollector::new(args.flow_log_max_flows, &metrics);
        flows.start_reading(FLOW_LOG_NFLOG_GROUP);
        let options = RenderOptions {
            flow_log: FlowLogRules {
                allowed: args.flow_log_allowed,
                per_second: args.flow_log_rate,
            },
            host: HostRules {
                endpoint_to_host: args.default_endpoint_to_host_action,
                failsafe_inbound: args.failsafe_inbound_host_ports.0.clone(),
                failsafe_outbound: args.failsafe_outbound_host_ports.0.clone(),
            },
        };
        let programmer = PolicyProgrammer::new(families, Arc::new(IpsetCommands), resync_every)
            .with_options(&options, flows.names());
        tokio::spawn(flows.report_to(node.clone(), Arc::new(policy.clone())));
        tokio::spawn(policy.follow(node.clone(), programmer, sync_metrics.clone()));
    }
    let ops = Arc::new(ops);
    // Before anything allocates (the route follower's tunnel addresses): the sweep releases the
    // node's pod handles that no attachment owns, and must not race a new allocation.
    if let Err(failure) = ops.reconcile().await {
        tracing::warn!(?failure, "start-up reconciliation incomplete; GC will finish it");
    }
    if let (Some(route_endpoint), Some(encapsulation)) = (&args.route_endpoint, encapsulation) {
        let mut registration = Node {
            name: node.clone(),
            addresses: args.node_address.clone(),
            ipv4_subnet: args.node_subnet,
            ipv6_subnet: None,
            labels: args.node_labels.iter().cloned().collect(),
            vtep_mac: None,
            vtep_ipv4: None,
            vtep_ipv6: None,
            ipip_tunnel_ipv4: None,
            bgp: None,
            lease: 0,
        };
        let bgp = match (&args.bird_config, &args.bird_socket) {
            (Some(config), Some(socket)) => {
                let router_id = args
                    .bgp_router_id
                    .or_else(|| {
                        registration.addresses.iter().find_map(|a| match a {
                            std::net::IpAddr::V4(v4) => Some(*v4),
                            std::net::IpAddr::V6(_) => None,
                        })
                    })
                    .context("BGP needs a router id: --bgp-router-id or an IPv4 --node-address")?;
                let local = LocalBgp {
                    node: node.clone(),
                    router_id,
                    as_number: args.bgp_as_number,
                };
                registration.bgp = Some(NodeBgp {
                    router_id,
                    as_number: args.bgp_as_number,
                });
                Some(BgpSpeaker::new(
                    Bird::new(config.clone(), socket.clone()),
                    local,
                    &metrics,
                ))
            }
            _ => None,
        };
        let follower = RouteFollower::new(
            endpoint(route_endpoint)?,
            registration,
            netlink.clone(),
            iptables.clone(),
            ipam.clone(),
            resync_every,
            encapsulation,
        )
        .with_bgp(bgp);
        tokio::spawn(follower.run(sync_metrics.clone()));
    }

    if let Some(parent) = args.cni_socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::remove_file(&args.cni_socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing the stale socket {}", args.cni_socket.display()));
        }
    }
    let listener = tokio::net::UnixListener::bind(&args.cni_socket)
        .with_context(|| format!("binding {}", args.cni_socket.display()))?;
    std::fs::set_permissions(&args.cni_socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", args.cni_socket.display()))?;

    let mut routes = RoutesBuilder::default();
    routes.add_service(CniService::new(ops).with_metrics(&metrics).into_server());
    let health = brindle_grpc::add_health_and_reflection(&mut routes, &[SERVICE_NAME])?;
    health.set_service_status("", ServingStatus::Serving).await;
    metrics.set_ready(true);
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;
    tracing::info!(%node, socket = %args.cni_socket.display(), ipam = %args.ipam_endpoint, "node agent serving CNI");
    tonic::transport::Server::builder()
        .layer(GrpcMetricsLayer::new(&metrics))
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), brindle_grpc::shutdown_signal())
        .await
        .context("serving the CNI socket")?;
    let _ = std::fs::remove_file(&args.cni_socket);
    Ok(())
}
