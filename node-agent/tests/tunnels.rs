//! Tunnel set-up on the recording kernel with the real IPAM logic in-process: the VXLAN device
//! gets its address from the `vxlan-tunnel-addr-<node>` handle of a VXLAN pool, the underlay's MTU
//! minus 50, VNI 4096 and port 4789; a restarted agent gets the same device; remote endpoints
//! follow the state; IP-in-IP fails clearly without kernel support and works on a stand-in device.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use brindle_datastore::EmbeddedStore;
use brindle_fanout::Key;
use ipam_api::model::{AllowedUse, EncapMode, Pool};
use ipam_svc::core::Ipam;
use node_agent::core::ipam::IpamApi;
use node_agent::core::tunnels::{TunnelSetup, VXLAN_DEVICE, VtepReconciler, desired_vteps, vtep_mac};
use node_agent::dataplane::{Call, DataplaneError, Netlink, RecordingKernel, Vtep};
use route_api::{Encapsulation, Node, PoolRoute, RouteItem};
use support::ipam::InProcessIpam;
use support::node::workload_pool;

const UNDERLAY: &str = "192.168.50.1";

async fn ipam(dir: &tempfile::TempDir) -> Arc<Ipam> {
    let store = Arc::new(
        EmbeddedStore::open(dir.path().join("ipam.redb"))
            .await
            .expect("store"),
    );
    let ipam = Arc::new(Ipam::new(store));
    let pool = Pool {
        vxlan_mode: EncapMode::Always,
        allowed_uses: vec![AllowedUse::Workload, AllowedUse::Tunnel],
        ..workload_pool("vx", "10.60.0.0/16")
    };
    ipam.create_pool(pool).await.expect("pool");
    ipam
}

fn remote_node(name: &str, address: Ipv4Addr, vtep: Option<Ipv4Addr>) -> (Key, RouteItem) {
    let node = Node {
        name: name.into(),
        addresses: vec![address.into()],
        ipv4_subnet: None,
        ipv6_subnet: None,
        labels: BTreeMap::new(),
        vtep_mac: vtep.map(|_| vtep_mac(name)),
        vtep_ipv4: vtep,
        vtep_ipv6: None,
        ipip_tunnel_ipv4: None,
        bgp: None,
        lease: 0,
    };
    (format!("node/{name}").into(), RouteItem::Node(node))
}

fn pool(cidr: &str, encapsulation: Encapsulation) -> (Key, RouteItem) {
    (
        format!("pool/{cidr}").into(),
        RouteItem::Pool(PoolRoute {
            name: "vx".into(),
            cidr: cidr.parse().expect("cidr"),
            encapsulation,
            nat_outgoing: false,
            disabled: false,
            disable_bgp_export: false,
        }),
    )
}

/// The tunnel set-up of node n1 at [`UNDERLAY`].
fn setup(ipam: &Arc<Ipam>) -> TunnelSetup {
    let ipam: Arc<dyn IpamApi> = Arc::new(InProcessIpam(Arc::clone(ipam)));
    TunnelSetup::new("n1", &[UNDERLAY.parse().expect("ip")], ipam, "tunl0")
}

#[tokio::test]
async fn the_vxlan_device_takes_its_address_from_the_tunnel_handle_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = ipam(&dir).await;
    let kernel = RecordingKernel::default();
    kernel.add_host_link("eth0", 1500, &[UNDERLAY.parse().expect("ip")]);
    let state = BTreeMap::from([pool("10.60.0.0/16", Encapsulation::Vxlan)]);

    let mut tunnels = setup(&ipam);
    let prepared = tunnels.ensure(&kernel, &state).await;
    assert!(prepared.failures.is_empty(), "{:?}", prepared.failures);
    assert_eq!(prepared.tunnels.vxlan.as_deref(), Some(VXLAN_DEVICE));
    let device = kernel.vxlan_device(VXLAN_DEVICE).expect("device");
    let handle = ipam
        .handle(&ipam_api::handles::TunnelKind::VxlanV4.handle("n1"))
        .await
        .expect("tunnel handle");
    assert_eq!(
        handle.ips.iter().map(|a| a.ip).collect::<Vec<_>>(),
        vec![IpAddr::V4(device.address)]
    );
    assert_eq!(
        (device.vni, device.port, device.mtu, device.mac),
        (4096, 4789, 1450, vtep_mac("n1"))
    );
    assert_eq!(device.local.to_string(), UNDERLAY);
    let vtep = tunnels.local_vtep().expect("local endpoint");
    assert_eq!((vtep.ip, vtep.mac), (device.address, device.mac));

    // Set up once: the next state change does not touch the device.
    let calls = kernel.calls().len();
    tunnels.ensure(&kernel, &state).await;
    assert_eq!(kernel.calls().len(), calls);

    // A restarted agent asks IPAM again under the same handle: the same device.
    let mut restarted = setup(&ipam);
    restarted.ensure(&kernel, &state).await;
    assert_eq!(kernel.vxlan_device(VXLAN_DEVICE), Some(device.clone()));

    // Deleted by hand: noticed on the next call and made again, the same.
    kernel.delete_link(VXLAN_DEVICE).await.expect("delete by hand");
    let prepared = restarted.ensure(&kernel, &state).await;
    assert!(prepared.recreated && prepared.failures.is_empty());
    assert_eq!(prepared.tunnels.vxlan.as_deref(), Some(VXLAN_DEVICE));
    assert!(kernel.host_link_names().contains(&VXLAN_DEVICE.to_owned()));
    assert_eq!(kernel.vxlan_device(VXLAN_DEVICE), Some(device));
}

