//! CNI operation logic on the recording kernel with the real IPAM logic in-process (embedded
//! store): rollback of a failed ADD, and the start-up mark and sweep.

mod support;

use std::path::Path;
use std::sync::Arc;

use brindle_datastore::EmbeddedStore;
use brindle_proto::cni_codes::DATAPLANE_FAILED;
use ipam_api::model::{AllowedUse, HandleAttributes};
use ipam_svc::core::{AssignRequest, Ipam, IpamError};
use node_agent::core::attachments::{Attachment, AttachmentStore, Phase};
use node_agent::core::cni::{CniOps, CniRequest, NetworkConfig, handle_id};
use node_agent::core::wiring::AttachmentKey;
use node_agent::dataplane::{Netlink, RecordingKernel};
use support::ipam::InProcessIpam;
use support::node::workload_pool;

struct Setup {
    dir: tempfile::TempDir,
    kernel: Arc<RecordingKernel>,
    ipam: Arc<Ipam>,
    records: AttachmentStore,
    ops: CniOps,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        EmbeddedStore::open(dir.path().join("ipam.redb"))
            .await
            .expect("store"),
    );
    let ipam = Arc::new(Ipam::new(store));
    let pool = workload_pool("p", "10.77.0.0/24");
    ipam.create_pool(pool).await.expect("pool");
    let kernel = Arc::new(RecordingKernel::default());
    let records = AttachmentStore::open(&dir.path().join("records")).expect("records");
    let ops = CniOps::new(
        "n1",
        Arc::clone(&kernel) as Arc<dyn Netlink>,
        Arc::clone(&kernel) as Arc<dyn node_agent::dataplane::Sysctl>,
        Arc::new(InProcessIpam(Arc::clone(&ipam))),
        records.clone(),
    );
    Setup {
        dir,
        kernel,
        ipam,
        records,
        ops,
    }
}

/// One IPv4 address for `handle_id` on node n1, straight from the IPAM engine.
fn allocation(handle_id: String) -> AssignRequest {
    AssignRequest {
        handle_id,
        node: "n1".into(),
        num_ipv4: 1,
        num_ipv6: 0,
        ipv4_pools: Vec::new(),
        ipv6_pools: Vec::new(),
        use_: AllowedUse::Workload,
        attributes: HandleAttributes::default(),
    }
}

fn request(container: &str) -> CniRequest {
    CniRequest {
        key: AttachmentKey {
            network: "net".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
        },
        netns: "/".into(),
        args: Default::default(),
    }
}

#[tokio::test]
async fn a_failed_add_releases_its_address_and_leaves_no_veth_or_record() {
    // One failure while the interface is built (IPAM allocating at the same time), one after.
    for failing in ["PreparePod", "AddPodAddresses"] {
        let s = setup().await;
        s.kernel.fail_on(failing);
        let failure = s
            .ops
            .add(&request("c1"), &config())
            .await
            .expect_err("kernel failure");
        assert_eq!(failure.code, DATAPLANE_FAILED, "{failing}: {failure:?}");
        assert!(
            matches!(
                s.ipam.handle(&handle_id(&request("c1").key)).await,
                Err(IpamError::NotFound(_))
            ),
            "{failing}: address released"
        );
        assert!(s.kernel.host_link_names().is_empty(), "{failing}: veth removed");
        assert!(
            s.records.list().expect("records").is_empty(),
            "{failing}: no record"
        );
        // The next attempt succeeds and gets an address.
        let added = s.ops.add(&request("c1"), &config()).await.expect("retry");
        assert_eq!(added.addresses.len(), 1);
    }
}

