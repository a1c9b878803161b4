//! A test node: its network namespace, ipam-svc serving inside it (embedded store, pool
//! 10.99.0.0/24), a real `node-agent` process, and pods as network namespaces; the real
//! `brindle-cni` binary is executed against it exactly as a runtime does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_datastore::EmbeddedStore;
use ipam_api::model::{AllowedUse, EncapMode, Pool};
use ipam_svc::core::{Ipam, ShowOptions};
use ipam_svc::grpc::IpamService;
use serde_json::Value;

use super::Netns;

pub const NETWORK: &str = "brindle-test";

/// A binary of the workspace, built next to this test (scripts/test.sh builds every binary first).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The CNI shim under test: `$BRINDLE_CNI_BIN` when set (CI points it at the static build from
/// `scripts/build-shim.sh`, the form installed on hosts), else the workspace build.
pub fn shim_binary() -> PathBuf {
    match std::env::var_os("BRINDLE_CNI_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_binary("brindle-cni"),
    }
}

/// A node: its namespace, ipam-svc inside it, and the agent process.
pub struct Node {
    pub netns: Netns,
    pub dir: tempfile::TempDir,
    agent: Option<Child>,
    pub ipam: Arc<Ipam>,
    pub runtime: tokio::runtime::Handle,
    ipam_port: u16,
    _stop: std::sync::mpsc::Sender<()>,
}

impl Node {
    pub fn start() -> Self {
        let netns = Netns::new("node");
        let dir = tempfile::tempdir().expect("tempdir");
        let (ready, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let path = netns.path();
        let store_path = dir.path().join("ipam.redb");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter node netns");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("rt");
            let handle = runtime.handle().clone();
            runtime.block_on(async move {
                let store = Arc::new(EmbeddedStore::open(&store_path).await.expect("store"));
                let ipam = Arc::new(Ipam::new(store));
                let pool = workload_pool("test", "10.99.0.0/24");
                ipam.create_pool(pool).await.expect("pool");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind in node netns");
                let port = listener.local_addr().expect("addr").port();
                let service = IpamService::new(Arc::clone(&ipam)).into_server();
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
                );
                ready
                    .send((Arc::clone(&ipam), handle, port))
                    .expect("report ready");
                tokio::task::spawn_blocking(move || stop_rx.recv()).await.ok();
            });
        });
        let (ipam, runtime, ipam_port) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("ipam-svc started");
        let mut node = Self {
            netns,
            dir,
            agent: None,
            ipam,
            runtime,
            ipam_port,
            _stop: stop,
        };
        node.start_agent();
        node
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("cni.sock")
    }

    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("log");
        let _ = std::fs::remove_file(self.socket());
        let agent = Command::new("ip")
            .args(["netns", "exec", &self.netns.name])
            .arg(workspace_binary("node-agent"))
            .args(["--node-name", "node-1", "--cni-socket"])
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--ipam-endpoint", &format!("http://127.0.0.1:{}", self.ipam_port)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start node-agent");
        self.agent = Some(agent);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.cni(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", "")).code != 0 {
            assert!(
                Instant::now() < deadline,
                "agent never became ready: {}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Runs the shim like a runtime does.
    pub fn cni(&self, env: &[(&str, &str)], config: &str) -> Run {
        self.run_shim(Command::new(shim_binary()), env, config)
    }

    /// Runs the shim as the user `uid` (copied where that user can execute it).
    pub fn cni_as(&self, uid: u32, env: &[(&str, &str)], config: &str) -> Run {
        use std::os::unix::process::CommandExt;
        let copy = self.dir.path().join("brindle-cni");
        std::fs::copy(shim_binary(), &copy).expect("copy the shim");
        let mut command = Command::new(copy);
        command.uid(uid).gid(uid);
        self.run_shim(command, env, config)
    }

    fn run_shim(&self, mut command: Command, env: &[(&str, &str)], config: &str) -> Run {
        let config = config.replace("SOCKET", &self.socket().display().to_string());
        command
            .env_clear()
            .envs(env.iter().copied())
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // A shim just copied (`cni_as`) is "busy" while a child another test forks in between
        // still holds the copy's write descriptor, until that child execs: wait it out.
        let mut attempts = 0;
        let mut child = loop {
            match command.spawn() {
                Err(error) if error.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                spawned => break spawned.expect("spawn brindle-cni"),
            }
        };
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(config.as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("wait");
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw,
        }
    }

    pub fn handles(&self) -> Vec<String> {
        let ipam = Arc::clone(&self.ipam);
        let report = self.runtime.block_on(async move {
            ipam.show(&ShowOptions {
                blocks: true,
                ..ShowOptions::default()
            })
            .await
        });
        let _ = report.expect("show");
        let ipam = Arc::clone(&self.ipam);
        let check = self
            .runtime
            .block_on(async move { ipam.check(None).await })
            .expect("check");
        assert!(check.is_clean(), "IPAM inconsistent: {:?}", check.problems);
        let ipam = Arc::clone(&self.ipam);
        self.runtime
            .block_on(async move { ipam.store().list(ipam_api::keys::HANDLES).await })
            .expect("list handles")
            .kvs
            .into_iter()
            .map(|kv| kv.key.trim_start_matches(ipam_api::keys::HANDLES).to_owned())
            .collect()
    }

    /// Names of brindle's host interfaces in the node.
    pub fn brindle_links(&self) -> Vec<String> {
        self.netns
            .exec(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or_default().to_owned())
            .filter(|name| name.starts_with("brd"))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

pub struct Run {
    pub code: i32,
    pub json: Value,
    pub raw: String,
}

impl Run {
    pub fn address(&self) -> String {
        self.json["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in {}", self.raw))
            .to_owned()
    }
    pub fn ip(&self) -> String {
        self.address().split('/').next().unwrap_or_default().to_owned()
    }
}

pub struct Pod {
    pub netns: Netns,
    pub container_id: String,
}

impl Pod {
    pub fn new(name: &str) -> Self {
        Self {
            netns: Netns::new(name),
            container_id: format!("ctr-{name}-{}", std::process::id()),
        }
    }

    pub fn path(&self) -> String {
        self.netns.path().display().to_string()
    }

    pub fn env(&self, command: &'static str, ifname: &str, with_netns: bool) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_IFNAME", ifname.to_owned()),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".to_owned(),
            ),
        ];
        env.push(("CNI_NETNS", if with_netns { self.path() } else { String::new() }));
        env
    }
}

pub fn conf(version: &str, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"{NETWORK}","type":"brindle-cni","agentSocket":"SOCKET","mtu":1450{extra}}}"#
    )
}

impl Node {
    pub fn run_env(&self, env: &[(&'static str, String)], config: &str) -> Run {
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.cni(&refs, config)
    }
}

/// A workload pool with /26 blocks and no encapsulation.
pub fn workload_pool(name: &str, cidr: &str) -> Pool {
    Pool {
        name: name.into(),
        cidr: cidr.parse().expect("cidr"),
        block_size: 26,
        vxlan_mode: EncapMode::Never,
        ipip_mode: EncapMode::Never,
        nat_outgoing: false,
        disabled: false,
        node_selector: Default::default(),
        allowed_uses: vec![AllowedUse::Workload],
        disable_bgp_export: false,
    }
}
