//! Renders the agent's result as the CNI result JSON of the requested version, appended to an
//! incoming `prevResult` when chained.

use brindle_proto::agent::v1::CniResult;
use serde_json::{Map, Value, json};

/// The result JSON for `cni_version`.
pub fn render(result: &CniResult, cni_version: &str, prev_result: Option<&Value>) -> String {
    let legacy = cni_version.starts_with("0.");
    let with_mtu = cni_version == "1.1.0";
    let prev = prev_result.and_then(Value::as_object);
    let list = |key: &str| {
        prev.and_then(|p| p.get(key))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut interfaces = list("interfaces");
    let offset = interfaces.len();
    for interface in &result.interfaces {
        let mut object = Map::new();
        object.insert("name".into(), interface.name.clone().into());
        if !interface.mac.is_empty() {
            object.insert("mac".into(), interface.mac.clone().into());
        }
        if !interface.sandbox.is_empty() {
            object.insert("sandbox".into(), interface.sandbox.clone().into());
        }
        if with_mtu && interface.mtu > 0 {
            object.insert("mtu".into(), interface.mtu.into());
        }
        interfaces.push(Value::Object(object));
    }
    let mut ips = list("ips");
    for ip in &result.ips {
        let mut object = Map::new();
        if legacy {
            let family = if ip.address.contains(':') { "6" } else { "4" };
            object.insert("version".into(), family.into());
        }
        object.insert("address".into(), ip.address.clone().into());
        if !ip.gateway.is_empty() {
            object.insert("gateway".into(), ip.gateway.clone().into());
        }
        if ip.interface >= 0 {
            let index = offset + usize::try_from(ip.interface).unwrap_or_default();
            object.insert("interface".into(), index.into());
        }
        ips.push(Value::Object(object));
    }
    let mut routes = list("routes");
    routes.extend(result.routes.iter().map(|r| {
        let mut object = Map::new();
        object.insert("dst".into(), r.dst.clone().into());
        if !r.gw.is_empty() {
            object.insert("gw".into(), r.gw.clone().into());
        }
        Value::Object(object)
    }));
    let dns = match &result.dns {
        Some(dns) if !dns.nameservers.is_empty() || !dns.search.is_empty() || !dns.domain.is_empty() => {
            json!({
                "nameservers": dns.nameservers,
                "domain": dns.domain,
                "search": dns.search,
                "options": dns.options,
            })
        }
        _ => prev
            .and_then(|p| p.get("dns"))
            .cloned()
            .unwrap_or_else(|| json!({})),
    };
    json!({
        "cniVersion": cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_proto::agent::v1::{CniInterface, CniIpConfig, CniRoute};

    fn result() -> CniResult {
        CniResult {
            interfaces: vec![
                CniInterface {
                    name: "brd0123456789a".into(),
                    mac: "ee:ee:ee:ee:ee:ee".into(),
                    sandbox: String::new(),
                    mtu: 1500,
                },
                CniInterface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:00:05".into(),
                    sandbox: "/proc/1/ns/net".into(),
                    mtu: 1500,
                },
            ],
            ips: vec![CniIpConfig {
                address: "10.244.0.5/32".into(),
                gateway: "169.254.1.1".into(),
                interface: 1,
            }],
            routes: vec![CniRoute {
                dst: "0.0.0.0/0".into(),
                gw: "169.254.1.1".into(),
            }],
            dns: None,
        }
    }

    #[test]
    fn shapes_per_version() {
        let v1: Value = serde_json::from_str(&render(&result(), "1.1.0", None)).expect("json");
        assert_eq!(v1["cniVersion"], "1.1.0");
        assert_eq!(v1["ips"][0]["interface"], 1);
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["interfaces"][1]["mtu"], 1500);
        let v030: Value = serde_json::from_str(&render(&result(), "0.3.1", None)).expect("json");
        assert_eq!(v030["ips"][0]["version"], "4");
        assert!(v030["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn appends_to_prev_result() {
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"lo"}],"ips":[{"address":"10.9.0.1/24","interface":0}]});
        let chained: Value = serde_json::from_str(&render(&result(), "1.0.0", Some(&prev))).expect("json");
        assert_eq!(chained["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(
            chained["ips"][1]["interface"], 2,
            "our index moves past the previous interfaces"
        );
        assert_eq!(chained["ips"][0]["address"], "10.9.0.1/24");
    }
}
