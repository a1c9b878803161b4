//! IPAM handle ids, one encoding for every kind: a node's tunnel addresses
//! (`vxlan-tunnel-addr-<node>`, `vxlan-v6-tunnel-addr-<node>`, `ipip-tunnel-addr-<node>`, Calico's
//! names) and a pod attachment's addresses — Calico's `<network>.<containerID>` for `eth0` on a
//! network whose name has no `.`, else `<network>:<containerID>:<ifname>`. CNI allows neither `:`
//! in network names and container ids nor `:` in interface names, and the short form is used only
//! where its first `.` ends the network name, so no two attachments share an id and an id names
//! its network exactly.

use std::fmt;

/// The kinds of tunnel address a node holds, each under its own handle. Handles of these kinds
/// are node infrastructure: never a pod's leak, never released by a pod garbage collection (a
/// node's deletion releases them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// The IPv4 address of the VXLAN device.
    VxlanV4,
    /// The IPv6 address of the VXLAN device.
    VxlanV6,
    /// The address of the IP-in-IP device.
    Ipip,
}

impl TunnelKind {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::VxlanV4, Self::VxlanV6, Self::Ipip];

    fn prefix(self) -> &'static str {
        match self {
            Self::VxlanV4 => "vxlan-tunnel-addr-",
            Self::VxlanV6 => "vxlan-v6-tunnel-addr-",
            Self::Ipip => "ipip-tunnel-addr-",
        }
    }

    /// The handle id of `node`'s address of this kind.
    pub fn handle(self, node: &str) -> String {
        format!("{}{node}", self.prefix())
    }
}

/// The tunnel kind and node of a tunnel handle id; `None` for any other id.
pub fn tunnel_handle(id: &str) -> Option<(TunnelKind, &str)> {
    TunnelKind::ALL.into_iter().find_map(|kind| {
        id.strip_prefix(kind.prefix())
            .filter(|node| !node.is_empty())
            .map(|node| (kind, node))
    })
}

/// Whether `id` is a tunnel handle (of any kind).
pub fn is_tunnel_handle(id: &str) -> bool {
    tunnel_handle(id).is_some()
}

/// The interface whose attachments keep Calico's short handle form.
const DEFAULT_IFNAME: &str = "eth0";
/// Separator of the long form.
const SEPARATOR: char = ':';

/// A pod attachment's handle: CNI's (network, container id, interface).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadHandle {
    /// The network configuration's name.
    pub network: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

/// Why a network name, container id or interface name cannot form a handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} {reason}")]
pub struct HandleError {
    /// Which part: `network name`, `container id` or `interface name`.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// CNI's rule for network names and container ids: an ASCII letter or digit, then letters,
/// digits, `_`, `.` and `-`.
fn cni_identifier(field: &'static str, value: &str) -> Result<(), HandleError> {
    let error = |reason| HandleError {
        field,
        value: value.to_owned(),
        reason,
    };
    let mut chars = value.chars();
    match chars.next() {
        None => return Err(error("is empty")),
        Some(first) if !first.is_ascii_alphanumeric() => {
            return Err(error("must start with a letter or digit"));
        }
        Some(_) => {}
    }
    if chars.any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(error("may hold only letters, digits, '_', '.' and '-'"));
    }
    Ok(())
}

/// Checks a CNI network name: [`cni_identifier`]'s rule, and no name a tunnel handle starts
/// like.
pub fn validate_network(network: &str) -> Result<(), HandleError> {
    cni_identifier("network name", network)?;
    if is_tunnel_handle(&format!("{network}.")) {
        return Err(HandleError {
            field: "network name",
            value: network.to_owned(),
            reason: "starts like a node's tunnel handle (vxlan-tunnel-addr-, vxlan-v6-tunnel-addr-, ipip-tunnel-addr-)",
        });
    }
    Ok(())
}

impl WorkloadHandle {
    /// Checks the parts against CNI's rules (what makes the id unambiguous): network name as
    /// [`validate_network`], container id as [`cni_identifier`], an interface name of 1–15 characters without `/`, `:`
    /// or white space and other than `.` and `..`.
    pub fn validate(&self) -> Result<(), HandleError> {
        validate_network(&self.network)?;
        cni_identifier("container id", &self.container_id)?;
        let ifname = &self.ifname;
        let bad_ifname = |reason| HandleError {
            field: "interface name",
            value: ifname.clone(),
            reason,
        };
        if ifname.is_empty() || ifname.len() > 15 {
            return Err(bad_ifname("must be 1-15 characters long"));
        }
        if ifname == "." || ifname == ".." {
            return Err(bad_ifname("is not a name"));
        }
        if ifname
            .chars()
            .any(|c| c == '/' || c == SEPARATOR || c.is_whitespace() || c.is_control())
        {
            return Err(bad_ifname(
                "must not hold '/', ':', white space or control characters",
            ));
        }
        Ok(())
    }

