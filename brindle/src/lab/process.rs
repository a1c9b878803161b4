//! The lab's daemons (etcd members, the control plane's services, node agents) as processes that
//! can be killed (SIGKILL, as a crash or an OOM kill would) and started again with the same
//! command line, the way a supervisor restarts them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use anyhow::Context;

use super::netns::exec_command;

/// What a lab process is, for stopping and starting the control plane as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A member of the lab's etcd cluster.
    Etcd,
    /// A control-plane service (`brindle server`, or ipam-svc, route-svc, policy-svc).
    Service,
    /// A node's agent.
    Agent,
    /// A routing daemon: a node's BIRD, the router's FRR.
    Router,
}

/// A daemon inside one of the lab's namespaces, restartable with the command it was started with.
#[derive(Debug)]
pub struct Process {
    /// Its name in the lab (`etcd-1`, `server`, `ipam-svc`, or the node's name for its agent).
    pub name: String,
    /// What it is.
    pub role: Role,
    namespace: String,
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
    /// How it ended each time it exited without being killed (a crash, an exit on its own).
    exits: Vec<String>,
}

impl Process {
    /// Starts `program args…` inside `namespace`, stderr appended to `log`.
    pub fn start(
        name: impl Into<String>,
        role: Role,
        namespace: &str,
        program: &Path,
        args: Vec<OsString>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            name: name.into(),
            role,
            namespace: namespace.to_owned(),
            program: program.to_owned(),
            args,
            log,
            child: None,
            exits: Vec::new(),
        };
        process.spawn()?;
        Ok(process)
    }

    /// Starts it again if it is not running (an exit on its own is recorded first).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = exec_command(&self.namespace, &self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs it and reaps it (if it had already exited on its own, that is recorded).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if !self.running() {
            self.child = None;
            return Ok(());
        }
        if let Some(child) = &mut self.child {
            child.kill().with_context(|| format!("killing {}", self.name))?;
            child.wait()?;
        }
        self.child = None;
        Ok(())
    }

    /// Whether it is running (it was started and has not exited). An exit it finds is recorded.
    pub fn running(&mut self) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exits.push(status.to_string());
                self.child = None;
                false
            }
            Err(error) => {
                self.exits.push(format!("unknown ({error})"));
                self.child = None;
                false
            }
        }
    }

    /// Its pid, if it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.running()
            .then(|| self.child.as_ref().map(Child::id))
            .flatten()
    }

    /// How it ended each time it exited without being killed.
    pub fn exits(&self) -> &[String] {
        &self.exits
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
