//! Every IPAM rule, as a scenario run on the embedded store and on a real etcd.

mod support;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::{Store, Txn};
use ipam_api::keys;
use ipam_api::model::{AllowedUse, IpamConfig, NodeSelector, Reservation};
use ipam_svc::core::{AssignIpRequest, IpamError, ProblemKind, ShowOptions};
use support::{TestClock, assert_clean, ipam_with_clock, pool, request};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

async fn pools_are_validated_and_crud_works(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    let (created, _) = ipam
        .create_pool(pool("default", "10.244.0.0/16", 26))
        .await
        .expect("create");
    assert_eq!(created.block_size, 26);
    assert!(matches!(
        ipam.create_pool(pool("default", "10.9.0.0/16", 26)).await,
        Err(IpamError::AlreadyExists(_))
    ));
    match ipam.create_pool(pool("other", "10.244.128.0/17", 26)).await {
        Err(IpamError::InvalidArgument { field, message }) => {
            assert_eq!(field, "pool.cidr");
            assert!(
                message.contains("default"),
                "names the overlapping pool: {message}"
            );
        }
        other => panic!("overlap must be refused, got {other:?}"),
    }
    ipam.create_pool(pool("v6", "fd00:10::/64", 122))
        .await
        .expect("IPv6 pool");
    let mut changed = pool("default", "10.244.0.0/16", 26);
    changed.disabled = true;
    changed.nat_outgoing = true;
    let (updated, _) = ipam.update_pool(changed).await.expect("update mutable fields");
    assert!(updated.disabled && updated.nat_outgoing);
    let moved = pool("default", "10.245.0.0/16", 26);
    assert!(
        matches!(ipam.update_pool(moved).await, Err(IpamError::InvalidArgument { field, .. }) if field == "pool.cidr")
    );
    assert_eq!(ipam.list_pools().await.expect("list").0.len(), 2);
    ipam.delete_pool("v6", false).await.expect("delete unused pool");
    assert!(matches!(ipam.get_pool("v6").await, Err(IpamError::NotFound(_))));
    assert!(matches!(
        ipam.delete_pool("v6", false).await,
        Err(IpamError::NotFound(_))
    ));
}

async fn auto_assign_claims_a_block_and_fills_it_in_order(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.10.0.0/24", 26))
        .await
        .expect("pool");
    let first = ipam
        .auto_assign(request("net.a", "n1", 1, 0))
        .await
        .expect("assign");
    let second = ipam
        .auto_assign(request("net.b", "n1", 1, 0))
        .await
        .expect("assign");
    let (a, b) = (&first.allocations[0], &second.allocations[0]);
    assert_eq!(a.block, b.block, "the node fills its block first");
    assert!(!a.borrowed && !first.existing);
    assert_eq!(b.sequence, a.sequence + 1);
    let next = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) + 1).into()),
        IpAddr::V6(_) => ip,
    };
    assert_eq!(b.ip, next(a.ip), "FIFO order inside a block");
    assert!(
        store
            .get(&keys::affinity("n1", &a.block))
            .await
            .expect("get")
            .is_some(),
        "affinity recorded"
    );
    let other = ipam
        .auto_assign(request("net.c", "n2", 1, 0))
        .await
        .expect("assign n2");
    assert_ne!(
        other.allocations[0].block, a.block,
        "another node claims its own block"
    );
    assert_clean(&ipam, None).await;
}

async fn auto_assign_is_idempotent_per_handle(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p4", "10.11.0.0/24", 26))
        .await
        .expect("pool");
    ipam.create_pool(pool("p6", "fd00:11::/120", 122))
        .await
        .expect("pool");
    let first = ipam
        .auto_assign(request("net.x", "n1", 1, 1))
        .await
        .expect("assign");
    assert_eq!(first.allocations.len(), 2);
    let again = ipam
        .auto_assign(request("net.x", "n1", 1, 1))
        .await
        .expect("retry");
    assert!(again.existing);
    assert_eq!(
        again.allocations.iter().map(|a| a.ip).collect::<Vec<_>>(),
        first.allocations.iter().map(|a| a.ip).collect::<Vec<_>>()
    );
    let show = ipam.show(&ShowOptions::default()).await.expect("show");
    assert_eq!(
        show.pools.iter().map(|p| p.in_use).sum::<u64>(),
        2,
        "a retry allocates nothing"
    );
    // Concurrent duplicates of one ADD still produce one allocation.
    let ipam = Arc::new(ipam);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let ipam = Arc::clone(&ipam);
            tokio::spawn(async move { ipam.auto_assign(request("net.dup", "n1", 1, 0)).await })
        })
        .collect();
    let mut ips = HashSet::new();
    for task in tasks {
        ips.insert(task.await.expect("task").expect("assign").allocations[0].ip);
    }
    assert_eq!(ips.len(), 1, "every duplicate got the same address");
    assert_clean(&ipam, None).await;
}

