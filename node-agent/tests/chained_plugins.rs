//! The shipped `deploy/brindle.conflist` — brindle-cni, then Debian's `portmap` and `bandwidth` —
//! run through a chain runner that follows libcni's rules (each plugin gets the previous one's
//! result as `prevResult`; capabilities it declares get the runtime's values in `runtimeConfig`;
//! DEL runs the plugins in reverse order with the cached result), against a real agent, inside
//! the node's namespace. containerd's `ctr run --cni` cannot carry port mappings or bandwidth,
//! hence the runner. A host port reaches busybox httpd in the pod, a bandwidth limit caps an
//! iperf3 stream, and after DEL no DNAT rule, tracked connection, qdisc or ifb device is left.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use node_agent::dataplane::{Conntrack, NetlinkConntrack};
use serde_json::{Value, json};
use support::Netns;
use support::node::{Node, Pod, shim_binary};

/// Where Debian installs the reference plugins.
const DEBIAN_PLUGINS: &str = "/usr/lib/cni";
/// The node's uplink address (a client namespace sits behind it).
const NODE_ADDRESS: &str = "192.0.2.1";
const CLIENT_ADDRESS: &str = "192.0.2.2";
/// The limit on traffic into the pod, bits per second.
const INGRESS_RATE: u64 = 10_000_000;

/// The shipped configuration, pointed at this node's agent.
fn conflist(node: &Node) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/brindle.conflist");
    let mut list: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("deploy/brindle.conflist")).expect("JSON");
    list["plugins"][0]["agentSocket"] = json!(node.socket().display().to_string());
    list
}

/// A plugin's executable: the shim under test for brindle-cni, Debian's for the others.
fn plugin_binary(kind: &str) -> PathBuf {
    if kind == "brindle-cni" {
        shim_binary()
    } else {
        PathBuf::from(DEBIAN_PLUGINS).join(kind)
    }
}

/// libcni's chain of one network list.
struct Chain {
    list: Value,
    node: String,
}

impl Chain {
    /// The configuration one plugin receives: its own keys, the list's name and version, the
    /// previous result, and the runtime's values of the capabilities it declares.
    fn plugin_config(&self, plugin: &Value, previous: Option<&Value>, runtime: &Value) -> Value {
        let mut config = plugin.clone();
        config["name"] = self.list["name"].clone();
        config["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(previous) = previous {
            config["prevResult"] = previous.clone();
        }
        let mut runtime_config = serde_json::Map::new();
        if let Some(capabilities) = plugin["capabilities"].as_object() {
            for (capability, enabled) in capabilities {
                if enabled.as_bool() == Some(true)
                    && let Some(value) = runtime.get(capability)
                {
                    runtime_config.insert(capability.clone(), value.clone());
                }
            }
        }
        if !runtime_config.is_empty() {
            config["runtimeConfig"] = Value::Object(runtime_config);
        }
        config
    }

    /// Runs one plugin inside the node's namespace; its output, or the error it printed.
    fn exec(&self, plugin: &Value, config: &Value, env: &[(&'static str, String)]) -> Result<Value, String> {
        let kind = plugin["type"].as_str().expect("type");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.node])
            .arg(plugin_binary(kind))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("CNI_PATH", DEBIAN_PLUGINS)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run a plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(config.to_string().as_bytes())
            .expect("config");
        let out = child.wait_with_output().expect("plugin");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "{kind}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(serde_json::from_str(&stdout).unwrap_or(Value::Null))
    }

