//! Input validation: every error names the field that is wrong.

use ipnet::IpNet;

use super::error::IpamError;
use ipam_api::model::{EncapMode, IpamConfig, Pool};

/// Default block prefix length for IPv4 pools.
pub const DEFAULT_IPV4_BLOCK_SIZE: u8 = 26;
/// Default block prefix length for IPv6 pools.
pub const DEFAULT_IPV6_BLOCK_SIZE: u8 = 122;
/// Most addresses one request may ask for per family.
pub const MAX_ADDRESSES_PER_REQUEST: u32 = 256;

const FORBIDDEN_V4: &[(&str, &str)] = &[
    ("169.254.0.0/16", "link-local"),
    ("127.0.0.0/8", "loopback"),
    ("224.0.0.0/4", "multicast"),
    ("0.0.0.0/8", "'this network'"),
];
const FORBIDDEN_V6: &[(&str, &str)] = &[
    ("fe80::/10", "link-local"),
    ("::1/128", "loopback"),
    ("ff00::/8", "multicast"),
];

/// Parses a CIDR whose host bits are zero.
pub fn cidr(field: &str, text: &str) -> Result<IpNet, IpamError> {
    let net: IpNet = text
        .trim()
        .parse()
        .map_err(|_| IpamError::invalid(field, format!("{text:?} is not a CIDR such as 10.244.0.0/16")))?;
    if net.trunc() != net {
        return Err(IpamError::invalid(
            field,
            format!("{net} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

/// A name used inside datastore keys: 1–253 characters of `[a-z0-9.-_]`, no `/`.
pub fn name(field: &str, value: &str) -> Result<(), IpamError> {
    if value.is_empty() {
        return Err(IpamError::invalid(field, "must not be empty"));
    }
    if value.len() > 253 {
        return Err(IpamError::invalid(
            field,
            format!("is {} characters long; at most 253", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IpamError::invalid(
            field,
            format!("{value:?} contains {bad:?}; only letters, digits, '.', '-' and '_' are allowed"),
        ));
    }
    Ok(())
}

/// Checks a pool on its own and against the other pools.
pub fn pool(pool: &Pool, others: &[Pool]) -> Result<(), IpamError> {
    name("pool.name", &pool.name)?;
    let (forbidden, range) = match pool.cidr {
        IpNet::V4(_) => (FORBIDDEN_V4, 20..=32),
        IpNet::V6(_) => (FORBIDDEN_V6, 116..=128),
    };
    for (net, what) in forbidden {
        let net: IpNet = net
            .parse()
            .map_err(|_| IpamError::invalid("pool.cidr", "internal table"))?;
        if net.contains(&pool.cidr.network()) || pool.cidr.contains(&net.network()) {
            return Err(IpamError::invalid(
                "pool.cidr",
                format!("{} overlaps the {what} range {net}", pool.cidr),
            ));
        }
    }
    if !range.contains(&pool.block_size) {
        return Err(IpamError::invalid(
            "pool.block_size",
            format!(
                "{} is outside {}..={} for this address family",
                pool.block_size,
                range.start(),
                range.end()
            ),
        ));
    }
    if pool.cidr.prefix_len() > pool.block_size {
        return Err(IpamError::invalid(
            "pool.cidr",
            format!(
                "/{} is smaller than one /{} block",
                pool.cidr.prefix_len(),
                pool.block_size
            ),
        ));
    }
    if pool.vxlan_mode != EncapMode::Never && pool.ipip_mode != EncapMode::Never {
        return Err(IpamError::invalid(
            "pool.ipip_mode",
            "VXLAN and IP-in-IP cannot both be enabled",
        ));
    }
    if matches!(pool.cidr, IpNet::V6(_)) && pool.ipip_mode != EncapMode::Never {
        return Err(IpamError::invalid(
            "pool.ipip_mode",
            "IP-in-IP is not supported for IPv6 pools",
        ));
    }
    if pool.allowed_uses.is_empty() {
        return Err(IpamError::invalid(
            "pool.allowed_uses",
            "must allow Workload, Tunnel or both",
        ));
    }
    if let Some(other) = others
        .iter()
        .find(|o| o.name != pool.name && (o.cidr.contains(&pool.cidr) || pool.cidr.contains(&o.cidr)))
    {
        return Err(IpamError::invalid(
            "pool.cidr",
            format!("{} overlaps pool {:?} ({})", pool.cidr, other.name, other.cidr),
        ));
    }
    Ok(())
}

/// Checks IPAM settings.
pub fn config(config: &IpamConfig) -> Result<(), IpamError> {
    if config.release_cooldown_seconds > 3600 {
        return Err(IpamError::invalid(
            "config.release_cooldown_seconds",
            format!("{} is more than an hour", config.release_cooldown_seconds),
        ));
    }
    Ok(())
}

/// Checks a handle id (used in keys).
pub fn handle_id(id: &str) -> Result<(), IpamError> {
    if id.is_empty() {
        return Err(IpamError::invalid("handle_id", "must not be empty"));
    }
    if id.len() > 512 {
        return Err(IpamError::invalid(
            "handle_id",
            format!("is {} characters long; at most 512", id.len()),
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| *c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(IpamError::invalid(
            "handle_id",
            format!("{id:?} contains {bad:?}"),
        ));
    }
    Ok(())
}

/// Checks a requested address count.
pub fn address_count(field: &str, count: u32) -> Result<(), IpamError> {
    if count > MAX_ADDRESSES_PER_REQUEST {
        return Err(IpamError::invalid(
            field,
            format!("{count} addresses requested; at most {MAX_ADDRESSES_PER_REQUEST} per request"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipam_api::model::AllowedUse;

    fn pool_of(name: &str, cidr: &str, block: u8) -> Pool {
        Pool {
            name: name.into(),
            cidr: cidr.parse().expect("cidr"),
            block_size: block,
            vxlan_mode: EncapMode::Never,
            ipip_mode: EncapMode::Never,
            nat_outgoing: false,
            disabled: false,
            node_selector: Default::default(),
            allowed_uses: vec![AllowedUse::Workload],
            disable_bgp_export: false,
        }
    }

    fn field_of(result: Result<(), IpamError>) -> String {
        match result {
            Err(IpamError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn pool_errors_name_the_field() {
        let existing = [pool_of("a", "10.0.0.0/16", 26)];
        assert_eq!(
            field_of(pool(&pool_of("b", "10.0.128.0/17", 26), &existing)),
            "pool.cidr"
        );
        assert_eq!(
            field_of(pool(&pool_of("b", "169.254.0.0/16", 26), &[])),
            "pool.cidr"
        );
        assert_eq!(field_of(pool(&pool_of("b", "fe80::/64", 122), &[])), "pool.cidr");
        assert_eq!(field_of(pool(&pool_of("b", "10.1.0.0/28", 26), &[])), "pool.cidr");
        assert_eq!(
            field_of(pool(&pool_of("b", "10.1.0.0/16", 19), &[])),
            "pool.block_size"
        );
        assert_eq!(
            field_of(pool(&pool_of("b", "fd00::/64", 26), &[])),
            "pool.block_size"
        );
        assert_eq!(
            field_of(pool(&pool_of("B/x", "10.1.0.0/16", 26), &[])),
            "pool.name"
        );
        let mut both = pool_of("b", "10.1.0.0/16", 26);
        both.vxlan_mode = EncapMode::Always;
        both.ipip_mode = EncapMode::Always;
        assert_eq!(field_of(pool(&both, &[])), "pool.ipip_mode");
        let mut v6_ipip = pool_of("b", "fd00::/64", 122);
        v6_ipip.ipip_mode = EncapMode::Always;
        assert_eq!(field_of(pool(&v6_ipip, &[])), "pool.ipip_mode");
        assert!(pool(&pool_of("b", "10.1.0.0/16", 26), &existing).is_ok());
    }

    #[test]
    fn cidr_parsing_is_strict() {
        assert!(cidr("f", "10.0.0.0/8").is_ok());
        assert!(
            matches!(cidr("f", "10.0.0.1/8"), Err(IpamError::InvalidArgument { message, .. }) if message.contains("10.0.0.0/8"))
        );
        assert!(cidr("f", "10.0.0.0").is_err());
        assert!(cidr("f", "banana").is_err());
    }
}
