//! Running CNI plugins the way a runtime does, for the CNI benchmarks: plugins executed with the
//! CNI environment and the configuration on stdin, daemons killed on drop. (Namespaces and
//! commands come from `brindle::lab`.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian's reference plugins (containernetworking-plugins) are installed.
pub const PEER_DIR: &str = "/usr/lib/cni";

/// Kills the child on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CNI plugin to benchmark.
#[derive(Debug, Clone)]
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
