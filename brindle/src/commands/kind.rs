//! The kinds `get` and `delete` take on the command line, with kubectl-style plurals and short names.

/// Which of the two NetworkPolicy kinds a name means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Either; `get NAME` and `delete` need the name to be unambiguous.
    Any,
    /// brindle's (`brindle.io/v1`).
    Brindle,
    /// Kubernetes' (`networking.k8s.io/v1`).
    Kubernetes,
}

/// A kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    IpPool,
    IpamConfig,
    IpReservation,
    Namespace,
    NetworkPolicy(Flavor),
    GlobalNetworkPolicy,
    StagedNetworkPolicy,
    StagedGlobalNetworkPolicy,
    StagedKubernetesNetworkPolicy,
    HostEndpoint,
    ServiceAccount,
    BgpConfiguration,
    BgpPeer,
}

impl Kind {
    /// Parses a kind as typed on the command line (case-insensitive).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let lower = text.to_ascii_lowercase();
        let (base, group) = lower.split_once('.').unwrap_or((&lower, ""));
        let kind = match base {
            "ippool" | "ippools" => Self::IpPool,
            "ipamconfig" | "ipamconfigs" | "ipamconfiguration" | "ipamconfigurations" => Self::IpamConfig,
            "ipreservation" | "ipreservations" => Self::IpReservation,
            "namespace" | "namespaces" | "ns" => Self::Namespace,
            "networkpolicy" | "networkpolicies" | "netpol" | "np" => Self::NetworkPolicy(match group {
                "brindle.io" => Flavor::Brindle,
                "networking.k8s.io" => Flavor::Kubernetes,
                _ => Flavor::Any,
            }),
            "globalnetworkpolicy" | "globalnetworkpolicies" | "gnp" => Self::GlobalNetworkPolicy,
            "stagednetworkpolicy" | "stagednetworkpolicies" | "snp" => Self::StagedNetworkPolicy,
            "stagedglobalnetworkpolicy" | "stagedglobalnetworkpolicies" | "sgnp" => {
                Self::StagedGlobalNetworkPolicy
            }
            "stagedkubernetesnetworkpolicy" | "stagedkubernetesnetworkpolicies" | "sknp" => {
                Self::StagedKubernetesNetworkPolicy
            }
            "hostendpoint" | "hostendpoints" | "hep" => Self::HostEndpoint,
            "serviceaccount" | "serviceaccounts" | "sa" => Self::ServiceAccount,
            "bgpconfiguration" | "bgpconfigurations" | "bgpconfig" => Self::BgpConfiguration,
            "bgppeer" | "bgppeers" => Self::BgpPeer,
            _ => anyhow::bail!(
                "{text:?} is not a kind brindle knows: ippool, ipamconfig, ipreservation, namespace (ns), networkpolicy \
                 (netpol; networkpolicy.brindle.io or networkpolicy.networking.k8s.io for one of the two), \
                 globalnetworkpolicy (gnp), stagednetworkpolicy (snp), stagedglobalnetworkpolicy (sgnp), \
                 stagedkubernetesnetworkpolicy (sknp), hostendpoint (hep), serviceaccount (sa), bgpconfiguration, \
                 bgppeer"
            ),
        };
        let qualified_ok = group.is_empty() || matches!(kind, Self::NetworkPolicy(f) if f != Flavor::Any);
        anyhow::ensure!(
            qualified_ok,
            "{text:?}: unknown API group {group:?} (networkpolicy takes .brindle.io or .networking.k8s.io)"
        );
        Ok(kind)
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(
            self,
            Self::NetworkPolicy(_)
                | Self::StagedNetworkPolicy
                | Self::StagedKubernetesNetworkPolicy
                | Self::ServiceAccount
        )
    }

    /// The namespace an object of the kind named in `namespace` lives in: `namespace` for
    /// namespaced kinds, none for cluster-wide ones.
    pub fn namespace_for(self, namespace: &str) -> String {
        if self.namespaced() {
            namespace.to_owned()
        } else {
            String::new()
        }
    }

    /// The lower-case name used in `kind/name` lines.
    pub fn short(self) -> &'static str {
        match self {
            Self::IpPool => "ippool",
            Self::IpamConfig => "ipamconfig",
            Self::IpReservation => "ipreservation",
            Self::Namespace => "namespace",
            Self::NetworkPolicy(Flavor::Kubernetes) => "networkpolicy.networking.k8s.io",
            Self::NetworkPolicy(_) => "networkpolicy",
            Self::GlobalNetworkPolicy => "globalnetworkpolicy",
            Self::StagedNetworkPolicy => "stagednetworkpolicy",
            Self::StagedGlobalNetworkPolicy => "stagedglobalnetworkpolicy",
            Self::StagedKubernetesNetworkPolicy => "stagedkubernetesnetworkpolicy",
            Self::HostEndpoint => "hostendpoint",
            Self::ServiceAccount => "serviceaccount",
            Self::BgpConfiguration => "bgpconfiguration",
            Self::BgpPeer => "bgppeer",
        }
    }

    /// policy-svc's kind names that the kind covers.
    pub fn policy_kinds(self) -> &'static [&'static str] {
        match self {
            Self::Namespace => &["Namespace"],
            Self::NetworkPolicy(Flavor::Any) => &["NetworkPolicy", "KubernetesNetworkPolicy"],
            Self::NetworkPolicy(Flavor::Brindle) => &["NetworkPolicy"],
            Self::NetworkPolicy(Flavor::Kubernetes) => &["KubernetesNetworkPolicy"],
            Self::GlobalNetworkPolicy => &["GlobalNetworkPolicy"],
            Self::StagedNetworkPolicy => &["StagedNetworkPolicy"],
            Self::StagedGlobalNetworkPolicy => &["StagedGlobalNetworkPolicy"],
            Self::StagedKubernetesNetworkPolicy => &["StagedKubernetesNetworkPolicy"],
            Self::HostEndpoint => &["HostEndpoint"],
            Self::ServiceAccount => &["ServiceAccount"],
            Self::IpPool
            | Self::IpamConfig
            | Self::IpReservation
            | Self::BgpConfiguration
            | Self::BgpPeer => &[],
        }
    }

    /// The kind of a policy-svc object.
    pub fn of_policy_kind(kind: &str) -> Self {
        match kind {
            "Namespace" => Self::Namespace,
            "GlobalNetworkPolicy" => Self::GlobalNetworkPolicy,
            "KubernetesNetworkPolicy" => Self::NetworkPolicy(Flavor::Kubernetes),
            "StagedNetworkPolicy" => Self::StagedNetworkPolicy,
            "StagedGlobalNetworkPolicy" => Self::StagedGlobalNetworkPolicy,
            "StagedKubernetesNetworkPolicy" => Self::StagedKubernetesNetworkPolicy,
            "HostEndpoint" => Self::HostEndpoint,
            "ServiceAccount" => Self::ServiceAccount,
            _ => Self::NetworkPolicy(Flavor::Brindle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_short_names_and_groups() {
        assert_eq!(
            Kind::parse("NetPol").expect("kind"),
            Kind::NetworkPolicy(Flavor::Any)
        );
        assert_eq!(
            Kind::parse("networkpolicies.networking.k8s.io").expect("kind"),
            Kind::NetworkPolicy(Flavor::Kubernetes)
        );
        assert_eq!(Kind::parse("gnp").expect("kind"), Kind::GlobalNetworkPolicy);
        assert!(Kind::parse("ippool.example.com").is_err());
        assert!(
            Kind::parse("pod")
                .expect_err("unknown")
                .to_string()
                .contains("ippool")
        );
    }
}