async fn blocks_fill_then_claim_up_to_the_limit_then_borrow(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("tiny", "10.20.0.0/29", 30))
        .await
        .expect("pool of 2 blocks of 4");
    ipam.set_config(IpamConfig {
        max_blocks_per_host: 2,
        ..IpamConfig::default()
    })
    .await
    .expect("config");
    let n2 = ipam.auto_assign(request("net.n2", "n2", 1, 0)).await.expect("n2");
    let n1 = ipam
        .auto_assign(request("net.n1", "n1", 4, 0))
        .await
        .expect("n1 fills its block");
    assert!(
        n1.allocations
            .iter()
            .all(|a| !a.borrowed && a.block == n1.allocations[0].block)
    );
    let borrowed = ipam
        .auto_assign(request("net.n1b", "n1", 1, 0))
        .await
        .expect("borrow");
    assert!(borrowed.allocations[0].borrowed, "no free block left: borrows");
    assert_ne!(borrowed.allocations[0].block, n1.allocations[0].block);
    let show = ipam
        .show(&ShowOptions {
            borrowed: true,
            blocks: true,
            ip: None,
        })
        .await
        .expect("show");
    assert_eq!(show.borrowed.len(), 1);
    assert_eq!(show.borrowed[0].node, "n1");
    assert_eq!(show.borrowed[0].block_node, "n2");
    assert_eq!(show.borrowed[0].block, n2.allocations[0].block);
    ipam.set_config(IpamConfig {
        max_blocks_per_host: 2,
        strict_affinity: true,
        ..IpamConfig::default()
    })
    .await
    .expect("strict");
    match ipam.auto_assign(request("net.n1c", "n1", 1, 0)).await {
        Err(IpamError::Exhausted {
            pools_tried, family, ..
        }) => {
            assert_eq!(pools_tried, vec!["tiny".to_owned()]);
            assert_eq!(family, "IPv4");
        }
        other => panic!("strict affinity must not borrow: {other:?}"),
    }
    assert!(
        matches!(ipam.handle("net.n1c").await, Err(IpamError::NotFound(_))),
        "failed assign leaves nothing"
    );
    assert_clean(&ipam, None).await;
}

async fn no_node_holds_more_than_its_blocks_worth_even_by_borrowing(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.25.0.0/28", 30))
        .await
        .expect("pool of 4 blocks of 4");
    ipam.set_config(IpamConfig {
        max_blocks_per_host: 1,
        ..IpamConfig::default()
    })
    .await
    .expect("config");
    for node in ["n2", "n3", "n4"] {
        ipam.auto_assign(request(&format!("net.{node}"), node, 1, 0))
            .await
            .expect("a block each");
    }
    ipam.auto_assign(request("net.n1", "n1", 4, 0))
        .await
        .expect("n1 fills its one block");
    match ipam.auto_assign(request("net.n1b", "n1", 1, 0)).await {
        Err(IpamError::NodeLimit { node, max_blocks }) => assert_eq!((node.as_str(), max_blocks), ("n1", 1)),
        other => panic!("borrowing past the node's limit: {other:?}"),
    }
    // Nor by naming addresses in other nodes' blocks one at a time.
    let n2_block = ipam.handle("net.n2").await.expect("n2").ips[0].block;
    let in_n2_block = match n2_block.network() {
        IpAddr::V4(base) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(base) + 3)),
        IpAddr::V6(_) => unreachable!("an IPv4 pool"),
    };
    match ipam
        .assign_ip(AssignIpRequest {
            handle_id: "net.n1c".into(),
            ip: in_n2_block,
            node: "n1".into(),
            use_: AllowedUse::Workload,
            attributes: Default::default(),
        })
        .await
    {
        Err(IpamError::NodeLimit { node, .. }) => assert_eq!(node, "n1"),
        other => panic!("a specific address past the node's limit: {other:?}"),
    }
    let show = ipam.show(&ShowOptions::default()).await.expect("show");
    assert_eq!(
        show.pools[0].free, 9,
        "the other nodes' free addresses are theirs: {show:?}"
    );
    assert!(
        matches!(ipam.handle("net.n1b").await, Err(IpamError::NotFound(_))),
        "a refused assign leaves nothing"
    );
    // Without a configuration the limit is 20 blocks.
    assert_eq!(IpamConfig::default().max_blocks_per_host, 20);
    assert_clean(&ipam, None).await;
}

