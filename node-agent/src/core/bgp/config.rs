//! The BIRD configuration one node needs, derived from the routing state: a static protocol
//! holding a blackhole route per block affine to the node and per address it borrowed (pools
//! with `disableBGPExport` left out), exported — and nothing else — to every peer that applies to
//! the node, with the cluster's AS number (or the node's own), port, log level and graceful
//! restart. Rendered as text; the same state always renders the same text.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use brindle_fanout::Key;
use ipnet::IpNet;
use route_api::RouteItem;
use route_api::bgp::{BgpConfiguration, BgpPeer, LogSeverity};
use route_api::model::Node;

/// What the node itself says about its BGP (its agent's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBgp {
    /// The node.
    pub node: String,
    /// Its router id.
    pub router_id: Ipv4Addr,
    /// Its own AS number, instead of the cluster's.
    pub as_number: Option<u32>,
}

/// One peer as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The BGPPeer it comes from.
    pub peer: BgpPeer,
    /// Reached through another router (not in the node's subnet).
    pub multihop: bool,
}

/// The node's BIRD configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdConfig {
    /// Router id.
    pub router_id: Ipv4Addr,
    /// Local AS number.
    pub as_number: u32,
    /// The cluster's configuration.
    pub configuration: BgpConfiguration,
    /// What the node announces: its blocks and borrowed addresses.
    pub announced: Vec<IpNet>,
    /// Its peers, by name.
    pub peers: Vec<PeerConfig>,
}

/// The node's own registration in the state `items`, if there.
pub fn own_registration<'a>(items: &'a BTreeMap<Key, RouteItem>, local: &LocalBgp) -> Option<&'a Node> {
    items.values().find_map(|item| match item {
        RouteItem::Node(node) if node.name == local.node => Some(node),
        _ => None,
    })
}

/// The configuration the state `items` asks of the node `local` describes, registered as `me`
/// (its labels choose its peers, its subnets their multihop).
pub fn desired_config(items: &BTreeMap<Key, RouteItem>, local: &LocalBgp, me: &Node) -> BirdConfig {
    let mut configuration = BgpConfiguration::default();
    let mut pools = Vec::new();
    let mut peers = Vec::new();
    for item in items.values() {
        match item {
            RouteItem::BgpConfiguration(c) => configuration = c.clone(),
            RouteItem::Pool(pool) => pools.push(pool),
            RouteItem::BgpPeer(peer) => peers.push(peer),
            _ => {}
        }
    }
    let exported = |net: &IpNet| {
        !pools
            .iter()
            .any(|pool| pool.disable_bgp_export && pool.cidr.contains(net))
    };
    let mut announced: Vec<IpNet> = items
        .values()
        .filter_map(|item| match item {
            RouteItem::Block { cidr, node, .. } if *node == local.node => Some(*cidr),
            RouteItem::Borrowed { ip, node, .. } if *node == local.node => Some(IpNet::from(*ip)),
            _ => None,
        })
        .filter(exported)
        .collect();
    announced.sort();
    let peers = peers
        .into_iter()
        // Never a session with itself (a peer at one of the node's own addresses).
        .filter(|peer| peer.applies_to(&local.node, &me.labels) && !me.addresses.contains(&peer.peer_ip))
        .map(|peer| PeerConfig {
            multihop: match peer.peer_ip {
                IpAddr::V4(ip) => !me.ipv4_subnet.is_some_and(|subnet| subnet.contains(&ip)),
                IpAddr::V6(ip) => !me.ipv6_subnet.is_some_and(|subnet| subnet.contains(&ip)),
            },
            peer: peer.clone(),
        })
        .collect();
    BirdConfig {
        router_id: local.router_id,
        as_number: local.as_number.unwrap_or(configuration.as_number),
        configuration,
        announced,
        peers,
    }
}

/// A BIRD symbol for peer `name`: stable, so a reload keeps its session, and short whatever the
/// name (BIRD's symbols have at most 64 characters; peer names up to 253): `peer_` and a 64-bit
/// FNV-1a hash of the name. The peer's name is in the protocol's description.
pub fn protocol_name(name: &str) -> String {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("peer_{hash:016x}")
}

/// BIRD's log classes for a severity.
fn log_classes(severity: LogSeverity) -> &'static str {
    match severity {
        LogSeverity::Debug => "all",
        LogSeverity::Info => "{ info, remote, warning, error, auth, fatal, bug }",
        LogSeverity::Warning => "{ warning, error, auth, fatal, bug }",
        LogSeverity::Error => "{ error, fatal, bug }",
        LogSeverity::Fatal => "{ fatal, bug }",
    }
}

