//! Rendered policy applied to the kernel: ipsets first (new sets swapped in whole, changed ones
//! by member), then one `iptables-restore --noflush` for the chains whose rules changed, then
//! stale sets destroyed — only differences from what was last applied or read back.

use std::collections::{BTreeMap, BTreeSet};

use super::kernel_text::{Held, parse_chains, parse_sets, rule_hash};
use super::{Family, HOOKS, Rendered};
use crate::dataplane::{DataplaneError, Ipsets, Iptables};

/// Applies rendered policy of one family, writing only differences from what it last applied
/// (or, after a resync or a failure, from what it reads back from the kernel).
#[derive(Debug)]
pub struct PolicyApplier {
    family: Family,
    held: Option<Held>,
}

impl PolicyApplier {
    /// An applier for `family` (its iptables must be the family's: iptables or ip6tables).
    pub fn new(family: Family) -> Self {
        Self { family, held: None }
    }

    /// Forgets what it applied: the next apply re-reads the kernel and repairs any difference.
    pub fn resync(&mut self) {
        self.held = None;
    }

    /// Makes the kernel hold `desired`; returns the number of writes (ipset and iptables batches).
    pub fn apply(
        &mut self,
        iptables: &dyn Iptables,
        ipsets: &dyn Ipsets,
        desired: &Rendered,
    ) -> Result<usize, DataplaneError> {
        let result = self.apply_inner(iptables, ipsets, desired);
        if result.is_err() {
            self.held = None;
        }
        result
    }

    fn apply_inner(
        &mut self,
        iptables: &dyn Iptables,
        ipsets: &dyn Ipsets,
        desired: &Rendered,
    ) -> Result<usize, DataplaneError> {
        let held = match self.held.take() {
            Some(held) => held,
            None => {
                let saved = iptables.save("filter")?;
                let hooked = HOOKS
                    .iter()
                    .filter(|(base, chain)| {
                        let jump = format!("-A {base} -j {chain}");
                        saved.lines().any(|line| line.trim() == jump)
                    })
                    .map(|(base, _)| *base)
                    .collect();
                Held {
                    chains: parse_chains(&saved),
                    sets: parse_sets(&ipsets.save()?, self.family.set_prefix()),
                    hooked,
                }
            }
        };
        let mut writes = 0;
        // Sets first: rules may only refer to sets that exist.
        let mut payload = String::new();
        for (name, spec) in &desired.sets {
            match held.sets.get(name) {
                Some(current) if current.kind == spec.kind => {
                    for member in current.members.difference(&spec.members) {
                        payload.push_str(&format!("del {name} {member} -exist\n"));
                    }
                    for member in spec.members.difference(&current.members) {
                        payload.push_str(&format!("add {name} {member} -exist\n"));
                    }
                }
                _ => {
                    // New (or of another type, which the swap refuses and a resync reports):
                    // filled aside and swapped in whole.
                    let prefix = self.family.set_prefix();
                    let family = self.family.ipset_family();
                    let temporary = format!("{prefix}tmp-{}", &name[prefix.len()..]);
                    payload.push_str(&format!(
                        "create {temporary} {} family {family} -exist\nflush {temporary}\n",
                        spec.kind
                    ));
                    for member in &spec.members {
                        payload.push_str(&format!("add {temporary} {member}\n"));
                    }
                    payload.push_str(&format!(
                        "create {name} {} family {family} -exist\nswap {temporary} {name}\ndestroy {temporary}\n",
                        spec.kind
                    ));
                }
            }
        }
        if !payload.is_empty() {
            ipsets.restore(&payload)?;
            writes += 1;
        }
        let wanted: BTreeMap<&String, Vec<&str>> = desired
            .chains
            .iter()
            .map(|(name, rules)| (name, rules.iter().filter_map(|r| rule_hash(r)).collect()))
            .collect();
        // Every chain declared (created or flushed) before any rule, so jumps find their targets.
        let mut declarations = String::from("*filter\n");
        let mut appends = String::new();
        for (name, rules) in &desired.chains {
            let same = held
                .chains
                .get(name)
                .is_some_and(|h| h.iter().map(String::as_str).eq(wanted[name].iter().copied()));
            if same {
                continue;
            }
            declarations.push_str(&format!(":{name} - [0:0]\n"));
            for rule in rules {
                appends.push_str(&format!("-A {name} {rule}\n"));
            }
        }
        let stale: Vec<&String> = held
            .chains
            .keys()
            .filter(|name| !desired.chains.contains_key(*name))
            .collect();
        for name in &stale {
            declarations.push_str(&format!(":{name} - [0:0]\n"));
            appends.push_str(&format!("-X {name}\n"));
        }
        let changed = declarations.len() > "*filter\n".len();
        let mut restore = declarations + &appends;
        restore.push_str("COMMIT\n");
        let hooked: BTreeSet<&'static str> = HOOKS
            .iter()
            .filter(|(_, chain)| desired.chains.contains_key(*chain))
            .map(|(base, _)| *base)
            .collect();
        for (base, chain) in HOOKS
            .iter()
            .filter(|(base, _)| held.hooked.contains(base) && !hooked.contains(base))
        {
            // Nothing to enforce there any more: unhook before the chain goes.
            iptables.remove_jump("filter", base, chain)?;
        }
        if changed {
            iptables.restore("filter", &restore)?;
            writes += 1;
        }
        for (base, chain) in HOOKS
            .iter()
            .filter(|(base, _)| hooked.contains(base) && !held.hooked.contains(base))
        {
            iptables.ensure_jump("filter", base, chain)?;
        }
        // Sets no rule uses any more go last.
        let mut destroy = String::new();
        for name in held.sets.keys().filter(|name| !desired.sets.contains_key(*name)) {
            destroy.push_str(&format!("destroy {name}\n"));
        }
        if !destroy.is_empty() {
            ipsets.restore(&destroy)?;
            writes += 1;
        }
        self.held = Some(Held {
            chains: wanted
                .into_iter()
                .map(|(k, v)| (k.clone(), v.into_iter().map(str::to_owned).collect()))
                .collect(),
            sets: desired.sets.clone(),
            hooked,
        });
        Ok(writes)
    }
}
