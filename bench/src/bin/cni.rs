//! bench-cni: CNI ADD and DEL latency of brindle (brindle-cni → node-agent → ipam-svc) against
//! Debian's reference plugins ptp + host-local, both executed the same way (a process spawned with
//! the CNI environment and the config on stdin, from a thread inside the node namespace, a fresh
//! pod namespace each), sequentially and 100 at once; plus the shim's size and its own overhead
//! (shim ADD minus the same ADD sent straight to the agent socket).
//!
//! Needs root, Debian's containernetworking-plugins, release binaries and the shim as it is
//! installed (static, see `scripts/build-shim.sh`):
//! `cargo build --release --workspace --bins && target/release/bench-cni --shim "$(scripts/build-shim.sh)"`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use brindle::lab::Namespace;
use brindle_bench::cni::{Daemon, PEER_DIR, Plugin, invoke, release_binary};
use brindle_bench::{Latencies, ms, row};
use brindle_proto::agent::v1 as pb;

const SEQUENTIAL: usize = 60;
const CONCURRENT: usize = 100;

/// Sequential ADD then DEL, one fresh pod namespace per iteration.
fn sequential(plugin: &Plugin, prefix: &str) -> anyhow::Result<(Latencies, Latencies)> {
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    let (mut add_wall, mut del_wall) = (Duration::ZERO, Duration::ZERO);
    for i in 0..SEQUENTIAL {
        let pod = Namespace::create(format!("{prefix}-s{i}"))?;
        let container = format!("{prefix}-seq-{i}");
        let add = invoke(plugin, "ADD", &container, &pod.path())?;
        let del = invoke(plugin, "DEL", &container, &pod.path())?;
        add_wall += add;
        del_wall += del;
        adds.push(add);
        dels.push(del);
    }
    Ok((Latencies::new(adds, add_wall), Latencies::new(dels, del_wall)))
}

/// All ADDs at once, then all DELs at once.
fn concurrent(plugin: &Plugin, prefix: &str) -> anyhow::Result<(Latencies, Latencies)> {
    let pods: Vec<Namespace> = (0..CONCURRENT)
        .map(|i| Namespace::create(format!("{prefix}-c{i}")))
        .collect::<Result<_, _>>()?;
    let mut phases = Vec::new();
    for command in ["ADD", "DEL"] {
        let started = Instant::now();
        let samples = std::thread::scope(|scope| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, pod)| {
                    scope.spawn(move || invoke(plugin, command, &format!("{prefix}-con-{i}"), &pod.path()))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow::anyhow!("panicked"))?)
                .collect::<anyhow::Result<Vec<_>>>()
        })?;
        phases.push(Latencies::new(samples, started.elapsed()));
    }
    let del = phases.pop().context("DEL phase")?;
    let add = phases.pop().context("ADD phase")?;
    Ok((add, del))
}

/// ADD straight to the agent socket (what the shim forwards), to isolate the shim's own cost.
async fn direct_adds(socket: &Path, config: &str, prefix: &str) -> anyhow::Result<Latencies> {
    let path = socket.to_owned();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://agent")
        .connect_with_connector(connector)
        .await?;
    let mut client = pb::cni_client::CniClient::new(channel);
    let mut samples = Vec::new();
    let mut wall = Duration::ZERO;
    for i in 0..SEQUENTIAL {
        let pod = Namespace::create(format!("{prefix}-d{i}"))?;
        let invocation = pb::CniInvocation {
            container_id: format!("{prefix}-direct-{i}"),
            netns: pod.path().display().to_string(),
            ifname: "eth0".into(),
            cni_version: "1.0.0".into(),
            network: "bench".into(),
            config_json: config.as_bytes().to_vec(),
            ..Default::default()
        };
        let started = Instant::now();
        let response = client.add(invocation.clone()).await?.into_inner();
        let elapsed = started.elapsed();
        if let Some(error) = response.error {
            bail!("direct ADD: {}", error.msg);
        }
        client.del(invocation).await?;
        wall += elapsed;
        samples.push(elapsed);
    }
    Ok(Latencies::new(samples, wall))
}

/// The shim binary under test: `--shim PATH`.
fn shim_binary() -> anyhow::Result<PathBuf> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--shim"), Some(path)) if Path::new(&path).exists() => Ok(PathBuf::from(path)),
        (Some("--shim"), Some(path)) => bail!("--shim {path}: no such file"),
        _ => {
            bail!("usage: bench-cni --shim PATH — the shim as installed: --shim \"$(scripts/build-shim.sh)\"")
        }
    }
}

