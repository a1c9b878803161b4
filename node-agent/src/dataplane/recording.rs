//! An in-memory kernel for unit tests: implements [`Netlink`] and [`Sysctl`], keeps the state a
//! real kernel would, records every call, and can be told to fail a call.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;

use super::{
    DataplaneError, Ipsets, Iptables, LinkState, Mac, Netlink, PodGateway, PodState, Route, Sysctl, Vtep,
    VxlanDevice,
};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `create_veth(host, pod, netns)`.
    CreateVeth(String, String, PathBuf),
    /// `delete_link(name)`.
    DeleteLink(String),
    /// `retire_link(name)`.
    RetireLink(String),
    /// `delete_retired_links()`.
    DeleteRetiredLinks,
    /// `replace_route(route)`.
    ReplaceRoute(Route),
    /// `delete_route(route)`.
    DeleteRoute(Route),
    /// `prepare_pod(netns, ifname)`.
    PreparePod(PathBuf, String),
    /// `add_pod_addresses(netns, ifname, addresses)`.
    AddPodAddresses(PathBuf, String, Vec<IpNet>),
    /// `retire_pod_interface(netns, ifname)`.
    RetirePodInterface(PathBuf, String),
    /// `sysctl set(key, value)`.
    Sysctl(String, String),
    /// `iptables restore(table, payload)`.
    IptablesRestore(String, String),
    /// `iptables ensure_jump(table, from, to)`.
    IptablesJump(String, String, String),
    /// `iptables remove_jump(table, from, to)`.
    IptablesUnhook(String, String, String),
    /// `ipset restore(payload)`.
    IpsetRestore(String),
    /// `ensure_vxlan(device)`.
    EnsureVxlan(VxlanDevice),
    /// `ensure_ipip(name)`.
    EnsureIpip(String),
    /// `replace_vtep(device, vtep)`.
    ReplaceVtep(String, Vtep),
    /// `delete_vtep(device, vtep)`.
    DeleteVtep(String, Vtep),
    /// `replace_neighbour(device, ip, mac)`.
    ReplaceNeighbour(String, IpAddr, Mac),
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    /// iptables: table → chain → rules (as written after `-A <chain>`).
    iptables: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    /// ipsets: name → (type, members).
    ipsets: BTreeMap<String, (String, BTreeSet<String>)>,
    host_links: BTreeMap<String, LinkState>,
    /// Pod links keyed by (netns, ifname), with the host peer's name.
    pod_links: BTreeMap<(PathBuf, String), (PodState, String)>,
    routes: Vec<Route>,
    /// Host addresses and the link holding each.
    host_addresses: BTreeMap<IpAddr, String>,
    vxlan_devices: BTreeMap<String, VxlanDevice>,
    vteps: BTreeMap<String, BTreeSet<Vtep>>,
    retired: Vec<String>,
    sysctls: BTreeMap<String, String>,
    next_index: u32,
    fail_on: Option<String>,
}

impl State {
    fn pod_state(&mut self, netns: &Path, ifname: &str) -> Result<&mut PodState, DataplaneError> {
        self.pod_links
            .get_mut(&(netns.to_owned(), ifname.to_owned()))
            .map(|(pod, _)| pod)
            .ok_or_else(|| DataplaneError::Missing(format!("link {ifname} in {}", netns.display())))
    }
}

/// The fake kernel.
#[derive(Default)]
pub struct RecordingKernel {
    state: Mutex<State>,
}

impl RecordingKernel {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The payloads written with `iptables-restore` and with `ipset restore`, in order.
    pub fn restores(&self) -> (Vec<String>, Vec<String>) {
        let mut iptables = Vec::new();
        let mut ipsets = Vec::new();
        for call in &self.lock().calls {
            match call {
                Call::IptablesRestore(_, payload) => iptables.push(payload.clone()),
                Call::IpsetRestore(payload) => ipsets.push(payload.clone()),
                _ => {}
            }
        }
        (iptables, ipsets)
    }

    /// Makes the next call whose `Debug` text contains `needle` fail.
    pub fn fail_on(&self, needle: &str) {
        self.lock().fail_on = Some(needle.to_owned());
    }

    /// Current host routes.
    pub fn current_routes(&self) -> Vec<Route> {
        self.lock().routes.clone()
    }

