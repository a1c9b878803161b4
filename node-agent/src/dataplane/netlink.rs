//! The real [`Netlink`]: rtnetlink on a socket in the agent's namespace, plus a socket opened in a
//! pod's namespace (on a helper thread that `setns`'d into it) for each pod-side call. The pod
//! socket is closed after the call, so brindle never keeps a pod's namespace alive.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::link::{InfoVxlan, LinkInfo};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, LinkIpIp, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::error::errno;
use super::{
    DataplaneError, LinkState, Mac, Netlink, PodGateway, PodState, RETIRED_GROUP, ROUTE_PROTOCOL, Route,
    RouteKind, Vtep, VxlanDevice,
};

/// Netlink in the agent's namespace.
#[derive(Clone)]
pub struct RtNetlink {
    host: Handle,
}

impl RtNetlink {
    /// Opens a netlink socket in the current namespace (call inside a tokio runtime).
    pub fn new() -> Result<Self, DataplaneError> {
        let (connection, host, _) = rtnetlink::new_connection().map_err(|source| DataplaneError::Io {
            what: "opening a netlink socket".into(),
            source,
        })?;
        tokio::spawn(connection);
        Ok(Self { host })
    }
}

/// Opens a netlink socket inside the namespace at `netns`: a helper thread enters the namespace,
/// creates the socket (sockets stay in the namespace they were created in) and hands it back.
async fn handle_in(netns: &Path) -> Result<Handle, DataplaneError> {
    handle_in_existing(netns)
        .await?
        .ok_or_else(|| DataplaneError::Netns {
            path: netns.to_owned(),
            reason: "it does not exist".to_owned(),
        })
}

/// [`handle_in`], or `None` when the namespace does not exist (any more).
async fn handle_in_existing(netns: &Path) -> Result<Option<Handle>, DataplaneError> {
    let path = netns.to_owned();
    let runtime = tokio::runtime::Handle::current();
    let opened = tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        // This blocking-pool thread enters the pod namespace; it is a fresh thread so no other
        // task ever runs in the wrong namespace.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())?;
                    let _entered = runtime.enter();
                    rtnetlink::new_connection().map(Some).map_err(|e| e.to_string())
                })
                .join()
                .map_err(|_| "netns helper thread panicked".to_owned())?
        })
    })
    .await
    .map_err(|e| DataplaneError::Netns {
        path: netns.to_owned(),
        reason: e.to_string(),
    })?;
    let Some((connection, handle, _)) = opened.map_err(|reason| DataplaneError::Netns {
        path: netns.to_owned(),
        reason,
    })?
    else {
        return Ok(None);
    };
    tokio::spawn(connection);
    Ok(Some(handle))
}

fn link_state(message: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        name: String::new(),
        index: message.header.index,
        mac: [0; 6],
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => state.name.clone_from(name),
            LinkAttribute::Address(bytes) if bytes.len() == 6 => state.mac.copy_from_slice(bytes),
            LinkAttribute::Mtu(mtu) => state.mtu = *mtu,
            _ => {}
        }
    }
    state
}

/// The kernel's message about link `name`; `None` when there is no such link.
async fn link_message(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, DataplaneError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(message) => Ok(message),
        Err(e) if errno(&e) == Some(nix::errno::Errno::ENODEV as i32) => Ok(None),
        Err(e) => Err(DataplaneError::netlink(format!("get link {name}"), e)),
    }
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkState>, DataplaneError> {
    Ok(link_message(handle, name).await?.as_ref().map(link_state))
}

async fn require_link(handle: &Handle, name: &str) -> Result<LinkState, DataplaneError> {
    find_link(handle, name)
        .await?
        .ok_or_else(|| DataplaneError::Missing(format!("link {name}")))
}

fn invalid_route(route: &Route, error: &dyn std::fmt::Display) -> DataplaneError {
    DataplaneError::Missing(format!("a valid route for {route:?} ({error})"))
}

fn route_message(route: &Route, device_index: Option<u32>) -> Result<RouteMessage, DataplaneError> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.destination.network(), route.destination.prefix_len())
        .map_err(|e| invalid_route(route, &e))?
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    if let Some(gateway) = route.gateway {
        builder = builder.gateway(gateway).map_err(|e| invalid_route(route, &e))?;
    }
    if let Some(index) = device_index {
        builder = builder.output_interface(index);
    }
    if route.scope_link {
        builder = builder.scope(RouteScope::Link);
    }
    if route.onlink {
        builder = builder.onlink();
    }
    if route.kind == RouteKind::Blackhole {
        builder = builder.kind(RouteType::BlackHole);
    }
    Ok(builder.build())
}

