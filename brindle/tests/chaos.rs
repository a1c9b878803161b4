//! Chaos on the namespace lab, on etcd: while pods are added and deleted continuously on every
//! node (as a container runtime does: a failed ADD is followed by DEL, a failed DEL is retried)
//! and long-lived pods ping each other under a network policy, processes are SIGKILLed at random
//! points — every service, agents in the middle of an ADD and of a DEL, etcd's leader and a
//! member of a 3-member cluster, a single-member etcd — a node is cut off from the control plane
//! and reconnected, and the datastore is compacted. The test restarts what it killed, as a
//! supervisor would, and nothing else.
//!
//! Afterwards: `ipam check` is clean; no address was ever held by two live pods; nothing is left
//! allocated after DEL and GC; the long-lived pods reach each other exactly as the policy says (and
//! no denied pair ever got through during the chaos); no route, link, iptables rule or ipset member
//! is left for a dead pod (the churn pods' namespaces are kept until then, so what DEL did not
//! clean up stays visible); no process exited on its own; every agent is in sync, and new pods on
//! every node work. The seed of the random choices is printed; `BRINDLE_CHAOS_SEED` repeats the
//! choices (timings still vary from run to run).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use brindle::lab::{ControlPlane, Encapsulation, Lab, LabSpec, Namespace, Service, Workload, test_binaries};
use brindle_proto::policy::v1 as pb;

/// Pods each churn worker keeps alive at most.
const LIVE_PER_WORKER: usize = 3;
/// Pod namespaces of each churn worker (re-used after a pod's DEL succeeded; one more than it
/// keeps alive, so a namespace a failed ADD left waiting for its DEL does not stall it).
const NAMESPACES_PER_WORKER: usize = LIVE_PER_WORKER + 2;
/// Churn workers per node.
const WORKERS_PER_NODE: usize = 2;
/// How long the end of the run may take to DEL every churn pod (the runtime's retries).
const DRAIN: Duration = Duration::from_secs(90);
/// How long a step that can fail while etcd elects a leader is retried.
const ELECTION: Duration = Duration::from_secs(30);

/// A small deterministic generator of random choices (xorshift64*), one per thread.
struct Random(u64);

