//! Shared helpers of the ipam-svc integration tests: backends, a settable clock, request builders.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use brindle_datastore::testing::{EtcdServer, free_port};
use brindle_datastore::{EmbeddedStore, EtcdStore, Store};
use brindle_proto::ipam::v1::ipam_client::IpamClient;
use ipam_api::model::{AllowedUse, EncapMode, HandleAttributes, Pool};
use ipam_svc::core::{AssignRequest, Clock, Ipam};
use tonic::transport::Channel;

/// A backend kept alive for a test.
pub enum Backend {
    Embedded(tempfile::TempDir),
    Etcd(EtcdServer),
}

pub async fn embedded() -> (Backend, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path().join("store.redb"))
        .await
        .expect("open");
    (Backend::Embedded(dir), Arc::new(store))
}

pub async fn etcd() -> (Backend, Arc<dyn Store>) {
    let server = EtcdServer::start().await.expect("start etcd");
    let store = EtcdStore::connect(&server.config()).await.expect("connect");
    (Backend::Etcd(server), Arc::new(store))
}

/// A clock the test moves by hand (unix ms).
#[derive(Clone)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_000_000)))
    }
    pub fn advance_secs(&self, secs: u64) {
        self.0.fetch_add(secs * 1000, Ordering::SeqCst);
    }
    pub fn clock(&self) -> Clock {
        let now = Arc::clone(&self.0);
        Arc::new(move || now.load(Ordering::SeqCst))
    }
}

pub fn ipam_with_clock(store: &Arc<dyn Store>, clock: &TestClock) -> Ipam {
    Ipam::with_clock(Arc::clone(store), clock.clock())
}

pub fn pool(name: &str, cidr: &str, block_size: u8) -> Pool {
    Pool {
        name: name.into(),
        cidr: cidr.parse().expect("cidr"),
        block_size,
        vxlan_mode: EncapMode::Never,
        ipip_mode: EncapMode::Never,
        nat_outgoing: false,
        disabled: false,
        node_selector: Default::default(),
        allowed_uses: vec![AllowedUse::Workload, AllowedUse::Tunnel],
        disable_bgp_export: false,
    }
}

pub fn request(handle: &str, node: &str, ipv4: u32, ipv6: u32) -> AssignRequest {
    AssignRequest {
        handle_id: handle.into(),
        node: node.into(),
        num_ipv4: ipv4,
        num_ipv6: ipv6,
        ipv4_pools: Vec::new(),
        ipv6_pools: Vec::new(),
        use_: AllowedUse::Workload,
        attributes: HandleAttributes::default(),
    }
}

/// Asserts `check` finds nothing (optionally against live handles).
pub async fn assert_clean(ipam: &Ipam, live: Option<&HashSet<String>>) {
    let report = ipam.check(live).await.expect("check");
    assert!(
        report.is_clean(),
        "IPAM check found problems: {:#?}",
        report.problems
    );
}

/// An `ipam-svc` process, killed on drop.
pub struct IpamProcess {
    pub child: std::process::Child,
    pub address: String,
}

impl IpamProcess {
    /// Starts the binary with `args` (plus `--listen`) and waits until it answers.
    pub async fn start(args: &[&str], log: &std::path::Path) -> Self {
        // A port found free may be taken before the process binds it: then it exits, and another
        // port is tried. Ready means answering *and* still running (not another process's port).
        for _ in 0..5 {
            let address = format!("127.0.0.1:{}", free_port().expect("port"));
            let log = std::fs::File::create(log).expect("log");
            let child = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-svc"))
                .args(["--listen", &address, "--metrics-listen", "127.0.0.1:0"])
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start ipam-svc");
            let mut process = Self { child, address };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                if process.child.try_wait().expect("child status").is_some() {
                    break;
                }
                if let Ok(mut client) = process.client().await
                    && client
                        .list_pools(brindle_proto::ipam::v1::ListPoolsRequest {})
                        .await
                        .is_ok()
                    && process.child.try_wait().expect("child status").is_none()
                {
                    return process;
                }
                assert!(std::time::Instant::now() < deadline, "ipam-svc did not start");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        panic!("ipam-svc exited at start five times; see {}", log.display());
    }

    pub async fn client(&self) -> Result<IpamClient<Channel>, tonic::transport::Error> {
        IpamClient::connect(format!("http://{}", self.address)).await
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for IpamProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
