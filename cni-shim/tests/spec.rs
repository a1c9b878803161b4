//! Black-box CNI behaviour of the real `brindle-cni` binary that needs no agent: VERSION, the
//! environment and configuration rules with their spec error codes (printed on stdout, non-zero
//! exit), and "agent unreachable" → 11 for ADD/DEL/CHECK/GC, 50 for STATUS.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

struct Run {
    code: i32,
    stdout: Value,
    raw: String,
}

fn run(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_brindle-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn brindle-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
    }
}

fn conf(version: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"brindle","type":"brindle-cni","agentSocket":"/nonexistent/brindle-test.sock"}}"#
    )
}

fn add_env(command: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn assert_error(run: &Run, code: u64, mentions: &str) {
    assert_ne!(run.code, 0, "must exit non-zero: {}", run.raw);
    assert_eq!(
        run.stdout["code"].as_u64(),
        Some(code),
        "error JSON on stdout: {}",
        run.raw
    );
    let text = format!("{} {}", run.stdout["msg"], run.stdout["details"]);
    assert!(
        text.contains(mentions),
        "{:?} should mention {mentions:?}",
        run.raw
    );
    assert!(run.stdout["cniVersion"].is_string(), "{}", run.raw);
}

#[test]
fn version_reports_supported_versions() {
    let out = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout["cniVersion"], "1.0.0");
    let supported: Vec<&str> = out.stdout["supportedVersions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(supported, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
}

#[test]
fn missing_environment_is_code_4_naming_the_variable() {
    for missing in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
        let env: Vec<_> = add_env("ADD")
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        assert_error(&run(&env, &conf("1.1.0")), 4, missing);
    }
    assert_error(&run(&[("CNI_COMMAND", "FROB")], &conf("1.1.0")), 4, "FROB");
    assert_error(&run(&[], &conf("1.1.0")), 4, "CNI_COMMAND");
}

#[test]
fn configuration_errors_have_spec_codes() {
    assert_error(&run(&add_env("ADD"), "{nope"), 6, "JSON");
    assert_error(
        &run(&add_env("ADD"), r#"{"cniVersion":"1.0.0","type":"brindle-cni"}"#),
        7,
        "name",
    );
    assert_error(&run(&add_env("ADD"), &conf("0.2.0")), 1, "0.2.0");
    assert_error(&run(&add_env("CHECK"), &conf("0.3.1")), 1, "CHECK");
    assert_error(&run(&add_env("STATUS"), &conf("1.0.0")), 1, "STATUS");
    assert_error(&run(&add_env("GC"), &conf("1.0.0")), 1, "GC");
}

#[test]
fn unknown_cni_args_need_ignore_unknown() {
    let mut env = add_env("ADD");
    env.push(("CNI_ARGS", "K8S_POD_NAME=web;SOMETHING=else"));
    assert_error(&run(&env, &conf("1.1.0")), 4, "SOMETHING");
    let mut env = add_env("ADD");
    env.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;SOMETHING=else"));
    // Accepted: the shim gets as far as the (absent) agent.
    assert_error(&run(&env, &conf("1.1.0")), 11, "not reachable");
}

#[test]
fn unreachable_agent_is_try_again_later_or_not_available() {
    let add = run(&add_env("ADD"), &conf("1.1.0"));
    assert_error(&add, 11, "/nonexistent/brindle-test.sock");
    assert_eq!(
        add.stdout["cniVersion"], "1.1.0",
        "error keeps the request's cniVersion"
    );
    assert_error(&run(&add_env("DEL"), &conf("0.3.1")), 11, "not reachable");
    assert_error(&run(&add_env("CHECK"), &conf("1.0.0")), 11, "not reachable");
    assert_error(
        &run(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0")),
        50,
        "not available",
    );
    assert_error(
        &run(&[("CNI_COMMAND", "GC")], &conf("1.1.0")),
        11,
        "not reachable",
    );
}
