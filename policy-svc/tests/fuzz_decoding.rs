//! Property-based fuzzing of policy decoding (fuzzing proper needs a nightly toolchain): the
//! truth-table manifests with random edits (characters deleted, inserted, replaced; YAML and the
//! same documents as JSON), with fields given other values (plausible, borderline, wrong), and
//! random text, never panic the parser; whatever parses is applied to
//! the truth-table world, whose incremental views must still equal the from-scratch reference, and
//! traced between every pair of pods.

mod support;

use policy_api::model::Protocol;
use policy_svc::core::resource::parse_documents;
use policy_svc::core::trace::{Flow, trace};
use policy_svc::truth_table::{load_cases, pods};
use proptest::prelude::*;
use support::{World, address};

/// Every manifest of the truth table, as YAML and as JSON.
fn seeds() -> Vec<String> {
    let mut seeds = Vec::new();
    for case in load_cases().expect("truth-table cases") {
        for step in &case.steps {
            let manifest = step.manifest(&address).expect("manifest");
            if manifest.is_empty() {
                continue;
            }
            for document in manifest.split("---\n") {
                let value: serde_json::Value = yaml_serde::from_str(document).expect("YAML");
                seeds.push(serde_json::to_string(&value).expect("JSON"));
            }
            seeds.push(manifest);
        }
    }
    seeds
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, char),
    Replace(usize, char),
}

fn edit() -> impl Strategy<Value = Edit> {
    let character = prop_oneof![
        prop::sample::select(vec![
            ':', '-', ' ', '\n', '{', '}', '[', ']', '"', '\'', '0', '/', '*', '!', '&'
        ]),
        any::<char>(),
    ];
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), character.clone()).prop_map(|(at, c)| Edit::Insert(at, c)),
        (any::<usize>(), character).prop_map(|(at, c)| Edit::Replace(at, c)),
    ]
}

fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        let len = chars.len().max(1);
        match *edit {
            Edit::Delete(at) if !chars.is_empty() => {
                chars.remove(at % len);
            }
            Edit::Insert(at, c) => chars.insert(at % (chars.len() + 1), c),
            Edit::Replace(at, c) if !chars.is_empty() => chars[at % len] = c,
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// Values a field may get instead of its own: plausible, borderline and wrong.
fn replacement() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop::sample::select(vec![
        json!("TCP"),
        json!("UDP"),
        json!("SCTP"),
        json!("ICMP"),
        json!("tcp"),
        json!(6),
        json!(256),
        json!(80),
        json!(0),
        json!(-1),
        json!(65535),
        json!(65536),
        json!("80:81"),
        json!("81:80"),
        json!("http"),
        json!("dns"),
        json!(""),
        json!("all()"),
        json!("app == 'a'"),
        json!("has(pod)"),
        json!("!has(x) && pod in {'a', 'b'}"),
        json!("pod =="),
        json!("10.0.0.0/8"),
        json!("0.0.0.0/0"),
        json!("10.0.1.1/32"),
        json!("::/0"),
        json!("10.0.0.0/33"),
        json!(null),
        json!([]),
        json!({}),
        json!(["Ingress"]),
        json!(["Egress", "Ingress"]),
        json!("Allow"),
        json!("Deny"),
        json!("Pass"),
        json!("Log"),
        json!(1000.5),
        json!(true),
        json!({"matchLabels": {"pod": "b"}}),
        json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": []}]}),
    ])
}

/// The paths of every scalar (and empty container) in a JSON value.
fn leaves(value: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(key.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            for (index, child) in items.iter().enumerate() {
                path.push(index.to_string());
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

fn replace_at(value: &mut serde_json::Value, path: &[String], new: serde_json::Value) {
    let mut target = value;
    for step in path {
        target = match target {
            serde_json::Value::Object(map) => map.entry(step.clone()).or_insert(serde_json::Value::Null),
            serde_json::Value::Array(items) => {
                match step.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => item,
                    None => return,
                }
            }
            _ => return,
        };
    }
    *target = new;
}

/// A JSON seed with a few of its fields given other values.
fn replaced(seed: &str, choices: &[(usize, serde_json::Value)]) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(seed) else {
        return seed.to_owned();
    };
    for (pick, new) in choices {
        let mut paths = Vec::new();
        leaves(&value, &mut Vec::new(), &mut paths);
        if let Some(path) = paths.get(pick % paths.len().max(1)).cloned() {
            replace_at(&mut value, &path, new.clone());
        }
    }
    value.to_string()
}

fn input() -> impl Strategy<Value = String> {
    let seeds = seeds();
    let json_seeds: Vec<String> = seeds.iter().filter(|s| s.starts_with('{')).cloned().collect();
    prop_oneof![
        3 => (prop::sample::select(seeds), prop::collection::vec(edit(), 1..6))
            .prop_map(|(seed, edits)| apply_edits(&seed, &edits)),
        4 => (prop::sample::select(json_seeds), prop::collection::vec((any::<usize>(), replacement()), 1..3))
            .prop_map(|(seed, choices)| replaced(&seed, &choices)),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn damaged_manifests_are_refused_or_applied_consistently(text in input()) {
        let Ok(resources) = parse_documents(&text, "x") else {
            return Ok(());
        };
        let mut world = World::new();
        for resource in resources {
            let Ok(record) = resource.into_record() else {
                continue;
            };
            let changes = world.calc.put_record(record);
            world.absorb(changes);
        }
        world.check_views(&text);
        let state = world.calc.state();
        for from in pods() {
            for to in pods() {
                let (Some(source_ip), Some(destination_ip)) = (address(&from), address(&to)) else {
                    continue;
                };
                let flow = Flow {
                    source_ip,
                    destination_ip,
                    protocol: Protocol::Tcp,
                    source_port: None,
                    destination_port: Some(80),
                    icmp: None,
                };
                trace(state, &flow);
            }
        }
    }
}
