//! Throughput between two lab pods with Debian's iperf3, the flags of the benchmarks that
//! measure it, and the median they report.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use brindle::lab::Namespace;

const PORT: &str = "5201";

/// The flags of the iperf3 benchmarks: where the binaries are, seconds per run, rounds.
pub struct IperfArgs {
    /// Directory of the `brindle`, `node-agent` and `brindle-cni` binaries (default: the
    /// benchmark's own).
    pub binaries: PathBuf,
    /// Seconds of each iperf3 run.
    pub seconds: u32,
    /// Rounds (each a run of every path measured).
    pub rounds: usize,
}

impl IperfArgs {
    /// `--binaries DIR --seconds N --rounds N` from the command line (defaults: 5 s, 5 rounds).
    pub fn parse() -> anyhow::Result<Self> {
        let mut parsed = Self {
            binaries: std::env::current_exe()?
                .parent()
                .context("the benchmark's directory")?
                .to_owned(),
            seconds: 5,
            rounds: 5,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--binaries" => parsed.binaries = value.into(),
                "--seconds" => parsed.seconds = value.parse().context("--seconds")?,
                "--rounds" => {
                    parsed.rounds = value
                        .parse()
                        .ok()
                        .filter(|r| *r > 0)
                        .context("--rounds: at least 1")?
                }
                other => bail!("unknown flag {other} (--binaries DIR, --seconds N, --rounds N)"),
            }
        }
        Ok(parsed)
    }
}

/// One iperf3 run from `client` to `server_ip` inside `server`: received bits per second.
pub fn iperf3(client: &Namespace, server: &Namespace, server_ip: &str, seconds: u32) -> anyhow::Result<f64> {
    let mut listener = server
        .command(std::path::Path::new("iperf3"))
        .args(["-s", "-1", "--forceflush", "-B", server_ip, "-p", PORT])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the iperf3 server (Debian package iperf3)")?;
    // The client starts once the server says it listens.
    let mut lines = std::io::BufReader::new(listener.stdout.take().context("server stdout")?).lines();
    loop {
        let line = lines
            .next()
            .with_context(|| format!("the iperf3 server on {server_ip} exited before listening"))??;
        if line.contains("Server listening") {
            break;
        }
    }
    let out = client
        .command(std::path::Path::new("iperf3"))
        .args(["-c", server_ip, "-p", PORT, "-J", "-t", &seconds.to_string()])
        .output();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        // A one-off server whose client never came waits forever.
        let _ = listener.kill();
    }
    // Drain the server's report so it can exit.
    lines.for_each(drop);
    let _ = listener.wait();
    let out = out.context("running the iperf3 client")?;
    let report = out.stdout;
    let parsed: serde_json::Value = serde_json::from_slice(&report).context("iperf3 -J output")?;
    if let Some(error) = parsed["error"].as_str() {
        bail!("iperf3 to {server_ip}: {error}");
    }
    parsed["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report without end.sum_received.bits_per_second")
}

/// The middle value (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
