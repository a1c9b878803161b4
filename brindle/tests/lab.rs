//! The namespace lab end to end on the real kernel (direct routing): 3 nodes × 2 pods reach each
//! other — ping and a TCP transfer between every pod pair — and a node that joins later gets
//! routes to everyone and everyone to it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use brindle::lab::{Lab, LabSpec};

/// The workspace's binaries (scripts/test.sh builds them before the tests).
fn binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent().and_then(|deps| deps.parent()).expect("target dir").to_owned()
}

fn spec(nodes: usize) -> LabSpec {
    LabSpec {
        prefix: format!("brdt{}", std::process::id()),
        nodes,
        pods_per_node: 2,
        pool: "10.244.0.0/16".into(),
        binaries: binaries(),
    }
}

/// Sends 256 KiB from pod `from` to pod `to` over TCP and checks every byte arrived.
fn tcp_transfer(lab: &Lab, from: usize, to: usize) {
    const BYTES: usize = 256 * 1024;
    let to_ip = lab.pods[to].ip;
    let (ready, listening) = std::sync::mpsc::channel();
    let server_ns = lab.pods[to].namespace.path();
    let server = std::thread::spawn(move || {
        let file = std::fs::File::open(server_ns).expect("pod netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter pod");
        let listener = std::net::TcpListener::bind((to_ip, 5201)).expect("listen");
        ready.send(()).expect("ready");
        let (mut stream, peer) = listener.accept().expect("accept");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("read");
        (received, peer.ip())
    });
    listening.recv_timeout(Duration::from_secs(5)).expect("server listening");
    let client_ns = lab.pods[from].namespace.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(client_ns).expect("pod netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter pod");
        let mut stream =
            std::net::TcpStream::connect_timeout(&(to_ip, 5201).into(), Duration::from_secs(5)).expect("connect");
        let payload: Vec<u8> = (0..BYTES).map(|i| (i % 251) as u8).collect();
        stream.write_all(&payload).expect("send");
    })
    .join()
    .expect("client");
    let (received, peer) = server.join().expect("server");
    assert_eq!(peer, lab.pods[from].ip, "no NAT between pods: the server sees the client pod's address");
    assert_eq!(received.len(), BYTES, "pod {from} → pod {to}");
    assert!(received.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
}

#[test]
fn three_nodes_full_mesh_ping_and_tcp_then_a_new_node_joins() {
    let mut lab = Lab::up(spec(3)).expect("lab up");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("{error}\n{}", lab.logs());
    }
    let pods = lab.pods.len();
    assert_eq!(pods, 6);
    for from in 0..pods {
        for to in 0..pods {
            if from != to {
                tcp_transfer(&lab, from, to);
            }
        }
    }
    let node = lab.add_node().expect("fourth node");
    lab.add_pod(node).expect("pod on the new node");
    if let Err(error) = lab.wait_full_mesh(Duration::from_secs(30)) {
        panic!("after a node joined: {error}\n{}", lab.logs());
    }
}
