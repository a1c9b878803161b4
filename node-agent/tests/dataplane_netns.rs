//! The real netlink dataplane in network namespaces made for the test: the pod end of a veth is
//! born inside the pod namespace, the pod is wired Calico-style (/32 address, on-link 169.254.1.1,
//! default route, permanent neighbour), traffic flows, and brindle's routes are told apart.

mod support;

use std::net::IpAddr;

use ipnet::IpNet;
use node_agent::dataplane::{
    DataplaneError, Netlink, PodGateway, ProcSysctl, Route, RouteKind, RtNetlink, Sysctl,
};
use support::Netns;

const HOST_MAC: [u8; 6] = [0xee; 6];

fn net(text: &str) -> IpNet {
    text.parse().expect("net")
}

#[test]
fn veth_is_born_in_the_pod_and_traffic_flows() {
    let node = Netns::new("node");
    let pod = Netns::new("pod");
    node.exec(&["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"]);
    let pod_path = pod.path();
    node.run(move || async move {
        let kernel = RtNetlink::new().expect("netlink in the node namespace");
        kernel
            .create_veth("brdtest0", HOST_MAC, "eth0", &pod_path, 1450)
            .await
            .expect("create veth");
        let host = kernel
            .link("brdtest0")
            .await
            .expect("get")
            .expect("host end exists in the node");
        assert_eq!((host.mac, host.mtu), (HOST_MAC, 1450));
        assert!(host.up, "created up");
        ProcSysctl
            .set("net/ipv4/conf/brdtest0/proxy_arp", "1")
            .expect("proxy_arp");
        assert_eq!(
            ProcSysctl.get("net/ipv4/conf/brdtest0/proxy_arp").expect("read"),
            "1"
        );
        let host_route = Route {
            destination: net("10.244.0.5/32"),
            gateway: None,
            device: Some("brdtest0".into()),
            scope_link: true,
            onlink: false,
            kind: RouteKind::Unicast,
        };
        kernel.replace_route(&host_route).await.expect("host route");
        kernel
            .replace_route(&host_route)
            .await
            .expect("replacing is idempotent");
        let blackhole = Route {
            destination: net("10.244.0.0/26"),
            gateway: None,
            device: None,
            scope_link: false,
            onlink: false,
            kind: RouteKind::Blackhole,
        };
        kernel.replace_route(&blackhole).await.expect("blackhole");
        let gateway = PodGateway {
            address: "169.254.1.1".parse::<IpAddr>().expect("ip"),
            mac: HOST_MAC,
        };
        let pod_link = kernel
            .prepare_pod(&pod_path, "eth0", &gateway)
            .await
            .expect("prepare pod");
        assert!(pod_link.up);
        kernel
            .add_pod_addresses(&pod_path, &pod_link, &[net("10.244.0.5/32")])
            .await
            .expect("pod address");
        let state = kernel
            .inspect_pod(&pod_path, "eth0")
            .await
            .expect("inspect")
            .expect("pod link");
        let ipv4: Vec<_> = state
            .addresses
            .iter()
            .filter(|a| matches!(a, IpNet::V4(_)))
            .collect();
        assert_eq!(
            ipv4,
            vec![&net("10.244.0.5/32")],
            "the pod has exactly its /32 (plus the kernel's IPv6 link-local)"
        );
        assert!(
            state.routes.iter().any(|r| r.destination == net("0.0.0.0/0")
                && r.gateway == Some("169.254.1.1".parse().expect("ip")))
        );
        assert!(
            state
                .routes
                .iter()
                .any(|r| r.destination == net("169.254.1.1/32") && r.scope_link)
        );

        let ours = kernel.routes().await.expect("routes");
        assert!(
            ours.contains(&host_route) && ours.contains(&blackhole),
            "{ours:?}"
        );
        assert_eq!(
            ours.len(),
            2,
            "only brindle's routes (protocol 80) are listed: {ours:?}"
        );

        let again = kernel
            .create_veth("brdtest0", HOST_MAC, "eth1", &pod_path, 1450)
            .await;
        assert!(matches!(again, Err(DataplaneError::Exists(_))), "{again:?}");
        let same_ifname = kernel
            .create_veth("brdtest1", HOST_MAC, "eth0", &pod_path, 1450)
            .await;
        assert!(
            same_ifname.is_err(),
            "an ifname that exists in the pod is refused"
        );
        assert!(
            kernel.link("brdtest1").await.expect("get").is_none(),
            "the failed create left nothing"
        );
    });
    assert!(
        pod.try_exec(&["ping", "-c", "1", "-W", "2", "192.0.2.1"]),
        "pod reaches the node through 169.254.1.1"
    );
    let neighbours = pod.exec(&["ip", "neigh", "show", "169.254.1.1"]);
    assert!(
        neighbours.contains("ee:ee:ee:ee:ee:ee") && neighbours.contains("PERMANENT"),
        "{neighbours}"
    );

    let pod_path = pod.path();
    node.run(move || async move {
        let kernel = RtNetlink::new().expect("netlink");
        assert!(kernel.delete_link("brdtest0").await.expect("delete"));
        assert!(
            kernel
                .inspect_pod(&pod_path, "eth0")
                .await
                .expect("inspect")
                .is_none(),
            "peer went with it"
        );
        assert!(
            !kernel.delete_link("brdtest0").await.expect("delete again"),
            "deleting twice is not an error"
        );
        let left = kernel.routes().await.expect("routes");
        assert_eq!(
            left.len(),
            1,
            "the device route went with the link, the blackhole stays: {left:?}"
        );
        assert!(kernel.delete_route(&left[0]).await.expect("delete blackhole"));
        assert!(!kernel.delete_route(&left[0]).await.expect("delete again"));
    });
}

