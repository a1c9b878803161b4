//! Connections to the control plane's services, and errors that name the service and address.

use std::collections::BTreeMap;
use std::time::Duration;

use brindle_grpc::{MAX_RESPONSE_BYTES, tls};
use brindle_proto::ipam::v1::ipam_client::IpamClient;
use brindle_proto::policy::v1::policy_client::PolicyClient;
use brindle_proto::route::v1::routes_client::RoutesClient;
use tonic::transport::Channel;

use crate::cli::ClientArgs;

/// A service the CLI talks to.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Ipam,
    Route,
    Policy,
    /// Node identities: served beside IPAM (`brindle server`, or ipam-svc with
    /// `--signing-ca-cert`).
    Identity,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Ipam => "ipam-svc",
            Self::Route => "route-svc",
            Self::Policy => "policy-svc",
            Self::Identity => "ipam-svc (identity)",
        }
    }
}

/// The addresses of the services, connected on first use; services at one address share the
/// connection (the usual case: `brindle server`).
pub struct Clients {
    args: ClientArgs,
    channels: tokio::sync::Mutex<BTreeMap<String, Channel>>,
}

impl Clients {
    pub fn new(args: ClientArgs) -> Self {
        Self {
            args,
            channels: tokio::sync::Mutex::default(),
        }
    }

    fn address(&self, service: Service) -> &str {
        match service {
            Service::Ipam | Service::Identity => self.args.ipam_server.as_ref(),
            Service::Route => self.args.route_server.as_ref(),
            Service::Policy => self.args.policy_server.as_ref(),
        }
        .unwrap_or(&self.args.server)
    }

    pub async fn channel(&self, service: Service) -> anyhow::Result<Channel> {
        let address = self.address(service);
        let mut channels = self.channels.lock().await;
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let timeout = Duration::from_secs(self.args.timeout);
        let tls = self.args.tls.config()?;
        let endpoint = tls::endpoint(address, tls.as_ref(), timeout)
            .map_err(|e| anyhow::anyhow!("{}: {e}", service.name()))?
            .timeout(timeout);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {} at {address}: {}", service.name(), chain(&e)))?;
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    pub async fn ipam(&self) -> anyhow::Result<IpamClient<Channel>> {
        Ok(IpamClient::new(self.channel(Service::Ipam).await?).max_decoding_message_size(MAX_RESPONSE_BYTES))
    }

    pub async fn route(&self) -> anyhow::Result<RoutesClient<Channel>> {
        Ok(RoutesClient::new(self.channel(Service::Route).await?)
            .max_decoding_message_size(MAX_RESPONSE_BYTES))
    }

    pub async fn policy(&self) -> anyhow::Result<PolicyClient<Channel>> {
        Ok(PolicyClient::new(self.channel(Service::Policy).await?)
            .max_decoding_message_size(MAX_RESPONSE_BYTES))
    }

    /// The error of a failed call: the service, its address, the status code and message.
    pub fn failed(&self, service: Service, status: tonic::Status) -> anyhow::Error {
        anyhow::anyhow!(
            "{} at {}: {:?}: {}",
            service.name(),
            self.address(service),
            status.code(),
            status.message()
        )
    }
}

/// An error and its sources on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
