//! A selector over node labels as an object keeps it (an IP pool's, a BGP peer's): parsed when
//! written, kept as written, empty for every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ParseError, Selector};

/// A selector over node labels (a pool's, a BGP peer's), parsed when its object is written, so an
/// unparsable one is refused then. Kept as written; empty selects every node. A stored record whose selector no
/// longer parses (written by hand, or under another grammar) still reads — one bad pool must not
/// make every pool unreadable — and selects no node ([`NodeSelector::is_valid`] tells).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSelector {
    text: String,
    parsed: Parsed,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Parsed {
    /// Empty: every node.
    #[default]
    Everything,
    /// A selector.
    Selector(Selector),
    /// Does not parse: no node.
    Invalid,
}

impl NodeSelector {
    /// Parses `text` (empty: every node).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let parsed = if text.trim().is_empty() {
            Parsed::Everything
        } else {
            Parsed::Selector(Selector::parse(text)?)
        };
        Ok(Self {
            text: text.to_owned(),
            parsed,
        })
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a node with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.parsed {
            Parsed::Everything => true,
            Parsed::Selector(selector) => selector.matches(labels),
            Parsed::Invalid => false,
        }
    }

    /// Whether the selector parses (a stored one may not, see the type's documentation).
    pub fn is_valid(&self) -> bool {
        self.parsed != Parsed::Invalid
    }
}

impl Serialize for NodeSelector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for NodeSelector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Self::parse(&text).unwrap_or(Self {
            text,
            parsed: Parsed::Invalid,
        }))
    }
}