#[tokio::test]
async fn start_up_sweep_undoes_interrupted_adds_and_orphans_only() {
    let s = setup().await;
    let kept = s.ops.add(&request("kept"), &config()).await.expect("add");
    // An ADD that crashed after allocating and creating its veth: record still Adding.
    let key = request("crashed").key;
    s.ipam
        .auto_assign(allocation(handle_id(&key)))
        .await
        .expect("allocation of the crashed ADD");
    s.kernel
        .create_veth(&key.host_ifname(), [0xee; 6], "eth9", Path::new("/crashed"), 1500)
        .await
        .expect("veth");
    s.records
        .save(&Attachment {
            key: key.clone(),
            netns: "/crashed".into(),
            handle_id: handle_id(&key),
            host_ifname: key.host_ifname(),
            addresses: Vec::new(),
            namespace: String::new(),
            pod: String::new(),
            labels: Default::default(),
            ports: Vec::new(),
            phase: Phase::Adding,
        })
        .expect("intent record");
    // An allocation of this node that no record knows (its intent record was lost).
    s.ipam
        .auto_assign(allocation("net.orphan".into()))
        .await
        .expect("orphan allocation");
    // A stray brindle veth and someone else's link.
    s.kernel
        .create_veth("brd0000000dead", [0xee; 6], "eth0", Path::new("/stray"), 1500)
        .await
        .expect("stray");
    s.kernel
        .create_veth("eth-theirs", [0x02; 6], "eth0", Path::new("/theirs"), 1500)
        .await
        .expect("theirs");

    s.ops.reconcile().await.expect("reconcile");

    let links = s.kernel.host_link_names();
    assert_eq!(
        links,
        vec![kept.wired.host_ifname.clone(), "eth-theirs".to_owned()],
        "only brindle's orphans went"
    );
    assert!(
        s.ipam.handle(&handle_id(&key)).await.is_err(),
        "the crashed ADD's address is released"
    );
    assert!(
        s.ipam.handle("net.orphan").await.is_err(),
        "the orphan allocation is released"
    );
    assert!(
        s.ipam.handle(&handle_id(&request("kept").key)).await.is_ok(),
        "the live attachment keeps its address"
    );
    let records: Vec<_> = s
        .records
        .list()
        .expect("records")
        .into_iter()
        .map(|a| a.key.container_id)
        .collect();
    assert_eq!(records, vec!["kept".to_owned()]);
}

/// The network configuration of every request.
fn config() -> NetworkConfig {
    NetworkConfig::parse(&serde_json::json!({"mtu": 1500}), &Default::default()).expect("config")
}

/// A request for `container` in a network namespace of its own.
fn in_own_netns(container: &str) -> CniRequest {
    let mut request = request(container);
    request.netns = format!("/run/netns/{container}");
    request
}

#[tokio::test]
async fn one_corrupt_record_does_not_stop_the_cleanup_of_the_others_nor_free_its_running_pod() {
    let s = setup().await;
    let kept = s.ops.add(&in_own_netns("kept"), &config()).await.expect("add");
    s.ops.add(&in_own_netns("gone"), &config()).await.expect("add");
    let broken = s.ops.add(&in_own_netns("broken"), &config()).await.expect("add");
    let running = s.ops.add(&in_own_netns("running"), &config()).await.expect("add");
    let records_dir = s.dir.path().join("records");
    let corrupt = |attachment: &node_agent::core::cni::Added| {
        let file = format!("{}.json", attachment.wired.host_ifname);
        std::fs::write(records_dir.join(&file), b"{\"key\": ").expect("corrupt it");
        file
    };
    let broken_file = corrupt(&broken);
    corrupt(&running);

    // Start-up: the corrupt records are moved aside; with them aside, no address of this node is
    // released as unowned (one of them may be a running pod's) and their links stay.
    s.ops
        .reconcile()
        .await
        .expect("reconcile goes past the corrupt records");
    assert!(records_dir.join("corrupt").join(&broken_file).exists());
    assert_eq!(s.records.quarantined(), 2);
    let held = |container: &'static str| {
        let ipam = Arc::clone(&s.ipam);
        async move { ipam.handle(&handle_id(&request(container).key)).await.is_ok() }
    };
    for container in ["kept", "gone", "broken", "running"] {
        assert!(held(container).await, "{container} keeps its address");
    }
    for link in [&broken.wired.host_ifname, &running.wired.host_ifname] {
        assert!(s.kernel.host_link_names().contains(link), "{link} is kept");
    }

    // A runtime's GC naming what is live ("kept" and "running"): "gone" and "broken" go, with
    // their addresses; the running pod whose record is corrupt keeps its address.
    let valid = [("kept", "eth0"), ("running", "eth0")].map(|(c, i)| (c.to_owned(), i.to_owned()));
    s.ops
        .gc("net", &valid)
        .await
        .expect("GC goes past the corrupt records");
    for (container, still) in [
        ("kept", true),
        ("gone", false),
        ("broken", false),
        ("running", true),
    ] {
        assert_eq!(held(container).await, still, "{container}");
    }
    // The DEL of the corrupt record's pod removes its link and forgets the record moved aside.
    s.ops.del(&in_own_netns("broken")).await.expect("DEL");
    assert!(!records_dir.join("corrupt").join(&broken_file).exists());
    // DEL retires the veth; the background reaper deletes it moments later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.kernel.host_link_names().contains(&broken.wired.host_ifname) {
        assert!(
            std::time::Instant::now() < deadline,
            "the DELeted pod's veth is never deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(s.kernel.host_link_names().contains(&kept.wired.host_ifname));
    s.ops
        .add(&in_own_netns("new"), &config())
        .await
        .expect("a new pod");
}
