//! The lab's BGP fabric (`brindle lab up --bgp`): FRR (`zebra` and `bgpd`, Debian's `frr`) in the
//! router namespace joining the two underlay subnets, as every node's top-of-rack peer (AS
//! [`ROUTER_AS`], neighbours accepted from both subnets); a BIRD 2 daemon (Debian's `bird2`)
//! beside each node's agent, which configures it; one BGPPeer per node toward its subnet's router
//! address; nodes whose default route is the router; an "outside" namespace behind the router,
//! standing for a host outside the cluster; and the router's BGP table read back.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::process::Role;
use super::{Lab, Namespace, ROUTER_HOST, SECOND_UNDERLAY, UNDERLAY, run, subnet_prefix, wait_until};

/// The router's AS number (the nodes keep the cluster's, 64512 by default: eBGP).
pub const ROUTER_AS: u32 = 64513;
/// The outside network behind the router (TEST-NET-2): the router is `.1`, the outside host
/// [`OUTSIDE_ADDRESS`].
const OUTSIDE_NET: &str = "198.51.100";
/// The host outside the cluster.
pub const OUTSIDE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// The router's address on underlay subnet `subnet` (the BGP peer of that subnet's nodes).
pub fn router_address(subnet: usize) -> String {
    format!("{}.{ROUTER_HOST}", subnet_prefix(subnet))
}

/// A route in the router's BGP table: its best path's next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterRoute {
    /// The prefix, e.g. `10.244.0.0/26`.
    pub prefix: String,
    /// Next hop of the best path.
    pub next_hop: String,
}

impl Lab {
    /// FRR's directory (configuration, pid files, vty sockets): FRR drops to user `frr`, so it
    /// owns it and may traverse the lab's directory.
    fn frr_dir(&self) -> PathBuf {
        self.dir.path().join("frr")
    }

    /// The router's namespace (a lab with 2 subnets).
    pub fn router_namespace(&self) -> anyhow::Result<&Namespace> {
        self.router
            .as_ref()
            .context("BGP needs the router: a lab with 2 subnets")
    }

