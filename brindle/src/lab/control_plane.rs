//! The lab's daemons: etcd members, the control plane (all-in-one or separate services) and the
//! node agents as restartable processes — started, killed, restarted, their exits and logs.

use std::ffi::OsString;
use std::path::Path;
use std::sync::MutexGuard;
use std::time::Duration;

use anyhow::Context;

use super::calls::scrape;
use super::netns::Namespace;
use super::process::{Process, Role};
use super::{
    CONTROL_PORT, ControlPlane, Lab, SERVER_METRICS_PORT, Service, UNDERLAY, etcd_client_port, wait_until,
};

impl Lab {
    pub(super) fn processes(&self) -> MutexGuard<'_, Vec<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `program args…` in `namespace` as lab process `name`, logging to `<name>.log`.
    pub(super) fn launch(
        &self,
        name: &str,
        role: Role,
        namespace: &Namespace,
        program: &Path,
        args: Vec<OsString>,
    ) -> anyhow::Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let process = Process::start(name, role, &namespace.name, program, args, log)?;
        self.processes().push(process);
        Ok(())
    }

    /// The client URLs of the etcd members.
    fn etcd_endpoints(&self) -> Vec<String> {
        (0..self.spec.etcd_members)
            .map(|member| format!("http://127.0.0.1:{}", etcd_client_port(member)))
            .collect()
    }

    /// Starts the control plane: the etcd members (the first time: a new cluster) until each
    /// accepts connections, then the services. Running processes are left alone, so this also
    /// restarts what [`Self::stop_control_plane`] or a kill stopped.
    pub fn start_control_plane(&self) -> anyhow::Result<()> {
        if self.processes().is_empty() {
            self.launch_etcd()?;
            self.wait_for_etcd()?;
            self.launch_services()
        } else {
            self.start_role(Role::Etcd)?;
            self.wait_for_etcd()?;
            self.start_role(Role::Service)
        }
    }

    /// Stops the control plane (services and datastore): the data plane must keep working.
    pub fn stop_control_plane(&self) -> anyhow::Result<()> {
        for process in self.processes().iter_mut().rev() {
            if process.role != Role::Agent {
                process.kill()?;
            }
        }
        Ok(())
    }

    fn start_role(&self, role: Role) -> anyhow::Result<()> {
        self.processes()
            .iter_mut()
            .filter(|p| p.role == role)
            .try_for_each(Process::spawn)
    }

    fn launch_etcd(&self) -> anyhow::Result<()> {
        let members = self.spec.etcd_members;
        let peer = |member: usize| format!("http://127.0.0.1:{}", etcd_client_port(member) + 1);
        let cluster: Vec<String> = (0..members)
            .map(|member| format!("etcd-{}={}", member + 1, peer(member)))
            .collect();
        for member in 0..members {
            let name = format!("etcd-{}", member + 1);
            let client = format!("http://127.0.0.1:{}", etcd_client_port(member));
            let args = [
                format!("--name={name}"),
                format!("--data-dir={}", self.dir.path().join(&name).display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={}", peer(member)),
                format!("--initial-advertise-peer-urls={}", peer(member)),
                format!("--initial-cluster={}", cluster.join(",")),
                format!("--initial-cluster-token={}", self.spec.prefix),
            ];
            self.launch(
                &name,
                Role::Etcd,
                &self.control,
                Path::new("etcd"),
                args.into_iter().map(OsString::from).collect(),
            )
            .context("starting etcd (Debian package etcd-server)")?;
        }
        Ok(())
    }

    /// Waits until every etcd member accepts connections.
    fn wait_for_etcd(&self) -> anyhow::Result<()> {
        for member in 0..self.spec.etcd_members {
            let port = etcd_client_port(member);
            let accepts = || {
                self.control
                    .spawn(move || Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()))
                    .join()
                    .is_ok_and(|connected| connected.unwrap_or(false))
            };
            wait_until(
                &format!("etcd-{} accepting connections", member + 1),
                Duration::from_secs(30),
                accepts,
            )?;
        }
        Ok(())
    }

    fn launch_services(&self) -> anyhow::Result<()> {
        let store: Vec<OsString> = if self.spec.etcd_members > 0 {
            vec!["--etcd-endpoints".into(), self.etcd_endpoints().join(",").into()]
        } else {
            vec!["--store-path".into(), self.dir.path().join("store.redb").into()]
        };
        let serve = |listen: u16, metrics: u16| -> Vec<OsString> {
            let mut args: Vec<OsString> = vec![
                "--listen".into(),
                format!("{UNDERLAY}.1:{listen}").into(),
                "--metrics-listen".into(),
                format!("127.0.0.1:{metrics}").into(),
            ];
            args.extend(self.server_transport_flags());
            args.extend(store.iter().cloned());
            args
        };
        match self.spec.control_plane {
            ControlPlane::AllInOne => {
                let mut args = vec![OsString::from("server")];
                args.extend(serve(CONTROL_PORT, SERVER_METRICS_PORT));
                args.extend(self.signing_flags());
                let brindle = self.spec.binaries.join("brindle");
                self.launch("server", Role::Service, &self.control, &brindle, args)
            }
            ControlPlane::Separate => Service::ALL.iter().try_for_each(|service| {
                let binary = self.spec.binaries.join(service.binary());
                let mut args = serve(service.port(), service.port() + 2000);
                if *service == Service::Ipam {
                    args.extend(self.signing_flags());
                }
                self.launch(service.binary(), Role::Service, &self.control, &binary, args)
            }),
        }
    }

    /// Starts kube-sync (`kube-sync` beside the other binaries) in the control plane's namespace,
    /// following the Kubernetes API `kubeconfig` names (reachable from that namespace) into the
    /// lab's services; lab process `kube-sync`.
    pub fn start_kube_sync(&self, kubeconfig: &Path) -> anyhow::Result<()> {
        let binary = self.spec.binaries.join("kube-sync");
        let mut args: Vec<OsString> = vec![
            "--kubeconfig".into(),
            kubeconfig.into(),
            "--policy-endpoint".into(),
            self.endpoint(Service::Policy).into(),
            "--route-endpoint".into(),
            self.endpoint(Service::Route).into(),
            "--ipam-endpoint".into(),
            self.endpoint(Service::Ipam).into(),
            "--metrics-listen".into(),
            "127.0.0.1:9405".into(),
        ];
        args.extend(self.admin_flags());
        self.launch("kube-sync", Role::Service, &self.control, &binary, args)
    }

    /// The namespace the control plane runs in (a Kubernetes API for [`Self::start_kube_sync`]
    /// listens there).
    pub fn control_namespace(&self) -> &Namespace {
        &self.control
    }

    /// SIGKILLs lab process `name` (`etcd-2`, `server`, `ipam-svc`, `kube-sync`, a node's name
    /// for its agent), as a crash would.
    pub fn kill(&self, name: &str) -> anyhow::Result<()> {
        self.with_process(name, Process::kill)
    }

    /// Starts lab process `name` again with its command line, as a supervisor would.
    pub fn restart(&self, name: &str) -> anyhow::Result<()> {
        self.with_process(name, Process::spawn)
    }

    fn with_process(
        &self,
        name: &str,
        act: impl FnOnce(&mut Process) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut processes = self.processes();
        let process = processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("the lab has no process {name}"))?;
        act(process)
    }

    /// The names of the lab's processes that are not running (killed, or exited on their own).
    pub fn not_running(&self) -> Vec<String> {
        self.processes()
            .iter_mut()
            .filter_map(|p| (!p.running()).then(|| p.name.clone()))
            .collect()
    }

    /// Every time a lab process exited without being killed (crashed or stopped on its own),
    /// even if it was started again since: `(name, how it ended)`.
    pub fn exits(&self) -> Vec<(String, String)> {
        let mut processes = self.processes();
        processes.iter_mut().for_each(|p| {
            p.running();
        });
        processes
            .iter()
            .flat_map(|p| p.exits().iter().map(|exit| (p.name.clone(), exit.clone())))
            .collect()
    }

    /// The etcd member that is the cluster's leader now (`etcd_server_is_leader` on its
    /// `/metrics`), if one is.
    pub fn etcd_leader(&self) -> Option<String> {
        (0..self.spec.etcd_members).find_map(|member| {
            let metrics = scrape(&self.control, etcd_client_port(member)).ok()?;
            metrics
                .lines()
                .any(|line| line.trim() == "etcd_server_is_leader 1")
                .then(|| format!("etcd-{}", member + 1))
        })
    }

    /// Compacts the etcd cluster's history up to its current revision (as kube-apiserver does
    /// every few minutes): watches behind it must re-list. Returns that revision.
    pub fn compact_datastore(&self) -> anyhow::Result<u64> {
        anyhow::ensure!(
            self.spec.etcd_members > 0,
            "only an etcd lab's datastore can be compacted from outside"
        );
        let config = brindle_datastore::EtcdConfig::new(self.etcd_endpoints());
        self.control.block_on(move || async move {
            use brindle_datastore::Store;
            let store = brindle_datastore::EtcdStore::connect(&config).await?;
            let revision = store.revision().await?;
            store.compact(revision).await?;
            Ok(revision)
        })
    }

    /// The lab's running services and agents, by name, with their pids.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.processes()
            .iter_mut()
            .filter(|p| p.role != Role::Etcd)
            .filter_map(|p| Some((p.name.clone(), p.pid()?)))
            .collect()
    }

    /// Logs of the control plane and every agent, for failure reports.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                logs.push_str(&format!("== {}\n", entry.path().display()));
                logs.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        logs
    }
}
