//! What of a logged packet makes its flow: addresses, protocol, ports or ICMP type and code, and
//! its length — read from its first bytes with `etherparse` (NFLOG copies only the headers).

use std::net::IpAddr;

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use policy_api::flow::FlowKey;
use policy_api::model::IcmpMatch;

/// The flow a packet belongs to and its length (the IP header's; the copy is shorter); `None`
/// when the bytes are not an IP packet.
pub fn flow_of(payload: &[u8]) -> Option<(FlowKey, u64)> {
    let packet = LaxSlicedPacket::from_ip(payload).ok()?;
    let (source_ip, destination_ip, protocol, length) = match packet.net.as_ref()? {
        LaxNetSlice::Ipv4(ip) => {
            let header = ip.header();
            (
                IpAddr::from(header.source_addr()),
                IpAddr::from(header.destination_addr()),
                header.protocol().0,
                u64::from(header.total_len()),
            )
        }
        LaxNetSlice::Ipv6(ip) => {
            let header = ip.header();
            (
                IpAddr::from(header.source_addr()),
                IpAddr::from(header.destination_addr()),
                ip.payload().ip_number.0,
                40 + u64::from(header.payload_length()),
            )
        }
        LaxNetSlice::Arp(_) => return None,
    };
    let mut key = FlowKey {
        source_ip,
        destination_ip,
        protocol,
        source_port: None,
        destination_port: None,
        icmp: None,
    };
    let icmp = |icmp_type: u8, code: u8| IcmpMatch {
        icmp_type,
        code: Some(code),
    };
    match packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            key.source_port = Some(tcp.source_port());
            key.destination_port = Some(tcp.destination_port());
        }
        Some(TransportSlice::Udp(udp)) => {
            key.source_port = Some(udp.source_port());
            key.destination_port = Some(udp.destination_port());
        }
        Some(TransportSlice::Icmpv4(message)) => key.icmp = Some(icmp(message.type_u8(), message.code_u8())),
        Some(TransportSlice::Icmpv6(message)) => key.icmp = Some(icmp(message.type_u8(), message.code_u8())),
        None => {}
    }
    Some((key, length))
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    #[test]
    fn udp_tcp_and_icmp_packets_give_their_flow_and_length() {
        let mut udp = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 3], [10, 0, 0, 2], 64)
            .udp(40000, 9000)
            .write(&mut udp, &[0; 100])
            .expect("test input");
        let (key, length) = flow_of(&udp[..64]).expect("a truncated copy still parses");
        assert_eq!(key.source_ip, "10.0.0.3".parse::<IpAddr>().expect("test input"));
        assert_eq!(
            (key.protocol, key.source_port, key.destination_port),
            (17, Some(40000), Some(9000))
        );
        assert_eq!(length, 20 + 8 + 100);

        let mut syn = Vec::new();
        PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
            .tcp(5555, 80, 1, 1000)
            .syn()
            .write(&mut syn, &[])
            .expect("test input");
        let (key, length) = flow_of(&syn).expect("test input");
        assert_eq!((key.protocol, key.destination_port), (6, Some(80)));
        assert_eq!(length, 40 + 20);

        let mut ping = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 3], [10, 0, 0, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut ping, &[0; 56])
            .expect("test input");
        let (key, _) = flow_of(&ping).expect("test input");
        assert_eq!(
            key.icmp,
            Some(IcmpMatch {
                icmp_type: 8,
                code: Some(0)
            })
        );
        assert_eq!(key.source_port, None);
        assert!(flow_of(&[0x45, 0]).is_none());
    }
}