async fn specific_addresses_follow_the_rules(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.30.0.0/24", 26))
        .await
        .expect("pool");
    ipam.create_reservation(Reservation {
        name: "gateways".into(),
        cidrs: vec!["10.30.0.64/30".parse().expect("cidr")],
    })
    .await
    .expect("reservation");
    let specific = |handle: &str, addr: &str, node: &str| AssignIpRequest {
        handle_id: handle.into(),
        ip: ip(addr),
        node: node.into(),
        use_: AllowedUse::Workload,
        attributes: Default::default(),
    };
    let got = ipam
        .assign_ip(specific("net.s1", "10.30.0.5", "n1"))
        .await
        .expect("free address");
    assert_eq!(got.ip, ip("10.30.0.5"));
    assert!(
        ipam.assign_ip(specific("net.s1", "10.30.0.5", "n1"))
            .await
            .is_ok(),
        "same handle again is idempotent"
    );
    assert!(
        matches!(ipam.assign_ip(specific("net.s2", "10.30.0.5", "n1")).await, Err(IpamError::AlreadyExists(m)) if m.contains("net.s1"))
    );
    assert!(
        matches!(ipam.assign_ip(specific("net.s3", "10.30.0.65", "n1")).await, Err(IpamError::FailedPrecondition(m)) if m.contains("gateways"))
    );
    assert!(
        matches!(ipam.assign_ip(specific("net.s4", "10.99.0.1", "n1")).await, Err(IpamError::InvalidArgument { field, .. }) if field == "ip")
    );
    ipam.set_config(IpamConfig {
        strict_affinity: true,
        ..IpamConfig::default()
    })
    .await
    .expect("strict");
    match ipam.assign_ip(specific("net.s5", "10.30.0.6", "n2")).await {
        Err(IpamError::FailedPrecondition(message)) => assert!(message.contains("n1"), "{message}"),
        other => panic!("another node's block under strict affinity: {other:?}"),
    }
    // Auto-assignment never hands out reserved addresses.
    ipam.set_config(IpamConfig::default()).await.expect("relax");
    for n in 0..70 {
        let result = ipam
            .auto_assign(request(&format!("net.r{n}"), "n3", 1, 0))
            .await
            .expect("assign");
        assert!(
            !"10.30.0.64/30"
                .parse::<ipnet::IpNet>()
                .expect("cidr")
                .contains(&result.allocations[0].ip)
        );
    }
    assert_clean(&ipam, None).await;
}

async fn release_is_idempotent_and_cooldown_defers_reuse(store: Arc<dyn Store>) {
    let clock = TestClock::new();
    let ipam = ipam_with_clock(&store, &clock);
    ipam.create_pool(pool("p", "10.40.0.0/30", 30))
        .await
        .expect("pool of 4");
    let mut ips = Vec::new();
    for n in 0..4 {
        ips.push(
            ipam.auto_assign(request(&format!("net.h{n}"), "n1", 1, 0))
                .await
                .expect("fill")
                .allocations[0]
                .ip,
        );
    }
    assert_eq!(
        ipam.release_handle("net.h3").await.expect("release"),
        vec![ips[3]]
    );
    assert!(
        ipam.release_handle("net.h3")
            .await
            .expect("release twice")
            .is_empty()
    );
    assert!(
        ipam.release_handle("net.never")
            .await
            .expect("release unknown")
            .is_empty()
    );
    // .3 cools down for 30 s; .0 is released with no cooldown: it is handed out first though it is
    // behind .3 in the free list.
    ipam.set_config(IpamConfig {
        release_cooldown_seconds: 0,
        ..IpamConfig::default()
    })
    .await
    .expect("config");
    clock.advance_secs(1);
    ipam.release_handle("net.h0").await.expect("release");
    clock.advance_secs(1);
    let next = ipam
        .auto_assign(request("net.h4", "n1", 1, 0))
        .await
        .expect("assign");
    assert_eq!(next.allocations[0].ip, ips[0], "the cooling address is skipped");
    let last = ipam
        .auto_assign(request("net.h5", "n1", 1, 0))
        .await
        .expect("assign");
    assert_eq!(
        last.allocations[0].ip, ips[3],
        "with nothing else free the cooling address is used"
    );
    assert!(matches!(
        ipam.auto_assign(request("net.h6", "n1", 1, 0)).await,
        Err(IpamError::Exhausted { .. })
    ));
    assert_clean(&ipam, None).await;
}

