//! The lab's control plane as an operator reaches it: the `brindle` CLI, the services' gRPC
//! APIs (pools, natOutgoing, node status, policy) and every process's `/metrics`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle_proto::ipam::v1 as ipam;
use brindle_proto::policy::v1 as policy;
use brindle_proto::route::v1 as route;

use super::netns::Namespace;
use super::{
    AGENT_METRICS_PORT, CONTROL_PORT, ControlPlane, IPV6_POOL, Lab, SERVER_METRICS_PORT, Service, UNDERLAY,
};

impl Lab {
    /// Turns natOutgoing of the lab's pool on or off.
    pub fn set_nat_outgoing(&self, enabled: bool) -> anyhow::Result<()> {
        let ipam_endpoint = self.admin_endpoint(Service::Ipam)?;
        self.control.block_on(move || async move {
            let mut client = ipam::ipam_client::IpamClient::new(ipam_endpoint.connect().await?);
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
        let endpoint = self.admin_endpoint(Service::Route)?;
        self.control.block_on(move || async move {
            let mut client = route::routes_client::RoutesClient::new(endpoint.connect().await?);
            Ok(client
                .list_nodes(route::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes)
        })
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
            .args(["--policy-server", &self.endpoint(Service::Policy)])
            .args(self.admin_flags());
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

    pub(super) fn create_pool(&self) -> anyhow::Result<()> {
        let ipam_endpoint = self.admin_endpoint(Service::Ipam)?;
        let cidr = self.spec.pool.clone();
        let dual_stack = self.spec.dual_stack;
        let (vxlan_mode, ipip_mode) = self.spec.encapsulation.modes();
        self.control.block_on(move || async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut client = loop {
                match ipam_endpoint.connect().await {
                    Ok(channel) => break ipam::ipam_client::IpamClient::new(channel),
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

    /// Runs `call` with a policy-svc client inside the control plane's namespace.
    pub fn policy<T, F, Fut>(&self, call: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(policy::policy_client::PolicyClient<tonic::transport::Channel>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let endpoint = self.admin_endpoint(Service::Policy)?;
        self.control.block_on(move || async move {
            let client = policy::policy_client::PolicyClient::new(endpoint.connect().await?);
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
                    ..Default::default()
                })
                .await?;
            Ok(())
        })
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
pub(super) fn scrape(namespace: &Namespace, port: u16) -> anyhow::Result<String> {
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
