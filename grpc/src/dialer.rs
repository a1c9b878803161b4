//! How a client reaches one server: an endpoint (with its TLS configuration, if fixed) or, when
//! the client's certificate rotates, an endpoint whose connections an [`IdentityConnector`] makes.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::TlsError;
use crate::client_identity::IdentityConnector;

/// Opens channels to one server.
#[derive(Debug, Clone)]
pub struct Dialer {
    endpoint: Endpoint,
    connector: Option<IdentityConnector>,
}

impl From<Endpoint> for Dialer {
    fn from(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            connector: None,
        }
    }
}

impl Dialer {
    /// Dials `address` (`host:port` or a URL, `https://` included) through `connector`, which
    /// does the TLS; connects within `connect_timeout`.
    pub fn through(
        address: &str,
        connector: IdentityConnector,
        connect_timeout: Duration,
    ) -> Result<Self, TlsError> {
        let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
        Ok(Self {
            endpoint: crate::tls::endpoint(&format!("http://{rest}"), None, connect_timeout)?,
            connector: Some(connector),
        })
    }

    /// Every call times out after `timeout`.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// A channel that connects on first use and reconnects when needed.
    pub fn connect_lazy(&self) -> Channel {
        match &self.connector {
            Some(connector) => self.endpoint.connect_with_connector_lazy(connector.clone()),
            None => self.endpoint.connect_lazy(),
        }
    }

    /// A channel connected now.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.connector {
            Some(connector) => self.endpoint.connect_with_connector(connector.clone()).await,
            None => self.endpoint.connect().await,
        }
    }
}
