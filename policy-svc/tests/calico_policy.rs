//! Calico's `projectcalico.org/v3` NetworkPolicy and GlobalNetworkPolicy as written: the fields
//! brindle enforces become the same policy as brindle's own form; every field it cannot enforce
//! is an error naming it; `serviceAccounts.names` selects endpoints by their pod's service
//! account, within the policy's namespace; rule annotations are kept. Staged policies change no
//! node's view, and trace shows what they would decide beside what is enforced.

mod support;

use std::collections::BTreeMap;

use policy_api::model::{Endpoint, EndpointKey, IcmpMatch, Namespace, Policy};
use policy_svc::core::policy_document::PolicyDocument;
use policy_svc::core::resource::{Resource, parse_documents};
use policy_svc::core::staged::StagedAction;
use policy_svc::core::trace::{Flow, Verdict, trace, trace_staged};
use support::{World, address};

fn policy(text: &str) -> Policy {
    match parse_documents(text, "shop").expect("valid").pop() {
        Some(Resource::Policy(policy)) => policy,
        other => panic!("not a policy: {other:?}"),
    }
}

fn refused(spec: &str) -> String {
    let text = format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec:\n{spec}"
    );
    parse_documents(&text, "").expect_err(spec).to_string()
}

#[test]
fn calicos_form_is_brindles_policy() {
    let rules = "spec:
  order: 100
  selector: role == 'database'
  types: [Ingress]
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: role == 'frontend', notNets: [10.0.0.0/8]}
      destination: {ports: [6379, '7000:7010'], notPorts: [7005]}
    - action: Allow
      protocol: ICMP
      icmp: {type: 8, code: 0}
    - action: Deny
      notProtocol: UDP
";
    let calico = policy(&format!(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: db, namespace: shop}}\n{}",
        rules.replacen("spec:\n", "spec:\n  tier: default\n", 1)
    ));
    let brindle = policy(&format!(
        "apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db, namespace: shop}}\n{rules}"
    ));
    assert_eq!(calico, brindle);
    assert_eq!(
        calico.ingress[1].icmp,
        Some(IcmpMatch {
            icmp_type: 8,
            code: Some(0)
        })
    );
    // What `get -o yaml` prints reads back as the same policy.
    let printed = yaml_serde::to_string(&PolicyDocument::from_policy(&calico)).expect("yaml");
    assert_eq!(policy(&printed), calico, "{printed}");
}

#[test]
fn service_accounts_by_name_select_pods_of_the_policys_namespace_and_annotations_are_kept() {
    let p = policy(
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: all()
  ingress:
    - action: Allow
      metadata: {annotations: {owner: team-a}}
      source:
        serviceAccounts: {names: [frontend, batch]}
        selector: tier == 'web'
",
    );
    let rule = &p.ingress[0];
    assert_eq!(
        rule.annotations,
        BTreeMap::from([("owner".to_owned(), "team-a".to_owned())])
    );
    let printed = yaml_serde::to_string(&PolicyDocument::from_policy(&p)).expect("yaml");
    assert!(
        printed.contains("owner: team-a") && printed.contains("- frontend"),
        "{printed}"
    );
    let selector = p.entity_selector(&rule.source).expect("limited by identity");
    let endpoint = |namespace: &str, account: &str, tier: &str| {
        let endpoint = Endpoint {
            key: EndpointKey {
                node: "n1".into(),
                interface: "brd1".into(),
            },
            namespace: namespace.into(),
            pod: "p".into(),
            container_id: "c".into(),
            ips: Vec::new(),
            labels: BTreeMap::from([
                ("tier".to_owned(), tier.to_owned()),
                ("projectcalico.org/serviceaccount".to_owned(), account.to_owned()),
            ]),
            ports: Vec::new(),
        };
        endpoint.selector_labels(Some(&Namespace::new(namespace, BTreeMap::new())), None)
    };
    assert!(selector.matches(&endpoint("shop", "frontend", "web")));
    assert!(selector.matches(&endpoint("shop", "batch", "web")));
    assert!(
        !selector.matches(&endpoint("shop", "other", "web")),
        "another account"
    );
    assert!(
        !selector.matches(&endpoint("shop", "frontend", "db")),
        "both must hold"
    );
    assert!(
        !selector.matches(&endpoint("bank", "frontend", "web")),
        "another namespace"
    );
    // Only the pod's spec names its account: a label of that key cannot claim one.
    let pod = |account: &str| policy_api::model::Pod {
        namespace: "shop".into(),
        name: "p".into(),
        uid: "u".into(),
        node: "n1".into(),
        labels: BTreeMap::from([(
            "projectcalico.org/serviceaccount".to_owned(),
            "frontend".to_owned(),
        )]),
        service_account: account.into(),
        ports: Vec::new(),
        ipam_annotations: BTreeMap::new(),
    };
    assert!(
        !pod("")
            .endpoint_labels()
            .contains_key("projectcalico.org/serviceaccount")
    );
    assert_eq!(
        pod("batch").endpoint_labels()["projectcalico.org/serviceaccount"],
        "batch"
    );
    // Calico's namespace label is on every endpoint.
    assert_eq!(endpoint("shop", "x", "y")["projectcalico.org/namespace"], "shop");
}

