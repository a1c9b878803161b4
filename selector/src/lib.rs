//! Label selectors (Calico's grammar): `k == 'v'`, `k != 'v'` (true when absent), `k in {'a','b'}`,
//! `k not in {…}`, `has(k)`, `!`, `&&`, `||`, parentheses and `all()`. Parsing reports the byte
//! position of the first problem; `Display` prints a canonical form that parses back to the same tree.

mod parser;

use std::collections::BTreeMap;
use std::fmt;

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

fn write_values(f: &mut fmt::Formatter<'_>, values: &[String]) -> fmt::Result {
    f.write_str("{")?;
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "'{value}'")?;
    }
    f.write_str("}")
}

/// Writes `part`, parenthesised when it binds looser than the surrounding operator.
fn write_operand(f: &mut fmt::Formatter<'_>, part: &Selector, inside_and: bool) -> fmt::Result {
    if inside_and && matches!(part, Selector::Or(_)) {
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
            Self::Equals(key, value) => write!(f, "{key} == '{value}'"),
            Self::NotEquals(key, value) => write!(f, "{key} != '{value}'"),
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
