//! `deploy/` stays true: the Kubernetes manifests pass schema validation (`kubernetes-validate
//! --strict`, from PyPI, schemas bundled) and the kustomization lists exactly them; the systemd units
//! pass `systemd-analyze verify`; every flag and environment variable the manifests and units give a
//! binary is one that binary takes; the CNI configuration shipped in the ConfigMap is the one in
//! `deploy/brindle.conflist`.

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
                let help = help(name, &[]);
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