#[test]
fn every_field_brindle_cannot_enforce_is_named() {
    for (spec, named) in [
        (
            "  serviceAccountSelector: role ==\n",
            "spec.serviceAccountSelector",
        ),
        (
            "  ingress: [{action: Allow, source: {serviceAccounts: {selector: 'role in'}}}]\n",
            "spec.ingress[0].source.serviceAccounts.selector",
        ),
        (
            "  ingress: [{action: Allow, source: {serviceAccounts: {names: [Bad_Name]}}}]\n",
            "spec.ingress[0].source.serviceAccounts.names[0]",
        ),
        (
            "  ingress: [{action: Allow, icmp: {type: 8}}]\n",
            "spec.ingress[0].icmp",
        ),
        (
            "  ingress: [{action: Allow, protocol: TCP, notICMP: {type: 8}}]\n",
            "spec.ingress[0].notICMP",
        ),
        (
            "  ingress: [{action: Allow, protocol: ICMP, icmp: {code: 1}}]\n",
            "spec.ingress[0].icmp.type",
        ),
        (
            "  ingress: [{action: Allow, protocol: ICMP, icmp: {type: 255}}]\n",
            "spec.ingress[0].icmp.type",
        ),
        (
            "  ingress: [{action: Allow, protocol: ICMP, icmp: {type: 8, code: 256}}]\n",
            "spec.ingress[0].icmp.code",
        ),
        ("  doNotTrack: true\n", "doNotTrack"),
        ("  preDNAT: true\n", "preDNAT"),
        ("  applyOnForward: true\n", "applyOnForward"),
        ("  tier: security\n", "spec.tier"),
        ("  ingress: [{action: Allow, ipVersion: 4}]\n", "ipVersion"),
        ("  ingress: [{action: Allow, http: {methods: [GET]}}]\n", "http"),
    ] {
        let error = refused(spec);
        assert!(error.contains(named), "{spec}: {error}");
    }
}

fn put(world: &mut World, text: &str) {
    for resource in parse_documents(text, "").expect("valid") {
        let changes = world.calc.put_record(resource.into_record().expect("valid"));
        world.absorb(changes);
    }
}

#[test]
fn staged_policies_change_no_view_and_trace_shows_both_verdicts() {
    let mut world = World::new();
    put(
        &mut world,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-y, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress]}
",
    );
    let views: Vec<_> = ["node-0", "node-1", "node-2"]
        .iter()
        .map(|n| world.calc.view(n))
        .collect();
    put(
        &mut world,
        "apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: no-tcp-81}
spec:
  selector: all()
  types: [Ingress]
  ingress:
    - {action: Deny, protocol: TCP, destination: {ports: [81]}}
    - {action: Allow}
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: deny-y, namespace: y}
spec: {stagedAction: Delete}
",
    );
    let after: Vec<_> = ["node-0", "node-1", "node-2"]
        .iter()
        .map(|n| world.calc.view(n))
        .collect();
    assert_eq!(views, after, "staged policies reach no view");
    world.check_views("staged");
    let state = world.calc.state();
    assert!(state.has_staged());
    let flow = |to: &str, port: u16| Flow {
        source_ip: address("x/a").expect("pod"),
        destination_ip: address(to).expect("pod"),
        protocol: policy_api::model::Protocol::Tcp,
        source_port: None,
        destination_port: Some(port),
        icmp: None,
    };
    // Enforced: y is closed, the rest open. Staged: y's deny deleted, TCP 81 denied everywhere.
    assert_eq!(trace(state, &flow("y/b", 80)).verdict, Verdict::Deny);
    assert_eq!(trace_staged(state, &flow("y/b", 80)).verdict, Verdict::Allow);
    assert_eq!(trace(state, &flow("z/b", 81)).verdict, Verdict::Allow);
    let staged_deny = trace_staged(state, &flow("z/b", 81));
    assert_eq!(staged_deny.verdict, Verdict::Deny);
    assert!(
        staged_deny.steps.iter().any(|s| s
            .policy
            .as_ref()
            .is_some_and(|p| p.to_string() == "global/no-tcp-81")),
        "{staged_deny:?}"
    );
}

fn staged_of(text: &str) -> policy_svc::core::staged::StagedPolicy {
    match parse_documents(text, "").expect("valid").pop() {
        Some(Resource::Staged(staged)) => *staged,
        other => panic!("not staged: {other:?}"),
    }
}

#[test]
fn staged_kinds_parse_and_print_back() {
    let text = "apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  stagedAction: Set
  selector: app == 'web'
  ingress: [{action: Deny}]
";
    let staged = staged_of(text);
    assert_eq!(staged.action, StagedAction::Set);
    assert_eq!(staged.policy.id.to_string(), "shop/web");
    let printed = staged.manifest().expect("yaml");
    assert!(
        printed.contains("kind: StagedNetworkPolicy") && printed.contains("stagedAction: Set"),
        "{printed}"
    );
    let again = staged_of(&printed);
    assert_eq!(again, staged);
    let delete = staged_of(
        "apiVersion: projectcalico.org/v3\nkind: StagedKubernetesNetworkPolicy\nmetadata: {name: web, namespace: shop}\n\
         spec: {stagedAction: Delete}\n",
    );
    assert_eq!(
        (delete.action, delete.policy.id.to_string()),
        (StagedAction::Delete, "shop/knp.web".to_owned())
    );
    let printed = delete.manifest().expect("yaml");
    assert!(
        !printed.contains("podSelector") && printed.contains("stagedAction: Delete"),
        "{printed}"
    );
    assert_eq!(staged_of(&printed), delete);
    for (document, named) in [
        (
            "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata: {name: p}\nspec: {stagedAction: Later}\n",
            "spec.stagedAction",
        ),
        (
            "apiVersion: brindle.io/v1\nkind: StagedKubernetesNetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n",
            "apiVersion",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata: {name: p}\nspec: {stagedAction: Set, preDNAT: true}\n",
            "preDNAT",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata: {name: p}\nspec: {stagedAction: Delete, selector: all()}\n",
            "spec.selector",
        ),
    ] {
        let error = parse_documents(document, "").expect_err(document).to_string();
        assert!(error.contains(named), "{document}: {error}");
    }
}
