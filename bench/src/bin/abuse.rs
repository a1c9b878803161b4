//! bench-abuse: CNI ADD latency (brindle-cni → node-agent → ipam-svc over mTLS) while another host
//! abuses ipam-svc, against the same ADDs on a quiet server: 1,000 connections held open without a
//! byte (reopened as the server closes them), connections that send garbage instead of a TLS
//! handshake, and a client holding a valid node certificate that sends 5 MiB messages and
//! undecodable ones as fast as it can. Prints both phases' percentiles, the p99 ratio (goal ≤ 2×),
//! what the abuser saw and the server's per-caller limit counters.
//!
//! Needs root and release binaries:
//! `cargo build --release --workspace --bins && target/release/bench-abuse --shim "$(scripts/build-shim.sh)"`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle::certs::{Issued, Pki};
use brindle::lab::{Namespace, Underlay};
use brindle_bench::cni::{Daemon, Plugin, invoke, release_binary};
use brindle_bench::{Latencies, ms, row};
use brindle_grpc::{ClientTlsArgs, tls};
use brindle_proto::ipam::v1 as ipam;
use prost::bytes::{Buf, BufMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// ADD+DEL pairs per phase.
const PODS: usize = 500;
/// Connections the abuser keeps open without sending anything.
const IDLE_CONNECTIONS: usize = 1_000;
/// Concurrent callers of each bad-message kind.
const BAD_CALLERS: usize = 16;
/// Size of an oversized message (the servers decode at most 4 MiB).
const OVERSIZED: usize = 5 << 20;
const SERVER_IP: &str = "10.98.0.1";
const ABUSER_IP: &str = "10.98.0.2";
const PORT: u16 = 7401;

/// Sends and receives raw bytes as gRPC messages (the abuser's malformed and oversized ones).
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

/// What the abuser saw, by kind.
#[derive(Debug, Default)]
struct Seen {
    /// Connections the server closed (idle or garbage ones).
    closed: AtomicU64,
    /// Calls answered, by kind and status code.
    calls: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl Seen {
    fn call(&self, kind: &'static str, code: String) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((kind, code))
            .or_default() += 1;
    }
}

/// Holds one connection open without sending a byte until the server closes it, then opens the
/// next a second later (a thousand idle connections, not a connection flood), until `stop`.
async fn idle_connection(seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut stream) = tokio::net::TcpStream::connect((SERVER_IP, PORT)).await {
            let mut sink = [0; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            seen.closed.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Sends garbage where a TLS handshake belongs, until `stop`.
async fn garbage_connection(seen: Arc<Seen>, stop: Arc<AtomicBool>) {
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = tokio::net::TcpStream::connect((SERVER_IP, PORT)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.write_all(&garbage).await;
        let mut sink = [0; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        seen.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Calls `path` with `body` over an authenticated channel as fast as answers come, until `stop`.
async fn bad_calls(
    channel: tonic::transport::Channel,
    kind: &'static str,
    path: &'static str,
    body: Arc<Vec<u8>>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) {
    let mut client = tonic::client::Grpc::new(channel);
    while !stop.load(Ordering::Relaxed) {
        if client.ready().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let answer = client
            .unary(
                tonic::Request::new(body.as_ref().clone()),
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await;
        seen.call(
            kind,
            match answer {
                Ok(_) => "Ok".to_owned(),
                Err(status) => format!("{:?}", status.code()),
            },
        );
    }
}

/// The abuser's process (`--abuse-with CA CERT KEY`, started niced in the abuser's namespace, as
/// another host would not share the server's CPUs): abuses until its standard input closes, then
/// prints what it saw.
fn abuser_main(files: &[String]) -> anyhow::Result<()> {
    let [ca, cert, key] = files else {
        bail!("--abuse-with CA CERT KEY");
    };
    let abuser = ClientTlsArgs {
        tls_ca: Some(ca.into()),
        tls_cert: Some(cert.into()),
        tls_key: Some(key.into()),
        tls_server_name: None,
    };
    let (seen, stop) = (Arc::new(Seen::default()), Arc::new(AtomicBool::new(false)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(start_abuse(abuser, Arc::clone(&seen), Arc::clone(&stop)))?;
    // Until the benchmark closes our standard input.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    stop.store(true, Ordering::Relaxed);
    println!(
        "{} connections closed by the server; calls by answer: {:?}",
        seen.closed.load(Ordering::Relaxed),
        seen.calls.lock().unwrap_or_else(|p| p.into_inner())
    );
    std::io::stdout().flush()?;
    // The abuse tasks are not waited for (some wait on connections the server holds).
    std::process::exit(0)
}

/// Starts every abuse task on the current runtime; they run until `stop`.
async fn start_abuse(abuser: ClientTlsArgs, seen: Arc<Seen>, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let tls_config = abuser.config()?;
    let channel = tls::endpoint(
        &format!("{SERVER_IP}:{PORT}"),
        tls_config.as_ref(),
        Duration::from_secs(5),
    )?
    .connect()
    .await?;
    for _ in 0..IDLE_CONNECTIONS {
        tokio::spawn(idle_connection(Arc::clone(&seen), Arc::clone(&stop)));
    }
    for _ in 0..BAD_CALLERS {
        tokio::spawn(garbage_connection(Arc::clone(&seen), Arc::clone(&stop)));
    }
    let oversized = Arc::new(vec![0x0a; OVERSIZED]);
    let malformed = Arc::new(vec![0xff; 64]);
    for _ in 0..BAD_CALLERS {
        tokio::spawn(bad_calls(
            channel.clone(),
            "oversized",
            "/brindle.ipam.v1.Ipam/CreatePool",
            Arc::clone(&oversized),
            Arc::clone(&seen),
            Arc::clone(&stop),
        ));
        tokio::spawn(bad_calls(
            channel.clone(),
            "malformed",
            "/brindle.ipam.v1.Ipam/ListPools",
            Arc::clone(&malformed),
            Arc::clone(&seen),
            Arc::clone(&stop),
        ));
    }
    Ok(())
}

/// Sequential ADD then DEL of `PODS` pods, fresh namespace each; the ADD latencies.
fn adds(plugin: &Plugin, prefix: &str) -> anyhow::Result<Latencies> {
    let (mut samples, mut wall) = (Vec::new(), Duration::ZERO);
    for i in 0..PODS {
        let pod = Namespace::create(format!("{prefix}{i}"))?;
        let container = format!("{prefix}-{i}");
        let add = invoke(plugin, "ADD", &container, &pod.path())?;
        invoke(plugin, "DEL", &container, &pod.path())?;
        wall += add;
        samples.push(add);
    }
    Ok(Latencies::new(samples, wall))
}

/// ipam-svc's per-caller limit counters (`brindle_limited_total`), read from inside its namespace.
fn limit_counters() -> String {
    let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:9401") else {
        return "metrics unreachable".to_owned();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with("brindle_limited_total"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn client_tls(pki: &Pki, issued: &Issued) -> ClientTlsArgs {
    ClientTlsArgs {
        tls_ca: Some(pki.ca()),
        tls_cert: Some(issued.cert.clone()),
        tls_key: Some(issued.key.clone()),
        tls_server_name: None,
    }
}

fn tls_flags(pki: &Pki, issued: &Issued) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        pki.ca().display().to_string(),
        "--tls-cert".into(),
        issued.cert.display().to_string(),
        "--tls-key".into(),
        issued.key.display().to_string(),
    ]
}

/// The shim binary under test: `--shim PATH`.
fn shim_binary() -> anyhow::Result<PathBuf> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--shim"), Some(path)) if Path::new(&path).exists() => Ok(PathBuf::from(path)),
        _ => bail!(
            "usage: bench-abuse --shim PATH — the shim as installed: --shim \"$(scripts/build-shim.sh)\""
        ),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--abuse-with") {
        return abuser_main(&args[2..]);
    }
    let shim = shim_binary()?;
    let prefix = format!("brda{}", std::process::id());
    let work = tempfile::Builder::new()
        .prefix("brindle-bench-abuse-")
        .tempdir()?;
    let underlay = Underlay::create(format!("{prefix}-u"), None)?;
    let node = Namespace::create(format!("{prefix}-node"))?;
    let outside = Namespace::create(format!("{prefix}-out"))?;
    underlay.plug(&node, "p-node", "eth0", &format!("{SERVER_IP}/24"))?;
    underlay.plug(&outside, "p-out", "eth0", &format!("{ABUSER_IP}/24"))?;
    for namespace in [&node, &outside] {
        namespace.ip(&["link", "set", "lo", "up"])?;
    }

    let pki = Pki::open_or_create(&work.path().join("pki"))?;
    let server = pki.server(&[SERVER_IP.to_owned()])?;
    let (agent, abuser, admin) = (pki.node("bench-node")?, pki.node("abuser")?, pki.admin("bench")?);
    let spawn_in_node = |program: PathBuf, args: Vec<String>, log: &str| -> anyhow::Result<Daemon> {
        let log = std::fs::File::create(work.path().join(log))?;
        Ok(Daemon(
            node.command(&program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        ))
    };
    let endpoint = format!("https://{SERVER_IP}:{PORT}");
    let _ipam = spawn_in_node(
        release_binary("ipam-svc")?,
        vec![
            "--listen".into(),
            format!("{SERVER_IP}:{PORT}"),
            "--metrics-listen".into(),
            "127.0.0.1:9401".into(),
            "--store-path".into(),
            work.path().join("ipam.redb").display().to_string(),
            "--tls-cert".into(),
            server.cert.display().to_string(),
            "--tls-key".into(),
            server.key.display().to_string(),
            "--tls-client-ca".into(),
            pki.ca().display().to_string(),
        ],
        "ipam.log",
    )?;
    let socket = work.path().join("cni.sock");
    let mut agent_args = vec![
        "--node-name".into(),
        "bench-node".into(),
        "--cni-socket".into(),
        socket.display().to_string(),
        "--state-dir".into(),
        work.path().join("state").display().to_string(),
        "--ipam-endpoint".into(),
        endpoint.clone(),
        "--metrics-listen".into(),
        "127.0.0.1:9402".into(),
    ];
    agent_args.extend(tls_flags(&pki, &agent));
    let _agent = spawn_in_node(release_binary("node-agent")?, agent_args, "agent.log")?;

    // The pool, by the administrator, once ipam-svc answers.
    let admin_tls = client_tls(&pki, &admin);
    let pool_endpoint = endpoint.clone();
    node.block_on(move || async move {
        let config = admin_tls.config()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let created = async {
                let channel = tls::endpoint(&pool_endpoint, config.as_ref(), Duration::from_secs(2))?
                    .connect()
                    .await?;
                ipam::ipam_client::IpamClient::new(channel)
                    .create_pool(ipam::CreatePoolRequest {
                        pool: Some(ipam::IpPool {
                            name: "bench".into(),
                            cidr: "10.97.0.0/16".into(),
                            ..Default::default()
                        }),
                    })
                    .await?;
                anyhow::Ok(())
            }
            .await;
            match created {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() > deadline => return Err(error.context("creating the pool")),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "node-agent did not start; log in {}",
                work.path().join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let plugin = Plugin {
        label: "brindle",
        binary: shim,
        config: format!(
            r#"{{"cniVersion":"1.0.0","name":"bench","type":"brindle-cni","agentSocket":"{}","mtu":1450}}"#,
            socket.display()
        ),
    };

    let quiet = node.spawn({
        let (plugin, prefix) = (plugin.clone(), format!("{prefix}q"));
        move || adds(&plugin, &prefix)
    });
    let quiet = quiet
        .join()
        .map_err(|_| anyhow::anyhow!("quiet phase panicked"))??;

    let mut abusing = outside
        .command(Path::new("nice"))
        .args(["-n", "19"])
        .arg(std::env::current_exe()?)
        .arg("--abuse-with")
        .args([pki.ca(), abuser.cert.clone(), abuser.key.clone()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the abuser")?;
    // Let the connections pile up and the bad calls get going.
    std::thread::sleep(Duration::from_secs(3));
    let attacked = node.spawn({
        let (plugin, prefix) = (plugin.clone(), format!("{prefix}a"));
        move || {
            let latencies = adds(&plugin, &prefix)?;
            Ok((latencies, limit_counters()))
        }
    });
    let attacked = attacked
        .join()
        .map_err(|_| anyhow::anyhow!("attacked phase panicked"));
    drop(abusing.stdin.take());
    let seen = abusing.wait_with_output().context("the abuser")?;
    let (attacked, counters) = attacked??;

    println!(
        "bench-abuse: {PODS} sequential CNI ADD+DEL (ADD measured) through node-agent → ipam-svc (mTLS), quiet, then while another host abuses ipam-svc"
    );
    row("ADD, quiet server", &quiet);
    row("ADD, server under abuse", &attacked);
    println!();
    println!(
        "ADD p99 under abuse ÷ quiet: {:.2}× (goal ≤ 2×); p50 {:.2}×",
        attacked.percentile(99.0).as_secs_f64() / quiet.percentile(99.0).as_secs_f64(),
        attacked.percentile(50.0).as_secs_f64() / quiet.percentile(50.0).as_secs_f64()
    );
    println!(
        "abuse: {IDLE_CONNECTIONS} silent connections held (reopened when closed), {BAD_CALLERS} garbage senders, {BAD_CALLERS}+{BAD_CALLERS} callers with a node certificate sending {} MiB and undecodable messages",
        OVERSIZED >> 20
    );
    println!("abuser saw: {}", String::from_utf8_lossy(&seen.stdout).trim());
    println!("server's limit counters:\n{counters}");
    println!("(quiet ADD p50 {} ms)", ms(quiet.percentile(50.0)));
    Ok(())
}
