//! `brindle.agent.v1.Cni` over the agent's unix socket: converts the shim's invocations to
//! [`CniRequest`]s and the outcomes to CNI results or CNI errors, for root callers only. No logic
//! lives here.

use std::sync::Arc;
use std::time::Instant;

use brindle_metrics::{Counters, Histograms, LATENCY_BUCKETS, Metrics, labels, unregistered_histograms};
use brindle_proto::agent::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::core::cni::config::ACCEPTED_CALICO_KEYS;
use crate::core::cni::{Added, CniOps, CniRequest, NetworkConfig, validate_key};
use crate::core::wiring::{AttachmentKey, GATEWAY_V4, GATEWAY_V6, HOST_MAC};
use brindle_proto::CniError;
use brindle_proto::cni_codes::INVALID_CONFIG;

/// Fully qualified name of the service, for health and reflection.
pub const SERVICE_NAME: &str = "brindle.agent.v1.Cni";

/// The CNI service.
pub struct CniService {
    ops: Arc<CniOps>,
    /// Calico keys already logged as accepted and ignored (each is logged once).
    ignored_logged: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    requests: Counters,
    durations: Histograms,
}

impl CniService {
    /// Serves `ops`.
    pub fn new(ops: Arc<CniOps>) -> Self {
        Self {
            ops,
            ignored_logged: Default::default(),
            requests: Counters::default(),
            durations: unregistered_histograms(LATENCY_BUCKETS),
        }
    }

    /// Counts and times every CNI command into `metrics`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.requests = metrics.counters(
            "cni_requests",
            "CNI commands answered, by command and result (ok or the CNI error code)",
        );
        self.durations = metrics.histograms(
            "cni_request_duration_seconds",
            "Time the agent took to answer a CNI command",
            LATENCY_BUCKETS,
        );
        self
    }

    /// The request and its configuration (see [`configured`]); logs each accepted-and-ignored
    /// Calico key the first time it is seen.
    fn configured(&self, invocation: &pb::CniInvocation) -> Result<(CniRequest, NetworkConfig), CniError> {
        let (request, config) = configured(invocation)?;
        let mut logged = self.ignored_logged.lock().unwrap_or_else(|p| p.into_inner());
        for key in &config.ignored {
            if logged.insert(key) {
                let why = ACCEPTED_CALICO_KEYS
                    .iter()
                    .find_map(|(known, why)| (known == key).then_some(*why))
                    .unwrap_or_default();
                tracing::info!(key, why, "accepted and ignored a Calico configuration key");
            }
        }
        Ok((request, config))
    }

    /// The outcome of `command`, recorded.
    fn outcome(
        &self,
        command: &str,
        started: Instant,
        done: Result<(), CniError>,
    ) -> Response<pb::CniOutcome> {
        let outcome = pb::CniOutcome {
            error: done.err().map(Into::into),
        };
        self.record(command, started, outcome.error.as_ref());
        Response::new(outcome)
    }

    /// Records one answered command.
    fn record(&self, command: &str, started: Instant, error: Option<&pb::CniError>) {
        let result = error.map_or_else(|| "ok".to_owned(), |e| e.code.to_string());
        self.requests
            .get_or_create(&labels([("command", command), ("result", &result)]))
            .inc();
        self.durations
            .get_or_create(&labels([("command", command)]))
            .observe(started.elapsed().as_secs_f64());
    }

    /// The tonic server for this service, answering root (and the agent's own user) only.
    pub fn into_server(self) -> InterceptedService<pb::cni_server::CniServer<Self>, PeerCheck> {
        pb::cni_server::CniServer::with_interceptor(self, root_or_self)
    }
}

/// The interceptor that checks who is on the other end of the agent's socket.
pub type PeerCheck = fn(Request<()>) -> Result<Request<()>, Status>;

