//! Property-based fuzzing of the shim's input (fuzzing proper needs a nightly toolchain): any
//! environment and any stdin — random bytes, or a valid network configuration with fields replaced
//! by random JSON — give a JSON answer and an exit status, never a panic: a result when the input
//! is usable, otherwise the spec's error JSON with a known code and a message. The agent is a fake
//! that answers successfully; the shim is what is under test.

use brindle_cni::agent::Agent;
use brindle_cni::env::Invocation;
use brindle_cni::error::CniError;
use brindle_cni::run;
use brindle_proto::agent::v1::{
    AddResponse, CniInterface, CniInvocation, CniIpConfig, CniOutcome, CniResult, CniRoute, GcRequest,
};
use proptest::prelude::*;
use serde_json::{Value, json};

struct Succeeds;

impl Agent for Succeeds {
    fn add(&self, _: &str, request: CniInvocation) -> Result<AddResponse, CniError> {
        Ok(AddResponse {
            result: Some(CniResult {
                interfaces: vec![CniInterface {
                    name: request.ifname,
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    sandbox: request.netns,
                    mtu: 1450,
                }],
                ips: vec![CniIpConfig {
                    address: "10.244.0.5/32".into(),
                    gateway: "169.254.1.1".into(),
                    interface: 0,
                }],
                routes: vec![CniRoute {
                    dst: "0.0.0.0/0".into(),
                    gw: "169.254.1.1".into(),
                }],
                dns: None,
            }),
            error: None,
        })
    }
    fn del(&self, _: &str, _: CniInvocation) -> Result<CniOutcome, CniError> {
        Ok(CniOutcome::default())
    }
    fn check(&self, _: &str, _: CniInvocation) -> Result<CniOutcome, CniError> {
        Ok(CniOutcome::default())
    }
    fn status(&self, _: &str, _: CniInvocation) -> Result<CniOutcome, CniError> {
        Ok(CniOutcome::default())
    }
    fn gc(&self, _: &str, _: GcRequest) -> Result<CniOutcome, CniError> {
        Ok(CniOutcome::default())
    }
}

/// Error codes the shim may print: the spec's 1–7 and 11, and brindle's 50 and 999.
const KNOWN_CODES: &[u64] = &[1, 2, 3, 4, 5, 6, 7, 11, 50, 999];

/// A string that is sometimes plausible, sometimes hostile.
fn text(plausible: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::sample::select(plausible).prop_map(|s| Some(s.to_owned())),
        any::<String>().prop_map(Some),
    ]
}

fn invocation() -> impl Strategy<Value = Invocation> {
    (
        text(&["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "add", ""]),
        text(&["c1", "abc-123", "../../etc", "a\0b"]),
        text(&["/var/run/netns/p1", "", "/proc/1/ns/net"]),
        text(&["eth0", "", "averyveryverylonginterfacename", "a/b"]),
        text(&[
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
            "IP=10.0.0.1",
            "=;=;;",
            "a=b=c",
        ]),
        text(&["/opt/cni/bin", ""]),
    )
        .prop_map(|(command, container_id, netns, ifname, args, path)| Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid configuration with some of its fields replaced by random values.
fn mutated_config() -> impl Strategy<Value = Vec<u8>> {
    let fields = [
        "cniVersion",
        "name",
        "type",
        "agentSocket",
        "mtu",
        "prevResult",
        "runtimeConfig",
        "args",
    ];
    (
        prop::sample::select(vec!["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "2.0.0", "x"]),
        prop::collection::vec((prop::sample::select(fields.to_vec()), json_value()), 0..3),
    )
        .prop_map(|(version, replacements)| {
            let mut config = json!({
                "cniVersion": version, "name": "k8s-pod-network", "type": "brindle-cni",
                "agentSocket": "/run/brindle/cni.sock", "mtu": 1450
            });
            for (field, value) in replacements {
                config[field] = value;
            }
            config.to_string().into_bytes()
        })
}

fn stdin() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..256), mutated_config()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn any_input_gets_json_and_a_known_code_never_a_panic(env in invocation(), stdin in stdin()) {
        let outcome = run(&env, &stdin, &Succeeds);
        // DEL, CHECK, STATUS and GC succeed silently.
        if outcome.exit_code == 0 && outcome.stdout.is_empty() {
            return Ok(());
        }
        let printed: Value = serde_json::from_str(&outcome.stdout)
            .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {}", outcome.stdout)))?;
        match outcome.exit_code {
            0 => prop_assert!(
                printed.get("cniVersion").is_some(),
                "a result names its version: {}", outcome.stdout
            ),
            1 => {
                let code = printed["code"].as_u64().unwrap_or(0);
                prop_assert!(KNOWN_CODES.contains(&code), "unknown code {code}: {}", outcome.stdout);
                prop_assert!(!printed["msg"].as_str().unwrap_or("").is_empty(), "no message: {}", outcome.stdout);
            }
            other => prop_assert!(false, "exit status {other}"),
        }
    }
}