fn main() -> anyhow::Result<()> {
    let shim = shim_binary()?;
    let prefix = format!("brdb{}", std::process::id());
    let work = tempfile::Builder::new().prefix("brindle-bench-cni-").tempdir()?;
    let node = Namespace::create(format!("{prefix}-node"))?;
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
    let store = work.path().join("ipam.redb").display().to_string();
    let _ipam = spawn_in_node(
        release_binary("ipam-svc")?,
        vec![
            "--listen".into(),
            "127.0.0.1:7401".into(),
            "--store-path".into(),
            store,
        ],
        "ipam.log",
    )?;
    let socket = work.path().join("cni.sock");
    let _agent = spawn_in_node(
        release_binary("node-agent")?,
        vec![
            "--node-name".into(),
            "bench-node".into(),
            "--cni-socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            work.path().join("state").display().to_string(),
            "--ipam-endpoint".into(),
            "http://127.0.0.1:7401".into(),
        ],
        "agent.log",
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let create_pool = r#"{"pool":{"name":"bench","cidr":"10.97.0.0/16"}}"#;
    while node
        .command(Path::new("grpcurl"))
        .args([
            "-plaintext",
            "-d",
            create_pool,
            "127.0.0.1:7401",
            "brindle.ipam.v1.Ipam/CreatePool",
        ])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        if Instant::now() > deadline {
            bail!("ipam-svc did not start (is grpcurl on PATH?)");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "node-agent did not start; log in {}",
                work.path().join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let brindle_config = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"brindle-cni","agentSocket":"{}","mtu":1450}}"#,
        socket.display()
    );
    let brindle = Plugin {
        label: "brindle",
        binary: shim,
        config: brindle_config.clone(),
    };
    let peer = Plugin {
        label: "ptp+host-local",
        binary: PathBuf::from(PEER_DIR).join("ptp"),
        config: format!(
            r#"{{"cniVersion":"1.0.0","name":"bench-ptp","type":"ptp","mtu":1450,"ipam":{{"type":"host-local","subnet":"10.96.0.0/16","dataDir":"{}"}}}}"#,
            work.path().join("host-local").display()
        ),
    };

    // Plugins are spawned from a thread inside the node namespace, so both create their host
    // interfaces there, and neither pays for `ip netns exec`.
    let node_path = node.path();
    let results = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<_> {
                let file = std::fs::File::open(&node_path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let direct = runtime.block_on(direct_adds(&socket, &brindle_config, &prefix))?;
                let brindle_seq = sequential(&brindle, &format!("{prefix}b"))?;
                let peer_seq = sequential(&peer, &format!("{prefix}p"))?;
                let brindle_con = concurrent(&brindle, &format!("{prefix}b"))?;
                let peer_con = concurrent(&peer, &format!("{prefix}p"))?;
                Ok((direct, brindle_seq, peer_seq, brindle_con, peer_con))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
    })?;
    let (direct, (b_add, b_del), (p_add, p_del), (bc_add, bc_del), (pc_add, pc_del)) = results;

    println!(
        "bench-cni: {SEQUENTIAL} sequential ADD+DEL, then {CONCURRENT} at once; fresh pod namespace each"
    );
    row("brindle ADD (sequential)", &b_add);
    row("ptp+host-local ADD (sequential)", &p_add);
    row("brindle DEL (sequential)", &b_del);
    row("ptp+host-local DEL (sequential)", &p_del);
    row(&format!("brindle ADD ({CONCURRENT} at once)"), &bc_add);
    row(&format!("ptp+host-local ADD ({CONCURRENT} at once)"), &pc_add);
    row(&format!("brindle DEL ({CONCURRENT} at once)"), &bc_del);
    row(&format!("ptp+host-local DEL ({CONCURRENT} at once)"), &pc_del);
    row("agent ADD over its socket (no shim)", &direct);
    let ratio =
        |a: &Latencies, b: &Latencies| a.percentile(50.0).as_secs_f64() / b.percentile(50.0).as_secs_f64();
    println!();
    println!(
        "ADD p50 brindle ÷ peer: {:.2}× (goal ≤ 0.5×)",
        ratio(&b_add, &p_add)
    );
    println!(
        "DEL p50 brindle ÷ peer: {:.2}× (goal ≤ 0.3×)",
        ratio(&b_del, &p_del)
    );
    println!(
        "ADD p99 brindle: {} ms (goal ≤ 50 ms)",
        ms(b_add.percentile(99.0))
    );
    println!(
        "{CONCURRENT} concurrent ADDs: brindle {} ms wall, peer {} ms wall",
        ms(bc_add.wall),
        ms(pc_add.wall)
    );
    let size = std::fs::metadata(&brindle.binary)?.len();
    println!(
        "shim: {:.1} MiB stripped; its own overhead (ADD p50 via shim − via socket): {} ms",
        size as f64 / (1 << 20) as f64,
        ms(b_add.percentile(50.0).saturating_sub(direct.percentile(50.0)))
    );
    Ok(())
}