/// Lets a call through when the process on the other end of the unix socket runs as root or as
/// the agent's own user (its peer credentials, from the kernel); the socket's mode 0600 is the
/// first line, this the second.
fn root_or_self(request: Request<()>) -> Result<Request<()>, Status> {
    let agent = nix::unistd::getuid().as_raw();
    match request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
    {
        Some(peer) if peer.uid() == 0 || peer.uid() == agent => Ok(request),
        Some(peer) => Err(Status::permission_denied(format!(
            "uid {} may not call the node agent: root only",
            peer.uid()
        ))),
        None => Err(Status::permission_denied(
            "the caller's credentials are unknown: the agent answers root only, on its unix socket",
        )),
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn request(invocation: &pb::CniInvocation) -> Result<CniRequest, CniError> {
    let key = AttachmentKey {
        network: invocation.network.clone(),
        container_id: invocation.container_id.clone(),
        ifname: invocation.ifname.clone(),
    };
    validate_key(&key)?;
    Ok(CniRequest {
        key,
        netns: invocation.netns.clone(),
        args: invocation.args.clone().into_iter().collect(),
    })
}

/// The request and its network configuration, parsed once here (ADD and CHECK read it).
fn configured(invocation: &pb::CniInvocation) -> Result<(CniRequest, NetworkConfig), CniError> {
    let request = request(invocation)?;
    let json: serde_json::Value = serde_json::from_slice(&invocation.config_json).map_err(|e| {
        CniError::new(INVALID_CONFIG, "network configuration is not valid JSON").with_details(e.to_string())
    })?;
    let config = NetworkConfig::parse(&json, &request.args)?;
    Ok((request, config))
}

/// The pod's gateway for an address of its family.
fn gateway_of(address: std::net::IpAddr) -> std::net::IpAddr {
    if address.is_ipv6() { GATEWAY_V6 } else { GATEWAY_V4 }
}

/// A default route through the gateway of each family the pod has (IPv4's always: it is set up
/// for every pod).
fn default_routes(added: &Added) -> Vec<pb::CniRoute> {
    let mut routes = vec![pb::CniRoute {
        dst: "0.0.0.0/0".into(),
        gw: GATEWAY_V4.to_string(),
    }];
    if added.addresses.iter().any(|a| a.addr().is_ipv6()) {
        routes.push(pb::CniRoute {
            dst: "::/0".into(),
            gw: GATEWAY_V6.to_string(),
        });
    }
    routes
}

fn result(added: &Added, config: &NetworkConfig) -> pb::CniResult {
    let dns = config.dns.clone().map(|dns| pb::CniDns {
        nameservers: dns.nameservers,
        domain: dns.domain,
        search: dns.search,
        options: dns.options,
    });
    pb::CniResult {
        interfaces: vec![
            pb::CniInterface {
                name: added.wired.host_ifname.clone(),
                mac: mac_text(HOST_MAC),
                sandbox: String::new(),
                mtu: added.wired.pod.mtu,
            },
            pb::CniInterface {
                name: added.wired.pod.name.clone(),
                mac: mac_text(added.wired.pod.mac),
                sandbox: added.netns.clone(),
                mtu: added.wired.pod.mtu,
            },
        ],
        ips: added
            .addresses
            .iter()
            .map(|address| pb::CniIpConfig {
                address: address.to_string(),
                gateway: gateway_of(address.addr()).to_string(),
                interface: 1,
            })
            .collect(),
        routes: default_routes(added),
        dns,
    }
}

#[tonic::async_trait]
impl pb::cni_server::Cni for CniService {
    async fn add(&self, invocation: Request<pb::CniInvocation>) -> Result<Response<pb::AddResponse>, Status> {
        let started = Instant::now();
        let invocation = invocation.into_inner();
        let response = match self.configured(&invocation) {
            Err(failure) => pb::AddResponse {
                result: None,
                error: Some(failure.into()),
            },
            Ok((request, config)) => match self.ops.add(&request, &config).await {
                Ok(added) => pb::AddResponse {
                    result: Some(result(&added, &config)),
                    error: None,
                },
                Err(failure) => pb::AddResponse {
                    result: None,
                    error: Some(failure.into()),
                },
            },
        };
        self.record("ADD", started, response.error.as_ref());
        Ok(Response::new(response))
    }

    async fn del(&self, invocation: Request<pb::CniInvocation>) -> Result<Response<pb::CniOutcome>, Status> {
        let started = Instant::now();
        let done = match request(&invocation.into_inner()) {
            Ok(request) => self.ops.del(&request).await,
            Err(failure) => Err(failure),
        };
        Ok(self.outcome("DEL", started, done))
    }

    async fn check(
        &self,
        invocation: Request<pb::CniInvocation>,
    ) -> Result<Response<pb::CniOutcome>, Status> {
        let started = Instant::now();
        let done = match self.configured(&invocation.into_inner()) {
            Ok((request, config)) => self.ops.check(&request, &config).await,
            Err(failure) => Err(failure),
        };
        Ok(self.outcome("CHECK", started, done))
    }

    async fn status(&self, _: Request<pb::CniInvocation>) -> Result<Response<pb::CniOutcome>, Status> {
        let started = Instant::now();
        Ok(self.outcome("STATUS", started, self.ops.status().await))
    }

    async fn gc(&self, request: Request<pb::GcRequest>) -> Result<Response<pb::CniOutcome>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let network = request.invocation.map(|i| i.network).unwrap_or_default();
        let valid: Vec<(String, String)> = request
            .valid_attachments
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        Ok(self.outcome("GC", started, self.ops.gc(&network, &valid).await))
    }
}
