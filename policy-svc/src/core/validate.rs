//! Checks that apply to every policy whatever its source: names, order, ports only with a
//! protocol that has them, port ranges, nets, named ports where they can be resolved.

use brindle_selector::Selector;

use super::error::{PolicyError, invalid};
use policy_api::model::{EntityRule, PortMatch, Protocol, Rule};

/// Longest named port (Kubernetes' IANA_SVC_NAME).
const MAX_PORT_NAME_LEN: usize = 15;

pub use brindle_selector::labels::{is_dns_label, is_dns_subdomain};

/// Checks a name field.
pub fn name(field: &str, value: &str, subdomain: bool) -> Result<(), PolicyError> {
    let ok = if subdomain {
        is_dns_subdomain(value)
    } else {
        is_dns_label(value)
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{value:?} is not a DNS-1123 {} (lowercase letters, digits, '-'{})",
                if subdomain { "subdomain" } else { "label" },
                if subdomain { ", '.'" } else { "" }
            ),
        ))
    }
}

/// Checks an IANA service name used as a named port.
pub fn port_name(field: &str, value: &str) -> Result<(), PolicyError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_PORT_NAME_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && value.chars().any(|c| c.is_ascii_lowercase())
        && !value.starts_with('-')
        && !value.ends_with('-')
        && !value.contains("--");
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{value:?} is not a port name (1-15 lowercase letters, digits and '-', at least one letter)"
            ),
        ))
    }
}

/// Parses a selector field, naming the field and position on error.
pub fn selector(field: &str, text: &str) -> Result<Selector, PolicyError> {
    Selector::parse(text).map_err(|e| invalid(field, e.to_string()))
}

/// The directions a policy's `types` (`field`: `spec.types`, or Kubernetes' `spec.policyTypes`)
/// name: (ingress, egress).
pub fn policy_types(field: &str, types: &[String]) -> Result<(bool, bool), PolicyError> {
    let mut enabled = (false, false);
    for (index, kind) in types.iter().enumerate() {
        match kind.as_str() {
            "Ingress" => enabled.0 = true,
            "Egress" => enabled.1 = true,
            other => {
                return Err(invalid(
                    format!("{field}[{index}]"),
                    format!("{other:?}: expected Ingress or Egress"),
                ));
            }
        }
    }
    Ok(enabled)
}

/// Checks the rules of one direction (`field` is e.g. `spec.ingress`).
pub fn rules(field: &str, rules: &[Rule]) -> Result<(), PolicyError> {
    for (index, rule) in rules.iter().enumerate() {
        let field = format!("{field}[{index}]");
        if let (Some(protocol), Some(not)) = (rule.protocol, rule.not_protocol)
            && protocol == not
        {
            return Err(invalid(
                format!("{field}.notProtocol"),
                format!("equals protocol {protocol}: the rule could never match"),
            ));
        }
        for (name, icmp) in [("icmp", rule.icmp), ("notICMP", rule.not_icmp)] {
            if icmp.is_some() && !matches!(rule.protocol, Some(Protocol::Icmp | Protocol::Icmpv6)) {
                return Err(invalid(
                    format!("{field}.{name}"),
                    "needs protocol ICMP or ICMPv6 on the rule",
                ));
            }
        }
        for (name, side) in [("source", &rule.source), ("destination", &rule.destination)] {
            entity(&format!("{field}.{name}"), rule, side)?;
        }
        if rule
            .source
            .ports
            .iter()
            .chain(&rule.source.not_ports)
            .any(|p| matches!(p, PortMatch::Named(_)))
        {
            return Err(invalid(
                format!("{field}.source.ports"),
                "named ports are resolved against the receiving endpoint: use them in destination.ports",
            ));
        }
    }
    Ok(())
}

fn entity(field: &str, rule: &Rule, side: &EntityRule) -> Result<(), PolicyError> {
    let has_ports = !side.ports.is_empty() || !side.not_ports.is_empty();
    if has_ports && !rule.protocol.is_some_and(|p| p.has_ports()) {
        return Err(invalid(
            format!("{field}.ports"),
            "ports need protocol TCP, UDP or SCTP on the rule",
        ));
    }
    for (name, ports) in [("ports", &side.ports), ("notPorts", &side.not_ports)] {
        for (index, port) in ports.iter().enumerate() {
            let field = format!("{field}.{name}[{index}]");
            match port {
                PortMatch::Range { first, last } if *first == 0 || first > last => {
                    return Err(invalid(
                        field,
                        format!("{first}:{last} is not a port range (1-65535, first ≤ last)"),
                    ));
                }
                PortMatch::Range { .. } => {}
                PortMatch::Named(name) => port_name(&field, name)?,
            }
        }
    }
    Ok(())
}
