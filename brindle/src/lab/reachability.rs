//! What reaches what in the lab: probes between pods, the route a node takes to a pod, the
//! reachability matrix (IPv4 and IPv6) and waiting for a full mesh.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::Lab;

impl Lab {
    /// Whether pod `from` reaches pod `to` (one ping).
    pub fn reaches(&self, from: usize, to: usize) -> bool {
        self.pods[from]
            .namespace
            .succeeds(&["ping", "-c", "1", "-W", "1", &self.pods[to].ip.to_string()])
    }

    /// Whether pod `from` gets a ping answer from pod `to`'s IPv6 address (dual-stack labs).
    pub fn reaches_ipv6(&self, from: usize, to: usize) -> bool {
        self.pods[to].ipv6.is_some_and(|address| {
            self.pods[from]
                .namespace
                .succeeds(&["ping", "-6", "-c", "1", "-W", "1", &address.to_string()])
        })
    }

    /// How node `node` forwards to pod `pod`: the `via … dev …` of `ip route get` inside the node.
    pub fn path(&self, node: usize, pod: usize) -> anyhow::Result<String> {
        let route = self.nodes[node]
            .namespace
            .ip(&["route", "get", &self.pods[pod].ip.to_string()])?;
        let words: Vec<&str> = route.split_whitespace().collect();
        let after = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|at| words.get(at + 1))
                .copied()
        };
        Ok(match (after("via"), after("dev")) {
            (Some(via), Some(dev)) => format!("via {via} dev {dev}"),
            (None, Some(dev)) => format!("dev {dev}"),
            _ => route.trim().to_owned(),
        })
    }

    /// The reachability matrix: `matrix[i][j]` = pod i reaches pod j.
    pub fn matrix(&self) -> Vec<Vec<bool>> {
        self.matrix_of(|from, to| self.reaches(from, to))
    }

    /// The pod-to-pod reachability matrix over IPv6 (dual-stack labs).
    pub fn matrix_ipv6(&self) -> Vec<Vec<bool>> {
        self.matrix_of(|from, to| from == to || self.reaches_ipv6(from, to))
    }

    fn matrix_of(&self, reaches: impl Fn(usize, usize) -> bool) -> Vec<Vec<bool>> {
        (0..self.pods.len())
            .map(|from| (0..self.pods.len()).map(|to| reaches(from, to)).collect())
            .collect()
    }

    /// Waits until every pod reaches every other (routes converge), up to `timeout`.
    pub fn wait_full_mesh(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_full(timeout, "", || self.matrix())
    }

    /// Waits until every pod reaches every other over IPv6 (dual-stack labs; the first packet to
    /// a node's IPv6 address waits for neighbour discovery), up to `timeout`.
    pub fn wait_full_mesh_ipv6(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_full(timeout, " over IPv6", || self.matrix_ipv6())
    }

    fn wait_full(
        &self,
        timeout: Duration,
        over: &str,
        matrix: impl Fn() -> Vec<Vec<bool>>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let matrix = matrix();
            if matrix.iter().all(|row| row.iter().all(|ok| *ok)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "pods do not all reach each other{over}:\n{}",
                    self.render(&matrix)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The matrix as a table (rows: from, columns: to).
    pub fn render(&self, matrix: &[Vec<bool>]) -> String {
        let labels: Vec<String> = self
            .pods
            .iter()
            .enumerate()
            .map(|(index, pod)| format!("{index} {} {}", pod.name, pod.ip))
            .collect();
        let width = labels.iter().map(String::len).max().unwrap_or(0).max(9);
        let mut out = format!("{:width$} ", "from \\ to");
        for index in 0..self.pods.len() {
            out.push_str(&format!("{index:>3}"));
        }
        out.push('\n');
        for (label, row) in labels.iter().zip(matrix) {
            out.push_str(&format!("{label:width$} "));
            for ok in row {
                out.push_str(if *ok { "  ✓" } else { "  ✗" });
            }
            out.push('\n');
        }
        out
    }
}