/// `<destination> [via <gateway>] [dev <device>]`, for errors.
fn route_text(route: &Route) -> String {
    let mut text = route.destination.to_string();
    if let Some(gateway) = route.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    if let Some(device) = &route.device {
        text.push_str(&format!(" dev {device}"));
    }
    text
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Routes of one family in the main table, with device names resolved from `links`.
async fn list_routes(
    handle: &Handle,
    ipv6: bool,
    links: &[LinkState],
    ours_only: bool,
) -> Result<Vec<Route>, DataplaneError> {
    let filter = if ipv6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let mut messages = handle.route().get(filter).execute();
    let mut routes = Vec::new();
    while let Some(message) = messages
        .try_next()
        .await
        .map_err(|e| DataplaneError::netlink("list routes", e))?
    {
        if message.header.table != 254
            || (ours_only && message.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL))
        {
            continue;
        }
        let mut destination = None;
        let mut gateway = None;
        let mut device = None;
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(address) => destination = route_address(address),
                RouteAttribute::Gateway(address) => gateway = route_address(address),
                RouteAttribute::Oif(index) => {
                    device = links.iter().find(|l| l.index == *index).map(|l| l.name.clone())
                }
                _ => {}
            }
        }
        let unspecified = if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let Ok(destination) = IpNet::new(
            destination.unwrap_or(unspecified),
            message.header.destination_prefix_length,
        ) else {
            continue;
        };
        routes.push(Route {
            destination,
            gateway,
            device,
            scope_link: message.header.scope == RouteScope::Link,
            onlink: message.header.flags.contains(RouteFlags::Onlink),
            kind: if message.header.kind == RouteType::BlackHole {
                RouteKind::Blackhole
            } else {
                RouteKind::Unicast
            },
        });
    }
    Ok(routes)
}

async fn all_links(handle: &Handle) -> Result<Vec<LinkState>, DataplaneError> {
    handle
        .link()
        .get()
        .execute()
        .map_ok(|m| link_state(&m))
        .try_collect()
        .await
        .map_err(|e| DataplaneError::netlink("list links", e))
}

/// The address messages of link `index`, with the address each holds.
async fn link_addresses(handle: &Handle, index: u32) -> Result<Vec<(IpNet, AddressMessage)>, DataplaneError> {
    let mut addresses = Vec::new();
    let mut messages = handle.address().get().set_link_index_filter(index).execute();
    while let Some(message) = messages
        .try_next()
        .await
        .map_err(|e| DataplaneError::netlink("list addresses", e))?
    {
        let address = message.attributes.iter().find_map(|attribute| match attribute {
            AddressAttribute::Address(ip) => IpNet::new(*ip, message.header.prefix_len).ok(),
            _ => None,
        });
        if let Some(address) = address {
            addresses.push((address, message));
        }
    }
    Ok(addresses)
}

/// The VXLAN settings brindle decides (VNI, port, local, parent) of the link `message` describes,
/// or `None` when it is not a VXLAN device.
fn vxlan_identity(message: &LinkMessage) -> Option<(u32, u16, Option<Ipv4Addr>, u32)> {
    let infos = message.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::LinkInfo(infos) => Some(infos),
        _ => None,
    });
    let data = infos.into_iter().flatten().find_map(|info| match info {
        LinkInfo::Data(InfoData::Vxlan(data)) => Some(data),
        _ => None,
    })?;
    let (mut vni, mut port, mut local, mut parent) = (0, 0, None, 0);
    for info in data {
        match info {
            InfoVxlan::Id(id) => vni = *id,
            InfoVxlan::Port(p) => port = *p,
            InfoVxlan::Local(address) => local = Some(*address),
            InfoVxlan::Link(index) => parent = *index,
            _ => {}
        }
    }
    Some((vni, port, local, parent))
}

/// A neighbour's destination address (a forwarding entry's comes back as raw bytes: the bridge
/// family does not say which IP family it is).
fn neighbour_address(message: &NeighbourMessage) -> Option<IpAddr> {
    message.attributes.iter().find_map(|attribute| match attribute {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    })
}

