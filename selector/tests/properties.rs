//! Property tests: printing a selector parses back to the same tree, and canonicalising never
//! changes which labels match.

use std::collections::BTreeMap;

use brindle_selector::Selector;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["app", "tier", "k8s.io/name", "has", "all", "in", "x-y_z"])
        .prop_map(str::to_owned)
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["web", "db", "", "it's", "a \"b\"", "x y", "1"]).prop_map(str::to_owned)
}

fn selector() -> impl Strategy<Value = Selector> {
    let leaf = prop_oneof![
        Just(Selector::All),
        key().prop_map(Selector::Has),
        (key(), value()).prop_map(|(k, v)| Selector::Equals(k, v)),
        (key(), value()).prop_map(|(k, v)| Selector::NotEquals(k, v)),
        (key(), prop::collection::vec(value(), 0..3)).prop_map(|(k, v)| Selector::In(k, v)),
        (key(), prop::collection::vec(value(), 0..3)).prop_map(|(k, v)| Selector::NotIn(k, v)),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Selector::And),
            prop::collection::vec(inner, 2..4).prop_map(Selector::Or),
        ]
    })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), value(), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn printed_text_parses_back_to_the_same_tree(selector in selector()) {
        let text = selector.to_string();
        let parsed = Selector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(parsed, selector);
    }

    #[test]
    fn canonical_form_matches_the_same_labels(selector in selector(), labels in prop::collection::vec(labels(), 8)) {
        let canonical = selector.canonical();
        for labels in &labels {
            prop_assert_eq!(canonical.matches(labels), selector.matches(labels), "{} vs {}", selector, canonical);
        }
        prop_assert_eq!(canonical.canonical(), canonical.clone(), "canonical is a fixed point");
        let reparsed = Selector::parse(&canonical.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(reparsed.id(), selector.id());
    }

    #[test]
    fn the_parser_never_panics(text in "[ a-z()!&|=.'\"{},-]{0,40}") {
        let _ = Selector::parse(&text);
    }

    #[test]
    fn damaged_selectors_fail_with_a_position_inside_the_text(
        selector in selector(),
        edits in prop::collection::vec((any::<usize>(), any::<char>(), any::<bool>()), 1..4),
        noise in any::<String>(),
    ) {
        let mut chars: Vec<char> = selector.to_string().chars().collect();
        for (at, c, insert) in edits {
            if insert || chars.is_empty() {
                chars.insert(at % (chars.len() + 1), c);
            } else {
                let at = at % chars.len();
                chars[at] = c;
            }
        }
        for text in [chars.into_iter().collect::<String>(), noise] {
            if let Err(error) = Selector::parse(&text) {
                prop_assert!(error.position <= text.len() && text.is_char_boundary(error.position),
                    "{text:?}: position {} outside the text", error.position);
            }
        }
    }
}

#[test]
fn equivalent_spellings_share_an_id() {
    let same = [
        "app == 'web' && tier == 'db'",
        "tier == \"db\" && app == 'web'",
        "(tier == 'db') && (app == 'web' && all())",
        "!!(app == 'web') && tier == 'db' && app == 'web'",
    ];
    let ids: Vec<String> = same
        .iter()
        .map(|text| Selector::parse(text).expect(text).id())
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    assert_eq!(ids[0].len(), 16);
    let other = Selector::parse("app == 'web' || tier == 'db'")
        .expect("parse")
        .id();
    assert_ne!(other, ids[0]);
    assert_eq!(
        Selector::parse("k in {'b', 'a', 'b'}")
            .expect("parse")
            .canonical()
            .to_string(),
        "k in {'a', 'b'}"
    );
}
