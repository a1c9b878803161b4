//! Model test: seeded random sequences of assign / specific assign / release (by handle, by IP,
//! stale) / GC / node deletion / config changes across several nodes. After every step the store
//! must match a simple model (handle → addresses), hold no duplicate address, and `check` must be
//! clean.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use brindle_datastore::Store;
use ipam_api::keys;
use ipam_api::model::{AllowedUse, Handle, IpamConfig, decode};
use ipam_svc::core::{AssignIpRequest, Ipam, IpamError};
use support::{TestClock, assert_clean, ipam_with_clock, pool, request};

const NODES: [&str; 5] = ["n0", "n1", "n2", "n3", "n4"];
const STEPS: usize = 250;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

/// The model: every live handle with its node and (address, sequence) pairs.
#[derive(Default)]
struct Model {
    handles: BTreeMap<String, (String, BTreeSet<(IpAddr, u64)>)>,
}

impl Model {
    fn all_ips(&self) -> HashSet<IpAddr> {
        self.handles
            .values()
            .flat_map(|(_, ips)| ips.iter().map(|(ip, _)| *ip))
            .collect()
    }
}

async fn stored_handles(store: &dyn Store) -> BTreeMap<String, BTreeSet<(IpAddr, u64)>> {
    let listed = store.list(keys::HANDLES).await.expect("list handles");
    listed
        .kvs
        .iter()
        .map(|kv| {
            let handle: Handle = decode(&kv.key, &kv.value).expect("handle decodes");
            (handle.id, handle.ips.iter().map(|h| (h.ip, h.sequence)).collect())
        })
        .collect()
}