#[test]
fn pod_namespace_that_does_not_exist_is_named() {
    let node = Netns::new("node");
    node.run(|| async {
        let kernel = RtNetlink::new().expect("netlink");
        let missing = std::path::Path::new("/run/netns/brindle-no-such-netns");
        let error = kernel
            .create_veth("brdtest2", HOST_MAC, "eth0", missing, 1500)
            .await
            .expect_err("no netns");
        assert!(error.to_string().contains("brindle-no-such-netns"), "{error}");
        assert!(kernel.link("brdtest2").await.expect("get").is_none());
        let error = kernel.inspect_pod(missing, "eth0").await.expect_err("no netns");
        assert!(matches!(error, DataplaneError::Netns { .. }), "{error}");
    });
}

#[test]
fn retired_veths_are_deleted_in_one_bulk_request() {
    let node = Netns::new("node");
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("bulk{i}"))).collect();
    let paths: Vec<_> = pods.iter().map(Netns::path).collect();
    node.run(move || async move {
        let kernel = RtNetlink::new().expect("netlink");
        for (i, path) in paths.iter().enumerate() {
            kernel
                .create_veth(&format!("brdbulk{i}"), HOST_MAC, "eth0", path, 1500)
                .await
                .expect("veth");
        }
        assert!(kernel.retire_link("brdbulk0").await.expect("retire"));
        assert!(kernel.retire_link("brdbulk1").await.expect("retire"));
        assert!(!kernel.retire_link("brdnone").await.expect("retire missing"));
        let retired = kernel
            .link("brdbulk0")
            .await
            .expect("get")
            .expect("still there until the bulk delete");
        assert!(!retired.up, "retired links are down at once");
        kernel.delete_retired_links().await.expect("bulk delete");
        assert!(kernel.link("brdbulk0").await.expect("get").is_none());
        assert!(kernel.link("brdbulk1").await.expect("get").is_none());
        assert!(
            kernel.link("brdbulk2").await.expect("get").is_some(),
            "links not retired stay"
        );
        kernel
            .delete_retired_links()
            .await
            .expect("an empty group is fine");
        for path in &paths[..2] {
            assert!(
                kernel.inspect_pod(path, "eth0").await.expect("inspect").is_none(),
                "pod ends went too"
            );
        }
    });
}