impl BirdConfig {
    /// Each peer's BIRD protocol, by symbol: the peer's name.
    pub fn protocols(&self) -> BTreeMap<String, String> {
        self.peers
            .iter()
            .map(|p| (protocol_name(&p.peer.name), p.peer.name.clone()))
            .collect()
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let mut line = |l: String| {
            text.push_str(&l);
            text.push('\n');
        };
        line(
            "# Written by brindle's node agent from the cluster's routing state; rewritten on every change."
                .into(),
        );
        line(format!("router id {};", self.router_id));
        line(format!(
            "log stderr {};",
            log_classes(self.configuration.log_severity_screen)
        ));
        if self.configuration.log_severity_screen == LogSeverity::Debug {
            line("debug protocols all;".into());
        }
        line("protocol device { scan time 10; }".into());
        for (family, v4) in [("ipv4", true), ("ipv6", false)] {
            line(format!("protocol static brindle_{family} {{"));
            line(format!("  {family};"));
            for net in self.announced.iter().filter(|n| matches!(n, IpNet::V4(_)) == v4) {
                line(format!("  route {net} blackhole;"));
            }
            line("}".into());
        }
        line("template bgp brindle_peer {".into());
        line(format!(
            "  local port {} as {};",
            self.configuration.listen_port, self.as_number
        ));
        line("  graceful restart on;".into());
        line("  connect delay time 2;".into());
        line("  connect retry time 5;".into());
        line("  error wait time 5, 30;".into());
        line("}".into());
        for peer in &self.peers {
            let family = if peer.peer.peer_ip.is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            };
            line(format!(
                "protocol bgp {} from brindle_peer {{",
                protocol_name(&peer.peer.name)
            ));
            line(format!("  description \"BGPPeer {}\";", peer.peer.name));
            line(format!(
                "  neighbor {} as {};",
                peer.peer.peer_ip, peer.peer.as_number
            ));
            if peer.multihop {
                line("  multihop;".into());
            }
            if let Some(seconds) = peer.peer.max_restart_time {
                line(format!("  graceful restart time {seconds};"));
            }
            if let Some(password) = &peer.peer.password {
                line(format!("  password \"{password}\";"));
            }
            line(format!(
                "  {family} {{ import none; export where proto = \"brindle_{family}\"; next hop self; }};"
            ));
            line("}".into());
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use route_api::model::PoolRoute;
    use route_api::{Encapsulation, bgp};

    use super::*;

    fn node(name: &str, address: &str, labels: &[(&str, &str)]) -> (Key, RouteItem) {
        let ip: Ipv4Addr = address.parse().expect("ip");
        let node = Node {
            name: name.into(),
            addresses: vec![ip.into()],
            ipv4_subnet: Some(ipnet::Ipv4Net::new(ip, 24).expect("net").trunc()),
            ipv6_subnet: None,
            labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            vtep_mac: None,
            vtep_ipv4: None,
            vtep_ipv6: None,
            ipip_tunnel_ipv4: None,
            bgp: None,
            lease: 0,
        };
        (format!("node/{name}").into(), RouteItem::Node(node))
    }

    fn pool(cidr: &str, disable_bgp_export: bool) -> (Key, RouteItem) {
        let pool = PoolRoute {
            name: cidr.into(),
            cidr: cidr.parse().expect("cidr"),
            encapsulation: Encapsulation::None,
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export,
        };
        (format!("pool/{cidr}").into(), RouteItem::Pool(pool))
    }

    fn block(cidr: &str, node: &str) -> (Key, RouteItem) {
        let cidr: IpNet = cidr.parse().expect("cidr");
        let item = RouteItem::Block {
            cidr,
            node: node.into(),
            pool: "p".into(),
        };
        (format!("block/{cidr}").into(), item)
    }

    fn peer(name: &str, ip: &str, node: &str, selector: &str) -> (Key, RouteItem) {
        let peer = bgp::peer_from_proto(brindle_proto::route::v1::BgpPeer {
            name: name.into(),
            peer_ip: ip.into(),
            as_number: 64513,
            node: node.into(),
            node_selector: selector.into(),
            ..Default::default()
        })
        .expect("peer");
        (format!("bgp-peer/{name}").into(), RouteItem::BgpPeer(peer))
    }

    fn local() -> LocalBgp {
        LocalBgp {
            node: "me".into(),
            router_id: Ipv4Addr::new(192, 168, 1, 1),
            as_number: None,
        }
    }

    fn config_of(items: &BTreeMap<Key, RouteItem>, local: &LocalBgp) -> BirdConfig {
        let me = own_registration(items, local).expect("registered");
        desired_config(items, local, me)
    }

    fn state() -> BTreeMap<Key, RouteItem> {
        let borrowed: IpAddr = "10.244.0.70".parse().expect("ip");
        BTreeMap::from([
            node("me", "192.168.1.1", &[("rack", "a")]),
            node("other", "192.168.2.1", &[]),
            pool("10.244.0.0/16", false),
            pool("10.250.0.0/16", true),
            block("10.244.0.0/26", "me"),
            block("10.244.0.64/26", "other"),
            block("10.250.0.0/26", "me"),
            (
                format!("borrowed/{borrowed}").into(),
                RouteItem::Borrowed {
                    ip: borrowed,
                    node: "me".into(),
                    block: "10.244.0.64/26".parse().expect("net"),
                },
            ),
            peer("tor.rack-a", "192.168.1.253", "", "rack == 'a'"),
            peer("rr", "10.0.0.1", "", ""),
            peer("only-other", "192.168.2.253", "other", ""),
        ])
    }

    #[test]
    fn the_node_announces_its_blocks_and_borrowed_addresses_to_the_peers_that_apply_to_it() {
        let config = config_of(&state(), &local());
        assert_eq!(
            config.announced,
            vec![
                "10.244.0.0/26".parse::<IpNet>().expect("net"),
                "10.244.0.70/32".parse().expect("net")
            ],
            "not another node's block, not a disableBGPExport pool's"
        );
        let names: Vec<(&str, bool)> = config
            .peers
            .iter()
            .map(|p| (p.peer.name.as_str(), p.multihop))
            .collect();
        assert_eq!(names, [("rr", true), ("tor.rack-a", false)]);
        assert_eq!(config.as_number, 64512, "Calico's default AS");
        let text = config.render();
        assert!(text.contains("route 10.244.0.0/26 blackhole;"), "{text}");
        assert!(text.contains("route 10.244.0.70/32 blackhole;"), "{text}");
        assert!(!text.contains("10.250.0.0"), "{text}");
        assert!(
            text.contains(&format!(
                "protocol bgp {} from brindle_peer",
                protocol_name("tor.rack-a")
            )),
            "{text}"
        );
        assert!(
            text.contains("neighbor 10.0.0.1 as 64513;\n  multihop;"),
            "{text}"
        );
        assert!(text.contains("graceful restart on;"), "{text}");
        assert_eq!(text, config_of(&state(), &local()).render(), "stable");
    }

    #[test]
    fn the_nodes_own_as_number_and_the_clusters_settings_are_used() {
        let mut items = state();
        let configuration = bgp::BgpConfiguration {
            as_number: 65000,
            listen_port: 1790,
            log_severity_screen: LogSeverity::Debug,
            node_to_node_mesh_enabled: false,
        };
        items.insert(
            "bgp/configuration".into(),
            RouteItem::BgpConfiguration(configuration),
        );
        let text = config_of(&items, &local()).render();
        assert!(text.contains("local port 1790 as 65000;"), "{text}");
        assert!(text.contains("debug protocols all;"), "{text}");
        let own = LocalBgp {
            as_number: Some(65010),
            ..local()
        };
        assert!(config_of(&items, &own).render().contains("as 65010;"));
    }

    #[test]
    fn protocol_names_are_short_distinct_and_stable() {
        let long = "a-".repeat(120) + "z";
        let names = ["a-b", "a.b", "a--b", "tor.rack-a", long.as_str()];
        let symbols: std::collections::BTreeSet<String> = names.iter().map(|n| protocol_name(n)).collect();
        assert_eq!(symbols.len(), names.len());
        assert!(symbols.iter().all(|s| s.len() <= 64));
        assert_eq!(protocol_name("tor"), protocol_name("tor"));
    }

    #[test]
    fn the_node_never_peers_with_itself() {
        let mut items = state();
        items.extend([peer("myself", "192.168.1.1", "", "")]);
        let config = config_of(&items, &local());
        assert!(!config.peers.iter().any(|p| p.peer.name == "myself"));
    }

    /// BIRD itself accepts what is rendered (`bird -p` parses a configuration and exits).
    #[test]
    fn bird_parses_the_rendered_configuration() {
        let mut items = state();
        if let RouteItem::BgpPeer(peer) = items.get_mut("bgp-peer/rr").expect("rr") {
            peer.password = Some("s3cret".into());
            peer.max_restart_time = Some(5);
        }
        items.extend([peer("v6", "2001:db8::1", "", "")]);
        let text = config_of(&items, &local()).render();
        assert!(text.contains("graceful restart time 5;"), "{text}");
        assert!(
            text.contains("neighbor 2001:db8::1 as 64513;\n  multihop;")
                && text
                    .contains("ipv6 { import none; export where proto = \"brindle_ipv6\"; next hop self; };"),
            "an IPv6 peer, outside the node's (IPv4-only) subnets: {text}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bird.conf");
        std::fs::write(&file, &text).expect("write");
        let parsed = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&file)
            .output()
            .expect("bird (Debian package bird2)");
        assert!(parsed.status.success(), "{parsed:?}\n{text}");
    }
}