async fn stale_release_by_ip_cannot_free_a_reused_address(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.50.0.0/24", 26))
        .await
        .expect("pool");
    let first = ipam
        .auto_assign(request("net.old", "n1", 1, 0))
        .await
        .expect("assign")
        .allocations[0]
        .clone();
    let (released, skipped) = ipam
        .release_ips(&[(first.ip, first.sequence)])
        .await
        .expect("release");
    assert_eq!((released, skipped), (vec![first.ip], vec![]));
    assert!(
        matches!(ipam.handle("net.old").await, Err(IpamError::NotFound(_))),
        "empty handle removed"
    );
    let reused = ipam
        .assign_ip(AssignIpRequest {
            handle_id: "net.new".into(),
            ip: first.ip,
            node: "n1".into(),
            use_: AllowedUse::Workload,
            attributes: Default::default(),
        })
        .await
        .expect("reuse");
    let (released, skipped) = ipam
        .release_ips(&[(first.ip, first.sequence)])
        .await
        .expect("stale release");
    assert_eq!((released, skipped), (vec![], vec![first.ip]));
    assert_eq!(
        ipam.handle("net.new").await.expect("still held").ips[0].sequence,
        reused.sequence
    );
    assert_clean(&ipam, None).await;
}

async fn stale_release_cannot_match_a_recreated_block(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.51.0.0/24", 26))
        .await
        .expect("pool");
    let old = ipam
        .auto_assign(request("net.old", "n1", 1, 0))
        .await
        .expect("assign")
        .allocations[0]
        .clone();
    ipam.delete_node("n1").await.expect("node gone: block deleted");
    assert!(
        ipam.show(&ShowOptions {
            blocks: true,
            ..ShowOptions::default()
        })
        .await
        .expect("show")
        .blocks
        .is_empty()
    );
    let new = ipam
        .assign_ip(AssignIpRequest {
            handle_id: "net.new".into(),
            ip: old.ip,
            node: "n2".into(),
            use_: AllowedUse::Workload,
            attributes: Default::default(),
        })
        .await
        .expect("same address from a re-created block");
    assert!(
        new.sequence > old.sequence,
        "sequences keep growing across block re-creation"
    );
    let (released, skipped) = ipam
        .release_ips(&[(old.ip, old.sequence)])
        .await
        .expect("stale release");
    assert_eq!((released, skipped), (vec![], vec![old.ip]));
    assert_clean(&ipam, None).await;
}

async fn deleted_nodes_give_everything_back(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.60.0.0/29", 30))
        .await
        .expect("pool");
    ipam.set_config(IpamConfig {
        max_blocks_per_host: 2,
        ..IpamConfig::default()
    })
    .await
    .expect("config");
    ipam.auto_assign(request("net.a1", "n1", 4, 0))
        .await
        .expect("n1 fills a block");
    ipam.auto_assign(request("net.b1", "n2", 1, 0))
        .await
        .expect("n2 claims a block");
    ipam.auto_assign(request("net.a2", "n1", 1, 0))
        .await
        .expect("n1 borrows from n2");
    let b2 = ipam.auto_assign(request("net.b2", "n2", 2, 0)).await.expect("n2");
    assert!(!b2.allocations[0].borrowed);
    // n2 leaves: its handles go, its block loses its affinity but keeps n1's borrowed address.
    let (released, deleted_blocks) = ipam.delete_node("n2").await.expect("delete n2");
    assert_eq!((released, deleted_blocks), (3, 0));
    let show = ipam
        .show(&ShowOptions {
            blocks: true,
            ..ShowOptions::default()
        })
        .await
        .expect("show");
    assert!(
        show.blocks.iter().any(|b| b.node.is_empty() && b.in_use == 1),
        "{:?}",
        show.blocks
    );
    assert_clean(&ipam, None).await;
    // Releasing the last address of a block nobody owns deletes the block.
    ipam.release_handle("net.a2").await.expect("release");
    let show = ipam
        .show(&ShowOptions {
            blocks: true,
            ..ShowOptions::default()
        })
        .await
        .expect("show");
    assert_eq!(
        show.blocks.len(),
        1,
        "empty non-affine block deleted: {:?}",
        show.blocks
    );
    assert_clean(&ipam, None).await;
}

