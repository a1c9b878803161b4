use std::collections::BTreeMap;
use brindle_bench::scale::cluster::Cluster;
use policy_svc::core::records::decode;
use policy_svc::core::Calculator;
fn main() {
    let nodes: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let cluster = Cluster::new(nodes);
    let records: Vec<_> = cluster.policy_records().expect("c").into_iter().map(|(k, v)| decode(&k, &v).expect("d")).collect();
    let calc = Calculator::from_records(records);
    let views: BTreeMap<String, _> = (0..nodes).map(|n| { let name = Cluster::node_name(n); let v = calc.shared_view(&name); (name, v) }).collect();
    let total: usize = views.values().map(|v| v.len()).sum();
    println!("entries {total}");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let rss = std::fs::read_to_string("/proc/self/status").unwrap().lines().find(|l| l.starts_with("VmRSS")).map(str::to_owned); println!("rss {rss:?}"); std::process::exit(0);
}
