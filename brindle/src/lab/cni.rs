//! Pods in the lab: the network configuration each node's shim reads, and CNI commands (ADD, DEL,
//! GC) executed through the real shim inside a node's namespace, as containerd would.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::netns::Namespace;
use super::{Lab, LabNode, LabPod, NETWORK, Workload};

impl Lab {
    /// The CNI network configuration of pods on `node`.
    fn network_config(&self, node: &LabNode) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "brindle-cni",
            "agentSocket": node.socket,
            "ipam": {"assign_ipv4": "true", "assign_ipv6": if self.spec.dual_stack { "true" } else { "false" }},
        })
    }

    /// The CNI network configuration for pods of node `node` (for running the shim directly: it
    /// needs only the agent's socket, not the node's namespace).
    pub fn cni_config(&self, node: usize) -> anyhow::Result<String> {
        let node = self.nodes.get(node).context("no such node")?;
        Ok(self.network_config(node).to_string())
    }

    /// Runs the CNI shim of node `node` as a container runtime would: `command` (ADD, DEL,
    /// CHECK) for interface eth0 of `container` in `netns`, with `workload`'s identity, labels and
    /// ports. Returns whether it succeeded and what it printed.
    pub fn cni(
        &self,
        node: usize,
        command: &str,
        container: &str,
        netns: &Path,
        workload: &Workload,
    ) -> anyhow::Result<(bool, String)> {
        let node = self.nodes.get(node).context("no such node")?;
        let labels: Vec<serde_json::Value> = workload
            .labels
            .iter()
            .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
            .collect();
        let ports: Vec<serde_json::Value> = workload
            .ports
            .iter()
            .map(|(name, protocol, port)| serde_json::json!({"name": name, "protocol": protocol, "port": port}))
            .collect();
        let mut config = self.network_config(node);
        if !workload.ipv4_pools.is_empty() {
            config["ipam"]["ipv4_pools"] = serde_json::json!(workload.ipv4_pools);
        }
        config["args"] = serde_json::json!({"cni": {"labels": labels}, "brindle": {"ports": ports}});
        let mut args = vec!["IgnoreUnknown=1".to_owned()];
        if !workload.namespace.is_empty() {
            args.push(format!("K8S_POD_NAMESPACE={}", workload.namespace));
        }
        if !workload.pod.is_empty() {
            args.push(format!("K8S_POD_NAME={}", workload.pod));
        }
        let netns = netns.to_string_lossy();
        let environment = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", &args.join(";")),
        ];
        self.exec_shim(node, &environment, &config)
    }

    /// CNI GC on node `node`: every attachment of the lab's network other than eth0 of the
    /// `valid` containers is freed (what kubelet's runtime does for pods it no longer has).
    pub fn gc(&self, node: usize, valid: &[&str]) -> anyhow::Result<()> {
        let node = self.nodes.get(node).context("no such node")?;
        let mut config = self.network_config(node);
        config["cni.dev/valid-attachments"] = valid
            .iter()
            .map(|container| serde_json::json!({"containerID": container, "ifname": "eth0"}))
            .collect();
        let (ok, printed) = self.exec_shim(node, &[("CNI_COMMAND", "GC")], &config)?;
        anyhow::ensure!(ok, "CNI GC on {} failed: {printed}", node.name);
        Ok(())
    }

    fn exec_shim(
        &self,
        node: &LabNode,
        environment: &[(&str, &str)],
        config: &serde_json::Value,
    ) -> anyhow::Result<(bool, String)> {
        let config = config.to_string();
        let mut child = node
            .namespace
            .command(&self.spec.binaries.join("brindle-cni"))
            .envs(environment.iter().copied())
            .env("CNI_PATH", &self.spec.binaries)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running brindle-cni")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(config.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// The MTU of pod `pod`'s eth0.
    pub fn pod_mtu(&self, pod: usize) -> anyhow::Result<u32> {
        let pod = self.pods.get(pod).context("no such pod")?;
        let shown = pod.namespace.ip(&["-o", "link", "show", "dev", "eth0"])?;
        shown
            .split_whitespace()
            .skip_while(|word| *word != "mtu")
            .nth(1)
            .and_then(|mtu| mtu.parse().ok())
            .with_context(|| format!("no mtu in {shown:?}"))
    }

    /// Adds a pod on node `node` through the CNI shim, as containerd would. The pod carries the label `node: <node name>`.
    pub fn add_pod(&mut self, node: usize) -> anyhow::Result<usize> {
        let host = self.nodes.get(node).context("no such node")?;
        let workload = Workload {
            labels: vec![("node".to_owned(), host.name.clone())],
            ..Workload::default()
        };
        self.add_workload(node, &workload)
    }

    /// Removes pod `pod` through the CNI shim (DEL, as the runtime does when a pod goes) and
    /// deletes its namespace; later pods' indices shift down by one.
    pub fn remove_pod(&mut self, pod: usize) -> anyhow::Result<()> {
        let placed = self.pods.get(pod).context("no such pod")?;
        let (ok, result) = self.cni(
            placed.node,
            "DEL",
            &placed.name,
            &placed.namespace.path(),
            &Workload::default(),
        )?;
        if !ok {
            bail!("CNI DEL of {}: {result}", placed.name);
        }
        self.pods.remove(pod);
        Ok(())
    }

    /// Adds a pod with a Kubernetes identity, labels and named ports on node `node` through the
    /// CNI shim, as the CRI path of containerd would.
    pub fn add_workload(&mut self, node: usize, workload: &Workload) -> anyhow::Result<usize> {
        let host = self.nodes.get(node).context("no such node")?;
        let name = format!(
            "{}-p{}",
            host.name,
            self.pods.iter().filter(|p| p.node == node).count() + 1
        );
        let namespace = Namespace::create(name.clone())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let result = loop {
            let (ok, result) = self.cni(node, "ADD", &name, &namespace.path(), workload)?;
            if ok {
                break result;
            }
            // 11: the agent is up but its control plane is not reachable yet.
            if Instant::now() > deadline || !result.contains("\"code\":11") {
                bail!("CNI ADD of {name} failed: {result}");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let parsed: serde_json::Value = serde_json::from_str(&result).context("CNI result")?;
        let address = parsed["ips"][0]["address"]
            .as_str()
            .context("CNI result without an IP")?;
        let ip = address
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .context("pod IP")?;
        let ipv6 = parsed["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
            .next();
        let namespace_name = if workload.namespace.is_empty() {
            "default"
        } else {
            &workload.namespace
        };
        let pod_name = if workload.pod.is_empty() {
            &name
        } else {
            &workload.pod
        };
        let workload = format!("{namespace_name}/{pod_name}");
        self.pods.push(LabPod {
            name,
            node,
            namespace,
            ip,
            ipv6,
            workload,
        });
        Ok(self.pods.len() - 1)
    }
}