async fn run_sequence(seed: u64) {
    let (_backend, store) = support::embedded().await;
    let clock = TestClock::new();
    let ipam: Ipam = ipam_with_clock(&store, &clock);
    ipam.create_pool(pool("v4", "10.200.0.0/27", 29))
        .await
        .expect("v4 pool: 4 blocks of 8");
    ipam.create_pool(pool("v6", "fd00:200::/123", 124))
        .await
        .expect("v6 pool: 2 blocks of 16");
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut released: Vec<(IpAddr, u64)> = Vec::new();
    let mut next_handle = 0;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for step in 0..STEPS {
        let node = NODES[rng.below(NODES.len())];
        let action = rng.below(100);
        let context = format!("seed {seed} step {step} action {action}");
        match action {
            0..=39 => {
                next_handle += 1;
                let id = format!("net.c{next_handle}");
                let v4 = 1 + rng.below(2) as u32;
                let v6 = rng.below(2) as u32;
                match ipam.auto_assign(request(&id, node, v4, v6)).await {
                    Ok(result) => {
                        assert!(!result.existing, "{context}");
                        assert_eq!(result.allocations.len(), (v4 + v6) as usize, "{context}");
                        let taken = model.all_ips();
                        let ips: BTreeSet<_> =
                            result.allocations.iter().map(|a| (a.ip, a.sequence)).collect();
                        assert!(
                            ips.iter().all(|(ip, _)| !taken.contains(ip)),
                            "{context}: duplicate address"
                        );
                        model.handles.insert(id, (node.to_owned(), ips));
                        *counts.entry("assigned").or_default() += 1;
                    }
                    Err(IpamError::Exhausted { .. } | IpamError::NodeLimit { .. }) => {
                        assert!(
                            ipam.handle(&id).await.is_err(),
                            "{context}: failed assign left a handle"
                        );
                        *counts.entry("exhausted").or_default() += 1;
                    }
                    Err(other) => panic!("{context}: {other}"),
                }
            }
            40..=44 => {
                let ids: Vec<String> = model.handles.keys().cloned().collect();
                if let Some(id) = rng.pick(&ids) {
                    let (owner, ips) = model.handles[id].clone();
                    let again = ipam.auto_assign(request(id, &owner, 1, 0)).await.expect("retry");
                    assert!(again.existing, "{context}");
                    let got: BTreeSet<_> = again.allocations.iter().map(|a| (a.ip, a.sequence)).collect();
                    assert_eq!(got, ips, "{context}: retry returns the same addresses");
                }
            }
            45..=64 => {
                let ids: Vec<String> = model.handles.keys().cloned().collect();
                let id = rng
                    .pick(&ids)
                    .cloned()
                    .unwrap_or_else(|| "net.unknown".to_owned());
                let freed = ipam.release_handle(&id).await.expect("release");
                let expected = model.handles.remove(&id).map(|(_, ips)| ips).unwrap_or_default();
                assert_eq!(freed.len(), expected.len(), "{context}");
                released.extend(expected);
                *counts.entry("released").or_default() += 1;
            }
            65..=72 => {
                let ids: Vec<String> = model.handles.keys().cloned().collect();
                if let Some(id) = rng.pick(&ids).cloned() {
                    let (ip, sequence) = *model.handles[&id].1.iter().next().expect("non-empty handle");
                    let (freed, _) = ipam.release_ips(&[(ip, sequence)]).await.expect("release ip");
                    assert_eq!(freed, vec![ip], "{context}");
                    let entry = model.handles.get_mut(&id).expect("handle");
                    entry.1.remove(&(ip, sequence));
                    if entry.1.is_empty() {
                        model.handles.remove(&id);
                    }
                    released.push((ip, sequence));
                }
            }
            73..=77 => {
                if let Some((ip, sequence)) = rng.pick(&released).copied() {
                    let (freed, skipped) = ipam.release_ips(&[(ip, sequence)]).await.expect("stale release");
                    assert!(freed.is_empty(), "{context}: a stale release freed {ip}");
                    assert_eq!(skipped, vec![ip], "{context}");
                    *counts.entry("stale").or_default() += 1;
                }
            }
            78..=85 => {
                let last_octet = rng.below(32) as u32;
                let ip = IpAddr::V4((u32::from(std::net::Ipv4Addr::new(10, 200, 0, 0)) + last_octet).into());
                next_handle += 1;
                let id = format!("net.s{next_handle}");
                let result = ipam
                    .assign_ip(AssignIpRequest {
                        handle_id: id.clone(),
                        ip,
                        node: node.into(),
                        use_: AllowedUse::Workload,
                        attributes: Default::default(),
                    })
                    .await;
                let taken = model.all_ips().contains(&ip);
                match result {
                    Ok(allocated) => {
                        assert!(!taken, "{context}: {ip} handed out twice");
                        model
                            .handles
                            .insert(id, (node.to_owned(), [(ip, allocated.sequence)].into()));
                    }
                    Err(IpamError::AlreadyExists(_)) => assert!(taken, "{context}: {ip} reported taken"),
                    Err(IpamError::FailedPrecondition(_) | IpamError::NodeLimit { .. }) => {}
                    Err(other) => panic!("{context}: {other}"),
                }
            }
            86..=89 => {
                let node_handles: Vec<String> = model
                    .handles
                    .iter()
                    .filter(|(_, (n, _))| n == node)
                    .map(|(id, _)| id.clone())
                    .collect();
                let valid: HashSet<String> = node_handles
                    .iter()
                    .filter(|_| rng.below(2) == 0)
                    .cloned()
                    .collect();
                let result = ipam
                    .garbage_collect(node, &valid, Some("net"), Duration::ZERO)
                    .await
                    .expect("gc");
                for id in &result.released_handle_ids {
                    assert!(!valid.contains(id), "{context}: GC released a valid handle");
                    if let Some((_, ips)) = model.handles.remove(id) {
                        released.extend(ips);
                    }
                }
                let expected = node_handles.iter().filter(|id| !valid.contains(*id)).count();
                assert_eq!(result.released_handle_ids.len(), expected, "{context}");
            }
            90..=92 => {
                ipam.delete_node(node).await.expect("delete node");
                let gone: Vec<String> = model
                    .handles
                    .iter()
                    .filter(|(_, (n, _))| n == node)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in gone {
                    if let Some((_, ips)) = model.handles.remove(&id) {
                        released.extend(ips);
                    }
                }
            }
            93..=95 => {
                let config = IpamConfig {
                    strict_affinity: rng.below(3) == 0,
                    max_blocks_per_host: [0, 1, 2][rng.below(3)],
                    release_cooldown_seconds: [0, 30][rng.below(2)],
                };
                ipam.set_config(config).await.expect("config");
            }
            _ => clock.advance_secs(rng.below(40) as u64),
        }
        let stored = stored_handles(store.as_ref()).await;
        let expected: BTreeMap<_, _> = model
            .handles
            .iter()
            .map(|(id, (_, ips))| (id.clone(), ips.clone()))
            .collect();
        assert_eq!(stored, expected, "{context}: store and model differ");
        assert_clean(&ipam, None).await;
    }
    eprintln!(
        "seed {seed}: {counts:?}, {} handles live at the end",
        model.handles.len()
    );
    assert!(
        counts.get("exhausted").copied().unwrap_or(0) > 0,
        "the sequence must reach exhaustion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sequences_keep_ipam_consistent() {
    for seed in [
        0x5eed_0001,
        0xdead_beef,
        0x0bad_cafe,
        42,
        7,
        1_000_003,
        0xfeed_f00d,
        0x1234_5678,
    ] {
        run_sequence(seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_nodes_never_share_an_address() {
    let (_backend, store) = support::embedded().await;
    let ipam = Arc::new(ipam_with_clock(&store, &TestClock::new()));
    ipam.create_pool(pool("p", "10.201.0.0/24", 28))
        .await
        .expect("pool: 16 blocks of 16");
    let mut tasks = Vec::new();
    for node in 0..8 {
        for pod in 0..30 {
            let ipam = Arc::clone(&ipam);
            tasks.push(tokio::spawn(async move {
                let id = format!("net.{node}-{pod}");
                let got = ipam.auto_assign(request(&id, &format!("n{node}"), 1, 0)).await;
                if pod % 3 == 0 && got.is_ok() {
                    ipam.release_handle(&id).await.expect("release");
                    return None;
                }
                got.ok().map(|r| r.allocations[0].ip)
            }));
        }
    }
    let mut ips = Vec::new();
    for task in tasks {
        ips.extend(task.await.expect("task"));
    }
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), ips.len(), "duplicate addresses handed out");
    assert!(ips.len() >= 150, "most assignments succeed: {}", ips.len());
    assert_clean(&ipam, None).await;
}
