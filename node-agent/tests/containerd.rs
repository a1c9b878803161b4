//! Real containerd: a private containerd (its own root, state and socket), a tiny OCI image built
//! here from Debian's static busybox, a conflist pointing at brindle-cni, and two containers run
//! with `ctr run --cni` inside a node network namespace. Each gets an address from the pool, they
//! ping each other, and after they exit their addresses are free again.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::node::{Node, shim_binary};
use support::{eventually, run};

const IMAGE: &str = "docker.io/library/brindle-busybox:test";
const NAMESPACE: &str = "brindle-test";

/// A containerd daemon with its own directories, killed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brdt-containerd-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        let config = format!(
            "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{r}/containerd.sock\"\n",
            r = root.display()
        );
        std::fs::write(root.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(root.join("containerd.log")).expect("log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd (Debian package containerd)");
        let containerd = Self { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr_ok(&["version"]) {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn ctr_command(&self) -> Command {
        let mut command = Command::new("ctr");
        command.arg("-a").arg(self.socket()).args(["-n", NAMESPACE]);
        command
    }

    fn ctr_ok(&self, args: &[&str]) -> bool {
        self.ctr_command()
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_command().args(args).output().expect("ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Builds an OCI image of Debian's static busybox and imports it.
    fn import_busybox(&self) {
        let work = self.dir.path().join("image");
        let script = format!(
            r#"set -eu
cd {work}
mkdir -p rootfs/bin oci/blobs/sha256
cp /bin/busybox rootfs/bin/busybox
for applet in sh sleep ping ip cat; do ln -sf busybox rootfs/bin/$applet; done
tar --numeric-owner --owner=0 --group=0 -C rootfs -cf layer.tar .
layer=$(sha256sum layer.tar | cut -d' ' -f1); layer_size=$(stat -c %s layer.tar)
mv layer.tar oci/blobs/sha256/$layer
printf '{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:%s"]}}}}' $layer > config.json
config=$(sha256sum config.json | cut -d' ' -f1); config_size=$(stat -c %s config.json)
mv config.json oci/blobs/sha256/$config
printf '{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}}]}}' $config $config_size $layer $layer_size > manifest.json
manifest=$(sha256sum manifest.json | cut -d' ' -f1); manifest_size=$(stat -c %s manifest.json)
mv manifest.json oci/blobs/sha256/$manifest
printf '{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{{"io.containerd.image.name":"{IMAGE}","org.opencontainers.image.ref.name":"test"}}}}]}}' $manifest $manifest_size > oci/index.json
printf '{{"imageLayoutVersion":"1.0.0"}}' > oci/oci-layout
tar -C oci -cf image.tar oci-layout index.json blobs
"#,
            work = work.display()
        );
        std::fs::create_dir_all(&work).expect("image dir");
        run("sh", &["-c", &script]);
        let image = work.join("image.tar");
        self.ctr(&["images", "import", image.to_str().expect("path")]);
        assert!(
            self.ctr(&["images", "ls", "-q"]).contains(IMAGE),
            "image imported"
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Container rootfs mounts of the native snapshotter are plain directories; nothing to unmount.
    }
}

/// CNI configuration and plugin directories, bind-mounted over /etc/cni/net.d and /opt/cni/bin
/// in a private mount namespace for ctr only (ctr reads those fixed paths).
fn cni_dirs(node: &Node, base: &Path) -> (PathBuf, PathBuf) {
    let (conf_dir, bin_dir) = (base.join("net.d"), base.join("bin"));
    std::fs::create_dir_all(&conf_dir).expect("conf dir");
    std::fs::create_dir_all(&bin_dir).expect("bin dir");
    // go-cni in containerd 1.6 speaks CNI up to 1.0.0.
    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"brindle-ctr","plugins":[{{"type":"brindle-cni","agentSocket":"{}","mtu":1450}}]}}"#,
        node.socket().display()
    );
    std::fs::write(conf_dir.join("10-brindle.conflist"), conflist).expect("conflist");
    std::fs::copy(shim_binary(), bin_dir.join("brindle-cni")).expect("install shim");
    for fixed in ["/etc/cni/net.d", "/opt/cni/bin"] {
        std::fs::create_dir_all(fixed).expect("mount point");
    }
    (conf_dir, bin_dir)
}

/// `ctr run --rm --cni` of a container that sleeps, inside the node namespace; returns the ctr
/// process (it runs CNI DEL when the container exits).
fn run_container(node: &Node, containerd: &Containerd, dirs: &(PathBuf, PathBuf), name: &str) -> Child {
    let script = format!(
        "mount --bind {conf} /etc/cni/net.d && mount --bind {bin} /opt/cni/bin && exec ctr -a {sock} -n {NAMESPACE} run --rm --cni --snapshotter native {IMAGE} {name} /bin/sleep 120",
        conf = dirs.0.display(),
        bin = dirs.1.display(),
        sock = containerd.socket().display(),
    );
    let log = std::fs::File::create(containerd.dir.path().join(format!("{name}.log"))).expect("log");
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.netns.name,
            "unshare",
            "-m",
            "sh",
            "-c",
            &script,
        ])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("ctr run")
}

fn container_ip(containerd: &Containerd, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = containerd
            .ctr_command()
            .args([
                "task",
                "exec",
                "--exec-id",
                &format!("ip-{name}"),
                name,
                "ip",
                "-o",
                "-4",
                "addr",
                "show",
                "eth0",
            ])
            .output()
            .expect("ctr task exec");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(address) = text.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
            return address.split('/').next().unwrap_or_default().to_owned();
        }
        let log =
            std::fs::read_to_string(containerd.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "{name} never got an address; ctr log: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ctr_run_with_brindle_cni() {
    let node = Node::start();
    let containerd = Containerd::start();
    containerd.import_busybox();
    let dirs = cni_dirs(&node, containerd.dir.path());
    let mut first = run_container(&node, &containerd, &dirs, "c1");
    let mut second = run_container(&node, &containerd, &dirs, "c2");
    let (ip1, ip2) = (container_ip(&containerd, "c1"), container_ip(&containerd, "c2"));
    assert!(
        ip1.starts_with("10.99.0.") && ip2.starts_with("10.99.0.") && ip1 != ip2,
        "{ip1} {ip2}"
    );
    let handles = node.handles();
    assert!(
        handles.contains(&format!("brindle-ctr.{NAMESPACE}-c1")),
        "handle <network>.<ns>-<id>: {handles:?}"
    );
    for (from, to) in [("c1", &ip2), ("c2", &ip1)] {
        let ping = containerd
            .ctr_command()
            .args([
                "task",
                "exec",
                "--exec-id",
                &format!("ping-{from}"),
                from,
                "ping",
                "-c",
                "2",
                "-W",
                "2",
                to,
            ])
            .output()
            .expect("ping");
        assert!(
            ping.status.success(),
            "{from} → {to}: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }
    for (name, child) in [("c1", &mut first), ("c2", &mut second)] {
        containerd.ctr(&["task", "kill", "-s", "KILL", name]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "ctr run {name} did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(
        node.handles().is_empty(),
        "addresses free again after the containers exited: {:?}",
        node.handles()
    );
    eventually("veths removed", || node.brindle_links().is_empty());
}
