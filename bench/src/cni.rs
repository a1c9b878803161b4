//! Running CNI plugins the way a runtime does, for the CNI benchmarks: namespaces made for the
//! run, plugins executed with the CNI environment and the configuration on stdin, daemons killed
//! on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian's reference plugins (containernetworking-plugins) are installed.
pub const PEER_DIR: &str = "/usr/lib/cni";

/// A namespace made by this benchmark, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// Creates the namespace `name`.
    pub fn new(name: String) -> anyhow::Result<Self> {
        sh("ip", &["netns", "add", &name])?;
        Ok(Self(name))
    }
    /// Its path under /run/netns.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kills the child on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CNI plugin to benchmark.
pub struct Plugin {
    /// Name in results.
    pub label: &'static str,
    /// The plugin binary.
    pub binary: PathBuf,
    /// Its network configuration.
    pub config: String,
}

/// Runs one CNI command and returns its latency; fails on a non-zero exit.
pub fn invoke(plugin: &Plugin, command: &str, container: &str, netns: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new(&plugin.binary)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", PEER_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", plugin.binary.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(plugin.config.as_bytes())?;
    let out = child.wait_with_output()?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "{} {command} failed: {}",
            plugin.label,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(elapsed)
}

/// A binary built next to the running one (`cargo build --release --workspace --bins`).
pub fn release_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .context("binary dir")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} missing: run `cargo build --release --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}
