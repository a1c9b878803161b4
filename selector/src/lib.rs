//! Label selectors (Calico's grammar): `k == 'v'`, `k != 'v'` (true when absent), `k in {'a','b'}`,
//! `k not in {…}`, `has(k)`, `!`, `&&`, `||`, parentheses and `all()`. Parsing reports the byte
//! position of the first problem; `Display` prints text that parses back to the same tree, and
//! [`Selector::canonical`] normalises a tree so that selectors written differently but meaning the
//! same print (and [`Selector::id`] hash) the same — the id names the selector's ipset.
//! [`labels`] says which label keys and values exist.

pub mod labels;
mod node_selector;
mod parser;

use std::collections::BTreeMap;
use std::fmt;

pub use node_selector::NodeSelector;
pub use parser::ParseError;

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 1024;

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Matches everything (`all()`, also the empty selector).
    All,
    /// `has(key)`.
    Has(String),
    /// `key == 'value'`.
    Equals(String, String),
    /// `key != 'value'`; true when the key is absent.
    NotEquals(String, String),
    /// `key in {'a', 'b'}`.
    In(String, Vec<String>),
    /// `key not in {'a', 'b'}`; true when the key is absent.
    NotIn(String, Vec<String>),
    /// `!expr`.
    Not(Box<Selector>),
    /// `a && b && …`.
    And(Vec<Selector>),
    /// `a || b || …`.
    Or(Vec<Selector>),
}

impl Selector {
    /// Parses `text`; an empty (or all-whitespace) selector is [`Selector::All`].
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        parser::parse(text)
    }

    /// The normal form: `&&`/`||` flattened, operands sorted and deduplicated, value sets sorted,
    /// `!!x` reduced to `x`, `all()` absorbed (`x && all()` is `x`, `x || all()` is `all()`).
    /// Two selectors with the same canonical form match the same labels.
    #[must_use]
    pub fn canonical(&self) -> Self {
        match self {
            Self::All | Self::Has(_) | Self::Equals(..) | Self::NotEquals(..) => self.clone(),
            Self::In(key, values) => Self::In(key.clone(), sorted_unique(values)),
            Self::NotIn(key, values) => Self::NotIn(key.clone(), sorted_unique(values)),
            Self::Not(inner) => match inner.canonical() {
                Self::Not(twice) => *twice,
                other => Self::Not(Box::new(other)),
            },
            Self::And(parts) => join(parts, true),
            Self::Or(parts) => join(parts, false),
        }
    }

    /// A stable 16-hex-digit id of the canonical form (the first 64 bits of its SHA-1): equal for
    /// equivalent spellings, the same across releases and machines.
    pub fn id(&self) -> String {
        let digest = sha1_smol::Sha1::from(self.canonical().to_string())
            .digest()
            .to_string();
        digest[..16].to_owned()
    }

    /// The same selector over renamed label keys (e.g. namespace labels under a prefix).
    #[must_use]
    pub fn map_keys(&self, rename: &dyn Fn(&str) -> String) -> Self {
        match self {
            Self::All => Self::All,
            Self::Has(key) => Self::Has(rename(key)),
            Self::Equals(key, value) => Self::Equals(rename(key), value.clone()),
            Self::NotEquals(key, value) => Self::NotEquals(rename(key), value.clone()),
            Self::In(key, values) => Self::In(rename(key), values.clone()),
            Self::NotIn(key, values) => Self::NotIn(rename(key), values.clone()),
            Self::Not(inner) => Self::Not(Box::new(inner.map_keys(rename))),
            Self::And(parts) => Self::And(parts.iter().map(|p| p.map_keys(rename)).collect()),
            Self::Or(parts) => Self::Or(parts.iter().map(|p| p.map_keys(rename)).collect()),
        }
    }

    /// Whether a set of labels matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Self::All => true,
            Self::Has(key) => labels.contains_key(key),
            Self::Equals(key, value) => labels.get(key) == Some(value),
            Self::NotEquals(key, value) => labels.get(key) != Some(value),
            Self::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Self::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Self::Not(inner) => !inner.matches(labels),
            Self::And(parts) => parts.iter().all(|p| p.matches(labels)),
            Self::Or(parts) => parts.iter().any(|p| p.matches(labels)),
        }
    }
}

