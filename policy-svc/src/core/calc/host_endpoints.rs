//! Host endpoints in the calculation: each evaluated as an endpoint without a namespace (global
//! policies select it; rule selectors matching it match its expected IPs), its view entry a host
//! endpoint's.

use policy_api::host_endpoint::HostEndpoint;

use super::{Calculator, NodeChanges};

impl Calculator {
    /// Sets a host endpoint.
    pub fn put_host_endpoint(&mut self, host: &HostEndpoint) -> NodeChanges {
        let previous = self.host_endpoints.insert(host.name.clone(), host.clone());
        if previous.as_ref() == Some(host) {
            return NodeChanges::new();
        }
        if let Some(moved) = previous.filter(|p| p.node != host.node) {
            // Moved to another node: gone from the first.
            let key = moved.endpoint_key();
            self.state.remove_endpoint(&key);
            self.endpoint_changed(&key);
        }
        let key = host.endpoint_key();
        self.state.put_endpoint(host.as_endpoint());
        // Also when only the interface changed (not part of the endpoint): the entry is rebuilt.
        self.endpoint_changed(&key);
        self.commit()
    }

    /// Removes a host endpoint.
    pub fn remove_host_endpoint(&mut self, name: &str) -> NodeChanges {
        match self.host_endpoints.remove(name) {
            Some(host) => self.remove_endpoint(&host.endpoint_key()),
            None => NodeChanges::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use policy_api::view::ViewEntry;

    use super::*;

    fn host(node: &str, interface: Option<&str>) -> HostEndpoint {
        HostEndpoint {
            name: "h1".into(),
            node: node.into(),
            interface: interface.map(str::to_owned),
            expected_ips: vec!["192.168.0.1".parse().expect("ip")],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    fn interface_in_view(calc: &Calculator, node: &str) -> Option<Option<String>> {
        calc.view(node).values().find_map(|entry| match entry {
            ViewEntry::HostEndpoint(view) => Some(view.interface.clone()),
            _ => None,
        })
    }

    /// A rule selector that matches a host endpoint's labels matches its expected IPs; the
    /// policy selecting pods does not select the host endpoint.
    #[test]
    fn rule_selectors_matching_a_host_endpoint_match_its_expected_ips() {
        let mut calc = Calculator::new();
        let mut labelled = host("n1", Some("eth0"));
        labelled.labels.insert("host-endpoint".into(), "true".into());
        calc.put_host_endpoint(&labelled);
        calc.put_endpoint(policy_api::model::Endpoint {
            key: policy_api::model::EndpointKey {
                node: "n1".into(),
                interface: "brdweb".into(),
            },
            namespace: "shop".into(),
            pod: "web".into(),
            container_id: "c1".into(),
            ips: vec!["10.0.0.2".parse().expect("ip")],
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            ports: Vec::new(),
        });
        let manifest = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: from-hosts}\n\
                        spec:\n  selector: app == 'web'\n  ingress:\n    - {action: Allow, source: {selector: has(host-endpoint)}}\n---\n\
                        apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: every-namespace}\n\
                        spec:\n  namespaceSelector: all()\n  selector: all()\n  ingress:\n    - {action: Allow, source: {namespaceSelector: all()}}\n---\n\
                        apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: any-namespace, namespace: shop}\n\
                        spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}\n";
        for resource in crate::core::resource::parse_documents(manifest, "").expect("valid") {
            calc.put_record(resource.into_record().expect("valid"));
        }
        let view = calc.view("n1");
        let members: Vec<&str> = view
            .values()
            .filter_map(|entry| match entry {
                ViewEntry::Member(member) => Some(member.member.as_str()),
                _ => None,
            })
            .collect();
        assert!(
            members.contains(&"192.168.0.1"),
            "the host endpoint's expected IP: {members:?}"
        );
        let in_namespaces = members.iter().filter(|m| **m == "10.0.0.2").count();
        assert_eq!(
            members.len(),
            1 + in_namespaces,
            "namespace selectors (all() and Kubernetes' {{}}) match the pod, never the host: {members:?}"
        );
        let host_view = view.values().find_map(|entry| match entry {
            ViewEntry::HostEndpoint(host) => Some(host),
            _ => None,
        });
        assert!(
            host_view.is_some_and(|h| h.ingress.is_empty()),
            "neither the pods' policy nor a namespaceSelector: all() policy is the host's"
        );
    }

    #[test]
    fn a_host_endpoint_follows_its_interface_and_node_and_leaves_when_deleted() {
        let mut calc = Calculator::new();
        calc.put_host_endpoint(&host("n1", Some("eth0")));
        assert_eq!(interface_in_view(&calc, "n1"), Some(Some("eth0".into())));
        calc.put_host_endpoint(&host("n1", None));
        assert_eq!(interface_in_view(&calc, "n1"), Some(None), "every interface now");
        calc.put_host_endpoint(&host("n2", None));
        assert_eq!(interface_in_view(&calc, "n1"), None, "moved away");
        assert_eq!(interface_in_view(&calc, "n2"), Some(None));
        calc.remove_host_endpoint("h1");
        assert_eq!(interface_in_view(&calc, "n2"), None);
        assert!(calc.state().endpoints().next().is_none());
    }
}