    /// ADD through every plugin in order; the final result (what libcni caches).
    fn add(&self, env: &[(&'static str, String)], runtime: &Value) -> Result<Value, String> {
        let mut result: Option<Value> = None;
        for plugin in self.list["plugins"].as_array().expect("plugins") {
            let config = self.plugin_config(plugin, result.as_ref(), runtime);
            result = Some(self.exec(plugin, &config, env)?);
        }
        result.ok_or_else(|| "no plugins".to_owned())
    }

    /// DEL through every plugin in reverse order, each with the cached result.
    fn del(&self, env: &[(&'static str, String)], runtime: &Value, cached: &Value) -> Result<(), String> {
        for plugin in self.list["plugins"].as_array().expect("plugins").iter().rev() {
            let config = self.plugin_config(plugin, Some(cached), runtime);
            self.exec(plugin, &config, env)?;
        }
        Ok(())
    }
}

/// A background process inside a namespace, killed when dropped.
struct Background(Child);

impl Background {
    fn start(netns: &Netns, args: &[&str]) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a server");
        Self(child)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many tracked connections of the node touch `ip` (read inside the node's namespace).
fn tracked_flows(node: &Node, ip: &str) -> usize {
    let addresses = std::collections::BTreeSet::from([ip.parse().expect("an address")]);
    let (count, counted) = std::sync::mpsc::channel();
    node.netns.run(move || async move {
        let connections = NetlinkConntrack.connections().expect("conntrack dump");
        let touching = connections.iter().filter(|c| c.touches(&addresses)).count();
        count.send(touching).expect("report");
    });
    counted.recv().expect("a count")
}

/// A client namespace wired to the node's uplink, routing the pool via the node.
fn client_behind(node: &Node) -> Netns {
    let client = Netns::new("client");
    support::run(
        "ip",
        &[
            "-n",
            &node.netns.name,
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &client.name,
        ],
    );
    node.netns
        .exec(&["ip", "addr", "add", &format!("{NODE_ADDRESS}/24"), "dev", "up0"]);
    node.netns.exec(&["ip", "link", "set", "up0", "up"]);
    client.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{CLIENT_ADDRESS}/24"),
        "dev",
        "eth0",
    ]);
    client.exec(&["ip", "link", "set", "eth0", "up"]);
    client.exec(&["ip", "link", "set", "lo", "up"]);
    client.exec(&["ip", "route", "add", "10.99.0.0/24", "via", NODE_ADDRESS]);
    client
}

#[test]
fn the_shipped_chain_maps_a_host_port_caps_bandwidth_and_del_leaves_nothing() {
    let node = Node::start();
    let client = client_behind(&node);
    let pod = Pod::new("chained");
    let chain = Chain {
        list: conflist(&node),
        node: node.netns.name.clone(),
    };
    let runtime = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": INGRESS_RATE, "ingressBurst": 200_000,
                      "egressRate": INGRESS_RATE, "egressBurst": 200_000},
    });
    let env = pod.env("ADD", "eth0", true);
    let result = chain
        .add(&env, &runtime)
        .unwrap_or_else(|e| panic!("chained ADD: {e}\n{}", node.agent_log()));

    // The result carries the host-side interface (bandwidth finds the veth by it) and the pod's.
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    assert!(
        interfaces
            .iter()
            .any(|i| i["name"].as_str().is_some_and(|n| n.starts_with("brd")) && i.get("sandbox").is_none()),
        "{result}"
    );
    let pod_ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("the pod's address")
        .to_owned();

    // A host port reaches busybox httpd in the pod.
    let www = tempfile::tempdir().expect("document root");
    std::fs::write(www.path().join("index.html"), "served from the pod\n").expect("index");
    let root = www.path().display().to_string();
    let _httpd = Background::start(&pod.netns, &["busybox", "httpd", "-f", "-p", "80", "-h", &root]);
    // (busybox's static wget crashes on this Debian; nc speaks HTTP/1.0 well enough.)
    let get = format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {NODE_ADDRESS} 8080");
    support::eventually("the host port answers", || {
        Command::new("ip")
            .args(["netns", "exec", &client.name, "sh", "-c", &get])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("served from the pod"))
    });

    // The bandwidth limit caps an iperf3 stream into the pod (unshaped, a veth carries Gbit/s).
    let _iperf = Background::start(&pod.netns, &["iperf3", "-s", "-B", &pod_ip]);
    let mut measured = None;
    support::eventually("iperf3 runs", || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.name,
                "iperf3",
                "-c",
                &pod_ip,
                "-t",
                "2",
                "-J",
            ])
            .output()
            .expect("iperf3");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        measured = report["end"]["sum_received"]["bits_per_second"].as_f64();
        measured.is_some()
    });
    let measured = measured.expect("a rate");
    assert!(
        measured > 0.0 && measured < 2.0 * INGRESS_RATE as f64,
        "{measured} bit/s into a pod limited to {INGRESS_RATE}"
    );
    let qdiscs = node.netns.exec(&["tc", "qdisc", "show"]);
    assert!(qdiscs.contains("tbf"), "{qdiscs}");

    // The node tracks the pod's flows (the host port's DNAT among them)...
    assert!(
        tracked_flows(&node, &pod_ip) > 0,
        "no tracked connection of {pod_ip}"
    );

    // DEL in reverse order: nothing of the pod is left in the node.
    let del_env = pod.env("DEL", "eth0", true);
    chain
        .del(&del_env, &runtime, &result)
        .unwrap_or_else(|e| panic!("chained DEL: {e}\n{}", node.agent_log()));
    let nat = node.netns.exec(&["iptables-save", "-t", "nat"]);
    assert!(
        !nat.contains("8080") && !nat.contains(&format!("{pod_ip}:80")),
        "DNAT rules left:\n{nat}"
    );
    // ...and has forgotten them when DEL returns (before its address could be handed out again).
    assert_eq!(
        tracked_flows(&node, &pod_ip),
        0,
        "tracked connections of {pod_ip} outlived DEL"
    );
    // The host veth DEL retired goes in the reaper's next bulk delete, its qdiscs with it.
    support::eventually("no qdisc of the pod is left", || {
        !node.netns.exec(&["tc", "qdisc", "show"]).contains("tbf")
    });
    let links = node.netns.exec(&["ip", "-o", "link", "show"]);
    assert!(
        !links.contains("bwp") && !links.contains("ifb"),
        "ifb device left:\n{links}"
    );
    assert!(!pod.netns.try_exec(&["ip", "link", "show", "dev", "eth0"]));
    assert!(node.handles().is_empty(), "every address released");
}
