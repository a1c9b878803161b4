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
        }
    }

    fn interface_in_view(calc: &Calculator, node: &str) -> Option<Option<String>> {
        calc.view(node).values().find_map(|entry| match entry {
            ViewEntry::HostEndpoint(view) => Some(view.interface.clone()),
            _ => None,
        })
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
