//! Wiring one workload interface Calico-style: a veth whose pod end is born in the pod namespace,
//! host end `brd<11 hex>` with MAC ee:ee:ee:ee:ee:ee, proxy ARP and forwarding on, `<ip>/32` in the
//! pod with 169.254.1.1 on-link as its gateway, and a `/32` host route per address. The interface
//! is created before its addresses are known (so it can be built while IPAM allocates) and
//! addressed afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::dataplane::{DataplaneError, LinkState, Mac, Netlink, PodGateway, Route, RouteKind, Sysctl};

/// MAC of every host-side veth (as Calico).
pub const HOST_MAC: Mac = [0xee; 6];
/// The fake gateway every pod routes through.
pub const GATEWAY_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
/// The IPv6 gateway pods see: the link-local address the host veth's MAC (ee:ee:ee:ee:ee:ee)
/// gives it (EUI-64), as Calico uses; the pod reaches it through a permanent neighbour.
pub const GATEWAY_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee));
/// Prefix of host-side interfaces brindle owns.
pub const HOST_PREFIX: &str = "brd";

/// Why wiring failed.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    /// The requested interface name is taken inside the pod.
    #[error("interface {ifname} already exists in {netns}")]
    InterfaceExists {
        /// CNI_IFNAME.
        ifname: String,
        /// The pod namespace.
        netns: String,
    },
    /// A kernel operation failed.
    #[error(transparent)]
    Kernel(#[from] DataplaneError),
}

/// Identity of an attachment: CNI's (network, container id, ifname).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct AttachmentKey {
    /// Network name from the configuration.
    pub network: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

impl AttachmentKey {
    /// The host-side interface name: `brd` + the first 11 hex digits of the key's SHA-1.
    pub fn host_ifname(&self) -> String {
        let digest = sha1_smol::Sha1::from(format!("{}/{}/{}", self.network, self.container_id, self.ifname))
            .digest()
            .to_string();
        format!("{HOST_PREFIX}{}", &digest[..11])
    }
}

/// What to wire.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Which attachment.
    pub key: AttachmentKey,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The pod's addresses (`/32`, `/128`).
    pub addresses: Vec<IpNet>,
    /// Local blocks to blackhole (those the addresses came from, when affine to this node).
    pub blackholes: Vec<IpNet>,
    /// Interface MTU.
    pub mtu: u32,
}

/// The wired interface pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    /// Host-side interface name.
    pub host_ifname: String,
    /// The pod interface.
    pub pod: LinkState,
}

fn host_route(address: IpNet, host_ifname: &str) -> Route {
    Route {
        destination: address,
        gateway: None,
        device: Some(host_ifname.to_owned()),
        // IPv6 routes have no scope (the kernel reports them all as universe).
        scope_link: address.addr().is_ipv4(),
        onlink: false,
        kind: RouteKind::Unicast,
    }
}

fn blackhole(block: IpNet) -> Route {
    Route {
        destination: block,
        gateway: None,
        device: None,
        scope_link: false,
        onlink: false,
        kind: RouteKind::Blackhole,
    }
}

/// Wires workloads with a [`Netlink`] and a [`Sysctl`].
pub struct Wiring<'a> {
    netlink: &'a dyn Netlink,
    sysctl: &'a dyn Sysctl,
}

impl<'a> Wiring<'a> {
    /// Wiring through these kernel interfaces.
    pub fn new(netlink: &'a dyn Netlink, sysctl: &'a dyn Sysctl) -> Self {
        Self { netlink, sysctl }
    }

    /// Creates the veth for `key` in `netns` and configures everything that does not depend on
    /// the pod's addresses: host end (proxy ARP, forwarding), pod end up with its gateway routes.
    /// On failure removes the veth again.
    pub async fn create(
        &self,
        key: &AttachmentKey,
        netns: &Path,
        mtu: u32,
        ipv6: bool,
    ) -> Result<Wired, WiringError> {
        let host_ifname = key.host_ifname();
        self.netlink
            .create_veth(&host_ifname, HOST_MAC, &key.ifname, netns, mtu)
            .await
            .map_err(|e| match e {
                DataplaneError::Exists(_) => WiringError::InterfaceExists {
                    ifname: key.ifname.clone(),
                    netns: netns.display().to_string(),
                },
                other => WiringError::Kernel(other),
            })?;
        match self.prepare(netns, &key.ifname, &host_ifname, ipv6).await {
            Ok(pod) => Ok(Wired { host_ifname, pod }),
            Err(error) => {
                if let Err(cleanup) = self.netlink.delete_link(&host_ifname).await {
                    tracing::warn!(%host_ifname, error = %cleanup, "removing the veth of a failed create");
                }
                Err(error.into())
            }
        }
    }

