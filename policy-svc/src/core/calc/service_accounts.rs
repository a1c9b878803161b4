//! Service accounts in the calculation: their labels are their pods' endpoints' (under `pcsa.`),
//! so a change re-evaluates the endpoints running as the account.

use policy_api::model::{EndpointKey, SERVICE_ACCOUNT_LABEL};
use policy_api::service_account::ServiceAccount;

use super::{Calculator, NodeChanges};

impl Calculator {
    /// Sets a service account's labels.
    pub fn put_service_account(&mut self, account: ServiceAccount) -> NodeChanges {
        let (namespace, name) = (account.namespace.clone(), account.name.clone());
        if self.state.put_service_account(account.clone()).as_ref() == Some(&account) {
            return NodeChanges::new();
        }
        self.relabel_account(&namespace, &name)
    }

    /// Removes a service account: its endpoints lose its labels.
    pub fn remove_service_account(&mut self, namespace: &str, name: &str) -> NodeChanges {
        if self.state.remove_service_account(namespace, name).is_none() {
            return NodeChanges::new();
        }
        self.relabel_account(namespace, name)
    }

    fn relabel_account(&mut self, namespace: &str, name: &str) -> NodeChanges {
        let keys: Vec<EndpointKey> = self
            .state
            .endpoints()
            .filter(|e| {
                e.namespace == namespace && e.labels.get(SERVICE_ACCOUNT_LABEL).is_some_and(|a| a == name)
            })
            .map(|e| e.key.clone())
            .collect();
        for key in keys {
            self.endpoint_changed(&key);
        }
        self.commit()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use policy_api::model::{Endpoint, EndpointKey};
    use policy_api::view::ViewEntry;

    use super::*;
    use crate::core::resource::parse_documents;
    use crate::core::trace::{Flow, Verdict, trace};

    fn endpoint(pod: &str, ip: &str, account: &str) -> Endpoint {
        Endpoint {
            key: EndpointKey {
                node: "n1".into(),
                interface: format!("brd{pod}"),
            },
            namespace: "shop".into(),
            pod: pod.into(),
            container_id: format!("c-{pod}"),
            ips: vec![ip.parse().expect("ip")],
            labels: BTreeMap::from([(SERVICE_ACCOUNT_LABEL.to_owned(), account.to_owned())]),
            ports: Vec::new(),
        }
    }

    fn account(name: &str, tier: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: "shop".into(),
            name: name.into(),
            labels: BTreeMap::from([("tier".to_owned(), tier.to_owned())]),
        }
    }

    fn tcp(from: &str, to: &str) -> Flow {
        Flow {
            source_ip: from.parse().expect("ip"),
            destination_ip: to.parse().expect("ip"),
            protocol: policy_api::model::Protocol::Tcp,
            source_port: Some(40000),
            destination_port: Some(80),
            icmp: None,
        }
    }

    /// Calico's documented example: a policy applying to the pods of accounts labelled
    /// `tier == 'backend'`, admitting only pods of accounts labelled `tier == 'frontend'`; an
    /// account's labels changing moves its pods in and out.
    #[test]
    fn service_account_selectors_select_pods_by_their_accounts_labels() {
        let mut calc = Calculator::new();
        calc.put_service_account(account("api", "backend"));
        calc.put_service_account(account("web", "frontend"));
        calc.put_service_account(account("batch", "jobs"));
        calc.put_endpoint(endpoint("api", "10.0.0.2", "api"));
        calc.put_endpoint(endpoint("web", "10.0.0.3", "web"));
        calc.put_endpoint(endpoint("batch", "10.0.0.4", "batch"));
        let manifest = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\n\
                        metadata: {name: backend, namespace: shop}\nspec:\n  \
                        serviceAccountSelector: tier == 'backend'\n  ingress:\n    \
                        - {action: Allow, source: {serviceAccounts: {selector: tier == 'frontend'}}}\n";
        for resource in parse_documents(manifest, "").expect("valid") {
            calc.put_record(resource.into_record().expect("valid"));
        }
        let governed = |calc: &Calculator, pod: &str| {
            calc.view("n1").values().any(|entry| {
                matches!(entry, ViewEntry::Endpoint(e) if e.interface == format!("brd{pod}") && !e.ingress.is_empty())
            })
        };
        assert!(governed(&calc, "api") && !governed(&calc, "web") && !governed(&calc, "batch"));
        let members: Vec<String> = calc
            .view("n1")
            .values()
            .filter_map(|entry| match entry {
                ViewEntry::Member(member) => Some(member.member.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            members,
            ["10.0.0.3"],
            "only the frontend account's pod is a source"
        );
        let state = calc.state().clone();
        assert_eq!(
            trace(&state, &tcp("10.0.0.3", "10.0.0.2")).verdict,
            Verdict::Allow
        );
        assert_eq!(trace(&state, &tcp("10.0.0.4", "10.0.0.2")).verdict, Verdict::Deny);

        // batch's account becomes a frontend: its pod is admitted; api's stops being a backend.
        calc.put_service_account(account("batch", "frontend"));
        assert_eq!(
            trace(calc.state(), &tcp("10.0.0.4", "10.0.0.2")).verdict,
            Verdict::Allow
        );
        calc.remove_service_account("shop", "api");
        assert!(
            !governed(&calc, "api"),
            "no account labels: no serviceAccountSelector matches"
        );
    }
}
