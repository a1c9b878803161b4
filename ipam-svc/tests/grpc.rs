//! `ipam-svc` as a process: the real grpcurl lists, describes and calls it; bad input gets the
//! right status code naming the field.

mod support;

use std::process::Command;

use brindle_grpc_server::testing::grpcurl;
use brindle_proto::ipam::v1 as pb;
use support::IpamProcess;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_assigns_and_releases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store.redb");
    let service = IpamProcess::start(
        &["--store-path", store.to_str().expect("path")],
        &dir.path().join("ipam.log"),
    )
    .await;
    let addr = service.address.as_str();
    let (ok, list) = grpcurl(&["-plaintext", addr, "list"]);
    assert!(ok && list.lines().any(|l| l == "brindle.ipam.v1.Ipam"), "{list}");
    let (ok, describe) = grpcurl(&["-plaintext", addr, "describe", "brindle.ipam.v1.Ipam"]);
    assert!(
        ok && describe.contains("rpc AutoAssign") && describe.contains("rpc ReleaseByHandle"),
        "{describe}"
    );
    let (ok, health) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"brindle.ipam.v1.Ipam"}"#,
        addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok && health.contains("SERVING"), "{health}");

    let (ok, pool) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"pool":{"name":"default","cidr":"10.244.0.0/16"}}"#,
        addr,
        "brindle.ipam.v1.Ipam/CreatePool",
    ]);
    assert!(ok && pool.contains("\"blockSize\": 26"), "{pool}");
    let (ok, assigned) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"handleId":"k8s-pod-network.abc123","node":"node-1","numIpv4":1,"attributes":{"namespace":"default","pod":"web"}}"#,
        addr,
        "brindle.ipam.v1.Ipam/AutoAssign",
    ]);
    assert!(ok && assigned.contains("10.244."), "{assigned}");
    let (ok, released) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"handleId":"k8s-pod-network.abc123"}"#,
        addr,
        "brindle.ipam.v1.Ipam/ReleaseByHandle",
    ]);
    assert!(ok && released.contains("10.244."), "{released}");
    let (ok, check) = grpcurl(&["-plaintext", "-d", "{}", addr, "brindle.ipam.v1.Ipam/Check"]);
    assert!(ok && check.contains("\"clean\": true"), "{check}");
}

#[test]
fn default_port_is_7401_on_loopback_without_tls() {
    let out = Command::new(env!("CARGO_BIN_EXE_ipam-svc"))
        .arg("--help")
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("127.0.0.1:7401 without TLS, 0.0.0.0:7401 with it"),
        "{help}"
    );
}

fn pool(name: &str, cidr: &str, block_size: u32) -> pb::CreatePoolRequest {
    pb::CreatePoolRequest {
        pool: Some(pb::IpPool {
            name: name.into(),
            cidr: cidr.into(),
            block_size,
            ..Default::default()
        }),
    }
}