    async fn prepare(
        &self,
        netns: &Path,
        ifname: &str,
        host_ifname: &str,
        ipv6: bool,
    ) -> Result<LinkState, DataplaneError> {
        for (key, value) in [
            (format!("net/ipv4/conf/{host_ifname}/proxy_arp"), "1"),
            (format!("net/ipv4/neigh/{host_ifname}/proxy_delay"), "0"),
            (format!("net/ipv4/conf/{host_ifname}/forwarding"), "1"),
        ] {
            self.sysctl.set(&key, value)?;
        }
        let mut gateways = vec![GATEWAY_V4];
        if ipv6 {
            // As Calico: IPv6 on, no duplicate address detection, proxy NDP, forwarding.
            for (key, value) in [
                (format!("net/ipv6/conf/{host_ifname}/disable_ipv6"), "0"),
                (format!("net/ipv6/conf/{host_ifname}/accept_dad"), "0"),
                (format!("net/ipv6/conf/{host_ifname}/proxy_ndp"), "1"),
                (format!("net/ipv6/conf/{host_ifname}/forwarding"), "1"),
            ] {
                self.sysctl.set(&key, value)?;
            }
            gateways.push(GATEWAY_V6);
        }
        let mut pod = None;
        for address in gateways {
            let gateway = PodGateway {
                address,
                mac: HOST_MAC,
            };
            pod = Some(self.netlink.prepare_pod(netns, ifname, &gateway).await?);
        }
        pod.ok_or_else(|| DataplaneError::Missing(format!("pod interface {ifname}")))
    }

    /// Gives the interface [`create`](Self::create) made its addresses: inside the pod, a host
    /// route each, and a blackhole per local block. On failure the caller removes the interface
    /// ([`detach`](Self::detach)).
    pub async fn address(&self, workload: &Workload, wired: &Wired) -> Result<(), DataplaneError> {
        let pod_side = self
            .netlink
            .add_pod_addresses(&workload.netns, &wired.pod, &workload.addresses);
        let host_side = async {
            for address in &workload.addresses {
                self.netlink
                    .replace_route(&host_route(*address, &wired.host_ifname))
                    .await?;
            }
            for block in &workload.blackholes {
                self.netlink.replace_route(&blackhole(*block)).await?;
            }
            // The node never solicits a pod's IPv6 address (its own link-local may still be
            // tentative): a permanent neighbour per address.
            for address in workload.addresses.iter().filter(|a| a.addr().is_ipv6()) {
                self.netlink
                    .replace_neighbour(&wired.host_ifname, address.addr(), wired.pod.mac)
                    .await?;
            }
            Ok(())
        };
        let (pod_side, host_side) = tokio::join!(pod_side, host_side);
        pod_side.and(host_side)
    }

    /// Removes the host veth (the pod end and the host routes go with it); absent is fine.
    pub async fn detach(&self, host_ifname: &str) -> Result<bool, DataplaneError> {
        self.netlink.delete_link(host_ifname).await
    }

    /// What is missing or wrong for `workload`, as sentences; empty when all is in place.
    pub async fn check(&self, workload: &Workload) -> Result<Vec<String>, DataplaneError> {
        let host_ifname = workload.key.host_ifname();
        let mut problems = Vec::new();
        match self.netlink.link(&host_ifname).await? {
            None => problems.push(format!("host interface {host_ifname} is missing")),
            Some(link) if !link.up => problems.push(format!("host interface {host_ifname} is down")),
            Some(_) => {}
        }
        let routes = self.netlink.routes().await?;
        for address in &workload.addresses {
            if !routes.contains(&host_route(*address, &host_ifname)) {
                problems.push(format!("host route {address} dev {host_ifname} is missing"));
            }
        }
        match self.pod_state(workload).await? {
            None => problems.push(format!(
                "interface {} is missing in {}",
                workload.key.ifname,
                workload.netns.display()
            )),
            Some(pod) => {
                for address in &workload.addresses {
                    if !pod.addresses.contains(address) {
                        problems.push(format!("address {address} is missing on {}", workload.key.ifname));
                    }
                }
                let mut gateways = vec![GATEWAY_V4];
                if workload.addresses.iter().any(|a| a.addr().is_ipv6()) {
                    gateways.push(GATEWAY_V6);
                }
                for gateway in gateways {
                    let has_default = pod
                        .routes
                        .iter()
                        .any(|r| r.destination.prefix_len() == 0 && r.gateway == Some(gateway));
                    if !has_default {
                        problems.push(format!("default route via {gateway} is missing in the pod"));
                    }
                }
            }
        }
        Ok(problems)
    }

    async fn pod_state(
        &self,
        workload: &Workload,
    ) -> Result<Option<crate::dataplane::PodState>, DataplaneError> {
        if !Path::new(&workload.netns).exists() {
            return Ok(None);
        }
        self.netlink
            .inspect_pod(&workload.netns, &workload.key.ifname)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Call, RecordingKernel};

    fn workload() -> Workload {
        Workload {
            key: AttachmentKey {
                network: "k8s-pod-network".into(),
                container_id: "c0ffee".into(),
                ifname: "eth0".into(),
            },
            netns: PathBuf::from("/"),
            addresses: vec!["10.244.0.5/32".parse().expect("net")],
            blackholes: vec!["10.244.0.0/26".parse().expect("net")],
            mtu: 1450,
        }
    }