async fn empty_blocks_of_departed_nodes_are_reclaimed(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.70.0.0/29", 30))
        .await
        .expect("pool of 2 blocks");
    store
        .txn(Txn::new().put(keys::node("alive"), "{}"))
        .await
        .expect("register node");
    for node in ["alive", "gone"] {
        let handle = format!("net.{node}");
        ipam.auto_assign(request(&handle, node, 1, 0))
            .await
            .expect("claim");
        ipam.release_handle(&handle).await.expect("empty the block");
    }
    ipam.set_config(IpamConfig {
        strict_affinity: true,
        ..IpamConfig::default()
    })
    .await
    .expect("strict");
    let taken = ipam
        .auto_assign(request("net.new", "newcomer", 1, 0))
        .await
        .expect("reclaim");
    let show = ipam
        .show(&ShowOptions {
            blocks: true,
            ..ShowOptions::default()
        })
        .await
        .expect("show");
    let owner = show
        .blocks
        .iter()
        .find(|b| b.cidr == taken.allocations[0].block)
        .map(|b| b.node.clone());
    assert_eq!(owner.as_deref(), Some("newcomer"));
    assert!(
        show.blocks.iter().any(|b| b.node == "alive"),
        "a registered node keeps its empty block"
    );
    assert_clean(&ipam, None).await;
}

async fn gc_releases_only_stale_handles_of_the_node(store: Arc<dyn Store>) {
    let clock = TestClock::new();
    let ipam = ipam_with_clock(&store, &clock);
    ipam.create_pool(pool("p", "10.80.0.0/24", 26))
        .await
        .expect("pool");
    let tunnels = [
        "vxlan-tunnel-addr-n1",
        "vxlan-v6-tunnel-addr-n1",
        "ipip-tunnel-addr-n1",
    ];
    // "net.other:c:eth0" is a pod of the network "net.other", which a GC of "net" leaves alone.
    for handle in ["net.keep", "net.stale", "net:stale:eth1", "net.other:c:eth0"]
        .into_iter()
        .chain(tunnels)
    {
        ipam.auto_assign(request(handle, "n1", 1, 0))
            .await
            .expect("assign");
    }
    ipam.auto_assign(request("net.other-node", "n2", 1, 0))
        .await
        .expect("assign");
    // A handle formed before ids were unambiguous: container "c9" of the network "net.legacy".
    let mut legacy = request("net.legacy.c9", "n1", 1, 0);
    legacy.attributes.container_id = "c9".into();
    ipam.auto_assign(legacy).await.expect("assign");
    clock.advance_secs(120);
    ipam.auto_assign(request("net.young", "n1", 1, 0))
        .await
        .expect("assign");
    let valid: HashSet<String> = ["net.keep".to_owned()].into();
    let result = ipam
        .garbage_collect("n1", &valid, Some("net"), Duration::from_secs(60))
        .await
        .expect("gc");
    let mut released = result.released_handle_ids.clone();
    released.sort();
    assert_eq!(released, ["net.stale", "net:stale:eth1"]);
    assert_eq!(result.released_ips, 2);
    for kept in [
        "net.keep",
        "net.young",
        "net.other:c:eth0",
        "net.other-node",
        "net.legacy.c9",
    ]
    .into_iter()
    .chain(tunnels)
    {
        assert!(ipam.handle(kept).await.is_ok(), "{kept} must survive GC");
    }
    let live: HashSet<String> = ["net.keep", "net.young", "net.other:c:eth0", "net.legacy.c9"]
        .map(str::to_owned)
        .into();
    let report = ipam.check(Some(&live)).await.expect("check");
    let leaks: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::LeakedHandle)
        .collect();
    assert_eq!(
        leaks.len(),
        1,
        "only the other node's pod handle is unknown: {leaks:?}"
    );
    assert_eq!(leaks[0].handle_id.as_deref(), Some("net.other-node"));
    let everything = ipam
        .garbage_collect("n1", &valid, None, Duration::ZERO)
        .await
        .expect("gc of every network");
    assert!(
        everything
            .released_handle_ids
            .iter()
            .all(|h| !tunnels.contains(&h.as_str())),
        "tunnel addresses survive a pod GC: {everything:?}"
    );
    for tunnel in tunnels {
        assert!(ipam.handle(tunnel).await.is_ok(), "{tunnel} must survive GC");
    }
}