impl Random {
    /// The run's seed: `BRINDLE_CHAOS_SEED`, or from the clock.
    fn seed() -> u64 {
        std::env::var("BRINDLE_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    }

    /// Stream `stream` of the run seeded with `seed`.
    fn new(seed: u64, stream: u64) -> Self {
        Self((seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    /// A number in `0..bound`.
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }

    /// A pause between `from` and `to` milliseconds.
    fn pause(&mut self, from: u64, to: u64) {
        std::thread::sleep(Duration::from_millis(from + self.below(to - from + 1)));
    }
}

/// What a long-lived pod is for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Admits only clients.
    Server,
    /// Open to everyone.
    Client,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// Servers admit clients only (and themselves); everything else is open.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: servers-admit-clients, namespace: default}
spec:
  podSelector: {matchLabels: {role: server}}
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}]
";

/// Whether long-lived pod `from` may reach long-lived pod `to` under [`POLICY`].
fn allowed(survivors: &[(usize, Role)], from: usize, to: usize) -> bool {
    let role = |pod: usize| {
        survivors
            .iter()
            .find(|(index, _)| *index == pod)
            .map(|(_, role)| *role)
    };
    from == to || role(to) != Some(Role::Server) || role(from) == Some(Role::Client)
}

/// A churn pod: its container id, namespace, and the address its ADD returned.
struct ChurnPod {
    container: String,
    netns: Namespace,
    ip: Option<IpAddr>,
}

/// Sets the stop flag when dropped, so the churn and traffic threads end even when the events
/// panic (the scope would otherwise wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// CNI outcomes of one node's churn.
#[derive(Default)]
struct Outcomes {
    added: AtomicUsize,
    add_failed: AtomicUsize,
    deleted: AtomicUsize,
    del_failed: AtomicUsize,
    /// ADDs and DELs in flight now.
    adds_in_flight: AtomicUsize,
    dels_in_flight: AtomicUsize,
    /// Times its agent was killed (a command that saw this change ran across a kill).
    kills: AtomicUsize,
}

/// The shared state of a chaos run.
struct Chaos<'lab> {
    lab: &'lab Lab,
    seed: u64,
    /// Long-lived pods: index in `lab.pods` and role.
    survivors: Vec<(usize, Role)>,
    /// Address → the churn container holding it (its ADD succeeded, no DEL issued yet: the
    /// runtime deletes a pod's network only after its containers are gone).
    holders: Mutex<HashMap<IpAddr, String>>,
    /// Addresses handed out while another live pod held them.
    duplicates: Mutex<Vec<String>>,
    /// Per node.
    outcomes: Vec<Outcomes>,
    /// Agent kills aimed at an ADD or a DEL: (node, kill number, command).
    aimed: Mutex<Vec<(usize, usize, &'static str)>>,
    /// Kills a CNI command ran across: (node, kill number, command).
    spanned: Mutex<BTreeSet<(usize, usize, &'static str)>>,
    /// Denied pairs that got through while the chaos ran (must stay empty).
    leaks: Mutex<Vec<String>>,
    /// Allowed pairs that did not answer one probe while the chaos ran (reported).
    misses: AtomicUsize,
    /// Probe rounds of the traffic thread.
    rounds: AtomicUsize,
    /// The churn workers' pod namespaces, kept until the checks are done.
    namespaces: Mutex<Vec<Namespace>>,
    stop: AtomicBool,
}

impl<'lab> Chaos<'lab> {
    fn new(lab: &'lab Lab, survivors: Vec<(usize, Role)>) -> Self {
        let seed = Random::seed();
        eprintln!("chaos seed {seed} (BRINDLE_CHAOS_SEED={seed} repeats the random choices)");
        Self {
            lab,
            seed,
            survivors,
            holders: Mutex::default(),
            duplicates: Mutex::default(),
            outcomes: (0..lab.nodes.len()).map(|_| Outcomes::default()).collect(),
            aimed: Mutex::default(),
            spanned: Mutex::default(),
            leaks: Mutex::default(),
            misses: AtomicUsize::new(0),
            rounds: AtomicUsize::new(0),
            namespaces: Mutex::default(),
            stop: AtomicBool::new(false),
        }
    }

    /// One CNI command of a churn pod on `node`: counted as in flight while it runs, and noted
    /// when the node's agent was killed while it ran. Returns whether it succeeded and what it
    /// printed.
    fn cni(&self, node: usize, command: &'static str, pod: &ChurnPod) -> (bool, String) {
        let outcomes = &self.outcomes[node];
        let (in_flight, ok, failed) = if command == "ADD" {
            (&outcomes.adds_in_flight, &outcomes.added, &outcomes.add_failed)
        } else {
            (&outcomes.dels_in_flight, &outcomes.deleted, &outcomes.del_failed)
        };
        let kills_before = outcomes.kills.load(Ordering::SeqCst);
        in_flight.fetch_add(1, Ordering::SeqCst);
        let workload = Workload {
            namespace: "default".into(),
            pod: pod.container.clone(),
            labels: vec![("role".into(), "churn".into())],
            ..Workload::default()
        };
        let (succeeded, printed) = self
            .lab
            .cni(node, command, &pod.container, &pod.netns.path(), &workload)
            .unwrap_or_else(|error| (false, error.to_string()));
        in_flight.fetch_sub(1, Ordering::SeqCst);
        let kills_after = outcomes.kills.load(Ordering::SeqCst);
        let mut spanned = self.spanned.lock().expect("spanned");
        spanned.extend((kills_before + 1..=kills_after).map(|kill| (node, kill, command)));
        drop(spanned);
        if succeeded { ok } else { failed }.fetch_add(1, Ordering::Relaxed);
        (succeeded, printed)
    }

    /// Notes the address an ADD returned to `container`, and any other live pod holding it.
    fn record_address(&self, printed: &str, container: &str) -> Option<IpAddr> {
        let result: serde_json::Value = serde_json::from_str(printed).ok()?;
        let ip: IpAddr = result["ips"][0]["address"]
            .as_str()?
            .split('/')
            .next()?
            .parse()
            .ok()?;
        let mut holders = self.holders.lock().expect("holders");
        let mut duplicates = self.duplicates.lock().expect("duplicates");
        if let Some(holder) = holders.insert(ip, container.to_owned()) {
            duplicates.push(format!("{ip} given to {container} while {holder} held it"));
        }
        if let Some((index, _)) = self.survivors.iter().find(|(i, _)| self.lab.pods[*i].ip == ip) {
            duplicates.push(format!(
                "{ip} given to {container} while long-lived pod {} held it",
                self.lab.pods[*index].name
            ));
        }
        Some(ip)
    }

    /// ADDs a new churn pod in `netns`; it is returned even when the ADD failed (it then needs
    /// a DEL before its namespace is used again).
    fn add(&self, node: usize, container: String, netns: Namespace) -> ChurnPod {
        let mut pod = ChurnPod {
            container,
            netns,
            ip: None,
        };
        let (added, printed) = self.cni(node, "ADD", &pod);
        if added {
            pod.ip = self.record_address(&printed, &pod.container);
        }
        pod
    }

    /// DELs a churn pod: from now on it holds no address, whether the DEL succeeds or not.
    fn del(&self, node: usize, pod: &ChurnPod) -> bool {
        if let Some(ip) = pod.ip {
            let mut holders = self.holders.lock().expect("holders");
            if holders.get(&ip) == Some(&pod.container) {
                holders.remove(&ip);
            }
        }
        self.cni(node, "DEL", pod).0
    }

    /// A churn worker: keeps up to [`LIVE_PER_WORKER`] pods in its own namespaces, adding and
    /// deleting at random until stopped, then DELs everything it still has (retrying, as a
    /// runtime does). Returns the containers it could not DEL.
    fn churn(&self, node: usize, worker: usize) -> Vec<String> {
        let prefix = format!("{}c{node}w{worker}", self.lab.nodes[node].name);
        let mut random = Random::new(self.seed, (node * WORKERS_PER_NODE + worker + 1) as u64);
        let mut free: Vec<Namespace> = (0..NAMESPACES_PER_WORKER)
            .map(|n| Namespace::create(format!("{prefix}n{n}")).expect("a churn pod namespace"))
            .collect();
        let mut live: Vec<ChurnPod> = Vec::new();
        let mut needs_del: Vec<ChurnPod> = Vec::new();
        let mut next = 0;
        let retry_dels = |needs_del: &mut Vec<ChurnPod>, free: &mut Vec<Namespace>| {
            for pod in std::mem::take(needs_del) {
                if self.del(node, &pod) {
                    free.push(pod.netns);
                } else {
                    needs_del.push(pod);
                }
            }
        };
        while !self.stop.load(Ordering::SeqCst) {
            retry_dels(&mut needs_del, &mut free);
            let add = live.len() < LIVE_PER_WORKER && (live.is_empty() || random.below(2) == 0);
            if add && let Some(netns) = free.pop() {
                next += 1;
                let pod = self.add(node, format!("{prefix}x{next}"), netns);
                if pod.ip.is_some() {
                    live.push(pod);
                } else {
                    needs_del.push(pod);
                }
            } else if !live.is_empty() {
                let pod = live.swap_remove(random.below(live.len() as u64) as usize);
                if self.del(node, &pod) {
                    free.push(pod.netns);
                } else {
                    needs_del.push(pod);
                }
            }
            random.pause(0, 50);
        }
        needs_del.extend(live);
        let deadline = Instant::now() + DRAIN;
        while !needs_del.is_empty() && Instant::now() < deadline {
            retry_dels(&mut needs_del, &mut free);
            std::thread::sleep(Duration::from_millis(200));
        }
        let undeleted = needs_del.iter().map(|pod| pod.container.clone()).collect();
        let mut kept = self.namespaces.lock().expect("namespaces");
        kept.extend(free);
        kept.extend(needs_del.into_iter().map(|pod| pod.netns));
        undeleted
    }

    /// Pings every survivor pair, all at once, in rounds until stopped: counts misses of allowed
    /// pairs and records every denied pair that answered.
    fn traffic(&self) {
        let pairs: Vec<(usize, usize)> = self
            .survivors
            .iter()
            .flat_map(|&(from, _)| self.survivors.iter().map(move |&(to, _)| (from, to)))
            .filter(|(from, to)| from != to)
            .collect();
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::scope(|scope| {
                for &(from, to) in &pairs {
                    scope.spawn(move || {
                        let reached = self.lab.reaches(from, to);
                        if allowed(&self.survivors, from, to) {
                            if !reached {
                                self.misses.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if reached {
                            self.leaks.lock().expect("leaks").push(format!(
                                "{} reached {} during the chaos",
                                self.lab.pods[from].name, self.lab.pods[to].name
                            ));
                        }
                    });
                }
            });
            self.rounds.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// SIGKILLs `node`'s agent while an ADD (or a DEL) is in flight — a few milliseconds into it
    /// — and starts the agent again a moment later. Panics when none comes within 30 s.
    fn kill_agent_mid(&self, random: &mut Random, node: usize, command: &'static str) {
        let outcomes = &self.outcomes[node];
        let in_flight = if command == "ADD" {
            &outcomes.adds_in_flight
        } else {
            &outcomes.dels_in_flight
        };
        let agent = &self.lab.nodes[node].name;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            while in_flight.load(Ordering::SeqCst) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "no CNI {command} in flight on node {node} within 30 s"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            // Past the shim's own start (≈ 3 ms), into the agent's work.
            random.pause(3, 8);
            if in_flight.load(Ordering::SeqCst) > 0 {
                break;
            }
        }
        let kill = self.kill_agent(node);
        self.aimed.lock().expect("aimed").push((node, kill, command));
        eprintln!("chaos: SIGKILLed {agent} in the middle of a CNI {command}");
        random.pause(300, 1500);
        self.lab.restart(agent).expect("restart agent");
    }

    /// SIGKILLs `node`'s agent; returns the kill's number. It is counted before the signal
    /// goes, so a command it cuts short sees it when it ends.
    fn kill_agent(&self, node: usize) -> usize {
        let kill = self.outcomes[node].kills.fetch_add(1, Ordering::SeqCst) + 1;
        self.lab.kill(&self.lab.nodes[node].name).expect("kill agent");
        kill
    }

    /// SIGKILLs lab process `name` at a random point and starts it again after a random pause.
    fn kill_and_restart(&self, random: &mut Random, name: &str) {
        random.pause(500, 2500);
        match self.lab.nodes.iter().position(|n| n.name == name) {
            Some(node) => {
                self.kill_agent(node);
            }
            None => self.lab.kill(name).expect("kill"),
        }
        eprintln!("chaos: SIGKILLed {name}");
        random.pause(300, 3000);
        self.lab.restart(name).expect("restart");
    }

    /// Compacts the datastore at its newest revision (retried while etcd elects a leader).
    fn compact(&self, random: &mut Random) {
        random.pause(500, 2000);
        let revision = retried("compaction", || self.lab.compact_datastore());
        eprintln!("chaos: compacted the datastore at revision {revision}");
    }

    /// Runs `events` while the churn workers and the traffic thread run; returns the containers
    /// the workers could not DEL at the end.
    fn run(&self, events: impl FnOnce(&Self, &mut Random)) -> Vec<String> {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.lab.nodes.len())
                .flat_map(|node| (0..WORKERS_PER_NODE).map(move |worker| (node, worker)))
                .map(|(node, worker)| scope.spawn(move || self.churn(node, worker)))
                .collect();
            let traffic = scope.spawn(|| self.traffic());
            {
                let _stop = StopOnDrop(&self.stop);
                std::thread::sleep(Duration::from_secs(2));
                events(self, &mut Random::new(self.seed, 0));
                std::thread::sleep(Duration::from_secs(3));
            }
            traffic.join().expect("traffic thread");
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("churn worker"))
                .collect()
        })
    }

    /// Prints what happened, and checks the churn and the probes really ran on every node.
    fn report(&self) {
        for (node, outcomes) in self.outcomes.iter().enumerate() {
            let [added, add_failed, deleted, del_failed] = [
                &outcomes.added,
                &outcomes.add_failed,
                &outcomes.deleted,
                &outcomes.del_failed,
            ]
            .map(|count| count.load(Ordering::Relaxed));
            eprintln!(
                "chaos: node {node}: ADD {added} ok / {add_failed} failed, DEL {deleted} ok / {del_failed} failed"
            );
            assert!(added > 0 && deleted > 0, "node {node} churned nothing");
        }
        let rounds = self.rounds.load(Ordering::Relaxed);
        eprintln!(
            "chaos: {rounds} probe rounds, {} misses of allowed pairs",
            self.misses.load(Ordering::Relaxed)
        );
        assert!(rounds > 0, "no probe round ran");
    }
}

/// Runs `step` until it succeeds, for up to [`ELECTION`] (etcd may be electing a leader).
fn retried<T>(what: &str, mut step: impl FnMut() -> anyhow::Result<T>) -> T {
    let deadline = Instant::now() + ELECTION;
    loop {
        match step() {
            Ok(value) => return value,
            Err(error) if Instant::now() > deadline => panic!("{what}: {error:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

fn spec(
    prefix: &str,
    etcd_members: usize,
    control_plane: ControlPlane,
    encapsulation: Encapsulation,
) -> LabSpec {
    LabSpec {
        encapsulation,
        etcd_members,
        control_plane,
        policy: true,
        ..LabSpec::new(format!("brdt{}{prefix}", std::process::id()), test_binaries())
    }
}

/// Adds a long-lived pod with `role` on `node`.
fn add_survivor(lab: &mut Lab, node: usize, role: Role) -> (usize, Role) {
    let workload = Workload {
        namespace: "default".into(),
        pod: format!("{}-{node}-{}", role.label(), lab.pods.len()),
        labels: vec![("role".into(), role.label().into())],
        ..Workload::default()
    };
    (lab.add_workload(node, &workload).expect("long-lived pod"), role)
}

/// A lab with a server and a client pod on each node and [`POLICY`] in force.
fn lab_with_survivors(spec: LabSpec) -> (Lab, Vec<(usize, Role)>) {
    let mut lab = Lab::up(spec).expect("lab up");
    let mut survivors = Vec::new();
    for node in 0..lab.nodes.len() {
        survivors.push(add_survivor(&mut lab, node, Role::Server));
        survivors.push(add_survivor(&mut lab, node, Role::Client));
    }
    lab.apply(POLICY).expect("policy");
    eventually(
        &lab,
        "the policy before the chaos",
        Duration::from_secs(30),
        || policy_holds(&lab, &survivors),
    );
    (lab, survivors)
}

/// Polls `check` until it returns `Ok`, up to `timeout`; panics with its last error and the logs.
fn eventually(lab: &Lab, what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(error) if Instant::now() > deadline => {
                panic!("{what}: {error}\n{}", lab.logs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The long-lived pods reach each other exactly as the policy says.
fn policy_holds(lab: &Lab, survivors: &[(usize, Role)]) -> Result<(), String> {
    let wrong: Vec<String> = survivors
        .iter()
        .flat_map(|&(from, _)| survivors.iter().map(move |&(to, _)| (from, to)))
        .filter(|&(from, to)| from != to && lab.reaches(from, to) != allowed(survivors, from, to))
        .map(|(from, to)| {
            let expected = if allowed(survivors, from, to) {
                "allowed"
            } else {
                "denied"
            };
            format!("{} → {} ({expected})", lab.pods[from].name, lab.pods[to].name)
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("pairs not as the policy says: {wrong:?}"))
    }
}

/// The brindle host interfaces `iptables-save` output names: in `-i`/`-o` matches (not the `brd+`
/// wildcard) and in per-interface chain names (`brd-fw-<interface>`, `brd-tw-<interface>`).
fn brindle_interfaces(text: &str) -> BTreeSet<String> {
    text.split_whitespace()
        .map(|word| word.trim_start_matches(':'))
        .map(|word| {
            word.strip_prefix("brd-fw-")
                .or_else(|| word.strip_prefix("brd-tw-"))
                .unwrap_or(word)
        })
        .filter(|word| word.starts_with("brd") && !word.ends_with('+') && !word.contains('-'))
        .map(str::to_owned)
        .collect()
}

/// Node `node`'s data plane holds exactly its live pods: one host link and one host route per
/// pod, iptables rules only for existing links, ipset members only live pods' addresses.
fn data_plane_is_clean(lab: &Lab, node: usize, live: &[usize]) -> Result<(), String> {
    let namespace = &lab.nodes[node].namespace;
    let text = |result: anyhow::Result<String>| result.map_err(|e| e.to_string());
    let links = text(namespace.ip(&["-o", "link", "show"]))?;
    let links: BTreeSet<String> = links
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with("brd"))
        .collect();
    let routes = text(namespace.ip(&["-4", "route", "show", "proto", "80"]))?;
    let mut pod_routes: Vec<String> = routes
        .lines()
        .filter(|route| route.contains(" dev brd"))
        .filter_map(|route| route.split_whitespace().next().map(str::to_owned))
        .collect();
    pod_routes.sort();
    let mut expected: Vec<String> = live.iter().map(|&pod| lab.pods[pod].ip.to_string()).collect();
    expected.sort();
    if links.len() != live.len() || pod_routes != expected {
        return Err(format!(
            "node {node}: links {links:?} and pod routes {pod_routes:?}, live pods {expected:?}"
        ));
    }
    let exec = |program: &str, args: &[&str]| {
        let mut all = vec!["netns", "exec", namespace.name.as_str(), program];
        all.extend_from_slice(args);
        text(brindle::lab::run("ip", &all))
    };
    let rules = exec("iptables-save", &[])?;
    let stale: Vec<String> = brindle_interfaces(&rules).difference(&links).cloned().collect();
    if !stale.is_empty() {
        let lines: Vec<&str> = rules
            .lines()
            .filter(|l| stale.iter().any(|i| l.contains(i.as_str())))
            .collect();
        return Err(format!(
            "node {node}: iptables rules for links that are gone: {stale:?}:\n{}",
            lines.join("\n")
        ));
    }
    let sets = exec("ipset", &["save"])?;
    let members: Vec<&str> = sets
        .lines()
        .filter(|line| line.starts_with("add brd"))
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter(|member| !lab.pods.iter().any(|pod| pod.ip.to_string() == *member))
        .collect();
    if !members.is_empty() {
        return Err(format!("node {node}: ipset members of dead pods: {members:?}"));
    }
    Ok(())
}

/// What policy-svc says of every node's Sync.
fn policy_status(lab: &Lab) -> anyhow::Result<Vec<pb::NodeStatus>> {
    lab.policy(|mut client| async move {
        Ok(client
            .list_nodes(pb::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes)
    })
}

/// Everything the chaos must leave true; `survivors` are the only pods left.
fn check_aftermath(chaos: &Chaos<'_>, undeleted: &[String]) {
    let lab = chaos.lab;
    chaos.report();
    assert!(
        undeleted.is_empty(),
        "DEL never succeeded for {undeleted:?}\n{}",
        lab.logs()
    );
    let duplicates = chaos.duplicates.lock().expect("duplicates");
    assert!(duplicates.is_empty(), "duplicate addresses: {duplicates:?}");
    let spanned = chaos.spanned.lock().expect("spanned");
    for aimed in chaos.aimed.lock().expect("aimed").iter() {
        assert!(
            spanned.contains(aimed),
            "no CNI command ran across agent kill {aimed:?}; kills commands ran across: {spanned:?}"
        );
    }
    let leaks = chaos.leaks.lock().expect("leaks");
    assert!(leaks.is_empty(), "policy failed open: {leaks:?}");
    let exits = lab.exits();
    assert!(
        exits.is_empty() && lab.not_running().is_empty(),
        "processes exited on their own {exits:?}, not running {:?}\n{}",
        lab.not_running(),
        lab.logs()
    );
    // Every agent is connected to route-svc and policy-svc and has acknowledged everything
    // either sent it.
    eventually(lab, "agents in sync", Duration::from_secs(60), || {
        let routes = lab.node_status().map_err(|e| e.to_string())?;
        let policy = policy_status(lab).map_err(|e| e.to_string())?;
        let synced = routes.len() == lab.nodes.len()
            && policy.len() == lab.nodes.len()
            && routes
                .iter()
                .all(|n| n.connected && n.acked_revision > 0 && n.acked_revision == n.sent_revision)
            && policy
                .iter()
                .all(|n| n.connected && n.acked_revision > 0 && n.acked_revision == n.sent_revision);
        if synced {
            Ok(())
        } else {
            Err(format!("{routes:#?}\n{policy:#?}"))
        }
    });
    // GC, as the runtime does for pods it no longer has: afterwards only the survivors hold
    // addresses.
    for node in 0..lab.nodes.len() {
        let valid: Vec<&str> = lab
            .pods
            .iter()
            .filter(|pod| pod.node == node)
            .map(|pod| pod.name.as_str())
            .collect();
        lab.gc(node, &valid).expect("GC");
    }
    if let Some(problems) = lab.ipam_problems().expect("ipam check") {
        panic!("ipam check after the chaos:\n{problems}\n{}", lab.logs());
    }
    // The long-lived pods hold theirs, and over VXLAN each node its tunnel address.
    let tunnels = match lab.spec().encapsulation {
        Encapsulation::Vxlan | Encapsulation::VxlanCrossSubnet => lab.nodes.len(),
        _ => 0,
    };
    let in_use = lab.addresses_in_use().expect("ipam show");
    assert_eq!(
        in_use,
        (chaos.survivors.len() + tunnels) as u64,
        "addresses allocated after DEL and GC ({} long-lived pods, {tunnels} tunnel addresses)",
        chaos.survivors.len()
    );
    for node in 0..lab.nodes.len() {
        let live: Vec<usize> = chaos
            .survivors
            .iter()
            .map(|(pod, _)| *pod)
            .filter(|pod| lab.pods[*pod].node == node)
            .collect();
        eventually(lab, "no trace of dead pods", Duration::from_secs(30), || {
            data_plane_is_clean(lab, node, &live)
        });
    }
    eventually(lab, "the policy after the chaos", Duration::from_secs(30), || {
        policy_holds(lab, &chaos.survivors)
    });
}

/// New pods work on every node after the chaos: each reaches every server as a client; and no
/// process exited on its own meanwhile.
fn new_clients_work(mut lab: Lab, survivors: &[(usize, Role)]) {
    let clients: Vec<usize> = (0..lab.nodes.len())
        .map(|node| add_survivor(&mut lab, node, Role::Client).0)
        .collect();
    let servers: Vec<usize> = survivors
        .iter()
        .filter(|(_, role)| *role == Role::Server)
        .map(|(pod, _)| *pod)
        .collect();
    eventually(
        &lab,
        "new clients reach every server",
        Duration::from_secs(30),
        || {
            let unreached: Vec<(usize, usize)> = clients
                .iter()
                .flat_map(|&c| servers.iter().map(move |&s| (c, s)))
                .filter(|&(c, s)| !lab.reaches(c, s))
                .collect();
            if unreached.is_empty() {
                Ok(())
            } else {
                Err(format!("{unreached:?}"))
            }
        },
    );
    let exits = lab.exits();
    assert!(
        exits.is_empty(),
        "processes exited on their own: {exits:?}\n{}",
        lab.logs()
    );
}

#[test]
fn separate_services_on_a_three_member_etcd_survive_kills_a_leader_loss_a_cut_off_node_and_compaction() {
    let (lab, survivors) = lab_with_survivors(spec("c3", 3, ControlPlane::Separate, Encapsulation::Never));
    let chaos = Chaos::new(&lab, survivors.clone());
    let undeleted = chaos.run(|chaos, random| {
        for service in [Service::Ipam, Service::Route, Service::Policy] {
            chaos.kill_and_restart(random, service.binary());
        }
        chaos.kill_agent_mid(random, 0, "ADD");
        chaos.kill_agent_mid(random, 1, "DEL");
        let leader = retried("finding etcd's leader", || {
            lab.etcd_leader()
                .ok_or_else(|| anyhow::anyhow!("no member is the leader"))
        });
        eprintln!("chaos: etcd's leader is {leader}");
        chaos.kill_and_restart(random, &leader);
        let leader = retried("finding etcd's new leader", || {
            lab.etcd_leader()
                .ok_or_else(|| anyhow::anyhow!("no member is the leader"))
        });
        let follower = ["etcd-1", "etcd-2", "etcd-3"]
            .into_iter()
            .find(|member| *member != leader)
            .expect("a follower");
        chaos.kill_and_restart(random, follower);
        chaos.compact(random);
        random.pause(500, 2000);
        lab.cut_off(2, true).expect("cut off");
        eprintln!("chaos: cut node 2 off from the control plane");
        random.pause(8000, 12000);
        lab.cut_off(2, false).expect("reconnect");
        eprintln!("chaos: reconnected node 2");
        // A second pass: every service and agent once more, in a random order.
        let mut names: Vec<String> = [Service::Ipam, Service::Route, Service::Policy]
            .iter()
            .map(|s| s.binary().to_owned())
            .chain(lab.nodes.iter().map(|n| n.name.clone()))
            .collect();
        while !names.is_empty() {
            let name = names.swap_remove(random.below(names.len() as u64) as usize);
            chaos.kill_and_restart(random, &name);
        }
        chaos.compact(random);
    });
    check_aftermath(&chaos, &undeleted);
    drop(chaos);
    new_clients_work(lab, &survivors);
}

#[test]
fn brindle_server_on_a_single_etcd_over_vxlan_survives_etcd_restarts_kills_and_compaction() {
    let (lab, survivors) = lab_with_survivors(spec("c1", 1, ControlPlane::AllInOne, Encapsulation::Vxlan));
    let chaos = Chaos::new(&lab, survivors.clone());
    let undeleted = chaos.run(|chaos, random| {
        chaos.kill_and_restart(random, "etcd-1");
        chaos.kill_agent_mid(random, 2, "DEL");
        chaos.kill_and_restart(random, "server");
        chaos.compact(random);
        chaos.kill_agent_mid(random, 1, "ADD");
        random.pause(500, 2000);
        lab.stop_control_plane().expect("stop etcd and the server");
        eprintln!("chaos: stopped etcd and the server");
        random.pause(3000, 6000);
        lab.start_control_plane().expect("start them again");
        eprintln!("chaos: started etcd and the server again");
        chaos.compact(random);
    });
    check_aftermath(&chaos, &undeleted);
    drop(chaos);
    new_clients_work(lab, &survivors);
}
