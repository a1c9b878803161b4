//! What of a node's view may reach the kernel's rule text (`iptables-restore`, `ipset restore`
//! input): interface names, policy and set ids, networks and set members, each in the one form
//! the calculation produces. The agent checks every entry when it decodes the view and its
//! renderer leaves out what fails, so no text from outside can add a line or a match of its own.
//! (An entry that fails at decoding fails the whole message: the agent keeps the view it had and
//! reconnects. The renderer's check is the second line, for views that reach it otherwise.)

use std::net::IpAddr;

use ipnet::IpNet;

use crate::view::{CompiledSide, ViewEntry};

/// Longest policy or set id: `brd-pi-<id>` must fit iptables' 28-character chain names and
/// `brd6-tmp-<id>` ipset's 31-character set names.
const MAX_ID_LEN: usize = 21;
/// Longest interface name (the kernel's).
const MAX_INTERFACE_LEN: usize = 15;

/// Whether `text` is 1–`max` ASCII letters, digits, `_`, `-` (and `.` when `dots`).
pub fn plain(text: &str, max: usize, dots: bool) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (dots && c == '.'))
}

/// An interface name (a workload's or a host endpoint's): 1–15 letters, digits, `.`, `_`, `-`
/// (never iptables' `+` wildcard, a quote, `!`, white space or a line break).
pub fn is_interface_name(text: &str) -> bool {
    plain(text, MAX_INTERFACE_LEN, true)
}

/// A policy or set id: 1–21 letters, digits, `_`, `-`.
pub fn is_id(text: &str) -> bool {
    plain(text, MAX_ID_LEN, false)
}

/// A set member: an address or network, or `address,tcp|udp|sctp:port`.
pub fn is_member(text: &str) -> bool {
    let (address, port) = match text.split_once(',') {
        Some((address, port)) => (address, Some(port)),
        None => (text, None),
    };
    let address_ok = address.parse::<IpAddr>().is_ok() || address.parse::<IpNet>().is_ok();
    let port_ok = port.is_none_or(|port| {
        port.split_once(':').is_some_and(|(protocol, number)| {
            matches!(protocol, "tcp" | "udp" | "sctp") && number.parse::<u16>().is_ok_and(|n| n > 0)
        })
    });
    address_ok && port_ok
}

fn check_side(field: &str, side: &CompiledSide) -> Result<(), String> {
    let sets = side
        .sets
        .iter()
        .chain(&side.not_sets)
        .chain(&side.named_port_sets)
        .chain(&side.not_named_port_sets);
    if let Some(set) = sets.into_iter().find(|s| !is_id(s)) {
        return Err(format!("{field}: set id {set:?} is not an id"));
    }
    if let Some(net) = side
        .nets
        .iter()
        .chain(&side.not_nets)
        .find(|n| n.parse::<IpNet>().is_err())
    {
        return Err(format!("{field}: {net:?} is not a network"));
    }
    Ok(())
}

/// Checks one view entry; the error names what is wrong.
pub fn check(entry: &ViewEntry) -> Result<(), String> {
    match entry {
        ViewEntry::Endpoint(endpoint) => {
            if !is_interface_name(&endpoint.interface) {
                return Err(format!(
                    "endpoint interface {:?} is not a workload interface name",
                    endpoint.interface
                ));
            }
            if let Some(id) = endpoint
                .ingress
                .iter()
                .chain(&endpoint.egress)
                .find(|id| !is_id(id))
            {
                return Err(format!(
                    "endpoint {:?}: policy id {id:?} is not an id",
                    endpoint.interface
                ));
            }
        }
        ViewEntry::HostEndpoint(host) => {
            if let Some(interface) = host.interface.as_ref().filter(|i| !is_interface_name(i)) {
                return Err(format!(
                    "host endpoint {:?}: interface {interface:?} is not an interface name",
                    host.name
                ));
            }
            if let Some(id) = host.ingress.iter().chain(&host.egress).find(|id| !is_id(id)) {
                return Err(format!(
                    "host endpoint {:?}: policy id {id:?} is not an id",
                    host.name
                ));
            }
        }
        ViewEntry::Policy(policy) => {
            if !is_id(&policy.id) {
                return Err(format!("policy id {:?} is not an id", policy.id));
            }
            for (direction, rules) in [("ingress", &policy.ingress), ("egress", &policy.egress)] {
                for (index, rule) in rules.iter().enumerate() {
                    let field = format!("policy {}: {direction}[{index}]", policy.id);
                    check_side(&format!("{field}.source"), &rule.source)?;
                    check_side(&format!("{field}.destination"), &rule.destination)?;
                }
            }
        }
        ViewEntry::IpSet(set) => {
            if !is_id(&set.id) {
                return Err(format!("set id {:?} is not an id", set.id));
            }
        }
        ViewEntry::Member(member) => {
            if !is_id(&member.set) {
                return Err(format!("set id {:?} is not an id", member.set));
            }
            if !is_member(&member.member) {
                return Err(format!(
                    "set {}: member {:?} is not an address, a network or address,protocol:port",
                    member.set, member.member
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_forms_the_calculation_makes_pass() {
        for good in ["brd0123456789a", "eth0.100", "cali_x-1"] {
            assert!(is_interface_name(good), "{good}");
        }
        for bad in [
            "brd+",
            "",
            "a b",
            "x\n-A FORWARD -j ACCEPT",
            "x\"y",
            "!x",
            "sixteen-chars-xx",
        ] {
            assert!(!is_interface_name(bad), "{bad:?}");
        }
        assert!(is_id("s0123456789abcdef"));
        assert!(!is_id("s0123 -j ACCEPT"));
        assert!(!is_id("0123456789abcdef012345"));
        for good in [
            "10.0.0.1",
            "fd00::1",
            "10.0.0.0/24",
            "10.0.0.1,tcp:80",
            "fd00::1,sctp:9",
        ] {
            assert!(is_member(good), "{good}");
        }
        for bad in [
            "10.0.0.1\nflush brd-x",
            "10.0.0.1,tcp:0",
            "10.0.0.1,icmp:1",
            "x",
            "10.0.0.1 -exist",
        ] {
            assert!(!is_member(bad), "{bad:?}");
        }
    }
}
