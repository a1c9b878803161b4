//! `deploy/` stays true: the Kubernetes manifests pass schema validation (`kubernetes-validate
//! --strict`, from PyPI, schemas bundled) and the kustomization lists exactly them; the systemd units
//! pass `systemd-analyze verify`; every flag and environment variable the manifests and units give a
//! binary is one that binary takes; the CNI configuration shipped in the ConfigMap is the one in
//! `deploy/brindle.conflist`. The certificate bootstrap Job, run against kube-standin (the tests'
//! stand-in API server: none can be installed here), makes every Secret the workloads mount, once;
//! and the control plane started from the manifests' own flags with those Secrets gives a real
//! agent in a pod its node's certificate for its ServiceAccount token, nothing issued by hand.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The workspace's binaries (scripts/test.sh builds them before the tests).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join(name)
}

/// `--help` of a binary, or of its subcommand (`brindle server`).
fn help(name: &str, subcommands: &[&str]) -> String {
    let out = Command::new(binary(name))
        .args(subcommands)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{name} --help: {e}"));
    assert!(out.status.success(), "{name} {subcommands:?} --help: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every YAML document of a file, as JSON values.
fn documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read manifest");
    text.split("\n---\n")
        .map(|doc| yaml_serde::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn kubernetes_manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_pass_schema_validation_and_the_kustomization_lists_them() {
    let files = kubernetes_manifests();
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect(
            "kubernetes-validate (pip package kubernetes-validate, installed by scripts/install-deps.sh)",
        );
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(
        !report.contains("ERROR") && report.contains("daemonset/brindle-node-agent"),
        "{report}"
    );

    let kustomization = &documents(&deploy().join("kubernetes/kustomization.yaml"))[0];
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    let present: BTreeSet<String> = files
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present, "kustomization.yaml lists exactly the manifests");
}

/// The flags (`--name`) and `BRINDLE_*` / `NODE_NAME` variables in `text`.
fn flags_and_variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for word in text.split(|c: char| c.is_whitespace() || "[]{},\"'=:$()".contains(c)) {
        if (word.starts_with("--") && word.len() > 2) || word.starts_with("BRINDLE_") || word == "NODE_NAME" {
            found.insert(word.to_owned());
        }
    }
    found
}

#[test]
fn every_flag_and_variable_deploy_gives_a_binary_is_one_it_takes() {
    let mut checked = 0;
    // Kubernetes containers: command names the binary; args and env are its flags and variables.
    for file in kubernetes_manifests() {
        for document in documents(&file) {
            let spec = &document["spec"]["template"]["spec"];
            for container in spec["containers"].as_array().into_iter().flatten() {
                let command = container["command"][0].as_str().expect("command");
                let name = command.rsplit('/').next().expect("binary name");
                // Leading words of args name a subcommand (`brindle certs`).
                let subcommands: Vec<&str> = container["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str())
                    .take_while(|a| !a.starts_with('-'))
                    .collect();
                let help = help(name, &subcommands);
                let mut given =
                    flags_and_variables(&serde_json::to_string(&container["args"]).expect("args"));
                for variable in container["env"].as_array().into_iter().flatten() {
                    given.insert(variable["name"].as_str().expect("env name").to_owned());
                }
                for item in given {
                    assert!(help.contains(&item), "{}: {name} takes no {item}", file.display());
                    checked += 1;
                }
            }
        }
    }
    // systemd units: ExecStart's binary and flags, and the variables their comments tell to set.
    for entry in std::fs::read_dir(deploy().join("systemd")).expect("deploy/systemd") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("unit");
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let mut words = exec.split_whitespace();
        let name = words.next().and_then(|b| b.rsplit('/').next()).expect("binary");
        let subcommands: Vec<&str> = words.take_while(|w| !w.starts_with('-')).collect();
        let help = help(name, &subcommands);
        for item in flags_and_variables(&text) {
            assert!(help.contains(&item), "{}: {name} takes no {item}", path.display());
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} flags and variables found");
}

#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(deploy().join("systemd")).expect("deploy/systemd") {
        let path = entry.expect("entry").path();
        // The units name the installed binaries; verify them against the ones just built.
        let mut text = std::fs::read_to_string(&path).expect("unit");
        for name in ["brindle", "ipam-svc", "route-svc", "policy-svc", "node-agent"] {
            text = text.replace(
                &format!("/usr/local/bin/{name} "),
                &format!("{} ", binary(name).display()),
            );
        }
        let unit = dir.path().join(path.file_name().expect("name"));
        std::fs::write(&unit, text).expect("write unit");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze (Debian package systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&*unit.file_name().expect("name").to_string_lossy()))
            .collect();
        assert!(
            out.status.success() && problems.is_empty(),
            "{}: {stderr}",
            path.display()
        );
    }
}

