//! `brindle server` answers the real `grpcurl` (reflection, health, one method of every service) on
//! the embedded store, and reports NOT_SERVING while etcd is down.

mod support;

use brindle_datastore::testing::EtcdServer;
use support::Server;

#[test]
fn grpcurl_lists_and_describes_on_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("state/store.redb");
    let server = Server::start(
        &["--store-path", store.to_str().expect("utf-8 path")],
        &dir.path().join("server.log"),
    );
    let list = server.grpcurl(&["list"]);
    assert!(list.status.success(), "grpcurl list failed: {list:?}");
    let services = String::from_utf8_lossy(&list.stdout);
    // Every service: listed, described, and one method called.
    for (service, method) in [
        ("brindle.ipam.v1.Ipam", "ListPools"),
        ("brindle.route.v1.Routes", "ListNodes"),
        ("brindle.policy.v1.Policy", "ListNodes"),
        ("grpc.health.v1.Health", "Check"),
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing from:\n{services}"
        );
        let describe = server.grpcurl(&["describe", service]);
        assert!(
            String::from_utf8_lossy(&describe.stdout).contains(&format!("rpc {method}")),
            "{describe:?}"
        );
        let call = server.grpcurl(&[&format!("{service}/{method}")]);
        assert!(call.status.success(), "{service}/{method}: {call:?}");
    }
    assert!(
        services
            .lines()
            .any(|l| l == "grpc.reflection.v1.ServerReflection"),
        "{services}"
    );
    assert!(
        store.exists(),
        "embedded store file created at the configured path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_etcd_availability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut etcd = EtcdServer::start().await.expect("start etcd");
    let endpoint = etcd.endpoint();
    let server = Server::start(
        &["--etcd-endpoints", &endpoint, "--etcd-request-timeout", "1"],
        &dir.path().join("server.log"),
    );
    etcd.kill();
    tokio::task::block_in_place(|| server.wait_for_health("NOT_SERVING"));
    etcd.restart().await.expect("restart etcd");
    tokio::task::block_in_place(|| server.wait_for_health("SERVING"));
}

#[test]
fn unreadable_store_path_fails_with_a_clear_error() {
    let out = support::brindle(
        "",
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store-path",
            "/proc/brindle/store.redb",
        ],
        "",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opening the datastore") && stderr.contains("/proc/brindle"),
        "{stderr}"
    );
}
