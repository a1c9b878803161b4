//! Text that reaches `iptables-restore` and `ipset restore` comes only from the renderer: a view
//! whose interface names, ids or set members carry rule text of their own (a `+` wildcard, a
//! line break with a rule after it, a quote) is refused when the agent decodes it, and if such an
//! entry reached the renderer it would be left out — every line written to the kernel has one of
//! the renderer's shapes, and what the rogue entries asked for appears nowhere.

use std::collections::BTreeMap;

use brindle_fanout::Key;
use node_agent::core::policy::{Family, PolicyApplier, render};
use node_agent::dataplane::RecordingKernel;
use policy_api::convert::{entry_from_proto, entry_to_proto};
use policy_api::model::Action;
use policy_api::view::{
    CompiledRule, CompiledSide, EndpointView, IpSetKind, IpSetView, MemberView, PolicyView, ViewEntry,
};

const INJECTED: &str = "-A FORWARD -j ACCEPT";

fn endpoint(interface: &str, policy: &str) -> ViewEntry {
    ViewEntry::Endpoint(EndpointView {
        interface: interface.into(),
        name: "shop/web".into(),
        ingress: vec![policy.into()],
        egress: Vec::new(),
    })
}

fn policy(id: &str, set: &str) -> ViewEntry {
    ViewEntry::Policy(PolicyView {
        id: id.into(),
        name: format!("shop/{id}"),
        ingress: vec![CompiledRule {
            action: Action::Allow,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: CompiledSide {
                sets: vec![set.into()],
                ..CompiledSide::default()
            },
            destination: CompiledSide::default(),
            origin: format!("shop/{id}/ingress/0"),
        }],
        egress: Vec::new(),
    })
}

fn set(id: &str) -> ViewEntry {
    ViewEntry::IpSet(IpSetView {
        id: id.into(),
        kind: IpSetKind::Net,
        source: "app == 'client'".into(),
    })
}

fn member(set: &str, member: &str) -> ViewEntry {
    ViewEntry::Member(MemberView {
        set: set.into(),
        member: member.into(),
    })
}

/// A view with one well-formed endpoint, policy and set, and rogue entries beside them.
fn view() -> BTreeMap<Key, ViewEntry> {
    let evil_interface = format!("x\n{INJECTED}");
    let evil_set = format!("s2\n{INJECTED}");
    let entries = [
        ("endpoint/brdgood", endpoint("brdgood", "p1")),
        ("endpoint/brd+", endpoint("brd+", "p1")),
        ("endpoint/evil", endpoint(&evil_interface, "p1")),
        ("endpoint/quote", endpoint("brd\"x", "p1")),
        ("endpoint/bad-policy", endpoint("brdbad", "p2 -j ACCEPT")),
        ("policy/p1", policy("p1", "s1")),
        ("policy/p2", policy("p2 -j ACCEPT", "s1")),
        ("policy/p3", policy("p3", &evil_set)),
        ("ipset/s1", set("s1")),
        ("ipset/s2", set(&evil_set)),
        ("member/s1/10.0.0.1", member("s1", "10.0.0.1")),
        (
            "member/s1/evil",
            member("s1", "10.0.0.2\ncreate brd-owned hash:net"),
        ),
        ("member/s1/exist", member("s1", "10.0.0.3 -exist")),
    ];
    entries
        .into_iter()
        .map(|(key, entry)| (Key::from(key), entry))
        .collect()
}

#[test]
fn rogue_entries_are_refused_when_the_view_is_decoded() {
    for (key, entry) in view() {
        let decoded = entry_from_proto(entry_to_proto(&key, &entry));
        let well_formed =
            ["endpoint/brdgood", "policy/p1", "ipset/s1", "member/s1/10.0.0.1"].contains(&&*key);
        assert_eq!(decoded.is_ok(), well_formed, "{key}: {decoded:?}");
    }
}

#[test]
fn every_line_written_to_the_kernel_comes_from_the_renderer() {
    let kernel = RecordingKernel::default();
    let rendered = render(&view(), Family::V4);
    PolicyApplier::new(Family::V4)
        .apply(&kernel, &kernel, &rendered)
        .expect("apply");
    let (iptables, ipsets) = kernel.restores();
    let rules = iptables.concat();
    assert!(rules.contains("-i brdgood -g brd-fw-brdgood"), "{rules}");
    for line in rules.lines() {
        let shaped = line == "*filter"
            || line == "COMMIT"
            || (line.starts_with(":brd-") && line.ends_with(" - [0:0]"))
            || line.starts_with("-A brd-") && line.contains(" -m comment --comment \"brd:")
            || line.starts_with("-X brd-");
        assert!(shaped, "a line the renderer does not write: {line:?}\n{rules}");
        // Quoted: the hash comment, and a log prefix the renderer makes — nothing else.
        let quoted: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(line.matches('"').count() % 2 == 0, "{line:?}");
        assert!(
            quoted.iter().enumerate().all(|(i, text)| match i {
                0 => text.starts_with("brd:"),
                1 => text.starts_with("DR ") || text.starts_with("DX ") || text.starts_with("brd "),
                _ => false,
            }),
            "{line:?}"
        );
    }
    // (`-i brd+ -g brd-wl-to-host` is the renderer's own: pods' traffic to their node.)
    for rogue in [
        "FORWARD -j ACCEPT",
        "brd+ -g brd-fw",
        "brdbad",
        "p2 ",
        "brd\"x",
        "s2",
    ] {
        assert!(!rules.contains(rogue), "{rogue:?} reached the rules:\n{rules}");
    }
    let sets = ipsets.concat();
    assert!(sets.contains("add brd-tmp-s1 10.0.0.1"), "{sets}");
    for line in sets.lines() {
        let verb = line.split(' ').next().unwrap_or_default();
        assert!(
            ["create", "flush", "add", "del", "swap", "destroy"].contains(&verb)
                && line
                    .split(' ')
                    .nth(1)
                    .is_some_and(|name| name.starts_with("brd-")),
            "a line the renderer does not write: {line:?}\n{sets}"
        );
    }
    for rogue in ["10.0.0.2", "10.0.0.3", "brd-owned", "s2"] {
        assert!(!sets.contains(rogue), "{rogue:?} reached the sets:\n{sets}");
    }
}