    /// Current host link names.
    pub fn host_link_names(&self) -> Vec<String> {
        self.lock().host_links.keys().cloned().collect()
    }

    /// Adds a host link (an underlay interface, a stand-in tunnel device) with `addresses`.
    pub fn add_host_link(&self, name: &str, mtu: u32, addresses: &[IpAddr]) {
        let mut state = self.lock();
        state.next_index += 1;
        let link = LinkState {
            name: name.into(),
            index: state.next_index,
            mac: [0x0e, 0, 0, 0, 0, state.next_index as u8],
            mtu,
            up: true,
        };
        state.host_links.insert(name.into(), link);
        for address in addresses {
            state.host_addresses.insert(*address, name.into());
        }
    }

    /// The VXLAN device `name` as last ensured.
    pub fn vxlan_device(&self, name: &str) -> Option<VxlanDevice> {
        self.lock().vxlan_devices.get(name).cloned()
    }

    /// Tunnel endpoints programmed on `device`.
    pub fn current_vteps(&self, device: &str) -> BTreeSet<Vtep> {
        self.lock().vteps.get(device).cloned().unwrap_or_default()
    }

    /// Whether a pod interface exists.
    pub fn pod_link_exists(&self, netns: &Path, ifname: &str) -> bool {
        self.lock()
            .pod_links
            .contains_key(&(netns.to_owned(), ifname.to_owned()))
    }

    /// Removes a pod interface behind the agent's back (as a user running `ip link del` would).
    pub fn remove_pod_link_out_of_band(&self, netns: &Path, ifname: &str) {
        let mut state = self.lock();
        if let Some((_, host)) = state.pod_links.remove(&(netns.to_owned(), ifname.to_owned())) {
            state.host_links.remove(&host);
        }
    }

    fn record(&self, call: Call) -> Result<MutexGuard<'_, State>, DataplaneError> {
        let mut state = self.lock();
        let text = format!("{call:?}");
        if let Some(needle) = state.fail_on.clone()
            && text.contains(&needle)
        {
            state.fail_on = None;
            return Err(DataplaneError::Missing(format!("injected failure on {text}")));
        }
        state.calls.push(call);
        Ok(state)
    }
}

