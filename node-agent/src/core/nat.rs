//! natOutgoing: pod traffic from a pool marked `nat_outgoing` to anywhere outside every pool
//! leaves masqueraded as the node's address (pod-to-pod traffic never is). One chain brindle owns,
//! `brd-nat-outgoing`, hooked from nat POSTROUTING and replaced whole when the pools change.

use brindle_fanout::Key;
use route_api::RouteItem;
use std::collections::BTreeMap;

use crate::dataplane::{DataplaneError, Iptables};

/// The chain.
pub const CHAIN: &str = "brd-nat-outgoing";

/// The `iptables-restore` payload for the nat table the pools in `items` ask for.
pub fn nat_payload(items: &BTreeMap<Key, RouteItem>) -> String {
    let pools: Vec<_> = items
        .values()
        .filter_map(|item| match item {
            RouteItem::Pool(pool) if pool.cidr.addr().is_ipv4() => Some(pool),
            _ => None,
        })
        .collect();
    let mut payload = format!("*nat\n:{CHAIN} - [0:0]\n-F {CHAIN}\n");
    for source in pools.iter().filter(|p| p.nat_outgoing) {
        for destination in &pools {
            payload.push_str(&format!(
                "-A {CHAIN} -s {} -d {} -j RETURN\n",
                source.cidr, destination.cidr
            ));
        }
        payload.push_str(&format!("-A {CHAIN} -s {} -j MASQUERADE\n", source.cidr));
    }
    payload.push_str("COMMIT\n");
    payload
}

/// Keeps the nat chain equal to what the pools ask for, writing only when that changes.
#[derive(Debug, Default)]
pub struct NatReconciler {
    applied: Option<String>,
}

impl NatReconciler {
    /// Forgets what it applied: the next apply writes the chain and checks its hook again.
    pub fn resync(&mut self) {
        self.applied = None;
    }

    /// Applies the chain for `items` (and its hook, the first time).
    pub fn apply(
        &mut self,
        iptables: &dyn Iptables,
        items: &BTreeMap<Key, RouteItem>,
    ) -> Result<(), DataplaneError> {
        let payload = nat_payload(items);
        if self.applied.as_ref() == Some(&payload) {
            return Ok(());
        }
        iptables.restore("nat", &payload)?;
        if self.applied.is_none() {
            iptables.ensure_jump("nat", "POSTROUTING", CHAIN)?;
        }
        self.applied = Some(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use route_api::{Encapsulation, PoolRoute};

    use super::*;
    use crate::dataplane::{Call, RecordingKernel};

    fn pool(name: &str, cidr: &str, nat_outgoing: bool) -> (Key, RouteItem) {
        (
            format!("pool/{name}").into(),
            RouteItem::Pool(PoolRoute {
                name: name.into(),
                cidr: cidr.parse().expect("cidr"),
                encapsulation: Encapsulation::None,
                nat_outgoing,
                disabled: false,
                disable_bgp_export: false,
            }),
        )
    }

    #[test]
    fn only_traffic_leaving_every_pool_from_a_nat_pool_is_masqueraded() {
        let items = BTreeMap::from([pool("a", "10.244.0.0/16", true), pool("b", "10.96.0.0/16", false)]);
        assert_eq!(
            nat_payload(&items),
            "*nat\n:brd-nat-outgoing - [0:0]\n-F brd-nat-outgoing\n\
             -A brd-nat-outgoing -s 10.244.0.0/16 -d 10.244.0.0/16 -j RETURN\n\
             -A brd-nat-outgoing -s 10.244.0.0/16 -d 10.96.0.0/16 -j RETURN\n\
             -A brd-nat-outgoing -s 10.244.0.0/16 -j MASQUERADE\nCOMMIT\n"
        );
    }

    #[test]
    fn the_chain_is_written_when_it_changes_and_hooked_once() {
        let kernel = RecordingKernel::default();
        let mut nat = NatReconciler::default();
        let off = BTreeMap::from([pool("a", "10.244.0.0/16", false)]);
        let on = BTreeMap::from([pool("a", "10.244.0.0/16", true)]);
        nat.apply(&kernel, &off).expect("off");
        nat.apply(&kernel, &off).expect("unchanged");
        nat.apply(&kernel, &on).expect("on");
        let calls = kernel.calls();
        assert_eq!(
            calls
                .iter()
                .filter(|c| matches!(c, Call::IptablesRestore(..)))
                .count(),
            2
        );
        assert_eq!(
            calls
                .iter()
                .filter(|c| matches!(c, Call::IptablesJump(..)))
                .count(),
            1,
            "{calls:?}"
        );
    }
}
