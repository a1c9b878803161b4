//! Three `ipam-svc` processes on one etcd serve 20 simulated nodes allocating and releasing
//! concurrently (5,000 operations); one replica is SIGKILLed midway. Afterwards: no address was
//! ever handed out twice, `check` is clean, and every handle is either fully allocated or absent.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use brindle_datastore::testing::EtcdServer;
use brindle_proto::ipam::v1 as pb;
use support::IpamProcess;
use tokio::sync::Mutex;

const NODES: usize = 20;
const OPS_PER_NODE: usize = 250;

/// Calls `call` on replica `preferred`, moving to the next replica on transport errors or
/// UNAVAILABLE / ABORTED, until it succeeds (the calls are idempotent).
async fn retrying<T, F, Fut>(replicas: &[String], preferred: usize, call: F) -> T
where
    F: Fn(pb::ipam_client::IpamClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut attempt = 0;
    loop {
        let address = &replicas[(preferred + attempt) % replicas.len()];
        let outcome = match pb::ipam_client::IpamClient::connect(format!("http://{address}")).await {
            Ok(client) => call(client).await,
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match outcome {
            Ok(response) => return response.into_inner(),
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Aborted
                            | tonic::Code::Unknown
                            | tonic::Code::Cancelled
                    ),
                    "non-retryable error: {status:?}"
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "no replica answered: {status:?}"
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_one_killed_no_duplicates_no_partial_handles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = EtcdServer::start().await.expect("etcd");
    let endpoint = etcd.endpoint();
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas.push(
            IpamProcess::start(
                &["--etcd-endpoints", &endpoint],
                &dir.path().join(format!("ipam-{n}.log")),
            )
            .await,
        );
    }
    let addresses: Arc<Vec<String>> = Arc::new(replicas.iter().map(|r| r.address.clone()).collect());
    let mut admin = replicas[1].client().await.expect("client");
    for (name, cidr, block) in [("v4", "10.128.0.0/16", 26), ("v6", "fd00:128::/112", 122)] {
        admin
            .create_pool(pb::CreatePoolRequest {
                pool: Some(pb::IpPool {
                    name: name.into(),
                    cidr: cidr.into(),
                    block_size: block,
                    ..Default::default()
                }),
            })
            .await
            .expect("pool");
    }

    let done = Arc::new(AtomicUsize::new(0));
    // handle → its addresses while live (client's view); every address ever seen live.
    let live: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let mut tasks = Vec::new();
    for node in 0..NODES {
        let (addresses, done, live) = (Arc::clone(&addresses), Arc::clone(&done), Arc::clone(&live));
        tasks.push(tokio::spawn(async move {
            let node_name = format!("node-{node}");
            let mut mine: Vec<String> = Vec::new();
            let mut attempted = Vec::new();
            for op in 0..OPS_PER_NODE {
                let release = !mine.is_empty() && (op % 3 == 2);
                if release {
                    let handle = mine.remove((op * 7) % mine.len());
                    let request = pb::ReleaseByHandleRequest {
                        handle_id: handle.clone(),
                    };
                    retrying(&addresses, node, |mut c| {
                        let request = request.clone();
                        async move { c.release_by_handle(request).await }
                    })
                    .await;
                    live.lock().await.remove(&handle);
                } else {
                    let handle = format!("k8s-pod-network.{node_name}-{op}");
                    attempted.push(handle.clone());
                    let request = pb::AutoAssignRequest {
                        handle_id: handle.clone(),
                        node: node_name.clone(),
                        num_ipv4: 1,
                        num_ipv6: 1,
                        ..Default::default()
                    };
                    let response = retrying(&addresses, node, |mut c| {
                        let request = request.clone();
                        async move { c.auto_assign(request).await }
                    })
                    .await;
                    assert_eq!(response.allocations.len(), 2, "both families allocated");
                    let ips: Vec<String> = response.allocations.iter().map(|a| a.ip.clone()).collect();
                    let mut live = live.lock().await;
                    let taken: HashSet<&String> = live.values().flatten().collect();
                    assert!(
                        ips.iter().all(|ip| !taken.contains(ip)),
                        "address handed out twice: {ips:?}"
                    );
                    live.insert(handle.clone(), ips);
                    mine.push(handle);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            attempted
        }));
    }
    let killer = {
        let done = Arc::clone(&done);
        async move {
            while done.load(Ordering::SeqCst) < NODES * OPS_PER_NODE / 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    killer.await;
    replicas[0].kill();
    let started = std::time::Instant::now();
    let mut attempted = Vec::new();
    for task in tasks {
        attempted.extend(task.await.expect("node task"));
    }
    eprintln!(
        "{} operations by {NODES} nodes over 3 replicas (one SIGKILLed at half-way, {:?} before the end)",
        done.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert!(done.load(Ordering::SeqCst) >= 5000);

    let report = admin
        .check(pb::CheckRequest::default())
        .await
        .expect("check")
        .into_inner();
    assert!(report.clean, "check after the run: {:#?}", report.problems);
    let live = live.lock().await;
    let mut seen: HashMap<String, String> = HashMap::new();
    for handle in &attempted {
        match admin
            .get_handle(pb::GetHandleRequest {
                handle_id: handle.clone(),
            })
            .await
        {
            Ok(found) => {
                let found = found.into_inner();
                assert_eq!(found.allocations.len(), 2, "{handle} is partially allocated");
                let expected = live
                    .get(handle)
                    .expect("a stored handle the clients released or never saw");
                let mut stored: Vec<String> = found.allocations.iter().map(|a| a.ip.clone()).collect();
                let mut expected = expected.clone();
                stored.sort();
                expected.sort();
                assert_eq!(stored, expected, "{handle}");
                for ip in stored {
                    assert!(
                        seen.insert(ip.clone(), handle.clone()).is_none(),
                        "{ip} held twice"
                    );
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                assert!(
                    !live.contains_key(handle),
                    "{handle} is live for its client but absent"
                );
            }
            Err(status) => panic!("get handle {handle}: {status:?}"),
        }
    }
    assert_eq!(report.handles as usize, live.len(), "no stray handles");
    drop(etcd);
}