fn sorted_unique(values: &[String]) -> Vec<String> {
    let mut values = values.to_vec();
    values.sort();
    values.dedup();
    values
}

/// Canonical `&&` (`conjunction`) or `||` of `parts`: nested same-operator trees flattened,
/// operands canonical, sorted by their text and deduplicated, `all()` absorbed.
fn join(parts: &[Selector], conjunction: bool) -> Selector {
    let mut flat = Vec::new();
    for part in parts.iter().map(Selector::canonical) {
        match part {
            Selector::And(inner) if conjunction => flat.extend(inner),
            Selector::Or(inner) if !conjunction => flat.extend(inner),
            Selector::All if conjunction => {}
            Selector::All => return Selector::All,
            other => flat.push(other),
        }
    }
    let mut keyed: Vec<(String, Selector)> = flat.into_iter().map(|p| (p.to_string(), p)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    let mut flat: Vec<Selector> = keyed.into_iter().map(|(_, p)| p).collect();
    match flat.len() {
        0 => Selector::All,
        1 => flat.remove(0),
        _ if conjunction => Selector::And(flat),
        _ => Selector::Or(flat),
    }
}

/// Writes a quoted literal: single quotes unless the value holds one (the grammar has no escapes,
/// so a value never holds both kinds).
fn write_literal(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if value.contains('\'') {
        write!(f, "\"{value}\"")
    } else {
        write!(f, "'{value}'")
    }
}

fn write_values(f: &mut fmt::Formatter<'_>, values: &[String]) -> fmt::Result {
    f.write_str("{")?;
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_literal(f, value)?;
    }
    f.write_str("}")
}

/// Writes `part`, parenthesised when it would otherwise merge with or bind looser than the
/// surrounding operator (so the printed text parses back to the same tree).
fn write_operand(f: &mut fmt::Formatter<'_>, part: &Selector, inside_and: bool) -> fmt::Result {
    if matches!(part, Selector::Or(_)) || (inside_and && matches!(part, Selector::And(_))) {
        write!(f, "({part})")
    } else {
        write!(f, "{part}")
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all()"),
            Self::Has(key) => write!(f, "has({key})"),
            Self::Equals(key, value) => {
                write!(f, "{key} == ")?;
                write_literal(f, value)
            }
            Self::NotEquals(key, value) => {
                write!(f, "{key} != ")?;
                write_literal(f, value)
            }
            Self::In(key, values) => {
                write!(f, "{key} in ")?;
                write_values(f, values)
            }
            Self::NotIn(key, values) => {
                write!(f, "{key} not in ")?;
                write_values(f, values)
            }
            Self::Not(inner) => match inner.as_ref() {
                Self::And(_) | Self::Or(_) => write!(f, "!({inner})"),
                _ => write!(f, "!{inner}"),
            },
            Self::And(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" && ")?;
                    }
                    write_operand(f, part, true)?;
                }
                Ok(())
            }
            Self::Or(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" || ")?;
                    }
                    write_operand(f, part, false)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn evaluates_calico_semantics() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("", true),
            ("all()", true),
            ("app == 'web'", true),
            ("app == \"db\"", false),
            ("app != 'db'", true),
            ("missing != 'x'", true),
            ("missing == 'x'", false),
            ("has(tier)", true),
            ("!has(tier)", false),
            ("app in {'web', 'api'}", true),
            ("app not in {'web'}", false),
            ("missing not in {'web'}", true),
            ("app == 'web' && tier == 'back'", false),
            ("app == 'web' || tier == 'back'", true),
            ("!(app == 'db' || tier == 'back')", true),
            ("app == 'db' || app == 'web' && has(tier)", true),
        ];
        for (text, want) in cases {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(selector.matches(&l), want, "{text}");
        }
    }

    #[test]
    fn canonical_form_round_trips() {
        for text in [
            "a == 'x' && (b == 'y' || !has(c))",
            "!(a == 'x' && b != 'y')",
            "k in {'1', '2'} || k not in {}",
            "x.io/name == 'v' && all()",
        ] {
            let parsed = Selector::parse(text).expect("parse");
            let printed = parsed.to_string();
            assert_eq!(
                Selector::parse(&printed).expect("reparse"),
                parsed,
                "{text} -> {printed}"
            );
        }
    }
}
