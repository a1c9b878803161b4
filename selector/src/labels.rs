//! Labels as Kubernetes allows them (keys `[prefix/]name`, values of up to 63 characters) and the
//! `key=value` text that flags and the CLI take — one reading for every place labels come in.

/// Whether `name` is a DNS-1123 label (lowercase letters, digits, `-`; ≤ 63).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` is a DNS-1123 subdomain (dot-separated DNS labels; ≤ 253).
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// Whether `name` is a label name or value part: ≤ 63 alphanumerics and `-_.`, starting and
/// ending with an alphanumeric.
fn is_name_part(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether `key` is a label key: `[prefix/]name`, the prefix a DNS-1123 subdomain.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    is_name_part(name) && prefix.is_none_or(is_dns_subdomain)
}

/// Whether `value` is a label value: empty, or a name part.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_name_part(value)
}

/// Reads `key=value` (as `kubectl label` and `--node-labels` write it); the error names the text
/// and what is wrong with it.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not key=value"))?;
    if !is_label_key(key) {
        return Err(format!("{text:?}: {key:?} is not a label key ([prefix/]name)"));
    }
    if !is_label_value(value) {
        return Err(format!("{text:?}: {value:?} is not a label value"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_kubernetes_writes_them() {
        assert_eq!(parse_label("rack=a"), Ok(("rack".into(), "a".into())));
        assert_eq!(
            parse_label("topology.kubernetes.io/zone="),
            Ok(("topology.kubernetes.io/zone".into(), String::new()))
        );
        for bad in [
            "rack",
            "=a",
            " rack=a",
            "rack=a b",
            "Bad_/x=y",
            "k=-a",
            &format!("k={}", "v".repeat(64)),
        ] {
            let error = parse_label(bad).expect_err(bad);
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
