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

/// Plain text only on loopback: every server refuses a non-loopback listen address without TLS,
/// naming the flags that fix it; `--insecure-plaintext` is the explicit opt-in, and the server
/// then says so on `/metrics`. (In a network namespace of the test's own: nothing listens on the
/// host's network.)
#[test]
fn plain_text_on_the_network_is_refused_unless_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let binaries = brindle::lab::test_binaries();
    let servers: [(&str, &[&str]); 4] = [
        ("brindle", &["server"]),
        ("ipam-svc", &[]),
        ("route-svc", &[]),
        ("policy-svc", &[]),
    ];
    for (binary, first) in servers {
        let store = dir.path().join(format!("{binary}.redb"));
        let out = std::process::Command::new(binaries.join(binary))
            .args(first)
            .args([
                "--listen",
                "0.0.0.0:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--store-path",
            ])
            .arg(&store)
            .output()
            .expect("run the server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{binary} served plain text on 0.0.0.0");
        for flag in [
            "--tls-cert",
            "--tls-key",
            "--tls-client-ca",
            "--insecure-plaintext",
        ] {
            assert!(stderr.contains(flag), "{binary} does not name {flag}: {stderr}");
        }
        assert!(!store.exists(), "{binary} opened its datastore before refusing");
    }

    let namespace = brindle::lab::Namespace::create(format!("brds{}", std::process::id())).expect("netns");
    let store = dir.path().join("insecure.redb");
    let mut server = namespace
        .command(&binaries.join("brindle"))
        .args([
            "server",
            "--listen",
            "0.0.0.0:7400",
            "--metrics-listen",
            "127.0.0.1:9400",
        ])
        .arg("--store-path")
        .arg(&store)
        .arg("--insecure-plaintext")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start brindle server");
    let scrape = "printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' | busybox nc 127.0.0.1 9400";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let metrics = loop {
        let out = namespace
            .command(std::path::Path::new("/bin/sh"))
            .args(["-c", scrape])
            .output()
            .expect("scrape");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("brindle_insecure_plaintext") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Reached over loopback, the server still says what it speaks: plain text on the network.
    let local = "http://127.0.0.1:7400";
    let status = namespace
        .command(&binaries.join("brindle"))
        .args(["node", "status", "--server", local, "--route-server", local])
        .args(["--policy-server", local])
        .output()
        .expect("brindle node status");
    let _ = server.kill();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.ends_with("\ncontrol plane: INSECURE plain text on the network (--insecure-plaintext)\n"),
        "{status}"
    );
    let output = server.wait_with_output().expect("server output");
    assert!(metrics.contains("brindle_insecure_plaintext 1"), "{metrics}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--insecure-plaintext") && stderr.contains("WARN"),
        "{stderr}"
    );
}

/// Every caller is bounded: connections per source address (the one past the limit is closed
/// at once), silent connections (closed after the idle timeout) and calls per second (past the
/// burst, RESOURCE_EXHAUSTED naming the caller and the flag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_is_bounded() {
    use std::io::Read;
    use std::time::Duration;

    use brindle_proto::ipam::v1 as ipam;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store.redb");
    let server = Server::start(
        &[
            "--store-path",
            store.to_str().expect("utf-8 path"),
            "--max-connections-per-address",
            "3",
            "--idle-timeout-seconds",
            "6",
            "--requests-per-second",
            "1",
        ],
        &dir.path().join("server.log"),
    );
    // A connection and what a one-byte read of it returns within `timeout`: 1 once the server
    // accepted it (the first byte of its HTTP/2 settings), 0 when the server closed it.
    let connect = |timeout: Duration| {
        let mut connection = std::net::TcpStream::connect(&server.address).expect("connect");
        connection.set_read_timeout(Some(timeout)).expect("timeout");
        let read = connection.read(&mut [0; 1]).expect("read, not timed out");
        (connection, read)
    };
    // Three silent connections are held (each accepted, however long the server took under
    // load); a fourth is closed as it arrives.
    let silent: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let (connection, read) = connect(Duration::from_secs(30));
            assert_eq!(read, 1, "a connection within the limit was closed");
            connection
        })
        .collect();
    let (_, read) = connect(Duration::from_secs(30));
    assert_eq!(read, 0, "a fourth connection from one address was kept");
    // The silent ones are closed once the idle timeout passes.
    for mut connection in silent {
        let mut received = Vec::new();
        connection.read_to_end(&mut received).expect("closed");
    }

    // Calls: a burst of twice the rate passes, then RESOURCE_EXHAUSTED naming the caller.
    let mut client = ipam::ipam_client::IpamClient::connect(format!("http://{}", server.address))
        .await
        .expect("connect");
    let mut refused = Vec::new();
    for _ in 0..20 {
        if let Err(status) = client.list_pools(ipam::ListPoolsRequest::default()).await {
            refused.push(status);
        }
    }
    assert!(refused.len() >= 5, "{refused:?}");
    for status in &refused {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("address 127.0.0.1")
                && status.message().contains("--requests-per-second"),
            "{status:?}"
        );
    }
}