    /// Starts FRR in the router namespace and waits for its BGP daemon's vty socket.
    pub(super) fn start_router_bgp(&self) -> anyhow::Result<()> {
        let router = self.router_namespace()?;
        let dir = self.frr_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711))?;
        let config = format!(
            "frr defaults datacenter\nhostname {prefix}-rt\n\
             router bgp {ROUTER_AS}\n bgp router-id {UNDERLAY}.{ROUTER_HOST}\n no bgp ebgp-requires-policy\n\
             bgp graceful-restart\n neighbor nodes peer-group\n neighbor nodes remote-as external\n\
             bgp listen range {UNDERLAY}.0/24 peer-group nodes\n bgp listen range {SECOND_UNDERLAY}.0/24 peer-group nodes\n\
             address-family ipv4 unicast\n  neighbor nodes activate\n exit-address-family\n",
            prefix = self.spec.prefix
        );
        std::fs::write(dir.join("bgpd.conf"), config)?;
        std::fs::write(dir.join("zebra.conf"), "")?;
        run("chown", &["-R", "frr:frr", &dir.display().to_string()])?;
        for daemon in ["zebra", "bgpd"] {
            let path = |name: &str| dir.join(name).into_os_string();
            let args: Vec<OsString> = vec![
                "-f".into(),
                path(&format!("{daemon}.conf")),
                "-i".into(),
                path(&format!("{daemon}.pid")),
                "-z".into(),
                path("zserv.api"),
                "--vty_socket".into(),
                dir.clone().into_os_string(),
                "-u".into(),
                "frr".into(),
                "-g".into(),
                "frr".into(),
            ];
            let program = Path::new("/usr/lib/frr").join(daemon);
            anyhow::ensure!(
                program.exists(),
                "{} missing: install Debian's frr",
                program.display()
            );
            self.launch(&format!("frr-{daemon}"), Role::Router, router, &program, args)?;
            let socket = dir.join(format!("{daemon}.vty"));
            wait_until(&format!("FRR's {daemon}"), Duration::from_secs(20), || {
                socket.exists()
            })?;
        }
        Ok(())
    }

    /// `vtysh -c <command>` on the router's FRR; its output.
    pub fn vtysh(&self, command: &str) -> anyhow::Result<String> {
        let out = std::process::Command::new("vtysh")
            .arg("--vty_socket")
            .arg(self.frr_dir())
            .args(["-c", command])
            .output()
            .context("vtysh (Debian package frr)")?;
        if !out.status.success() {
            bail!("vtysh -c {command:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The router's BGP table: each prefix and its best path's next hop.
    pub fn router_routes(&self) -> anyhow::Result<Vec<RouterRoute>> {
        let json: serde_json::Value =
            serde_json::from_str(&self.vtysh("show ip bgp json")?).context("FRR's BGP table is not JSON")?;
        let mut routes = Vec::new();
        for (prefix, paths) in json["routes"].as_object().into_iter().flatten() {
            let best = paths
                .as_array()
                .into_iter()
                .flatten()
                .find(|path| path["bestpath"].as_bool() == Some(true));
            if let Some(next_hop) = best.and_then(|p| p["nexthops"][0]["ip"].as_str()) {
                routes.push(RouterRoute {
                    prefix: prefix.clone(),
                    next_hop: next_hop.to_owned(),
                });
            }
        }
        routes.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        Ok(routes)
    }

    /// The router's BGP neighbours and their states, by address.
    pub fn router_neighbours(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let json: serde_json::Value = serde_json::from_str(&self.vtysh("show bgp neighbors json")?)
            .context("FRR's neighbours are not JSON")?;
        Ok(json
            .as_object()
            .into_iter()
            .flatten()
            .map(|(address, neighbour)| {
                let state = neighbour["bgpState"].as_str().unwrap_or_default().to_owned();
                (address.clone(), state)
            })
            .collect())
    }

    /// Node `name`'s BIRD configuration file (its agent writes it) and control socket.
    pub fn bird_files(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("{name}-bird.conf")),
            self.dir.path().join(format!("{name}-bird.ctl")),
        )
    }

    /// Starts node `name`'s BIRD in its namespace (with a configuration naming only its router
    /// id until the agent writes its own) and returns the agent's flags that drive it.
    pub(super) fn start_bird(
        &self,
        name: &str,
        namespace: &Namespace,
        router_id: Ipv4Addr,
    ) -> anyhow::Result<Vec<OsString>> {
        let (config, socket) = self.bird_files(name);
        std::fs::write(&config, format!("router id {router_id};\nprotocol device {{}}\n"))?;
        let args: Vec<OsString> = vec![
            "-f".into(),
            "-c".into(),
            config.clone().into(),
            "-s".into(),
            socket.clone().into(),
            "-P".into(),
            self.dir.path().join(format!("{name}-bird.pid")).into(),
        ];
        self.launch(
            &format!("{name}-bird"),
            Role::Router,
            namespace,
            Path::new("bird"),
            args,
        )
        .context("starting BIRD (Debian package bird2)")?;
        wait_until(&format!("{name}'s BIRD"), Duration::from_secs(20), || {
            socket.exists()
        })?;
        Ok(vec![
            "--bird-config".into(),
            config.into(),
            "--bird-socket".into(),
            socket.into(),
        ])
    }

    /// Peers node `name` (on subnet `subnet`) with its subnet's router address: a BGPPeer for
    /// that node alone; and makes the router its default gateway.
    pub(super) fn peer_with_router(
        &self,
        name: &str,
        namespace: &Namespace,
        subnet: usize,
    ) -> anyhow::Result<()> {
        let router = router_address(subnet);
        namespace.ip(&["route", "replace", "default", "via", &router])?;
        self.apply_bgp_peer(name, &router, ROUTER_AS, name, None)
    }

    /// `brindle apply` of a BGPPeer `name` for node `node`.
    pub fn apply_bgp_peer(
        &self,
        name: &str,
        peer_ip: &str,
        as_number: u32,
        node: &str,
        password: Option<&str>,
    ) -> anyhow::Result<()> {
        let password = password
            .map(|p| format!("\n  password:\n    value: {p:?}"))
            .unwrap_or_default();
        self.apply_with_cli(&format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: {name}\nspec:\n  \
             peerIP: {peer_ip}\n  asNumber: {as_number}\n  node: {node}{password}\n"
        ))
        .with_context(|| format!("BGPPeer {name}"))
    }

    /// `brindle apply -f` of `manifest` (as an operator would), as the lab's administrator.
    pub fn apply_with_cli(&self, manifest: &str) -> anyhow::Result<()> {
        let file = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile_in(self.dir.path())?;
        std::fs::write(file.path(), manifest)?;
        let applied = self
            .cli(&["apply", "-f", &file.path().display().to_string()])
            .output()
            .context("brindle apply")?;
        if !applied.status.success() {
            bail!("brindle apply: {}", String::from_utf8_lossy(&applied.stderr));
        }
        Ok(())
    }

    /// Waits until every node reports (in `brindle node status`) a BGP session and every
    /// session is established.
    pub fn wait_bgp_established(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_until("every node's BGP sessions established", timeout, || {
            self.node_status().is_ok_and(|nodes| {
                nodes.len() == self.nodes.len()
                    && nodes.iter().all(|n| {
                        !n.bgp_sessions.is_empty() && n.bgp_sessions.iter().all(|s| s.state == "Established")
                    })
            })
        })
    }

    /// Adds a namespace behind the router standing for a host outside the cluster
    /// ([`OUTSIDE_ADDRESS`]): it knows no pod network, only its default route to the router,
    /// which learned the pods' blocks over BGP. Returns that address.
    pub fn add_outside(&mut self) -> anyhow::Result<Ipv4Addr> {
        let router = self.router_namespace()?;
        let outside = Namespace::create(format!("{}-out", self.spec.prefix))?;
        let (inside, far) = (
            format!("{}-ro", self.spec.prefix),
            format!("{}-or", self.spec.prefix),
        );
        run(
            "ip",
            &["link", "add", &inside, "type", "veth", "peer", "name", &far],
        )?;
        run(
            "ip",
            &["link", "set", &inside, "netns", &router.name, "name", "eth2"],
        )?;
        run(
            "ip",
            &["link", "set", &far, "netns", &outside.name, "name", "eth0"],
        )?;
        router.ip(&["addr", "add", &format!("{OUTSIDE_NET}.1/24"), "dev", "eth2"])?;
        router.ip(&["link", "set", "eth2", "up"])?;
        outside.ip(&["addr", "add", &format!("{OUTSIDE_ADDRESS}/24"), "dev", "eth0"])?;
        outside.ip(&["link", "set", "eth0", "up"])?;
        outside.ip(&["route", "add", "default", "via", &format!("{OUTSIDE_NET}.1")])?;
        self.outside = Some(outside);
        Ok(OUTSIDE_ADDRESS)
    }
}