fn neighbour_mac(message: &NeighbourMessage) -> Option<Mac> {
    message.attributes.iter().find_map(|attribute| match attribute {
        NeighbourAttribute::LinkLayerAddress(bytes) => bytes.as_slice().try_into().ok(),
        _ => None,
    })
}

/// Permanent neighbours (`family` Inet or Inet6: address → MAC) or forwarding entries (Bridge:
/// MAC → underlay address) on link `index`, as (address, MAC) pairs.
async fn permanent_entries(
    handle: &Handle,
    family: AddressFamily,
    index: u32,
) -> Result<Vec<(IpAddr, Mac)>, DataplaneError> {
    let mut entries = Vec::new();
    let mut messages = handle.neighbours().get().set_address_family(family).execute();
    while let Some(message) = messages
        .try_next()
        .await
        .map_err(|e| DataplaneError::netlink("list neighbours", e))?
    {
        if message.header.ifindex != index || message.header.state != NeighbourState::Permanent {
            continue;
        }
        if let (Some(address), Some(mac)) = (neighbour_address(&message), neighbour_mac(&message)) {
            entries.push((address, mac));
        }
    }
    Ok(entries)
}

/// Adds `address` to link `index`; IPv6 without duplicate address detection (brindle's addresses
/// are unique by IPAM, and usable at once).
async fn add_address(handle: &Handle, index: u32, address: IpNet) -> Result<(), rtnetlink::Error> {
    let mut request = handle.address().add(index, address.addr(), address.prefix_len());
    if address.addr().is_ipv6() {
        let message = request.message_mut();
        message.header.flags = AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    request.execute().await
}

/// The netlink message of a forwarding entry `mac → underlay` on link `index`.
fn fdb_message(index: u32, vtep: &Vtep) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(vtep.mac.to_vec()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet(vtep.underlay)),
    ];
    message
}

/// The netlink message of a neighbour `ip → mac` on link `index`.
fn arp_message(index: u32, vtep: &Vtep) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    let (family, destination) = match vtep.ip {
        IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
        IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
    };
    message.header.family = family;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.attributes = vec![
        NeighbourAttribute::Destination(destination),
        NeighbourAttribute::LinkLayerAddress(vtep.mac.to_vec()),
    ];
    message
}

/// Permanent neighbours of both families on link `index`.
async fn permanent_neighbours(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, Mac)>, DataplaneError> {
    let mut neighbours = permanent_entries(handle, AddressFamily::Inet, index).await?;
    neighbours.extend(permanent_entries(handle, AddressFamily::Inet6, index).await?);
    Ok(neighbours)
}

/// Deletes a neighbour or forwarding entry; one that is already gone is fine.
async fn delete_neighbour(
    handle: &Handle,
    message: NeighbourMessage,
    what: String,
) -> Result<(), DataplaneError> {
    match handle.neighbours().del(message).execute().await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(c) if c == nix::errno::Errno::ENOENT as i32) => Ok(()),
        Err(e) => Err(DataplaneError::netlink(what, e)),
    }
}

#[async_trait::async_trait]
impl Netlink for RtNetlink {
    async fn create_veth(
        &self,
        host_name: &str,
        host_mac: Mac,
        pod_name: &str,
        pod_netns: &Path,
        mtu: u32,
    ) -> Result<(), DataplaneError> {
        let netns = std::fs::File::open(pod_netns).map_err(|e| DataplaneError::Netns {
            path: pod_netns.to_owned(),
            reason: e.to_string(),
        })?;
        // The host end is created up; the pod end cannot be (the kernel opens it before the pair is
        // linked), prepare_pod brings it up.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pod_name.to_owned())
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_owned())
            .mtu(mtu)
            .up()
            .address(host_mac.to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.host.link().add(message).execute().await.map_err(|e| {
            DataplaneError::netlink(
                format!("create veth {host_name} ↔ {pod_name} in {}", pod_netns.display()),
                e,
            )
        })
    }

    async fn link(&self, name: &str) -> Result<Option<LinkState>, DataplaneError> {
        find_link(&self.host, name).await
    }

    async fn links(&self) -> Result<Vec<LinkState>, DataplaneError> {
        all_links(&self.host).await
    }