#[async_trait::async_trait]
impl Netlink for RecordingKernel {
    async fn create_veth(
        &self,
        host_name: &str,
        host_mac: Mac,
        pod_name: &str,
        pod_netns: &Path,
        mtu: u32,
    ) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::CreateVeth(
            host_name.into(),
            pod_name.into(),
            pod_netns.into(),
        ))?;
        let key = (pod_netns.to_owned(), pod_name.to_owned());
        if state.host_links.contains_key(host_name) || state.pod_links.contains_key(&key) {
            return Err(DataplaneError::Exists(format!("link {host_name} or {pod_name}")));
        }
        state.next_index += 2;
        let index = state.next_index;
        let host = LinkState {
            name: host_name.into(),
            index,
            mac: host_mac,
            mtu,
            up: true,
        };
        let pod = LinkState {
            name: pod_name.into(),
            index: index + 1,
            mac: [0x0a, 0x58, 0, 0, 0, index as u8],
            mtu,
            up: false,
        };
        state.host_links.insert(host_name.into(), host);
        state.pod_links.insert(
            key,
            (
                PodState {
                    link: pod,
                    addresses: Vec::new(),
                    routes: Vec::new(),
                },
                host_name.into(),
            ),
        );
        Ok(())
    }

    async fn link(&self, name: &str) -> Result<Option<LinkState>, DataplaneError> {
        Ok(self.lock().host_links.get(name).cloned())
    }

    async fn links(&self) -> Result<Vec<LinkState>, DataplaneError> {
        Ok(self.lock().host_links.values().cloned().collect())
    }

    async fn delete_link(&self, name: &str) -> Result<bool, DataplaneError> {
        let mut state = self.record(Call::DeleteLink(name.into()))?;
        let existed = state.host_links.remove(name).is_some();
        state.pod_links.retain(|_, (_, host)| host != name);
        state.routes.retain(|r| r.device.as_deref() != Some(name));
        state.host_addresses.retain(|_, holder| holder != name);
        state.vxlan_devices.remove(name);
        state.vteps.remove(name);
        Ok(existed)
    }

    async fn retire_link(&self, name: &str) -> Result<bool, DataplaneError> {
        let mut state = self.record(Call::RetireLink(name.into()))?;
        let Some(link) = state.host_links.get_mut(name) else {
            return Ok(false);
        };
        link.up = false;
        state.retired.push(name.into());
        Ok(true)
    }

    async fn delete_retired_links(&self) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::DeleteRetiredLinks)?;
        for name in std::mem::take(&mut state.retired) {
            state.host_links.remove(&name);
            state.pod_links.retain(|_, (_, host)| *host != name);
            state
                .routes
                .retain(|r| r.device.as_deref() != Some(name.as_str()));
        }
        Ok(())
    }

    async fn replace_route(&self, route: &Route) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::ReplaceRoute(route.clone()))?;
        if let Some(device) = &route.device
            && !state.host_links.contains_key(device)
        {
            return Err(DataplaneError::Missing(format!("link {device}")));
        }
        state.routes.retain(|r| r.destination != route.destination);
        state.routes.push(route.clone());
        Ok(())
    }

    async fn delete_route(&self, route: &Route) -> Result<bool, DataplaneError> {
        let mut state = self.record(Call::DeleteRoute(route.clone()))?;
        let before = state.routes.len();
        state.routes.retain(|r| r != route);
        Ok(state.routes.len() != before)
    }

    async fn routes(&self) -> Result<Vec<Route>, DataplaneError> {
        Ok(self.lock().routes.clone())
    }

    async fn prepare_pod(
        &self,
        netns: &Path,
        ifname: &str,
        gateway: &PodGateway,
    ) -> Result<LinkState, DataplaneError> {
        let mut state = self.record(Call::PreparePod(netns.into(), ifname.into()))?;
        let pod = state.pod_state(netns, ifname)?;
        pod.link.up = true;
        let default = match gateway.address {
            std::net::IpAddr::V4(_) => "0.0.0.0/0",
            std::net::IpAddr::V6(_) => "::/0",
        };
        pod.routes.extend([
            Route {
                destination: gateway.address.into(),
                gateway: None,
                device: Some(ifname.into()),
                scope_link: true,
                onlink: false,
                kind: super::RouteKind::Unicast,
            },
            Route {
                destination: default
                    .parse()
                    .map_err(|_| DataplaneError::Missing("default route".into()))?,
                gateway: Some(gateway.address),
                device: Some(ifname.into()),
                scope_link: false,
                onlink: false,
                kind: super::RouteKind::Unicast,
            },
        ]);
        Ok(pod.link.clone())
    }

    async fn add_pod_addresses(
        &self,
        netns: &Path,
        pod_link: &LinkState,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::AddPodAddresses(
            netns.into(),
            pod_link.name.clone(),
            addresses.to_vec(),
        ))?;
        let pod = state.pod_state(netns, &pod_link.name)?;
        pod.addresses.extend_from_slice(addresses);
        Ok(())
    }

    async fn retire_pod_interface(&self, netns: &Path, ifname: &str) -> Result<bool, DataplaneError> {
        let mut state = self.record(Call::RetirePodInterface(netns.into(), ifname.into()))?;
        let Some((mut pod, host)) = state.pod_links.remove(&(netns.to_owned(), ifname.to_owned())) else {
            return Ok(false);
        };
        let number = state
            .pod_links
            .keys()
            .filter(|(ns, name)| ns == netns && name.starts_with("brdretired"))
            .count();
        pod.link.name = super::RETIRED_POD_NAME.replace("%d", &number.to_string());
        pod.link.up = false;
        pod.addresses.clear();
        pod.routes.clear();
        state
            .pod_links
            .insert((netns.to_owned(), pod.link.name.clone()), (pod, host));
        Ok(true)
    }

    async fn inspect_pod(&self, netns: &Path, ifname: &str) -> Result<Option<PodState>, DataplaneError> {
        Ok(self
            .lock()
            .pod_links
            .get(&(netns.to_owned(), ifname.to_owned()))
            .map(|(pod, _)| pod.clone()))
    }
    async fn link_with_address(&self, address: IpAddr) -> Result<Option<LinkState>, DataplaneError> {
        let state = self.lock();
        Ok(state
            .host_addresses
            .get(&address)
            .and_then(|name| state.host_links.get(name))
            .cloned())
    }

    async fn ensure_vxlan(&self, device: &VxlanDevice) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::EnsureVxlan(device.clone()))?;
        let index = match state.host_links.get(&device.name) {
            Some(link) => link.index,
            None => {
                state.next_index += 1;
                state.next_index
            }
        };
        let link = LinkState {
            name: device.name.clone(),
            index,
            mac: device.mac,
            mtu: device.mtu,
            up: true,
        };
        state.host_links.insert(device.name.clone(), link);
        state.host_addresses.retain(|_, holder| *holder != device.name);
        state
            .host_addresses
            .insert(IpAddr::V4(device.address), device.name.clone());
        state.vxlan_devices.insert(device.name.clone(), device.clone());
        Ok(())
    }

    /// Like this machine's kernel: no ipip support, so only an existing (stand-in) device works.
    async fn ensure_ipip(&self, name: &str) -> Result<(), DataplaneError> {
        let state = self.record(Call::EnsureIpip(name.into()))?;
        if state.host_links.contains_key(name) {
            Ok(())
        } else {
            Err(DataplaneError::Unsupported {
                feature: format!("IP-in-IP ({name})"),
                reason: "the recording kernel has no ipip module".into(),
                advice: "use VXLAN".into(),
            })
        }
    }

    async fn vteps(&self, device: &str) -> Result<Vec<Vtep>, DataplaneError> {
        Ok(self.current_vteps(device).into_iter().collect())
    }

    async fn replace_neighbour(&self, device: &str, ip: IpAddr, mac: Mac) -> Result<(), DataplaneError> {
        let state = self.record(Call::ReplaceNeighbour(device.into(), ip, mac))?;
        if state.host_links.contains_key(device) {
            Ok(())
        } else {
            Err(DataplaneError::Missing(format!("link {device}")))
        }
    }

    async fn replace_vtep(&self, device: &str, vtep: &Vtep) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::ReplaceVtep(device.into(), vtep.clone()))?;
        if !state.host_links.contains_key(device) {
            return Err(DataplaneError::Missing(format!("link {device}")));
        }
        let vteps = state.vteps.entry(device.into()).or_default();
        vteps.retain(|v| v.ip != vtep.ip && v.mac != vtep.mac);
        vteps.insert(vtep.clone());
        Ok(())
    }

    async fn delete_vtep(&self, device: &str, vtep: &Vtep) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::DeleteVtep(device.into(), vtep.clone()))?;
        if let Some(vteps) = state.vteps.get_mut(device) {
            vteps.remove(vtep);
        }
        Ok(())
    }
}