async fn show_reports_usage(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.90.0.0/24", 26))
        .await
        .expect("pool");
    ipam.create_reservation(Reservation {
        name: "r".into(),
        cidrs: vec!["10.90.0.252/30".parse().expect("cidr")],
    })
    .await
    .expect("reservation");
    ipam.auto_assign(request("net.u", "n1", 3, 0))
        .await
        .expect("assign");
    let show = ipam
        .show(&ShowOptions {
            blocks: true,
            borrowed: true,
            ip: Some(ip("10.90.0.253")),
        })
        .await
        .expect("show");
    let usage = &show.pools[0];
    assert_eq!(
        (
            usage.total,
            usage.in_use,
            usage.reserved,
            usage.free,
            usage.blocks
        ),
        (256, 3, 4, 249, 1)
    );
    assert_eq!(show.blocks[0].node, "n1");
    assert!(show.ip.expect("ip info").reserved);
}

async fn pool_deletion_is_refused_while_in_use_unless_forced(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.100.0.0/24", 26))
        .await
        .expect("pool");
    ipam.auto_assign(request("net.f", "n1", 2, 0))
        .await
        .expect("assign");
    assert!(
        matches!(ipam.delete_pool("p", false).await, Err(IpamError::FailedPrecondition(m)) if m.contains("2 allocated"))
    );
    ipam.delete_pool("p", true).await.expect("forced delete");
    assert!(matches!(ipam.handle("net.f").await, Err(IpamError::NotFound(_))));
    let show = ipam
        .show(&ShowOptions {
            blocks: true,
            ..ShowOptions::default()
        })
        .await
        .expect("show");
    assert!(show.blocks.is_empty() && show.pools.is_empty());
    assert_clean(&ipam, None).await;
}

