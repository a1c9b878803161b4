//! Errors of kernel operations.

use std::path::PathBuf;

/// Why a kernel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A netlink request failed.
    #[error("netlink {operation}: {source}")]
    Netlink {
        /// What was being done.
        operation: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// An object that must be new exists already.
    #[error("{0} already exists")]
    Exists(String),
    /// An object that must exist does not.
    #[error("{0} does not exist")]
    Missing(String),
    /// A kernel tool (iptables-restore, iptables) failed.
    #[error("{what}: {detail}")]
    Tool {
        /// What was being done.
        what: String,
        /// The tool's error output.
        detail: String,
    },
    /// The kernel lacks a feature brindle was asked to use.
    #[error("{feature} is not supported by this kernel ({reason}); {advice}")]
    Unsupported {
        /// The feature.
        feature: String,
        /// What the kernel said.
        reason: String,
        /// What to do instead.
        advice: String,
    },
    /// A network namespace could not be entered.
    #[error("network namespace {path}: {reason}")]
    Netns {
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A system call failed (a file under /proc, a netlink socket).
    #[error("{what}: {source}")]
    Io {
        /// Which file.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl DataplaneError {
    /// Wraps a netlink error for `operation`, recognising "exists" and "no such device".
    pub fn netlink(operation: impl Into<String>, source: rtnetlink::Error) -> Self {
        let operation = operation.into();
        match errno(&source) {
            Some(code) if code == nix::errno::Errno::EEXIST as i32 => Self::Exists(operation),
            Some(code)
                if code == nix::errno::Errno::ENODEV as i32 || code == nix::errno::Errno::ESRCH as i32 =>
            {
                Self::Missing(operation)
            }
            _ => Self::Netlink { operation, source },
        }
    }
}

/// The positive errno of a netlink error reply, if that is what it is.
pub fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}