    /// The handle id.
    pub fn id(&self) -> String {
        self.to_string()
    }

    /// The attachment a workload handle id names; `None` for tunnel handles and ids of other
    /// forms.
    pub fn parse(id: &str) -> Option<Self> {
        if is_tunnel_handle(id) {
            return None;
        }
        let handle = if id.contains(SEPARATOR) {
            let mut parts = id.splitn(3, SEPARATOR);
            let (network, container_id, ifname) = (parts.next()?, parts.next()?, parts.next()?);
            Self {
                network: network.to_owned(),
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
            }
        } else {
            let (network, container_id) = id.split_once('.')?;
            Self {
                network: network.to_owned(),
                container_id: container_id.to_owned(),
                ifname: DEFAULT_IFNAME.to_owned(),
            }
        };
        (handle.validate().is_ok() && handle.id() == id).then_some(handle)
    }
}

impl fmt::Display for WorkloadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ifname == DEFAULT_IFNAME && !self.network.contains('.') {
            write!(f, "{}.{}", self.network, self.container_id)
        } else {
            write!(
                f,
                "{}{SEPARATOR}{}{SEPARATOR}{}",
                self.network, self.container_id, self.ifname
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(network: &str, container_id: &str, ifname: &str) -> WorkloadHandle {
        WorkloadHandle {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn eth0_keeps_calicos_form_and_every_other_attachment_gets_the_long_one() {
        assert_eq!(
            handle("k8s-pod-network", "abc", "eth0").id(),
            "k8s-pod-network.abc"
        );
        assert_eq!(handle("net", "x.y", "eth0").id(), "net.x.y");
        assert_eq!(handle("net", "x", "eth1").id(), "net:x:eth1");
        assert_eq!(handle("my.net", "x", "eth0").id(), "my.net:x:eth0");
    }

    #[test]
    fn ids_that_used_to_collide_differ_and_parse_back_exactly() {
        let pairs = [
            // Container "x.eth1" on eth0 and container "x" on eth1.
            (handle("net", "x.eth1", "eth0"), handle("net", "x", "eth1")),
            // Network "a.b" and network "a" with a container starting "b.".
            (handle("a.b", "c", "eth0"), handle("a", "b.c", "eth0")),
            (handle("net", "x", "eth0.100"), handle("net", "x.eth0", "100")),
        ];
        for (one, other) in pairs {
            assert_ne!(one.id(), other.id(), "{one:?} and {other:?}");
            for attachment in [one, other] {
                assert_eq!(WorkloadHandle::parse(&attachment.id()), Some(attachment));
            }
        }
    }

    #[test]
    fn tunnel_handles_are_one_list_and_never_workloads() {
        for kind in TunnelKind::ALL {
            let id = kind.handle("node-1.example.com");
            assert_eq!(tunnel_handle(&id), Some((kind, "node-1.example.com")));
            assert!(is_tunnel_handle(&id));
            assert_eq!(WorkloadHandle::parse(&id), None);
        }
        assert!(is_tunnel_handle("vxlan-v6-tunnel-addr-n1"));
        assert!(!is_tunnel_handle("net.vxlan-tunnel-addr-n1"));
        assert!(!is_tunnel_handle("vxlan-tunnel-addr-"));
    }

    #[test]
    fn parts_outside_cnis_rules_are_refused_naming_the_part() {
        let cases = [
            (handle("", "c", "eth0"), "network name"),
            (handle("-net", "c", "eth0"), "network name"),
            (handle("net", "c:d", "eth0"), "container id"),
            (handle("net", "c d", "eth0"), "container id"),
            (handle("net", "c", "eth:1"), "interface name"),
            (handle("net", "c", "eth\n1"), "interface name"),
            (handle("net", "c", "sixteen-chars-xx"), "interface name"),
            (handle("vxlan-tunnel-addr-x", "c", "eth0"), "network name"),
        ];
        for (attachment, field) in cases {
            assert_eq!(
                attachment.validate().map_err(|e| e.field),
                Err(field),
                "{attachment:?}"
            );
        }
        assert_eq!(WorkloadHandle::parse("no-separator"), None);
        assert_eq!(WorkloadHandle::parse("net:only-two"), None);
    }
}