#[test]
fn vxlan_device_endpoints_and_onlink_routes_on_the_real_kernel() {
    use node_agent::dataplane::{Vtep, VxlanDevice};
    let node = Netns::new("vxlan");
    // This kernel has no dummy devices: a veth pair stands in for the underlay link.
    node.exec(&[
        "ip",
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplink-peer",
    ]);
    node.exec(&["ip", "link", "set", "uplink", "mtu", "1500", "up"]);
    node.exec(&["ip", "addr", "add", "192.168.60.1/24", "dev", "uplink"]);
    let show = {
        let node_name = node.name.clone();
        move |args: &[&str]| {
            let mut full = vec!["netns", "exec", node_name.as_str()];
            full.extend_from_slice(args);
            support::run("ip", &full)
        }
    };
    node.run(move || async move {
        let kernel = RtNetlink::new().expect("netlink");
        let uplink = kernel
            .link_with_address("192.168.60.1".parse().expect("ip"))
            .await
            .expect("lookup")
            .expect("the uplink holds the node address");
        assert_eq!(uplink.name, "uplink");
        let mut device = VxlanDevice {
            name: "vxlan.brindle".into(),
            vni: 4096,
            port: 4789,
            local: "192.168.60.1".parse().expect("ip"),
            parent: uplink.index,
            mac: [0x02, 0xb0, 0, 0, 0, 1],
            mtu: uplink.mtu - 50,
            address: "10.70.0.1".parse().expect("ip"),
            address_v6: None,
        };
        kernel.ensure_vxlan(&device).await.expect("create");
        let details = show(&["ip", "-d", "link", "show", "vxlan.brindle"]);
        for expected in [
            "mtu 1450",
            "vxlan id 4096 local 192.168.60.1 dev uplink",
            "dstport 4789",
            "nolearning",
            "02:b0:00:00:00:01",
            "UP",
        ] {
            assert!(details.contains(expected), "{expected:?} in {details}");
        }
        let index = kernel
            .link("vxlan.brindle")
            .await
            .expect("get")
            .expect("exists")
            .index;
        // Ensured again with a new MTU and address: updated in place, not re-created.
        device.mtu = 1400;
        device.address = "10.70.0.2".parse().expect("ip");
        kernel.ensure_vxlan(&device).await.expect("update");
        let link = kernel.link("vxlan.brindle").await.expect("get").expect("exists");
        assert_eq!((link.index, link.mtu), (index, 1400));
        let addresses = show(&["ip", "-4", "-o", "addr", "show", "dev", "vxlan.brindle"]);
        assert!(
            addresses.contains("10.70.0.2/32") && !addresses.contains("10.70.0.1"),
            "{addresses}"
        );
        // A different VNI cannot be changed in place: re-created.
        device.vni = 4097;
        kernel.ensure_vxlan(&device).await.expect("recreate");
        assert!(show(&["ip", "-d", "link", "show", "vxlan.brindle"]).contains("vxlan id 4097"));

        let vtep = Vtep {
            ip: "10.70.1.1".parse().expect("ip"),
            mac: [0x02, 0xb0, 0, 0, 0, 2],
            underlay: "192.168.60.2".parse().expect("ip"),
        };
        kernel.replace_vtep("vxlan.brindle", &vtep).await.expect("vtep");
        kernel
            .replace_vtep("vxlan.brindle", &vtep)
            .await
            .expect("idempotent");
        assert_eq!(
            kernel.vteps("vxlan.brindle").await.expect("list"),
            vec![vtep.clone()]
        );
        let neighbours = show(&["ip", "neigh", "show", "dev", "vxlan.brindle"]);
        assert!(
            neighbours.contains("10.70.1.1 lladdr 02:b0:00:00:00:02 PERMANENT"),
            "{neighbours}"
        );
        let fdb = show(&["bridge", "fdb", "show", "dev", "vxlan.brindle"]);
        assert!(
            fdb.contains("02:b0:00:00:00:02 dst 192.168.60.2 self permanent"),
            "{fdb}"
        );
        let route = Route {
            destination: net("10.70.1.0/26"),
            gateway: Some(vtep.ip),
            device: Some("vxlan.brindle".into()),
            scope_link: false,
            onlink: true,
            kind: RouteKind::Unicast,
        };
        kernel.replace_route(&route).await.expect("onlink route");
        let routes = show(&["ip", "route", "show", "proto", "80"]);
        assert!(
            routes.contains("10.70.1.0/26 via 10.70.1.1 dev vxlan.brindle onlink"),
            "{routes}"
        );
        assert!(
            kernel.routes().await.expect("routes").contains(&route),
            "read back as programmed"
        );
        // The endpoint moves to a new address (same node, same MAC): added first, then the old
        // one removed — the forwarding entry they share stays.
        let moved = Vtep {
            ip: "10.70.1.2".parse().expect("ip"),
            ..vtep.clone()
        };
        kernel
            .replace_vtep("vxlan.brindle", &moved)
            .await
            .expect("new address");
        kernel
            .delete_vtep("vxlan.brindle", &vtep)
            .await
            .expect("old address");
        assert_eq!(
            kernel.vteps("vxlan.brindle").await.expect("list"),
            vec![moved.clone()]
        );
        kernel.delete_vtep("vxlan.brindle", &moved).await.expect("delete");
        assert!(kernel.vteps("vxlan.brindle").await.expect("list").is_empty());
        let fdb = show(&["bridge", "fdb", "show", "dev", "vxlan.brindle"]);
        assert!(!fdb.contains("02:b0:00:00:00:02"), "{fdb}");

        // IPv6 pod traffic over the same IPv4 underlay: an IPv6 tunnel address on the device, an
        // IPv6 neighbour for the remote endpoint sharing its forwarding entry, an onlink route.
        device.address_v6 = Some("fd00:70::1".parse().expect("ip"));
        kernel.ensure_vxlan(&device).await.expect("IPv6 address");
        let addresses = show(&["ip", "-6", "-o", "addr", "show", "dev", "vxlan.brindle"]);
        assert!(addresses.contains("fd00:70::1/128"), "{addresses}");
        let v6 = Vtep {
            ip: "fd00:70::2".parse().expect("ip"),
            ..vtep.clone()
        };
        kernel
            .replace_vtep("vxlan.brindle", &vtep)
            .await
            .expect("IPv4 endpoint");
        kernel
            .replace_vtep("vxlan.brindle", &v6)
            .await
            .expect("IPv6 endpoint");
        let mut listed = kernel.vteps("vxlan.brindle").await.expect("list");
        listed.sort();
        assert_eq!(listed, vec![vtep.clone(), v6.clone()]);
        let neighbours = show(&["ip", "-6", "neigh", "show", "dev", "vxlan.brindle"]);
        assert!(
            neighbours.contains("fd00:70::2 lladdr 02:b0:00:00:00:02 PERMANENT"),
            "{neighbours}"
        );
        let route6 = Route {
            destination: net("fd00:71::/122"),
            gateway: Some(v6.ip),
            device: Some("vxlan.brindle".into()),
            scope_link: false,
            onlink: true,
            kind: RouteKind::Unicast,
        };
        kernel.replace_route(&route6).await.expect("IPv6 onlink route");
        assert!(kernel.routes().await.expect("routes").contains(&route6));
        // The IPv4 endpoint goes; the IPv6 one keeps the shared forwarding entry.
        kernel
            .delete_vtep("vxlan.brindle", &vtep)
            .await
            .expect("delete IPv4");
        assert_eq!(
            kernel.vteps("vxlan.brindle").await.expect("list"),
            vec![v6.clone()]
        );
    });
}