    #[test]
    fn host_names_are_brd_and_11_hex_digits() {
        let name = workload().key.host_ifname();
        assert_eq!(name.len(), 14);
        assert!(name.starts_with("brd") && name[3..].chars().all(|c| c.is_ascii_hexdigit()));
        let mut other = workload().key;
        other.ifname = "net1".into();
        assert_ne!(other.host_ifname(), name, "another ifname is another attachment");
    }

    async fn attach(wiring: &Wiring<'_>, workload: &Workload) -> Result<Wired, WiringError> {
        let ipv6 = workload.addresses.iter().any(|a| a.addr().is_ipv6());
        let wired = wiring
            .create(&workload.key, &workload.netns, workload.mtu, ipv6)
            .await?;
        wiring.address(workload, &wired).await?;
        Ok(wired)
    }

    #[tokio::test]
    async fn a_dual_stack_pod_gets_both_gateways_and_the_node_knows_its_ipv6_neighbour() {
        let kernel = RecordingKernel::default();
        let wiring = Wiring::new(&kernel, &kernel);
        let mut dual = workload();
        dual.addresses.push("fd00:244::5/128".parse().expect("net"));
        let wired = attach(&wiring, &dual).await.expect("attach");
        let host = wired.host_ifname.clone();
        let calls = kernel.calls();
        for key in ["accept_dad", "proxy_ndp", "forwarding"] {
            let value = if key == "accept_dad" { "0" } else { "1" };
            assert!(
                calls.contains(&Call::Sysctl(format!("net/ipv6/conf/{host}/{key}"), value.into())),
                "{key}: {calls:?}"
            );
        }
        let prepared = calls.iter().filter(|c| matches!(c, Call::PreparePod(..))).count();
        assert_eq!(prepared, 2, "an IPv4 and an IPv6 gateway");
        assert!(calls.contains(&Call::ReplaceNeighbour(
            host,
            "fd00:244::5".parse().expect("ip"),
            wired.pod.mac
        )));
        assert_eq!(wiring.check(&dual).await.expect("check"), Vec::<String>::new());
        let single = workload();
        let kernel = RecordingKernel::default();
        let wiring = Wiring::new(&kernel, &kernel);
        attach(&wiring, &single).await.expect("attach");
        assert!(
            !kernel
                .calls()
                .iter()
                .any(|c| matches!(c, Call::Sysctl(key, _) if key.starts_with("net/ipv6"))),
            "IPv4-only pods leave IPv6 alone (it may be disabled)"
        );
    }

    #[tokio::test]
    async fn create_then_address_wires_both_ends_then_check_is_clean() {
        let kernel = RecordingKernel::default();
        let wiring = Wiring::new(&kernel, &kernel);
        let wired = attach(&wiring, &workload()).await.expect("attach");
        let host = wired.host_ifname.clone();
        let calls = kernel.calls();
        assert_eq!(
            calls[0],
            Call::CreateVeth(host.clone(), "eth0".into(), "/".into())
        );
        assert!(calls.contains(&Call::Sysctl(
            format!("net/ipv4/conf/{host}/proxy_arp"),
            "1".into()
        )));
        assert!(calls.contains(&Call::PreparePod("/".into(), "eth0".into())));
        assert!(calls.contains(&Call::AddPodAddresses(
            "/".into(),
            "eth0".into(),
            workload().addresses
        )));
        assert!(
            kernel
                .current_routes()
                .iter()
                .any(|r| r.kind == RouteKind::Blackhole)
        );
        let problems = wiring.check(&workload()).await.expect("check");
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[tokio::test]
    async fn failed_create_leaves_nothing_behind() {
        let kernel = RecordingKernel::default();
        kernel.fail_on("PreparePod");
        let wiring = Wiring::new(&kernel, &kernel);
        let workload = workload();
        assert!(
            wiring
                .create(&workload.key, &workload.netns, workload.mtu, false)
                .await
                .is_err()
        );
        assert!(kernel.host_link_names().is_empty(), "veth removed");
        assert!(kernel.current_routes().is_empty());
        assert!(
            kernel
                .calls()
                .contains(&Call::DeleteLink(workload.key.host_ifname()))
        );
    }

    #[tokio::test]
    async fn existing_pod_interface_is_a_clear_error() {
        let kernel = RecordingKernel::default();
        let wiring = Wiring::new(&kernel, &kernel);
        attach(&wiring, &workload()).await.expect("first");
        let mut second = workload();
        second.key.container_id = "other".into();
        let error = attach(&wiring, &second).await.expect_err("eth0 taken");
        assert!(matches!(error, WiringError::InterfaceExists { .. }), "{error}");
    }

    #[tokio::test]
    async fn check_names_what_was_removed_out_of_band() {
        let kernel = RecordingKernel::default();
        let wiring = Wiring::new(&kernel, &kernel);
        attach(&wiring, &workload()).await.expect("attach");
        kernel.remove_pod_link_out_of_band(Path::new("/"), "eth0");
        let problems = wiring.check(&workload()).await.expect("check");
        assert!(
            problems.iter().any(|p| p.contains("eth0 is missing")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("host interface")),
            "{problems:?}"
        );
    }
}