#[tokio::test]
async fn no_tunnelled_pool_no_device_and_a_missing_uplink_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = ipam(&dir).await;
    let kernel = RecordingKernel::default();
    let mut tunnels = setup(&ipam);
    let direct = BTreeMap::from([pool("10.60.0.0/16", Encapsulation::None)]);
    let prepared = tunnels.ensure(&kernel, &direct).await;
    assert!(prepared.failures.is_empty() && prepared.tunnels.vxlan.is_none());
    assert!(kernel.calls().is_empty());

    let vxlan = BTreeMap::from([pool("10.60.0.0/16", Encapsulation::Vxlan)]);
    let prepared = tunnels.ensure(&kernel, &vxlan).await;
    let message = prepared.failures[0].to_string();
    assert!(message.contains(UNDERLAY), "{message}");
    assert!(prepared.tunnels.vxlan.is_none());
    assert_eq!(
        prepared.pending,
        vec![VXLAN_DEVICE.to_owned()],
        "its routes are left alone"
    );
}

#[tokio::test]
async fn remote_endpoints_follow_the_state_and_are_read_back_after_a_restart() {
    let kernel = RecordingKernel::default();
    kernel.add_host_link(VXLAN_DEVICE, 1450, &[]);
    let tunnels = node_agent::core::tunnels::Tunnels {
        vxlan: Some(VXLAN_DEVICE.into()),
        ipip: None,
    };
    let b = Ipv4Addr::new(192, 168, 50, 2);
    let c = Ipv4Addr::new(192, 168, 50, 3);
    let mut state = BTreeMap::from([
        remote_node(
            "n1",
            Ipv4Addr::new(192, 168, 50, 1),
            Some(Ipv4Addr::new(10, 60, 0, 1)),
        ),
        remote_node("b", b, Some(Ipv4Addr::new(10, 60, 0, 65))),
        remote_node("c", c, Some(Ipv4Addr::new(10, 60, 0, 129))),
        remote_node("no-vxlan", Ipv4Addr::new(192, 168, 50, 4), None),
    ]);
    let desired = desired_vteps(&state, "n1", &tunnels);
    let expected = BTreeSet::from([
        Vtep {
            ip: Ipv4Addr::new(10, 60, 0, 65).into(),
            mac: vtep_mac("b"),
            underlay: b,
        },
        Vtep {
            ip: Ipv4Addr::new(10, 60, 0, 129).into(),
            mac: vtep_mac("c"),
            underlay: c,
        },
    ]);
    assert_eq!(desired, expected, "other nodes with an endpoint, not me");
    let mut reconciler = VtepReconciler::default();
    reconciler
        .apply(&kernel, VXLAN_DEVICE, &desired)
        .await
        .expect("apply");
    assert_eq!(kernel.current_vteps(VXLAN_DEVICE), expected);

    // A restarted agent reads what is there and changes nothing.
    let calls = kernel.calls().len();
    let mut restarted = VtepReconciler::default();
    restarted
        .apply(&kernel, VXLAN_DEVICE, &desired)
        .await
        .expect("again");
    assert_eq!(kernel.calls().len(), calls);

    // Node c leaves: exactly its endpoint goes.
    state.remove("node/c");
    restarted
        .apply(&kernel, VXLAN_DEVICE, &desired_vteps(&state, "n1", &tunnels))
        .await
        .expect("c left");
    let gone = expected.iter().find(|v| v.underlay == c).expect("c").clone();
    assert_eq!(
        kernel.calls()[calls..].to_vec(),
        vec![Call::DeleteVtep(VXLAN_DEVICE.into(), gone)]
    );
}

#[tokio::test]
async fn ipip_without_kernel_support_fails_clearly_and_works_on_a_stand_in_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipam = ipam(&dir).await;
    let kernel = RecordingKernel::default();
    let mut tunnels = setup(&ipam);
    let state = BTreeMap::from([pool("10.60.0.0/16", Encapsulation::Ipip)]);
    let prepared = tunnels.ensure(&kernel, &state).await;
    assert!(prepared.tunnels.ipip.is_none());
    assert!(
        matches!(
            &prepared.failures[..],
            [node_agent::core::tunnels::TunnelError::Dataplane(
                DataplaneError::Unsupported { .. }
            )]
        ),
        "{:?}",
        prepared.failures
    );
    assert!(prepared.failures[0].to_string().contains("IP-in-IP"));
    assert_eq!(prepared.pending, vec!["tunl0".to_owned()]);

    kernel.add_host_link("tunl0", 1480, &[]);
    let prepared = tunnels.ensure(&kernel, &state).await;
    assert!(prepared.failures.is_empty());
    assert_eq!(prepared.tunnels.ipip.as_deref(), Some("tunl0"));
}