/// A failure of the modelled iptables-restore or ipset restore.
fn rejected(tool: &str, line: &str, why: &str) -> DataplaneError {
    DataplaneError::Tool {
        what: tool.to_owned(),
        detail: format!("{why}: {line}"),
    }
}

impl Iptables for RecordingKernel {
    /// Models `iptables-restore --noflush`: a declared chain is created or flushed, `-A` appends,
    /// `-X` deletes an empty unreferenced chain; the whole payload or nothing.
    fn restore(&self, table: &str, payload: &str) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::IptablesRestore(table.into(), payload.into()))?;
        let mut chains = state.iptables.get(table).cloned().unwrap_or_default();
        for line in payload.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                let name = rest.split_whitespace().next().unwrap_or_default();
                chains.insert(name.to_owned(), Vec::new());
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
                let target = rule
                    .split_whitespace()
                    .skip_while(|w| *w != "-j" && *w != "-g")
                    .nth(1);
                if let Some(target) = target.filter(|t| t.starts_with("brd-"))
                    && !chains.contains_key(target)
                {
                    return Err(rejected("iptables-restore", line, "no chain by that name"));
                }
                chains
                    .get_mut(chain)
                    .ok_or_else(|| rejected("iptables-restore", line, "no chain by that name"))?
                    .push(rule.to_owned());
            } else if let Some(name) = line.strip_prefix("-X ") {
                let referenced = chains
                    .values()
                    .flatten()
                    .any(|r| r.split_whitespace().any(|w| w == name));
                if referenced || chains.get(name).is_some_and(|rules| !rules.is_empty()) {
                    return Err(rejected("iptables-restore", line, "chain is in use or not empty"));
                }
                chains.remove(name);
            }
        }
        state.iptables.insert(table.to_owned(), chains);
        Ok(())
    }

    fn ensure_jump(&self, table: &str, from: &str, to: &str) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::IptablesJump(table.into(), from.into(), to.into()))?;
        let rule = format!("-j {to}");
        let chain = state
            .iptables
            .entry(table.to_owned())
            .or_default()
            .entry(from.to_owned())
            .or_default();
        if !chain.contains(&rule) {
            chain.insert(0, rule);
        }
        Ok(())
    }

    fn remove_jump(&self, table: &str, from: &str, to: &str) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::IptablesUnhook(table.into(), from.into(), to.into()))?;
        let rule = format!("-j {to}");
        if let Some(chain) = state.iptables.get_mut(table).and_then(|t| t.get_mut(from)) {
            chain.retain(|r| *r != rule);
        }
        Ok(())
    }

    fn save(&self, table: &str) -> Result<String, DataplaneError> {
        let state = self.lock();
        let mut out = format!("*{table}\n");
        let chains = state.iptables.get(table).cloned().unwrap_or_default();
        for name in chains.keys() {
            out.push_str(&format!(":{name} - [0:0]\n"));
        }
        for (name, rules) in &chains {
            for rule in rules {
                out.push_str(&format!("-A {name} {rule}\n"));
            }
        }
        out.push_str("COMMIT\n");
        Ok(out)
    }
}