fn assign(handle: &str, node: &str, ipv4: u32, ipv6: u32) -> pb::AutoAssignRequest {
    pb::AutoAssignRequest {
        handle_id: handle.into(),
        node: node.into(),
        num_ipv4: ipv4,
        num_ipv6: ipv6,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store.redb");
    let service = IpamProcess::start(
        &["--store-path", store.to_str().expect("path")],
        &dir.path().join("ipam.log"),
    )
    .await;
    let mut client = service.client().await.expect("client");
    client
        .create_pool(pool("small", "10.9.0.0/30", 30))
        .await
        .expect("tiny pool");
    client
        .create_pool(pool("v6", "fd00:9::/120", 122))
        .await
        .expect("v6 pool");

    let pool_cases = [
        (
            "missing pool",
            pb::CreatePoolRequest { pool: None },
            Code::InvalidArgument,
            "pool",
        ),
        (
            "malformed CIDR",
            pool("a", "banana", 0),
            Code::InvalidArgument,
            "pool.cidr",
        ),
        (
            "prefix out of range",
            pool("a", "10.0.0.0/33", 0),
            Code::InvalidArgument,
            "pool.cidr",
        ),
        (
            "host bits set",
            pool("a", "10.1.0.1/16", 0),
            Code::InvalidArgument,
            "did you mean 10.1.0.0/16",
        ),
        (
            "link-local",
            pool("a", "169.254.0.0/16", 0),
            Code::InvalidArgument,
            "link-local",
        ),
        (
            "IPv6 link-local",
            pool("a", "fe80::/64", 0),
            Code::InvalidArgument,
            "link-local",
        ),
        (
            "block too big",
            pool("a", "10.1.0.0/16", 19),
            Code::InvalidArgument,
            "pool.block_size",
        ),
        (
            "wrong family block",
            pool("a", "fd00:1::/64", 26),
            Code::InvalidArgument,
            "pool.block_size",
        ),
        (
            "pool smaller than a block",
            pool("a", "10.1.0.0/28", 26),
            Code::InvalidArgument,
            "pool.cidr",
        ),
        (
            "overlap",
            pool("a", "10.9.0.0/16", 26),
            Code::InvalidArgument,
            "overlaps pool \"small\"",
        ),
        (
            "bad name",
            pool("a/b", "10.2.0.0/16", 26),
            Code::InvalidArgument,
            "pool.name",
        ),
        (
            "duplicate name",
            pool("small", "10.3.0.0/16", 26),
            Code::AlreadyExists,
            "small",
        ),
        (
            "unparsable node selector",
            pb::CreatePoolRequest {
                pool: Some(pb::IpPool {
                    name: "zoned".into(),
                    cidr: "10.4.0.0/16".into(),
                    node_selector: "zone ==".into(),
                    ..Default::default()
                }),
            },
            Code::InvalidArgument,
            "pool.node_selector",
        ),
    ];
    for (case, request, code, text) in pool_cases {
        let status = client.create_pool(request).await.expect_err(case);
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert!(
            status.message().contains(text),
            "{case}: {:?} should mention {text:?}",
            status.message()
        );
    }

    let mut wrong_family = assign("net.w", "n1", 1, 0);
    wrong_family.ipv4_pools = vec!["v6".into()];
    let mut unknown_pool = assign("net.u", "n1", 1, 0);
    unknown_pool.ipv4_pools = vec!["nope".into()];
    let assign_cases = [
        (
            "empty handle",
            assign("", "n1", 1, 0),
            Code::InvalidArgument,
            "handle_id",
        ),
        (
            "handle with slash",
            assign("a/b", "n1", 1, 0),
            Code::InvalidArgument,
            "handle_id",
        ),
        (
            "zero counts",
            assign("net.z", "n1", 0, 0),
            Code::InvalidArgument,
            "num_ipv4",
        ),
        (
            "too many",
            assign("net.m", "n1", 100_000, 0),
            Code::InvalidArgument,
            "num_ipv4",
        ),
        (
            "empty node",
            assign("net.n", "", 1, 0),
            Code::InvalidArgument,
            "node",
        ),
        (
            "wrong family pool",
            wrong_family,
            Code::InvalidArgument,
            "ipv4_pools",
        ),
        ("unknown pool", unknown_pool, Code::InvalidArgument, "ipv4_pools"),
        (
            "exhausted",
            assign("net.big", "n1", 5, 0),
            Code::ResourceExhausted,
            "pools tried: [small]",
        ),
    ];
    for (case, request, code, text) in assign_cases {
        let status = client.auto_assign(request).await.expect_err(case);
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert!(
            status.message().contains(text),
            "{case}: {:?} should mention {text:?}",
            status.message()
        );
    }

    let specific = |ip: &str| pb::AssignIpRequest {
        handle_id: "net.s".into(),
        ip: ip.into(),
        node: "n1".into(),
        ..Default::default()
    };
    let status = client
        .assign_ip(specific("1.2.3"))
        .await
        .expect_err("malformed IP");
    assert_eq!(
        (status.code(), status.message().starts_with("ip:")),
        (Code::InvalidArgument, true),
        "{status:?}"
    );
    let status = client
        .assign_ip(specific("192.0.2.1"))
        .await
        .expect_err("outside pools");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not in any pool"));
    let release = pb::ReleaseIpsRequest {
        ips: vec![pb::IpRelease {
            ip: "x".into(),
            sequence: 1,
        }],
    };
    let status = client.release_ips(release).await.expect_err("bad release");
    assert!(status.message().contains("ips[0].ip"), "{status:?}");
    let status = client
        .get_pool(pb::GetPoolRequest { name: "nope".into() })
        .await
        .expect_err("unknown pool");
    assert_eq!(status.code(), Code::NotFound);

    // Nothing above changed state.
    let report = client
        .check(pb::CheckRequest::default())
        .await
        .expect("check")
        .into_inner();
    assert!(report.clean && report.allocations == 0, "{report:?}");
    let pools = client
        .list_pools(pb::ListPoolsRequest {})
        .await
        .expect("list")
        .into_inner()
        .pools;
    assert_eq!(pools.len(), 2);
}
