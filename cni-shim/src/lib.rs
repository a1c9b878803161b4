//! brindle-cni: the CNI plugin containerd executes. It validates the CNI environment and network
//! configuration, forwards ADD / DEL / CHECK / STATUS / GC to the node agent over its unix socket,
//! and prints the result (shaped for the requested cniVersion) or the spec's error JSON on stdout.
//! It holds no networking logic of its own.

pub mod agent;
pub mod config;
pub mod env;
pub mod error;
pub mod result_json;

use brindle_proto::agent::v1::{AttachmentRef, CniInvocation, CniOutcome, GcRequest};
use serde_json::{Value, json};

use agent::Agent;
use config::{LATEST_VERSION, NetConf, SUPPORTED_VERSIONS};
use env::{Command, Invocation};
use error::CniError;

/// What the process prints and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Printed on stdout.
    pub stdout: String,
    /// Process exit code.
    pub exit_code: i32,
}

impl Outcome {
    /// A failure printed as CNI error JSON of `cni_version`.
    pub fn error(cni_version: &str, error: CniError) -> Self {
        let version = if SUPPORTED_VERSIONS.contains(&cni_version) {
            cni_version
        } else {
            LATEST_VERSION
        };
        Self {
            stdout: error::to_json(&error, version),
            exit_code: 1,
        }
    }
}

/// Runs one CNI invocation.
pub fn run(env: &Invocation, stdin: &[u8], agent: &dyn Agent) -> Outcome {
    match execute(env, stdin, agent) {
        Ok(stdout) => Outcome { stdout, exit_code: 0 },
        Err(error) => Outcome::error(&config::declared_version(stdin).unwrap_or_default(), error),
    }
}

fn execute(env: &Invocation, stdin: &[u8], agent: &dyn Agent) -> Result<String, CniError> {
    let command = env.command()?;
    if command == Command::Version {
        let requested = config::declared_version(stdin).unwrap_or_else(|| LATEST_VERSION.to_owned());
        return Ok(json!({"cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS}).to_string());
    }
    let args = env.validate(command)?;
    let conf = NetConf::parse(stdin)?;
    match command {
        Command::Check => conf.require("0.4.0", "CHECK")?,
        Command::Status => conf.require("1.1.0", "STATUS")?,
        Command::Gc => conf.require("1.1.0", "GC")?,
        Command::Add | Command::Del | Command::Version => {}
    }
    let invocation = CniInvocation {
        container_id: env.container_id.clone().unwrap_or_default(),
        netns: env.netns.clone().unwrap_or_default(),
        ifname: env.ifname.clone().unwrap_or_default(),
        args: args.into_iter().collect(),
        path: env.path.clone().unwrap_or_default(),
        cni_version: conf.cni_version.clone(),
        network: conf.name.clone(),
        config_json: conf.raw.clone(),
    };
    let socket = conf.agent_socket.as_str();
    match command {
        Command::Add => {
            let response = agent.add(socket, invocation)?;
            if let Some(error) = response.error {
                return Err(error.into());
            }
            let result = response.result.ok_or_else(|| {
                CniError::new(
                    error::AGENT_FAILURE,
                    "the node agent returned neither a result nor an error",
                )
            })?;
            Ok(result_json::render(
                &result,
                &conf.cni_version,
                conf.prev_result(),
            ))
        }
        Command::Del => outcome(agent.del(socket, invocation)?),
        Command::Check => outcome(agent.check(socket, invocation)?),
        Command::Status => outcome(agent.status(socket, invocation)?),
        Command::Gc => {
            let valid_attachments = valid_attachments(&conf.document)?;
            outcome(agent.gc(
                socket,
                GcRequest {
                    invocation: Some(invocation),
                    valid_attachments,
                },
            )?)
        }
        Command::Version => Ok(String::new()),
    }
}

/// `cni.dev/valid-attachments` of a GC request.
fn valid_attachments(config: &Value) -> Result<Vec<AttachmentRef>, CniError> {
    let Some(list) = config.get("cni.dev/valid-attachments") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| CniError::new(error::INVALID_CONFIG, "cni.dev/valid-attachments must be a list"))?;
    list.iter()
        .map(|entry| {
            let field = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_owned);
            match (field("containerID"), field("ifname")) {
                (Some(container_id), Some(ifname)) => Ok(AttachmentRef { container_id, ifname }),
                _ => Err(CniError::new(
                    error::INVALID_CONFIG,
                    "each cni.dev/valid-attachments entry needs containerID and ifname",
                )),
            }
        })
        .collect()
}

fn outcome(outcome: CniOutcome) -> Result<String, CniError> {
    match outcome.error {
        Some(error) => Err(error.into()),
        None => Ok(String::new()),
    }
}
