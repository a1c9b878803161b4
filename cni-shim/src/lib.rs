//! brindle-cni: the CNI plugin containerd executes. It validates the CNI environment and network
//! configuration, forwards ADD / DEL / CHECK / STATUS / GC to the node agent over its unix socket,
//! and prints the result (shaped for the requested cniVersion) or the spec's error JSON on stdout.
//! It holds no networking logic of its own.

pub mod agent;
pub mod config;
pub mod env;
pub mod error;
pub mod result_json;

use brindle_proto::agent::v1::{AttachmentRef, CniError as AgentError, CniInvocation, CniOutcome, GcRequest};
use serde_json::{Value, json};

use agent::{Agent, CallError};
use config::{LATEST_VERSION, NetConf, SUPPORTED_VERSIONS};
use env::{Command, Invocation};
use error::{AGENT_FAILURE, CniError, NOT_AVAILABLE, TRY_AGAIN_LATER};

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
            stdout: error.to_json(version),
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
    let failed = |e: CallError| call_error(command, e);
    match command {
        Command::Add => {
            let response = agent.add(socket, invocation).map_err(failed)?;
            if let Some(error) = response.error {
                return Err(agent_error(error));
            }
            let result = response.result.ok_or_else(|| {
                CniError::new(
                    AGENT_FAILURE,
                    "the node agent returned neither a result nor an error",
                )
            })?;
            Ok(result_json::render(
                &result,
                &conf.cni_version,
                conf.prev_result(),
            ))
        }
        Command::Del => outcome(agent.del(socket, invocation).map_err(failed)?),
        Command::Check => outcome(agent.check(socket, invocation).map_err(failed)?),
        Command::Status => outcome(agent.status(socket, invocation).map_err(failed)?),
        Command::Gc => {
            let valid_attachments = valid_attachments(&conf.document)?;
            outcome(
                agent
                    .gc(
                        socket,
                        GcRequest {
                            invocation: Some(invocation),
                            valid_attachments,
                        },
                    )
                    .map_err(failed)?,
            )
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
        Some(error) => Err(agent_error(error)),
        None => Ok(String::new()),
    }
}

fn agent_error(error: AgentError) -> CniError {
    CniError::new(error.code, error.msg).with_details(error.details)
}

/// A failed call to the agent as a CNI error: STATUS says "not available", the others "try again".
fn call_error(command: Command, error: CallError) -> CniError {
    let (code, what) = match command {
        Command::Status => (NOT_AVAILABLE, "brindle node agent is not available"),
        _ => (
            TRY_AGAIN_LATER,
            "brindle node agent is not reachable; try again later",
        ),
    };
    match error {
        CallError::Unreachable(why) => CniError::new(code, what).with_details(why),
        CallError::TimedOut => CniError::new(code, "brindle node agent did not answer in time"),
        CallError::Failed(status)
            if matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ) =>
        {
            CniError::new(code, what).with_details(status.message().to_owned())
        }
        CallError::Failed(status) => {
            CniError::new(AGENT_FAILURE, "brindle node agent failed").with_details(status.to_string())
        }
    }
}
