//! Bad input is refused with an error naming the field; good input round-trips.

use policy_api::model::{PolicyId, PortMatch, Protocol};
use policy_svc::core::PolicyError;
use policy_svc::core::policy_document::PolicyDocument;
use policy_svc::core::resource::{Resource, parse_documents};

fn error_of(text: &str) -> (String, String) {
    match parse_documents(text, "") {
        Err(PolicyError::Invalid { field, reason }) => (field, reason),
        other => panic!("expected an invalid-field error for\n{text}\ngot {other:?}"),
    }
}

const K8S_HEAD: &str =
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";

#[test]
fn kubernetes_errors_name_the_field() {
    let cases = [
        (
            "spec: {podSelector: {}, policyTypes: [Sideways]}",
            "spec.policyTypes[0]",
            "Sideways",
        ),
        (
            "spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 70}]}]}",
            "spec.ingress[0].ports[0].endPort",
            "below port 80",
        ),
        (
            "spec: {podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}",
            "spec.ingress[0].ports[0].endPort",
            "named port",
        ),
        (
            "spec: {podSelector: {}, egress: [{ports: [{protocol: ICMP}]}]}",
            "spec.egress[0].ports[0].protocol",
            "TCP, UDP or SCTP",
        ),
        (
            "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
            "strictly within",
        ),
        (
            "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr",
            "host bits",
        ),
        (
            "spec: {podSelector: {}, ingress: [{from: [{}]}]}",
            "spec.ingress[0].from[0]",
            "must specify a peer",
        ),
        (
            "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.ingress[0].from[0]",
            "may not be combined",
        ),
        (
            "spec: {podSelector: {matchExpressions: [{key: app, operator: In}]}}",
            "spec.podSelector.matchExpressions[0].values",
            "non-empty",
        ),
        (
            "spec: {podSelector: {matchExpressions: [{key: app, operator: Near, values: [x]}]}}",
            "spec.podSelector.matchExpressions[0].operator",
            "Near",
        ),
        (
            "spec: {podSelector: {matchLabels: {'bad key!': x}}}",
            "spec.podSelector.matchLabels",
            "label key",
        ),
    ];
    for (spec, field, reason) in cases {
        let (got_field, got_reason) = error_of(&format!("{K8S_HEAD}{spec}"));
        assert_eq!(got_field, format!("document 0: {field}"), "{spec}: {got_reason}");
        assert!(got_reason.contains(reason), "{spec}: {got_reason}");
    }
    // Unknown fields are refused by name, the way `kubectl apply` (strict) does.
    let (_, reason) = error_of(&format!("{K8S_HEAD}spec: {{podSelector: {{}}, ingres: []}}"));
    assert!(reason.contains("ingres"), "{reason}");
}

#[test]
fn brindle_errors_name_the_field() {
    let head = "apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";
    let cases = [
        ("spec: {selector: \"app = 'x'\"}", "spec.selector", "byte 4"),
        (
            "spec: {ingress: [{action: Maybe}]}",
            "spec.ingress[0].action",
            "Maybe",
        ),
        (
            "spec: {ingress: [{action: Allow, destination: {ports: [80]}}]}",
            "spec.ingress[0].destination.ports",
            "protocol",
        ),
        (
            "spec: {ingress: [{action: Allow, protocol: ICMP, destination: {ports: [80]}}]}",
            "spec.ingress[0].destination.ports",
            "protocol",
        ),
        (
            "spec: {ingress: [{action: Allow, protocol: TCP, destination: {ports: ['90:80']}}]}",
            "spec.ingress[0].destination.ports[0]",
            "90:80",
        ),
        (
            "spec: {ingress: [{action: Allow, protocol: TCP, source: {ports: [http]}}]}",
            "spec.ingress[0].source.ports",
            "named ports",
        ),
        (
            "spec: {egress: [{action: Allow, protocol: bogus}]}",
            "spec.egress[0].protocol",
            "bogus",
        ),
        (
            "spec: {egress: [{action: Allow, source: {nets: [10.0.0.300/8]}}]}",
            "spec.egress[0].source.nets[0]",
            "CIDR",
        ),
        (
            "spec: {egress: [{action: Allow, destination: {selector: 'has(x'}}]}",
            "spec.egress[0].destination.selector",
            "byte 5",
        ),
        (
            "spec: {namespaceSelector: all()}",
            "spec.namespaceSelector",
            "GlobalNetworkPolicy",
        ),
        (
            "spec: {ingress: [{action: Allow, protocol: TCP, notProtocol: TCP}]}",
            "spec.ingress[0].notProtocol",
            "never match",
        ),
    ];
    for (spec, field, reason) in cases {
        let (got_field, got_reason) = error_of(&format!("{head}{spec}"));
        assert_eq!(got_field, format!("document 0: {field}"), "{spec}: {got_reason}");
        assert!(got_reason.contains(reason), "{spec}: {got_reason}");
    }
    let (field, _) =
        error_of("apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {}");
    assert_eq!(field, "document 0: metadata.name");
    let (field, reason) = error_of("apiVersion: v9\nkind: Gadget\nmetadata: {name: g}\n---\n");
    assert_eq!(field, "document 0: kind");
    assert!(reason.contains("Gadget"), "{reason}");
    let (field, _) = error_of(&format!(
        "{K8S_HEAD}spec: {{podSelector: {{}}}}\n---\n{head}spec: {{order: .nan}}"
    ));
    assert_eq!(field, "document 1: spec.order");
}