impl Ipsets for RecordingKernel {
    /// Models `ipset restore`: create (`-exist`), flush, add, del, swap, destroy.
    fn restore(&self, payload: &str) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::IpsetRestore(payload.into()))?;
        for line in payload.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let missing = || rejected("ipset restore", line, "the set does not exist");
            match words.as_slice() {
                ["create", name, kind, ..] => {
                    if let Some((existing, _)) = state.ipsets.get(*name) {
                        if existing != kind || !words.contains(&"-exist") {
                            return Err(rejected("ipset restore", line, "set already exists"));
                        }
                    } else {
                        state
                            .ipsets
                            .insert((*name).to_owned(), ((*kind).to_owned(), BTreeSet::new()));
                    }
                }
                ["flush", name] => state.ipsets.get_mut(*name).ok_or_else(missing)?.1.clear(),
                ["add", name, member, ..] => {
                    state
                        .ipsets
                        .get_mut(*name)
                        .ok_or_else(missing)?
                        .1
                        .insert((*member).to_owned());
                }
                ["del", name, member, ..] => {
                    state.ipsets.get_mut(*name).ok_or_else(missing)?.1.remove(*member);
                }
                ["swap", a, b] => {
                    let first = state.ipsets.get(*a).cloned().ok_or_else(missing)?;
                    let second = state.ipsets.get(*b).cloned().ok_or_else(missing)?;
                    if first.0 != second.0 {
                        return Err(rejected("ipset restore", line, "the sets' types differ"));
                    }
                    state.ipsets.insert((*a).to_owned(), second);
                    state.ipsets.insert((*b).to_owned(), first);
                }
                ["destroy", name] => {
                    let in_use = state
                        .iptables
                        .values()
                        .flat_map(|t| t.values().flatten())
                        .any(|r| r.split_whitespace().any(|w| w == *name));
                    if in_use {
                        return Err(rejected(
                            "ipset restore",
                            line,
                            "the set is in use by a kernel component",
                        ));
                    }
                    state.ipsets.remove(*name).ok_or_else(missing)?;
                }
                [] => {}
                _ => return Err(rejected("ipset restore", line, "unknown command")),
            }
        }
        Ok(())
    }

    fn save(&self) -> Result<String, DataplaneError> {
        let state = self.lock();
        let mut out = String::new();
        for (name, (kind, members)) in &state.ipsets {
            out.push_str(&format!(
                "create {name} {kind} family inet hashsize 1024 maxelem 65536\n"
            ));
            for member in members {
                out.push_str(&format!("add {name} {member}\n"));
            }
        }
        Ok(out)
    }
}

impl Sysctl for RecordingKernel {
    fn set(&self, key: &str, value: &str) -> Result<(), DataplaneError> {
        let mut state = self.record(Call::Sysctl(key.into(), value.into()))?;
        state.sysctls.insert(key.into(), value.into());
        Ok(())
    }

    fn get(&self, key: &str) -> Result<String, DataplaneError> {
        self.lock()
            .sysctls
            .get(key)
            .cloned()
            .ok_or_else(|| DataplaneError::Missing(format!("sysctl {key}")))
    }
}