async fn pool_eligibility_honours_selectors_uses_and_disabled(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    let mut zoned = pool("zoned", "10.110.0.0/24", 26);
    zoned.node_selector = NodeSelector::parse("zone == 'a'").expect("selector");
    ipam.create_pool(zoned).await.expect("pool");
    let mut tunnels = pool("tunnels", "10.111.0.0/24", 26);
    tunnels.allowed_uses = vec![AllowedUse::Tunnel];
    ipam.create_pool(tunnels).await.expect("pool");
    store
        .txn(
            Txn::new()
                .put(keys::node("in-a"), r#"{"labels":{"zone":"a"}}"#)
                .put(keys::node("in-b"), r#"{"labels":{"zone":"b"}}"#),
        )
        .await
        .expect("nodes");
    let got = ipam
        .auto_assign(request("net.a", "in-a", 1, 0))
        .await
        .expect("zone a");
    assert_eq!(got.allocations[0].pool, "zoned");
    match ipam.auto_assign(request("net.b", "in-b", 1, 0)).await {
        Err(IpamError::FailedPrecondition(message)) => {
            assert!(
                message.contains("zoned") && message.contains("tunnels"),
                "explains each pool: {message}"
            )
        }
        other => panic!("no usable pool for zone b: {other:?}"),
    }
    let mut tunnel = request("vxlan-tunnel-addr-in-b", "in-b", 1, 0);
    tunnel.use_ = AllowedUse::Tunnel;
    assert_eq!(
        ipam.auto_assign(tunnel)
            .await
            .expect("tunnel address")
            .allocations[0]
            .pool,
        "tunnels"
    );
    let mut only = request("net.only", "in-a", 1, 0);
    only.ipv4_pools = vec!["missing".into()];
    assert!(
        matches!(ipam.auto_assign(only).await, Err(IpamError::InvalidArgument { field, .. }) if field == "ipv4_pools")
    );
    // A specific address obeys the same rules: node selector, allowed uses, disabled pools.
    let specific = |handle: &str, ip: &str, node: &str, use_| AssignIpRequest {
        handle_id: handle.into(),
        ip: ip.parse().expect("ip"),
        node: node.into(),
        use_,
        attributes: Default::default(),
    };
    let refused = |result: Result<_, IpamError>, why: &str| match result {
        Err(IpamError::FailedPrecondition(message)) => assert!(message.contains(why), "{message}"),
        other => panic!("expected a refusal ({why}): {other:?}"),
    };
    refused(
        ipam.assign_ip(specific("net.b2", "10.110.0.9", "in-b", AllowedUse::Workload))
            .await,
        "node selector",
    );
    refused(
        ipam.assign_ip(specific("net.a2", "10.111.0.9", "in-a", AllowedUse::Workload))
            .await,
        "does not allow Workload",
    );
    ipam.assign_ip(specific(
        "vxlan-tunnel-addr-in-a",
        "10.111.0.9",
        "in-a",
        AllowedUse::Tunnel,
    ))
    .await
    .expect("a tunnel address from the tunnel pool");
    let mut zoned = pool("zoned", "10.110.0.0/24", 26);
    zoned.node_selector = NodeSelector::parse("zone == 'a'").expect("selector");
    zoned.disabled = true;
    ipam.update_pool(zoned).await.expect("disable");
    refused(
        ipam.assign_ip(specific("net.a3", "10.110.0.9", "in-a", AllowedUse::Workload))
            .await,
        "disabled",
    );
    assert_clean(&ipam, None).await;
}

async fn a_handle_is_its_nodes_alone(store: Arc<dyn Store>) {
    let ipam = ipam_with_clock(&store, &TestClock::new());
    ipam.create_pool(pool("p", "10.120.0.0/24", 26))
        .await
        .expect("pool");
    let mine = ipam
        .auto_assign(request("net.mine", "n1", 1, 0))
        .await
        .expect("n1");
    let other_node = |result: Result<_, IpamError>| match result {
        Err(IpamError::OtherNodesHandle { handle, owner, node }) => {
            assert_eq!(
                (handle.as_str(), owner.as_str(), node.as_str()),
                ("net.mine", "n1", "n2")
            );
        }
        other => panic!("n2 used n1's handle: {other:?}"),
    };
    // n2 neither receives n1's addresses by naming its handle ...
    other_node(ipam.auto_assign(request("net.mine", "n2", 1, 0)).await.map(drop));
    // ... nor adds an address to it.
    other_node(
        ipam.assign_ip(AssignIpRequest {
            handle_id: "net.mine".into(),
            ip: "10.120.0.200".parse().expect("ip"),
            node: "n2".into(),
            use_: AllowedUse::Workload,
            attributes: Default::default(),
        })
        .await
        .map(drop),
    );
    let handle = ipam.handle("net.mine").await.expect("still n1's");
    assert_eq!(handle.attributes.node, "n1");
    assert_eq!(handle.ips.len(), 1);
    assert_eq!(handle.ips[0].ip, mine.allocations[0].ip);
    assert_clean(&ipam, None).await;
}

macro_rules! scenarios {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_backend, store) = crate::support::embedded().await;
                    super::$test(store).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (_backend, store) = crate::support::etcd().await;
                    super::$test(store).await;
                }
            )*
        }
    };
}

scenarios!(
    pools_are_validated_and_crud_works,
    auto_assign_claims_a_block_and_fills_it_in_order,
    auto_assign_is_idempotent_per_handle,
    blocks_fill_then_claim_up_to_the_limit_then_borrow,
    no_node_holds_more_than_its_blocks_worth_even_by_borrowing,
    a_handle_is_its_nodes_alone,
    specific_addresses_follow_the_rules,
    release_is_idempotent_and_cooldown_defers_reuse,
    stale_release_by_ip_cannot_free_a_reused_address,
    stale_release_cannot_match_a_recreated_block,
    deleted_nodes_give_everything_back,
    empty_blocks_of_departed_nodes_are_reclaimed,
    gc_releases_only_stale_handles_of_the_node,
    show_reports_usage,
    pool_deletion_is_refused_while_in_use_unless_forced,
    pool_eligibility_honours_selectors_uses_and_disabled,
);