    async fn delete_link(&self, name: &str) -> Result<bool, DataplaneError> {
        let Some(link) = find_link(&self.host, name).await? else {
            return Ok(false);
        };
        match self.host.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(nix::errno::Errno::ENODEV as i32) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(format!("delete link {name}"), e)),
        }
    }

    async fn retire_link(&self, name: &str) -> Result<bool, DataplaneError> {
        let Some(link) = find_link(&self.host, name).await? else {
            return Ok(false);
        };
        let message = LinkUnspec::new_with_index(link.index)
            .down()
            .link_group(RETIRED_GROUP)
            .build();
        match self.host.link().set(message).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(nix::errno::Errno::ENODEV as i32) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(format!("retire link {name}"), e)),
        }
    }

    async fn delete_retired_links(&self) -> Result<(), DataplaneError> {
        let message = LinkMessageBuilder::<LinkUnspec>::new()
            .link_group(RETIRED_GROUP)
            .build();
        match self.host.link().del_with_message(message).execute().await {
            Ok(()) => Ok(()),
            // Nothing in the group.
            Err(e) if matches!(errno(&e), Some(c) if c == nix::errno::Errno::ENODEV as i32) => Ok(()),
            Err(e) => Err(DataplaneError::netlink("delete retired links", e)),
        }
    }

    async fn replace_route(&self, route: &Route) -> Result<(), DataplaneError> {
        let index = match &route.device {
            Some(device) => Some(require_link(&self.host, device).await?.index),
            None => None,
        };
        self.host
            .route()
            .add(route_message(route, index)?)
            .replace()
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("replace route {}", route_text(route)), e))
    }

    async fn delete_route(&self, route: &Route) -> Result<bool, DataplaneError> {
        let index = match &route.device {
            Some(device) => match find_link(&self.host, device).await? {
                Some(link) => Some(link.index),
                None => return Ok(false),
            },
            None => None,
        };
        match self
            .host
            .route()
            .del(route_message(route, index)?)
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(nix::errno::Errno::ESRCH as i32) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(
                format!("delete route {}", route_text(route)),
                e,
            )),
        }
    }

    async fn routes(&self) -> Result<Vec<Route>, DataplaneError> {
        let links = all_links(&self.host).await?;
        let mut routes = list_routes(&self.host, false, &links, true).await?;
        routes.extend(list_routes(&self.host, true, &links, true).await?);
        Ok(routes)
    }

    async fn prepare_pod(
        &self,
        netns: &Path,
        ifname: &str,
        gateway: &PodGateway,
    ) -> Result<LinkState, DataplaneError> {
        let pod = handle_in(netns).await?;
        let mut link = require_link(&pod, ifname).await?;
        let up = LinkUnspec::new_with_index(link.index).up().build();
        pod.link()
            .set(up)
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("set {ifname} up in the pod"), e))?;
        link.up = true;
        let on_link = Route {
            destination: IpNet::from(gateway.address),
            gateway: None,
            device: Some(ifname.to_owned()),
            scope_link: true,
            onlink: false,
            kind: RouteKind::Unicast,
        };
        let unspecified = match gateway.address {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let default = Route {
            destination: IpNet::new(unspecified, 0).map_err(|e| DataplaneError::Missing(e.to_string()))?,
            gateway: Some(gateway.address),
            device: Some(ifname.to_owned()),
            scope_link: false,
            onlink: false,
            kind: RouteKind::Unicast,
        };
        // A second brindle interface in the same pod keeps the first one's gateway routes: when the
        // on-link gateway route exists already, the default route through it does too.
        for route in [&on_link, &default] {
            match pod
                .route()
                .add(route_message(route, Some(link.index))?)
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(nix::errno::Errno::EEXIST as i32) => break,
                Err(e) => {
                    return Err(DataplaneError::netlink(
                        format!("add route {} in the pod", route.destination),
                        e,
                    ));
                }
            }
        }
        pod.neighbours()
            .add(link.index, gateway.address)
            .link_layer_address(&gateway.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink("add the gateway neighbour in the pod", e))?;
        Ok(link)
    }

    async fn add_pod_addresses(
        &self,
        netns: &Path,
        pod_link: &LinkState,
        addresses: &[IpNet],
    ) -> Result<(), DataplaneError> {
        let pod = handle_in(netns).await?;
        for address in addresses {
            add_address(&pod, pod_link.index, *address)
                .await
                .map_err(|e| DataplaneError::netlink(format!("add {address} to {}", pod_link.name), e))?;
        }
        Ok(())
    }

    async fn replace_neighbour(&self, device: &str, ip: IpAddr, mac: Mac) -> Result<(), DataplaneError> {
        let link = require_link(&self.host, device).await?;
        self.host
            .neighbours()
            .add(link.index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("add the neighbour {ip} on {device}"), e))
    }

    async fn retire_pod_interface(&self, netns: &Path, ifname: &str) -> Result<bool, DataplaneError> {
        let Some(pod) = handle_in_existing(netns).await? else {
            return Ok(false);
        };
        let Some(link) = find_link(&pod, ifname).await? else {
            return Ok(false);
        };
        let failed =
            |what: &str, e| DataplaneError::netlink(format!("{what} {ifname} in {}", netns.display()), e);
        // A renamed interface must be down; the addresses go first so none outlives the name.
        pod.link()
            .set(LinkUnspec::new_with_index(link.index).down().build())
            .execute()
            .await
            .map_err(|e| failed("take down", e))?;
        for (_, message) in link_addresses(&pod, link.index).await? {
            match pod.address().del(message).execute().await {
                Ok(()) => {}
                // IPv6 addresses leave with the link going down.
                Err(e) if errno(&e) == Some(nix::errno::Errno::EADDRNOTAVAIL as i32) => {}
                Err(e) => return Err(failed("remove an address of", e)),
            }
        }
        pod.link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .name(super::RETIRED_POD_NAME)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| failed("rename", e))?;
        Ok(true)
    }

    async fn inspect_pod(&self, netns: &Path, ifname: &str) -> Result<Option<PodState>, DataplaneError> {
        let pod = handle_in(netns).await?;
        let Some(link) = find_link(&pod, ifname).await? else {
            return Ok(None);
        };
        let addresses = link_addresses(&pod, link.index)
            .await?
            .into_iter()
            .map(|(address, _)| address)
            .collect();
        let links = all_links(&pod).await?;
        let mut routes: Vec<Route> = list_routes(&pod, false, &links, false).await?;
        routes.extend(list_routes(&pod, true, &links, false).await?);
        Ok(Some(PodState {
            link,
            addresses,
            routes,
        }))
    }

    async fn link_with_address(&self, address: IpAddr) -> Result<Option<LinkState>, DataplaneError> {
        let mut messages = self.host.address().get().set_address_filter(address).execute();
        let index = match messages.try_next().await {
            Ok(Some(message)) => message.header.index,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(DataplaneError::netlink(
                    format!("find the link holding {address}"),
                    e,
                ));
            }
        };
        Ok(all_links(&self.host)
            .await?
            .into_iter()
            .find(|link| link.index == index))
    }

    async fn ensure_vxlan(&self, device: &VxlanDevice) -> Result<(), DataplaneError> {
        let wanted = (device.vni, device.port, Some(device.local), device.parent);
        let existing = link_message(&self.host, &device.name).await?;
        let link = match existing {
            Some(message) if vxlan_identity(&message) == Some(wanted) => link_state(&message),
            existing => {
                // Another kind of link under the name, or other settings a link cannot change.
                if let Some(message) = existing {
                    self.host
                        .link()
                        .del(message.header.index)
                        .execute()
                        .await
                        .map_err(|e| {
                            DataplaneError::netlink(format!("delete the mismatched {}", device.name), e)
                        })?;
                }
                let message = LinkVxlan::new(&device.name, device.vni)
                    .port(device.port)
                    .local(device.local)
                    .dev(device.parent)
                    .learning(false)
                    .build();
                self.host.link().add(message).execute().await.map_err(|e| {
                    DataplaneError::netlink(format!("create VXLAN device {}", device.name), e)
                })?;
                require_link(&self.host, &device.name).await?
            }
        };
        if link.mac != device.mac || link.mtu != device.mtu || !link.up {
            let message = LinkUnspec::new_with_index(link.index)
                .address(device.mac.to_vec())
                .mtu(device.mtu)
                .up()
                .build();
            self.host
                .link()
                .set(message)
                .execute()
                .await
                .map_err(|e| DataplaneError::netlink(format!("set up {}", device.name), e))?;
        }
        let address = IpNet::from(IpAddr::V4(device.address));
        let present = link_addresses(&self.host, link.index).await?;
        // IPv4 only: the kernel's own IPv6 link-local address stays.
        for (other, message) in present
            .iter()
            .filter(|(net, _)| net.addr().is_ipv4() && *net != address)
        {
            self.host
                .address()
                .del(message.clone())
                .execute()
                .await
                .map_err(|e| DataplaneError::netlink(format!("remove {other} from {}", device.name), e))?;
        }
        let mut wanted = vec![address];
        wanted.extend(device.address_v6.map(|v6| IpNet::from(IpAddr::V6(v6))));
        for address in wanted {
            if present.iter().any(|(net, _)| *net == address) {
                continue;
            }
            add_address(&self.host, link.index, address)
                .await
                .map_err(|e| DataplaneError::netlink(format!("add {address} to {}", device.name), e))?;
        }
        Ok(())
    }

    async fn ensure_ipip(&self, name: &str) -> Result<(), DataplaneError> {
        let link = match find_link(&self.host, name).await? {
            Some(link) => link,
            None => {
                let message = LinkIpIp::new(name).build();
                if let Err(e) = self.host.link().add(message).execute().await {
                    return Err(match errno(&e) {
                        Some(c) if c == nix::errno::Errno::EOPNOTSUPP as i32 => DataplaneError::Unsupported {
                            feature: format!("IP-in-IP ({name})"),
                            reason: "the kernel has no ipip module: creating an ipip device failed with \"Operation not supported\"".into(),
                            advice: "load the ipip module or use VXLAN encapsulation (vxlanMode) for the pool".into(),
                        },
                        _ => DataplaneError::netlink(format!("create IP-in-IP device {name}"), e),
                    });
                }
                require_link(&self.host, name).await?
            }
        };
        if !link.up {
            let up = LinkUnspec::new_with_index(link.index).up().build();
            self.host
                .link()
                .set(up)
                .execute()
                .await
                .map_err(|e| DataplaneError::netlink(format!("set {name} up"), e))?;
        }
        Ok(())
    }

    async fn vteps(&self, device: &str) -> Result<Vec<Vtep>, DataplaneError> {
        let Some(link) = find_link(&self.host, device).await? else {
            return Ok(Vec::new());
        };
        let neighbours = permanent_neighbours(&self.host, link.index).await?;
        let forwarding = permanent_entries(&self.host, AddressFamily::Bridge, link.index).await?;
        Ok(neighbours
            .into_iter()
            .filter_map(|(ip, mac)| {
                let underlay = forwarding.iter().find_map(|(underlay, fdb_mac)| match underlay {
                    IpAddr::V4(underlay) if *fdb_mac == mac => Some(*underlay),
                    _ => None,
                })?;
                Some(Vtep { ip, mac, underlay })
            })
            .collect())
    }

    async fn replace_vtep(&self, device: &str, vtep: &Vtep) -> Result<(), DataplaneError> {
        let link = require_link(&self.host, device).await?;
        for (message, what) in [
            (fdb_message(link.index, vtep), "forwarding entry"),
            (arp_message(link.index, vtep), "neighbour"),
        ] {
            let mut request = self.host.neighbours().add(link.index, vtep.ip).replace();
            *request.message_mut() = message;
            request.execute().await.map_err(|e| {
                DataplaneError::netlink(format!("add the {what} of {} on {device}", vtep.ip), e)
            })?;
        }
        Ok(())
    }

    async fn delete_vtep(&self, device: &str, vtep: &Vtep) -> Result<(), DataplaneError> {
        let Some(link) = find_link(&self.host, device).await? else {
            return Ok(());
        };
        let neighbours = permanent_neighbours(&self.host, link.index).await?;
        if neighbours.contains(&(vtep.ip, vtep.mac)) {
            let what = format!("delete the neighbour {}", vtep.ip);
            delete_neighbour(&self.host, arp_message(link.index, vtep), what).await?;
        }
        // The forwarding entry is shared with an endpoint that kept the MAC under a new address.
        let shared = neighbours
            .iter()
            .any(|(ip, mac)| *mac == vtep.mac && *ip != vtep.ip);
        let forwarding = permanent_entries(&self.host, AddressFamily::Bridge, link.index).await?;
        if !shared && forwarding.contains(&(IpAddr::V4(vtep.underlay), vtep.mac)) {
            let what = format!("delete the forwarding entry of {}", vtep.ip);
            delete_neighbour(&self.host, fdb_message(link.index, vtep), what).await?;
        }
        Ok(())
    }
}
