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
//! is left for a dead pod; every process runs, every agent is in sync, and new pods on every node
//! work. The seed of the random points is printed; `BRINDLE_CHAOS_SEED` replays one.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use brindle::lab::{ControlPlane, Lab, LabSpec, Namespace, Service, Workload, test_binaries};
use brindle_proto::policy::v1 as pb;

/// Pods each churn worker keeps alive at most.
const LIVE_PER_WORKER: usize = 3;
/// Churn workers per node.
const WORKERS_PER_NODE: usize = 2;
/// How long the end of the run may take to DEL every churn pod (the runtime's retries).
const DRAIN: Duration = Duration::from_secs(90);

/// A small deterministic generator for the random points (xorshift64*).
struct Random(Mutex<u64>);

impl Random {
    fn new() -> (Self, u64) {
        let seed = std::env::var("BRINDLE_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        (Self(Mutex::new(seed)), seed)
    }

    /// A number in `0..bound`.
    fn below(&self, bound: u64) -> u64 {
        let mut state = self.0.lock().expect("random");
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound.max(1)
    }

    /// A pause between `from` and `to` milliseconds.
    fn pause(&self, from: u64, to: u64) {
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

/// The shared state of a chaos run.
struct Chaos<'lab> {
    lab: &'lab Lab,
    random: Random,
    /// Long-lived pods: index in `lab.pods` and role.
    survivors: Vec<(usize, Role)>,
    /// Address → the churn container holding it (its ADD succeeded, no DEL issued yet: the
    /// runtime deletes a pod's network only after its containers are gone).
    holders: Mutex<HashMap<IpAddr, String>>,
    /// Addresses handed out while another live pod held them.
    duplicates: Mutex<Vec<String>>,
    /// CNI commands in flight per node: (ADD, DEL).
    in_flight: Vec<(AtomicUsize, AtomicUsize)>,
    /// Counts: ADD ok, ADD failed, DEL ok, DEL failed.
    outcomes: [AtomicUsize; 4],
    /// Denied pairs that got through while the chaos ran (must stay empty).
    leaks: Mutex<Vec<String>>,
    /// Allowed pairs that did not answer one probe while the chaos ran (reported).
    misses: AtomicUsize,
    /// Probe rounds of the traffic thread.
    rounds: AtomicUsize,
    /// Agent kills aimed at a CNI command, and those that caught one in flight.
    agent_kills: (AtomicUsize, AtomicUsize),
    stop: AtomicBool,
}

impl<'lab> Chaos<'lab> {
    fn new(lab: &'lab Lab, survivors: Vec<(usize, Role)>) -> Self {
        let (random, seed) = Random::new();
        eprintln!("chaos seed {seed} (BRINDLE_CHAOS_SEED={seed} replays the random points)");
        Self {
            lab,
            random,
            survivors,
            holders: Mutex::default(),
            duplicates: Mutex::default(),
            in_flight: (0..lab.nodes.len())
                .map(|_| (AtomicUsize::new(0), AtomicUsize::new(0)))
                .collect(),
            outcomes: Default::default(),
            leaks: Mutex::default(),
            misses: AtomicUsize::new(0),
            rounds: AtomicUsize::new(0),
            agent_kills: Default::default(),
            stop: AtomicBool::new(false),
        }
    }

    /// One CNI command of a churn pod on `node`, counted as in flight while it runs.
    fn cni(&self, node: usize, command: &str, pod: &ChurnPod) -> (bool, String) {
        let (adds, dels) = &self.in_flight[node];
        let counter = if command == "ADD" { adds } else { dels };
        counter.fetch_add(1, Ordering::SeqCst);
        let workload = Workload {
            namespace: "default".into(),
            pod: pod.container.clone(),
            labels: vec![("role".into(), "churn".into())],
            ports: Vec::new(),
        };
        let outcome = self
            .lab
            .cni(node, command, &pod.container, &pod.netns.path(), &workload)
            .unwrap_or_else(|error| (false, error.to_string()));
        counter.fetch_sub(1, Ordering::SeqCst);
        let slot = match (command, outcome.0) {
            ("ADD", true) => 0,
            ("ADD", false) => 1,
            (_, true) => 2,
            (_, false) => 3,
        };
        self.outcomes[slot].fetch_add(1, Ordering::Relaxed);
        outcome
    }

    /// ADDs a new churn pod; it is returned even when the ADD failed (it then needs a DEL).
    fn add(&self, node: usize, name: String) -> Option<ChurnPod> {
        let netns = Namespace::create(name.clone()).ok()?;
        let mut pod = ChurnPod {
            container: name,
            netns,
            ip: None,
        };
        let (ok, printed) = self.cni(node, "ADD", &pod);
        if ok {
            let result: serde_json::Value = serde_json::from_str(&printed).unwrap_or_default();
            pod.ip = result["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next()?.parse().ok());
            if let Some(ip) = pod.ip {
                let mut holders = self.holders.lock().expect("holders");
                if let Some(holder) = holders.insert(ip, pod.container.clone()) {
                    self.duplicates
                        .lock()
                        .expect("duplicates")
                        .push(format!("{ip} given to {} while {holder} held it", pod.container));
                }
                let survivor = self.survivors.iter().find(|(i, _)| self.lab.pods[*i].ip == ip);
                if let Some((index, _)) = survivor {
                    self.duplicates.lock().expect("duplicates").push(format!(
                        "{ip} given to {} while long-lived pod {} held it",
                        pod.container, self.lab.pods[*index].name
                    ));
                }
            }
        }
        Some(pod)
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

    /// A churn worker: keeps up to [`LIVE_PER_WORKER`] pods, adding and deleting at random
    /// until stopped, then DELs everything it still has (retrying, as a runtime does).
    fn churn(&self, node: usize, worker: usize) -> Vec<String> {
        let prefix = format!("{}c{node}w{worker}", self.lab.nodes[node].name);
        let mut live: Vec<ChurnPod> = Vec::new();
        let mut needs_del: Vec<ChurnPod> = Vec::new();
        let mut next = 0;
        while !self.stop.load(Ordering::SeqCst) {
            needs_del.retain(|pod| !self.del(node, pod));
            if live.len() < LIVE_PER_WORKER && (live.is_empty() || self.random.below(2) == 0) {
                next += 1;
                if let Some(pod) = self.add(node, format!("{prefix}x{next}")) {
                    if pod.ip.is_some() {
                        live.push(pod);
                    } else {
                        needs_del.push(pod);
                    }
                }
            } else if !live.is_empty() {
                let pod = live.swap_remove(self.random.below(live.len() as u64) as usize);
                if !self.del(node, &pod) {
                    needs_del.push(pod);
                }
            }
            self.random.pause(0, 50);
        }
        needs_del.extend(live);
        let deadline = Instant::now() + DRAIN;
        while !needs_del.is_empty() && Instant::now() < deadline {
            needs_del.retain(|pod| !self.del(node, pod));
            std::thread::sleep(Duration::from_millis(200));
        }
        needs_del.into_iter().map(|pod| pod.container).collect()
    }

    /// Pings every survivor pair in rounds until stopped, counting misses of allowed pairs and
    /// recording every denied pair that answered.
    fn traffic(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            for &(from, _) in &self.survivors {
                for &(to, _) in &self.survivors {
                    if from == to {
                        continue;
                    }
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
                }
            }
            self.rounds.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// SIGKILLs `node`'s agent a few milliseconds into an ADD (or a DEL) — still in flight when
    /// the signal goes — and starts the agent again a moment later.
    fn kill_agent_mid(&self, node: usize, command: &str) {
        let (adds, dels) = &self.in_flight[node];
        let counter = if command == "ADD" { adds } else { dels };
        let agent = &self.lab.nodes[node].name;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            while counter.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            self.random.pause(1, 4);
            let in_flight = counter.load(Ordering::SeqCst);
            if in_flight > 0 || Instant::now() >= deadline {
                self.lab.kill(agent).expect("kill agent");
                self.agent_kills.0.fetch_add(1, Ordering::SeqCst);
                if in_flight > 0 {
                    self.agent_kills.1.fetch_add(1, Ordering::SeqCst);
                }
                eprintln!("chaos: SIGKILLed {agent} with {in_flight} {command} in flight");
                break;
            }
        }
        self.random.pause(300, 1500);
        self.lab.restart(agent).expect("restart agent");
    }

    /// SIGKILLs lab process `name` at a random point and starts it again after a random pause.
    fn kill_and_restart(&self, name: &str) {
        self.random.pause(500, 2500);
        self.lab.kill(name).expect("kill");
        eprintln!("chaos: SIGKILLed {name}");
        self.random.pause(300, 3000);
        self.lab.restart(name).expect("restart");
    }

    fn compact(&self) {
        self.random.pause(500, 2000);
        let revision = self.lab.compact_datastore().expect("compaction");
        eprintln!("chaos: compacted the datastore at revision {revision}");
    }

    /// Runs `events` while the churn workers and the traffic thread run; returns the containers
    /// the workers could not DEL at the end.
    fn run(&self, events: impl FnOnce(&Self)) -> Vec<String> {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..self.lab.nodes.len())
                .flat_map(|node| (0..WORKERS_PER_NODE).map(move |worker| (node, worker)))
                .map(|(node, worker)| scope.spawn(move || self.churn(node, worker)))
                .collect();
            let traffic = scope.spawn(|| self.traffic());
            std::thread::sleep(Duration::from_secs(2));
            events(self);
            std::thread::sleep(Duration::from_secs(3));
            self.stop.store(true, Ordering::SeqCst);
            traffic.join().expect("traffic thread");
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("churn worker"))
                .collect()
        })
    }