#[test]
fn ipip_is_detected_and_routes_go_onto_a_stand_in_device() {
    let node = Netns::new("ipip");
    // This VM's kernel has no ipip module (nor dummy devices): the stand-in for tunl0 is one end
    // of a veth pair, up.
    node.exec(&[
        "ip",
        "link",
        "add",
        "brdipip0",
        "type",
        "veth",
        "peer",
        "name",
        "brdipip0-peer",
    ]);
    node.exec(&["ip", "link", "set", "brdipip0-peer", "up"]);
    let name = node.name.clone();
    node.run(move || async move {
        let kernel = RtNetlink::new().expect("netlink");
        match kernel.ensure_ipip("tunl0").await {
            Ok(()) => assert!(kernel.link("tunl0").await.expect("get").is_some_and(|l| l.up)),
            Err(error) => {
                assert!(matches!(error, DataplaneError::Unsupported { .. }), "{error}");
                let message = error.to_string();
                assert!(
                    message.contains("IP-in-IP") && message.contains("VXLAN"),
                    "{message}"
                );
            }
        }
        kernel.ensure_ipip("brdipip0").await.expect("the stand-in exists");
        let route = Route {
            destination: net("10.71.1.0/26"),
            gateway: Some("192.168.62.2".parse().expect("ip")),
            device: Some("brdipip0".into()),
            scope_link: false,
            onlink: true,
            kind: RouteKind::Unicast,
        };
        kernel
            .replace_route(&route)
            .await
            .expect("onlink route via a node in another subnet");
        let routes = support::run("ip", &["-n", &name, "route", "show", "proto", "80"]);
        assert!(
            routes.contains("10.71.1.0/26 via 192.168.62.2 dev brdipip0 onlink"),
            "{routes}"
        );
        assert!(kernel.routes().await.expect("routes").contains(&route));
    });
}
