//! Network namespaces of a lab: created by name, wired to the underlay bridge with a veth made
//! directly inside them (the root namespace is never touched), commands and async code run inside.

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `program args`; an error names the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec <namespace> <program>`: a command to run inside a namespace (`ip` execs the
/// program, so the child's pid is the program's).
pub fn exec_command(namespace: &str, program: &std::path::Path) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", namespace]).arg(program);
    command
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Namespace {
    /// Its name (`/run/netns/<name>`).
    pub name: String,
}

impl Namespace {
    /// Creates `name` with its loopback up.
    pub fn create(name: String) -> anyhow::Result<Self> {
        run("ip", &["netns", "add", &name])?;
        let namespace = Self { name };
        namespace.ip(&["link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Its path.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a sysctl inside (`net.ipv4.ip_forward`), never in the root namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "sysctl",
                "-qw",
                &format!("{key}={value}"),
            ],
        )
        .map(drop)
    }

    /// Runs a command inside; returns whether it succeeded.
    pub fn succeeds(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    }

    /// A command that runs inside (to spawn).
    pub fn command(&self, program: &std::path::Path) -> Command {
        exec_command(&self.name, program)
    }

    /// Starts `work` on a new thread that entered this namespace (sockets it opens live here).
    pub fn spawn<T, F>(&self, work: F) -> std::thread::JoinHandle<anyhow::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", path.display()))?;
            work()
        })
    }

    /// Runs `work` on a thread that entered this namespace, on its own runtime.
    pub fn block_on<T, F, Fut>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        self.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(work())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread inside {} panicked", self.name))?
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// The underlay: a namespace holding bridge `br0` that every lab namespace plugs into.
pub struct Underlay {
    /// The bridge's namespace.
    pub namespace: Namespace,
    /// MTU of its links (`None`: the kernel's default).
    mtu: Option<u32>,
}

impl Underlay {
    /// Creates the bridge namespace; every link plugged in gets `mtu`, when given.
    pub fn create(name: String, mtu: Option<u32>) -> anyhow::Result<Self> {
        let namespace = Namespace::create(name)?;
        namespace.ip(&["link", "add", "br0", "type", "bridge"])?;
        namespace.ip(&["link", "set", "br0", "up"])?;
        Ok(Self { namespace, mtu })
    }

    /// Plugs `member` in as its interface `ifname` with `address` (e.g. `192.168.200.11/24`);
    /// `port` names the bridge side.
    pub fn plug(&self, member: &Namespace, port: &str, ifname: &str, address: &str) -> anyhow::Result<()> {
        self.namespace.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            &member.name,
        ])?;
        if let Some(mtu) = self.mtu {
            self.namespace
                .ip(&["link", "set", port, "mtu", &mtu.to_string()])?;
            member.ip(&["link", "set", ifname, "mtu", &mtu.to_string()])?;
        }
        self.namespace.ip(&["link", "set", port, "master", "br0", "up"])?;
        member.ip(&["addr", "add", address, "dev", ifname])?;
        member.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }
}
