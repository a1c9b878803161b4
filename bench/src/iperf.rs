//! Throughput between two lab pods with Debian's iperf3, and the median the benchmarks report.

use std::io::BufRead;
use std::process::Stdio;

use anyhow::{Context, bail};
use brindle::lab::Namespace;

const PORT: &str = "5201";

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
