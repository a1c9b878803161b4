//! ipam-svc, route-svc and policy-svc as child processes on one etcd, each on its own loopback
//! port, with their memory read from `/proc`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use brindle_datastore::testing::free_port;

use crate::cni::release_binary;
use crate::{CpuTime, proc_cpu_time, proc_status_kib};

/// One running service, killed on drop.
pub struct ServiceProcess {
    name: &'static str,
    child: Child,
    address: SocketAddr,
}

impl ServiceProcess {
    /// Starts the binary `name` (beside this benchmark's own) on `etcd`, logging to `logs`.
    pub fn spawn(name: &'static str, etcd: &str, logs: &Path) -> anyhow::Result<Self> {
        let binary = release_binary(name)?;
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let child = Command::new(&binary)
            .arg(format!("--listen={address}"))
            .arg(format!("--metrics-listen={metrics}"))
            .arg(format!("--etcd-endpoints={etcd}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { name, child, address })
    }

    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where it serves gRPC.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:") * 1024
    }

    /// The most resident memory it ever had, in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:") * 1024
    }

    /// CPU time it has used so far (zero when `/proc` cannot tell).
    pub fn cpu_time(&self) -> CpuTime {
        proc_cpu_time(self.child.id()).unwrap_or_default()
    }

    /// Fails when the process has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => anyhow::bail!("{} exited: {status}", self.name),
            None => Ok(()),
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