#[test]
fn the_shipped_cni_configuration_is_the_documented_one() {
    let documented: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy().join("brindle.conflist")).expect("conflist"))
            .expect("JSON");
    let config_map = &documents(&deploy().join("kubernetes/cni-config.yaml"))[0];
    let shipped: serde_json::Value = serde_json::from_str(
        config_map["data"]["10-brindle.conflist"]
            .as_str()
            .expect("conflist key"),
    )
    .expect("JSON");
    assert_eq!(shipped, documented);
}

/// The pod spec and the container named `container` of the workload named `workload`.
fn workload(workload: &str, container: &str) -> (serde_json::Value, serde_json::Value) {
    for file in kubernetes_manifests() {
        for document in documents(&file) {
            if document["metadata"]["name"] == workload && document["spec"]["template"].is_object() {
                let spec = document["spec"]["template"]["spec"].clone();
                let found = spec["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == container)
                    .cloned()
                    .unwrap_or_else(|| panic!("{workload} has no container {container}"));
                return (spec, found);
            }
        }
    }
    panic!("no workload {workload} in deploy/kubernetes")
}

/// A container's args, and the values of its env entries given literally.
fn args_and_values(container: &serde_json::Value) -> Vec<String> {
    let args = container["args"].as_array().into_iter().flatten();
    let values = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["value"]);
    args.chain(values)
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The value of `--flag=value` in a container's args.
fn flag(container: &serde_json::Value, flag: &str) -> String {
    let prefix = format!("{flag}=");
    args_and_values(container)
        .iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {flag} in {container}"))
}

/// The value of the env entry `name` given literally.
fn env_value(container: &serde_json::Value, name: &str) -> String {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {name} in {container}"))
        .to_owned()
}

/// Secrets and ConfigMaps the manifests define themselves (the operator fills brindle-etcd in).
fn defined_objects() -> BTreeSet<(String, String)> {
    kubernetes_manifests()
        .iter()
        .flat_map(|file| documents(file))
        .filter(|d| d["kind"] == "Secret" || d["kind"] == "ConfigMap")
        .map(|d| {
            (
                d["kind"].as_str().expect("kind").to_owned(),
                d["metadata"]["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect()
}

/// What a container mounts from a Secret or ConfigMap no manifest defines — the certificate
/// bootstrap's — and which of its keys the container's flags and variables name: (mount path,
/// kind, object, keys).
fn bootstrapped_mounts(
    spec: &serde_json::Value,
    container: &serde_json::Value,
) -> Vec<(String, &'static str, String, BTreeSet<String>)> {
    let defined = defined_objects();
    let values = args_and_values(container);
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        let (kind, name) = if let Some(name) = volume["secret"]["secretName"].as_str() {
            ("Secret", name)
        } else if let Some(name) = volume["configMap"]["name"].as_str() {
            ("ConfigMap", name)
        } else {
            continue;
        };
        if defined.contains(&(kind.to_owned(), name.to_owned())) {
            continue;
        }
        let path = mount["mountPath"].as_str().expect("mountPath").to_owned();
        let prefix = format!("{path}/");
        let keys = values
            .iter()
            .filter_map(|v| v.rsplit('=').next().and_then(|v| v.strip_prefix(&prefix)))
            .map(str::to_owned)
            .collect();
        mounts.push((path, kind, name.to_owned(), keys));
    }
    mounts
}

/// The workloads of deploy/kubernetes: (workload, container).
const WORKLOADS: [(&str, &str); 5] = [
    ("ipam-svc", "ipam-svc"),
    ("route-svc", "route-svc"),
    ("policy-svc", "policy-svc"),
    ("kube-sync", "kube-sync"),
    ("brindle-node-agent", "node-agent"),
];

/// Runs the brindle-certs Job's command as the Job does (its namespace from the Job's own),
/// against the Kubernetes API of `kubeconfig`, through `command`; its output.
fn run_certificate_job(mut command: Command, kubeconfig: &Path) -> String {
    let (_, job) = workload("brindle-certs", "certs");
    let args: Vec<String> = job["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg").to_owned())
        .collect();
    let out = command
        .args(&args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("BRINDLE_KUBERNETES_NAMESPACE", NAMESPACE)
        .output()
        .expect("brindle certs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// brindle's namespace, where the Job runs.
const NAMESPACE: &str = "brindle-system";

/// The subject alternative names of a PEM certificate.
fn alternative_names(pem: &[u8]) -> Vec<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
    let certificate = pem.parse_x509().expect("X.509");
    let names = certificate
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("SAN extension present");
    names
        .value
        .general_names
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_job_makes_every_certificate_the_workloads_mount_and_only_once() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};

    let api = kube_standin::StandIn::start(std::time::Duration::from_secs(60))
        .await
        .expect("stand-in");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
    let made = run_certificate_job(Command::new(binary("brindle")), &kubeconfig);
    assert!(made.contains("Created") && !made.contains("Kept"), "{made}");

    let mut checked = 0;
    for (name, container) in WORKLOADS {
        let (spec, container) = workload(name, container);
        for (path, kind, object, keys) in bootstrapped_mounts(&spec, &container) {
            assert!(
                !keys.is_empty(),
                "{name} mounts {kind} {object} at {path} but names no file of it"
            );
            let present: BTreeSet<String> = match kind {
                "Secret" => api
                    .get::<Secret>(Some(NAMESPACE), &object)
                    .and_then(|s| s.data)
                    .map(|d| d.into_keys().collect())
                    .unwrap_or_default(),
                _ => api
                    .get::<ConfigMap>(Some(NAMESPACE), &object)
                    .and_then(|c| c.data)
                    .map(|d| d.into_keys().collect())
                    .unwrap_or_default(),
            };
            for key in keys {
                assert!(
                    present.contains(&key),
                    "{name} reads {path}/{key}: {kind} {object} has {present:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "only {checked} files checked");

    // Clients dial ClusterIPs and verify the services' certificate for one name: it holds it.
    let services = api
        .get::<Secret>(Some(NAMESPACE), "brindle-services-tls")
        .expect("services' Secret");
    let names = alternative_names(&services.data.expect("data")["tls.crt"].0);
    let (_, agent) = workload("brindle-node-agent", "node-agent");
    let (_, kube_sync) = workload("kube-sync", "kube-sync");
    for server_name in [
        flag(&agent, "--tls-server-name"),
        env_value(&kube_sync, "BRINDLE_TLS_SERVER_NAME"),
    ] {
        assert!(
            names.contains(&format!("DNSName({server_name})")),
            "{server_name} not in {names:?}"
        );
    }
    // ipam-svc takes the tokens of the agents' service account, for the audience they ask for.
    let (agent_spec, _) = workload("brindle-node-agent", "node-agent");
    let (_, ipam) = workload("ipam-svc", "ipam-svc");
    assert_eq!(
        flag(&ipam, "--bootstrap-service-account"),
        format!(
            "{NAMESPACE}/{}",
            agent_spec["serviceAccountName"].as_str().expect("account")
        )
    );
    let audiences: Vec<&str> = agent_spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .flat_map(|v| v["projected"]["sources"].as_array().into_iter().flatten())
        .filter_map(|s| s["serviceAccountToken"]["audience"].as_str())
        .collect();
    assert_eq!(audiences, [brindle_identity::AUDIENCE]);

    // A second run (a retried Job, a re-apply) changes nothing.
    let version = |name: &str| {
        api.get::<Secret>(Some(NAMESPACE), name)
            .and_then(|s| s.metadata.resource_version)
    };
    let before = version("brindle-ca");
    let again = run_certificate_job(Command::new(binary("brindle")), &kubeconfig);
    assert!(!again.contains("Created") && again.contains("Kept"), "{again}");
    assert_eq!(version("brindle-ca"), before);
}

/// A process killed when the test ends, however it ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `$(VAR)` in `text` replaced by `variables`' values, as the kubelet expands env values.
fn expand(text: &str, variables: &std::collections::BTreeMap<String, String>) -> String {
    variables.iter().fold(text.to_owned(), |text, (name, value)| {
        text.replace(&format!("$({name})"), value)
    })
}

/// What the kubelet would start for a workload's container, on this host inside `namespace`:
/// its command, args and literal env values with every path under a mount the container names
/// moved into `root` (a Secret's or ConfigMap's files written there from the stand-in), the
/// service variables of `services` expanded, `extra` args appended; etcd flags dropped (the
/// test's etcd speaks plain text on loopback).
fn as_the_kubelet_starts(
    namespace: &brindle::lab::Namespace,
    api: &kube_standin::StandIn,
    (name, container_name): (&str, &str),
    root: &Path,
    services: &std::collections::BTreeMap<String, String>,
    extra: &[String],
) -> Command {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};

    let (spec, container) = workload(name, container_name);
    let root = root.join(name);
    let mut moved: Vec<(String, PathBuf)> = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = mount["mountPath"].as_str().expect("mountPath").to_owned();
        let local = root.join(mount["name"].as_str().expect("name"));
        std::fs::create_dir_all(&local).expect("mount dir");
        moved.push((path, local));
    }
    for (path, kind, object, _) in bootstrapped_mounts(&spec, &container) {
        let local = &moved.iter().find(|(p, _)| *p == path).expect("mount").1;
        let files: Vec<(String, Vec<u8>)> = if kind == "Secret" {
            let secret = api.get::<Secret>(Some(NAMESPACE), &object).expect("Secret");
            secret
                .data
                .expect("data")
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else {
            let map = api.get::<ConfigMap>(Some(NAMESPACE), &object).expect("ConfigMap");
            map.data
                .expect("data")
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        };
        for (key, bytes) in files {
            std::fs::write(local.join(key), bytes).expect("mounted file");
        }
    }
    let relocate = |text: &str| {
        let text = expand(text, services);
        moved.iter().fold(text, |text, (path, local)| {
            text.replace(&format!("{path}/"), &format!("{}/", local.display()))
                .replace(&format!("={path}"), &format!("={}", local.display()))
        })
    };
    let program = container["command"][0].as_str().expect("command");
    let mut command = namespace.command(&binary(program.rsplit('/').next().expect("binary")));
    for arg in container["args"].as_array().into_iter().flatten() {
        let arg = arg.as_str().expect("arg");
        if !arg.starts_with("--etcd-") {
            command.arg(relocate(arg));
        }
    }
    command.args(extra);
    for variable in container["env"].as_array().into_iter().flatten() {
        if let Some(value) = variable["value"].as_str() {
            command.env(variable["name"].as_str().expect("name"), relocate(value));
        }
    }
    command.env("BRINDLE_ETCD_ENDPOINTS", "http://127.0.0.1:2379");
    command.stderr(std::fs::File::create(root.with_extension("log")).expect("log"));
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_control_plane_gives_an_agent_its_certificate_with_nothing_issued_by_hand() {
    use k8s_openapi::api::core::v1::Pod;
    use kube_standin::{BoundToken, StandIn, objects};

    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = brindle::lab::Namespace::create(format!("brdp{}", std::process::id())).expect("netns");
    let listener = namespace
        .spawn(|| Ok(std::net::TcpListener::bind("127.0.0.1:6443")?))
        .join()
        .expect("bind thread")
        .expect("bind the stand-in");
    let api = StandIn::start_on(listener, std::time::Duration::from_secs(60)).expect("stand-in");
    let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
    run_certificate_job(namespace.command(&binary("brindle")), &kubeconfig);

    // The agent's pod on node-a, and its projected token.
    let (agent_spec, _) = workload("brindle-node-agent", "node-agent");
    api.put(&objects::pod(NAMESPACE, "agent-x", "node-a", &[]));
    let token = api.issue_token(BoundToken {
        namespace: NAMESPACE.into(),
        service_account: agent_spec["serviceAccountName"].as_str().expect("account").into(),
        pod: "agent-x".into(),
        pod_uid: api.uid::<Pod>(Some(NAMESPACE), "agent-x").expect("uid"),
        audiences: vec![brindle_identity::AUDIENCE.into()],
    });

    // Services behind ClusterIPs: 127.0.0.2 is on this namespace's loopback but in no
    // certificate, so only --tls-server-name makes it verifiable.
    let cluster_ip = "127.0.0.2";
    let mut services = std::collections::BTreeMap::new();
    for (service, port) in [("IPAM_SVC", 7401), ("ROUTE_SVC", 7402), ("POLICY_SVC", 7403)] {
        services.insert(format!("{service}_SERVICE_HOST"), cluster_ip.to_owned());
        services.insert(format!("{service}_SERVICE_PORT"), port.to_string());
    }
    services.insert("IPAM_SVC_SERVICE_PORT_GRPC".into(), "7401".into());
    services.insert("IPAM_SVC_SERVICE_PORT_BOOTSTRAP".into(), "7409".into());

    // The agent first: it waits for the bootstrap port.
    let root = dir.path().join("pods");
    let mut agent = as_the_kubelet_starts(
        &namespace,
        &api,
        ("brindle-node-agent", "node-agent"),
        &root,
        &services,
        // What the kubelet gives from spec.nodeName and status.hostIP.
        &["--node-name=node-a".into(), "--node-address=127.0.0.1".into()],
    );
    let token_dir = root.join("brindle-node-agent/token");
    std::fs::write(token_dir.join("token"), token).expect("token");
    let socket = root.join("brindle-node-agent/run-brindle/cni.sock");
    let mut agent = Daemon(agent.spawn().expect("node-agent"));

    let _etcd = Daemon(
        namespace
            .command(Path::new("etcd"))
            .args(["--data-dir", &dir.path().join("etcd").display().to_string()])
            .args(["--listen-client-urls", "http://127.0.0.1:2379"])
            .args(["--advertise-client-urls", "http://127.0.0.1:2379"])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .stderr(std::fs::File::create(dir.path().join("etcd.log")).expect("log"))
            .spawn()
            .expect("etcd (Debian package etcd-server)"),
    );
    let etcd_up = namespace.spawn(|| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect("127.0.0.1:2379").is_err() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "etcd never listened");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(())
    });
    etcd_up.join().expect("thread").expect("etcd");
    let in_cluster = [format!("--bootstrap-kubeconfig={}", kubeconfig.display())];
    let mut daemons = Vec::new();
    for (service, extra) in [
        ("ipam-svc", &in_cluster[..]),
        ("route-svc", &[]),
        ("policy-svc", &[]),
    ] {
        let mut command =
            as_the_kubelet_starts(&namespace, &api, (service, service), &root, &services, extra);
        daemons.push(Daemon(command.spawn().expect(service)));
    }

    let logs = || {
        ["brindle-node-agent", "ipam-svc", "route-svc", "policy-svc"]
            .map(|name| {
                format!(
                    "--- {name}\n{}",
                    std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default()
                )
            })
            .join("\n")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never served CNI\n{}",
            logs()
        );
        let exited = agent.0.try_wait().expect("agent status");
        assert!(exited.is_none(), "the agent stopped: {exited:?}\n{}", logs());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let pki = root.join("brindle-node-agent/state/pki");
    let certificate = std::fs::read(pki.join("node.crt")).expect("the node's certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&certificate).expect("PEM");
    let subject = pem.parse_x509().expect("X.509").subject().to_string();
    assert_eq!(subject, "CN=brindle:node:node-a", "{}", logs());
    let key = std::fs::metadata(pki.join("node.key")).expect("key");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    // kube-sync's certificate (an administrator's) reaches the services by ClusterIP with the
    // server name, and not without it.
    let admin = root.join("kube-sync/tls");
    let cli = |server_name: Option<&str>| {
        let mut command = namespace.command(&binary("brindle"));
        command
            .args(["ipam", "show", "--server", &format!("https://{cluster_ip}:7401")])
            .arg("--tls-ca")
            .arg(admin.join("ca.crt"))
            .arg("--tls-cert")
            .arg(admin.join("tls.crt"))
            .arg("--tls-key")
            .arg(admin.join("tls.key"));
        if let Some(name) = server_name {
            command.args(["--tls-server-name", name]);
        }
        command.output().expect("brindle ipam show")
    };
    std::fs::create_dir_all(&admin).expect("dir");
    let secret = api
        .get::<k8s_openapi::api::core::v1::Secret>(Some(NAMESPACE), "brindle-admin-kube-sync-tls")
        .expect("kube-sync's Secret");
    for (key, value) in secret.data.expect("data") {
        std::fs::write(admin.join(key), value.0).expect("file");
    }
    let (_, kube_sync) = workload("kube-sync", "kube-sync");
    let named = cli(Some(&env_value(&kube_sync, "BRINDLE_TLS_SERVER_NAME")));
    assert!(named.status.success(), "{named:?}\n{}", logs());
    let unnamed = cli(None);
    assert!(!unnamed.status.success(), "{unnamed:?}");
    drop(daemons);
    let _ = namespace;
}
