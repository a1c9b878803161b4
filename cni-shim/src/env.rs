//! The CNI environment (CNI_COMMAND, CNI_CONTAINERID, …) and its validation per command.

use std::collections::BTreeMap;

use crate::error::{CniError, INVALID_ENVIRONMENT};

/// CNI_ARGS keys brindle understands; others need `IgnoreUnknown=1`.
const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
];

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify.
    Check,
    /// Can the plugin serve ADD?
    Status,
    /// Free what is not in the valid list.
    Gc,
    /// Report supported versions.
    Version,
}

/// The environment a runtime sets.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// CNI_COMMAND.
    pub command: Option<String>,
    /// CNI_CONTAINERID.
    pub container_id: Option<String>,
    /// CNI_NETNS.
    pub netns: Option<String>,
    /// CNI_IFNAME.
    pub ifname: Option<String>,
    /// CNI_ARGS.
    pub args: Option<String>,
    /// CNI_PATH.
    pub path: Option<String>,
}

impl Invocation {
    /// Reads the process environment.
    pub fn from_process() -> Self {
        let var = |name| std::env::var(name).ok();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
            path: var("CNI_PATH"),
        }
    }

    /// The command, or code 4 when missing or unknown.
    pub fn command(&self) -> Result<Command, CniError> {
        match self.command.as_deref() {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("STATUS") => Ok(Command::Status),
            Some("GC") => Ok(Command::Gc),
            Some("VERSION") => Ok(Command::Version),
            Some(other) => Err(CniError::new(
                INVALID_ENVIRONMENT,
                format!("unknown CNI_COMMAND {other:?}"),
            )),
            None => Err(CniError::new(INVALID_ENVIRONMENT, "CNI_COMMAND is not set")),
        }
    }

    /// Checks the variables `command` requires; returns the parsed CNI_ARGS.
    pub fn validate(&self, command: Command) -> Result<BTreeMap<String, String>, CniError> {
        let required: &[(&str, &Option<String>)] = match command {
            Command::Add | Command::Check => &[
                ("CNI_CONTAINERID", &self.container_id),
                ("CNI_IFNAME", &self.ifname),
                ("CNI_NETNS", &self.netns),
            ],
            Command::Del => &[
                ("CNI_CONTAINERID", &self.container_id),
                ("CNI_IFNAME", &self.ifname),
            ],
            Command::Status | Command::Gc | Command::Version => &[],
        };
        for (name, value) in required {
            if value.as_deref().is_none_or(str::is_empty) {
                return Err(CniError::new(
                    INVALID_ENVIRONMENT,
                    format!("{name} is required for this command"),
                ));
            }
        }
        if let Some(ifname) = &self.ifname
            && matches!(command, Command::Add | Command::Check | Command::Del)
            && (ifname.len() > 15 || ifname.contains(['/', ' ']) || ifname == "." || ifname == "..")
        {
            return Err(CniError::new(
                INVALID_ENVIRONMENT,
                format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
            ));
        }
        parse_args(self.args.as_deref().unwrap_or_default())
    }
}

/// Parses `K=V;K2=V2`; unknown keys are refused unless `IgnoreUnknown` is true.
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                INVALID_ENVIRONMENT,
                format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
            )
        })?;
        args.insert(key.to_owned(), value.to_owned());
    }
    let ignore_unknown = args
        .get("IgnoreUnknown")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true"));
    if !ignore_unknown && let Some(unknown) = args.keys().find(|k| !KNOWN_ARGS.contains(&k.as_str())) {
        return Err(CniError::new(
            INVALID_ENVIRONMENT,
            format!(
                "CNI_ARGS key {unknown:?} is not known to brindle-cni (set IgnoreUnknown=1 to ignore it)"
            ),
        ));
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_tolerate_unknown_only_when_asked() {
        assert!(parse_args("K8S_POD_NAME=web;FOO=bar").is_err());
        let args = parse_args("IgnoreUnknown=1;K8S_POD_NAME=web;FOO=bar").expect("tolerated");
        assert_eq!(args["K8S_POD_NAME"], "web");
        assert!(parse_args("novalue").is_err());
        assert!(parse_args("").expect("empty").is_empty());
    }

    #[test]
    fn required_variables_are_named() {
        let env = Invocation {
            command: Some("ADD".into()),
            container_id: Some("c1".into()),
            ifname: Some("eth0".into()),
            ..Invocation::default()
        };
        let err = env.validate(Command::Add).expect_err("netns missing");
        assert!(err.msg.contains("CNI_NETNS"), "{err:?}");
        assert!(env.validate(Command::Del).is_ok(), "DEL works without a netns");
    }
}