    fn report(&self) {
        let [added, add_failed, deleted, del_failed] =
            self.outcomes.each_ref().map(|c| c.load(Ordering::Relaxed));
        eprintln!(
            "chaos: ADD {added} ok / {add_failed} failed, DEL {deleted} ok / {del_failed} failed; \
             {} probe rounds, {} misses of allowed pairs",
            self.rounds.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed)
        );
    }
}

fn spec(prefix: &str, etcd_members: usize, control_plane: ControlPlane) -> LabSpec {
    LabSpec {
        prefix: format!("brdt{}{prefix}", std::process::id()),
        nodes: 3,
        pods_per_node: 0,
        pool: "10.244.0.0/16".into(),
        binaries: test_binaries(),
        encapsulation: Default::default(),
        subnets: 1,
        etcd_members,
        control_plane,
        policy: true,
        dual_stack: false,
    }
}

/// Adds a long-lived pod with `role` on `node`.
fn add_survivor(lab: &mut Lab, node: usize, role: Role) -> (usize, Role) {
    let workload = Workload {
        namespace: "default".into(),
        pod: format!("{}-{node}-{}", role.label(), lab.pods.len()),
        labels: vec![("role".into(), role.label().into())],
        ports: Vec::new(),
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

/// Words of `text` that name a brindle host interface (`brd…`, not the `brd+` wildcard).
fn brindle_interfaces(text: &str) -> BTreeSet<String> {
    text.split_whitespace()
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
    let (aimed, caught) = (&chaos.agent_kills.0, &chaos.agent_kills.1);
    assert_eq!(
        caught.load(Ordering::SeqCst),
        aimed.load(Ordering::SeqCst),
        "every agent kill aimed at an ADD or a DEL caught one in flight"
    );
    let leaks = chaos.leaks.lock().expect("leaks");
    assert!(leaks.is_empty(), "policy failed open: {leaks:?}");
    assert!(
        lab.not_running().is_empty(),
        "processes died on their own: {:?}\n{}",
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
    let in_use = lab.addresses_in_use().expect("ipam show");
    assert_eq!(
        in_use,
        chaos.survivors.len() as u64,
        "addresses allocated after DEL and GC (the long-lived pods hold {})",
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

/// New pods work on every node after the chaos: each reaches every server as a client.
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
}

#[test]
fn separate_services_on_a_three_member_etcd_survive_kills_a_leader_loss_a_cut_off_node_and_compaction() {
    let (lab, survivors) = lab_with_survivors(spec("c3", 3, ControlPlane::Separate));
    let chaos = Chaos::new(&lab, survivors.clone());
    let undeleted = chaos.run(|chaos| {
        for service in [Service::Ipam, Service::Route, Service::Policy] {
            chaos.kill_and_restart(service.binary());
        }
        chaos.kill_agent_mid(0, "ADD");
        chaos.kill_agent_mid(1, "DEL");
        let leader = lab.etcd_leader().expect("an etcd leader");
        eprintln!("chaos: etcd's leader is {leader}");
        chaos.kill_and_restart(&leader);
        let member = ["etcd-1", "etcd-2", "etcd-3"]
            .into_iter()
            .find(|member| *member != leader)
            .expect("a follower");
        chaos.kill_and_restart(member);
        chaos.compact();
        chaos.random.pause(500, 2000);
        lab.cut_off(2, true).expect("cut off");
        eprintln!("chaos: cut node 2 off from the control plane");
        chaos.random.pause(8000, 12000);
        lab.cut_off(2, false).expect("reconnect");
        eprintln!("chaos: reconnected node 2");
        // A second pass: every service and agent once more, in a random order.
        let mut names: Vec<String> = [Service::Ipam, Service::Route, Service::Policy]
            .iter()
            .map(|s| s.binary().to_owned())
            .chain(lab.nodes.iter().map(|n| n.name.clone()))
            .collect();
        while !names.is_empty() {
            let name = names.swap_remove(chaos.random.below(names.len() as u64) as usize);
            chaos.kill_and_restart(&name);
        }
        chaos.compact();
    });
    check_aftermath(&chaos, &undeleted);
    drop(chaos);
    new_clients_work(lab, &survivors);
}

#[test]
fn brindle_server_on_a_single_etcd_survives_etcd_restarts_kills_and_compaction() {
    let (lab, survivors) = lab_with_survivors(spec("c1", 1, ControlPlane::AllInOne));
    let chaos = Chaos::new(&lab, survivors.clone());
    let undeleted = chaos.run(|chaos| {
        chaos.kill_and_restart("etcd-1");
        chaos.kill_agent_mid(2, "DEL");
        chaos.kill_and_restart("server");
        chaos.compact();
        chaos.kill_agent_mid(1, "ADD");
        chaos.random.pause(500, 2000);
        lab.stop_control_plane().expect("stop etcd and the server");
        eprintln!("chaos: stopped etcd and the server");
        chaos.random.pause(3000, 6000);
        lab.start_control_plane().expect("start them again");
        eprintln!("chaos: started etcd and the server again");
        chaos.compact();
    });
    check_aftermath(&chaos, &undeleted);
    drop(chaos);
    new_clients_work(lab, &survivors);
}