#[test]
fn kubernetes_translation_follows_kubernetes_semantics() {
    let text = format!(
        "{K8S_HEAD}spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - from:
        - namespaceSelector: {{matchLabels: {{team: a}}}}
          podSelector: {{matchLabels: {{role: client}}}}
        - podSelector: {{}}
      ports: [{{port: 80}}, {{port: 53, protocol: UDP}}, {{port: 8000, endPort: 8080}}, {{protocol: UDP}}]
  egress: []
"
    );
    let resources = parse_documents(&text, "").expect("valid");
    let [Resource::KubernetesPolicy(k8s)] = resources.as_slice() else {
        panic!("{resources:?}")
    };
    let policy = k8s.to_policy().expect("valid");
    assert_eq!(
        policy.id,
        PolicyId::Kubernetes {
            namespace: "x".into(),
            name: "p".into()
        }
    );
    assert_eq!(policy.order, Some(1000.0));
    // `egress: []` is no egress rule: Ingress only (Kubernetes' defaulting).
    assert!(policy.ingress_enabled && !policy.egress_enabled);
    // Two peers × two protocols; UDP has a bare protocol entry, so every UDP port.
    assert_eq!(policy.ingress.len(), 4);
    let tcp = &policy.ingress[0];
    assert_eq!(tcp.protocol, Some(Protocol::Tcp));
    assert_eq!(
        tcp.destination.ports,
        vec![
            PortMatch::Range { first: 80, last: 80 },
            PortMatch::Range {
                first: 8000,
                last: 8080
            }
        ]
    );
    assert!(tcp.source.namespace_selector.is_some() && tcp.source.selector.is_some());
    let udp = &policy.ingress[1];
    assert_eq!(udp.protocol, Some(Protocol::Udp));
    assert!(udp.destination.ports.is_empty());
    assert!(policy.ingress[2].source.namespace_selector.is_none());
}

#[test]
fn a_brindle_policy_that_would_share_an_id_with_another_kind_of_policy_is_refused() {
    // Kubernetes NetworkPolicy `x` in `team` is `team/knp.x`; GlobalNetworkPolicy `x` is
    // `global/x`: the ids name every node's view entry and kernel objects of a policy. Each case
    // holds the id the document would have had: one a stored policy is not enforced under (the
    // same rule, applied when read back from the datastore).
    let namespaced = |namespace: &str, name: &str| PolicyId::Namespaced {
        namespace: namespace.into(),
        name: name.into(),
    };
    let cases = [
        (
            "NetworkPolicy",
            "{name: knp.x, namespace: team}",
            "metadata.name",
            "reserved for Kubernetes",
            namespaced("team", "knp.x"),
        ),
        (
            "GlobalNetworkPolicy",
            "{name: knp.x}",
            "metadata.name",
            "reserved for Kubernetes",
            PolicyId::Global { name: "knp.x".into() },
        ),
        // Refused when written like the others; never enforced, staged or not.
        (
            "StagedNetworkPolicy",
            "{name: knp.x, namespace: team}",
            "metadata.name",
            "reserved for Kubernetes",
            namespaced("team", "knp.x"),
        ),
        (
            "NetworkPolicy",
            "{name: x, namespace: global}",
            "metadata.namespace",
            "GlobalNetworkPolicy of that name",
            namespaced("global", "x"),
        ),
    ];
    for (kind, metadata, field, reason, id) in cases {
        let text = format!("apiVersion: brindle.io/v1\nkind: {kind}\nmetadata: {metadata}\nspec: {{}}");
        let (got_field, got_reason) = error_of(&text);
        assert_eq!(
            got_field,
            format!("document 0: {field}"),
            "{kind} {metadata}: {got_reason}"
        );
        assert!(got_reason.contains(reason), "{kind} {metadata}: {got_reason}");
        assert!(id.reads_as_another_kind(), "{kind} {metadata}: {id}");
    }
    // What stays allowed: the prefix elsewhere in a name, a Kubernetes NetworkPolicy named so or
    // in a namespace named `global`, a GlobalNetworkPolicy of any other name — and their ids are
    // enforced when read back.
    for text in [
        "apiVersion: brindle.io/v1\nkind: NetworkPolicy\nmetadata: {name: not-knp.x, namespace: team}\nspec: {}",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: knp.x, namespace: global}\nspec: {podSelector: {}}",
        "apiVersion: brindle.io/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: global}\nspec: {}",
    ] {
        let resources = parse_documents(text, "").unwrap_or_else(|e| panic!("{text}: {e}"));
        let id = match resources.as_slice() {
            [Resource::Policy(policy)] => policy.id.clone(),
            [Resource::KubernetesPolicy(policy)] => policy.to_policy().expect("translates").id,
            other => panic!("{text}: {other:?}"),
        };
        assert!(!id.reads_as_another_kind(), "{text}: {id}");
    }
}

#[test]
fn brindle_documents_read_back_as_written() {
    let text = "apiVersion: brindle.io/v1
kind: GlobalNetworkPolicy
metadata: {name: g}
spec:
  order: 5
  selector: \"app == 'web'\"
  namespaceSelector: \"team in {'a', 'b'}\"
  types: [Ingress, Egress]
  ingress:
    - {action: Deny, protocol: TCP, notProtocol: null, source: {nets: [10.0.0.0/8], notNets: [10.1.0.0/16]}, destination: {ports: [80, '8000:8080', http], notPorts: [8001]}}
  egress:
    - {action: Pass, destination: {selector: has(db), notSelector: \"tier == 'x'\"}}
";
    let resources = parse_documents(text, "").expect("valid");
    let [Resource::Policy(policy)] = resources.as_slice() else {
        panic!("{resources:?}")
    };
    let document = PolicyDocument::from_policy(policy);
    let printed = yaml_serde::to_string(&document).expect("yaml");
    let again = parse_documents(&printed, "").expect("reparse");
    assert_eq!(again, resources, "{printed}");
}
