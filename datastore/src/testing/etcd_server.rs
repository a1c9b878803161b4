//! A throw-away Debian `etcd` server on free loopback ports with a temporary data directory,
//! killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd::{EtcdConfig, EtcdStore, EtcdTls};
use crate::store::Store;

/// How many port pairs are tried when the chosen ports were taken meanwhile.
const START_ATTEMPTS: u32 = 5;

/// How long a starting etcd may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A single-member etcd cluster for one test.
pub struct EtcdServer {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<(ServerTls, EtcdTls)>,
    child: Option<Child>,
}

/// PEM files etcd serves client TLS with; clients must present a certificate signed by `ca`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// CA that signed the server certificate and the accepted client certificates.
    pub ca: PathBuf,
    /// Server certificate (with 127.0.0.1 as a subject alternative name).
    pub cert: PathBuf,
    /// Server private key.
    pub key: PathBuf,
}

/// A free TCP port on 127.0.0.1 (free when this returns; tests may race for it, rarely).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The etcd binary: `$BRINDLE_ETCD_BIN` or `etcd` from `PATH`.
fn etcd_binary() -> PathBuf {
    std::env::var_os("BRINDLE_ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

impl EtcdServer {
    /// Starts etcd and waits until it serves requests.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// Starts etcd serving clients over TLS with client-certificate authentication; `client` is
    /// what [`config`](Self::config) hands to clients.
    pub async fn start_tls(server: ServerTls, client: EtcdTls) -> std::io::Result<Self> {
        Self::start_with(Some((server, client))).await
    }

    async fn start_with(tls: Option<(ServerTls, EtcdTls)>) -> std::io::Result<Self> {
        let mut server = Self {
            dir: tempfile::Builder::new().prefix("brindle-test-etcd-").tempdir()?,
            client_port: free_port()?,
            peer_port: free_port()?,
            tls,
            child: None,
        };
        // Tests start many servers at once: a port found free may be taken before etcd binds it.
        // Then etcd exits at once, and another pair of ports is tried.
        let mut attempts = 0;
        loop {
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(error)
                    if attempts < START_ATTEMPTS && error.to_string().contains("address already in use") =>
                {
                    attempts += 1;
                    server.client_port = free_port()?;
                    server.peer_port = free_port()?;
                    let _ = std::fs::remove_dir_all(server.data_dir());
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The data directory (its `member/snap/db` is the database file).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Client configuration for this server, with short timeouts suited to tests.
    pub fn config(&self) -> EtcdConfig {
        let mut config = EtcdConfig::new(vec![self.endpoint()]);
        config.tls = self.tls.as_ref().map(|(_, client)| client.clone());
        config.request_timeout = Duration::from_secs(3);
        config.connect_timeout = Duration::from_secs(2);
        config.keepalive_interval = Duration::from_secs(1);
        config.keepalive_timeout = Duration::from_secs(2);
        config
    }

    /// Kills etcd with SIGKILL (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd with SIGKILL and starts it again on the same data directory and ports.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> std::io::Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let mut command = Command::new(etcd_binary());
        if let Some((tls, _)) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=brindle-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=brindle-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                self.child = None;
                return Err(std::io::Error::other(format!(
                    "etcd exited with {status} while starting; last log lines: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if let Ok(store) = EtcdStore::connect(&self.config()).await
                && store.revision().await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("etcd did not become ready in time"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
