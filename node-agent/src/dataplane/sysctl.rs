//! Sysctls through `/proc/sys` (of the namespace the agent runs in).

use std::path::PathBuf;

use super::{DataplaneError, Sysctl};

/// The real `/proc/sys`.
#[derive(Debug, Default, Clone)]
pub struct ProcSysctl;

fn path_of(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key)
}

impl Sysctl for ProcSysctl {
    fn set(&self, key: &str, value: &str) -> Result<(), DataplaneError> {
        std::fs::write(path_of(key), value).map_err(|source| DataplaneError::Io {
            what: format!("setting {key}={value}"),
            source,
        })
    }

    fn get(&self, key: &str) -> Result<String, DataplaneError> {
        std::fs::read_to_string(path_of(key))
            .map(|v| v.trim().to_owned())
            .map_err(|source| DataplaneError::Io {
                what: format!("reading {key}"),
                source,
            })
    }
}
