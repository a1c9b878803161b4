//! Connection-tracking entries over netlink (`NETLINK_NETFILTER`, ctnetlink): listing them and
//! deleting those that touch given addresses — what a deleted pod leaves behind (Felix does the
//! same), so that its address, reused, inherits no flow and no port mapping's NAT.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, Tuple};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::DataplaneError;

/// One tracked connection: the addresses of its original and reply directions, and its original
/// tuple as the kernel gave it (what deleting it names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedConnection {
    /// Source and destination of the original direction.
    pub original: (Option<IpAddr>, Option<IpAddr>),
    /// Source and destination of the reply direction.
    pub reply: (Option<IpAddr>, Option<IpAddr>),
    tuple: Vec<Tuple>,
}

impl TrackedConnection {
    /// Whether one of its four addresses is in `addresses`.
    pub fn touches(&self, addresses: &BTreeSet<IpAddr>) -> bool {
        [self.original.0, self.original.1, self.reply.0, self.reply.1]
            .into_iter()
            .flatten()
            .any(|address| addresses.contains(&address))
    }
}

/// Connection tracking of the agent's network namespace.
pub trait Conntrack: Send + Sync {
    /// Every tracked connection.
    fn connections(&self) -> Result<Vec<TrackedConnection>, DataplaneError>;
    /// Deletes every connection that touches one of `addresses`; how many were deleted.
    fn delete_touching(&self, addresses: &BTreeSet<IpAddr>) -> Result<usize, DataplaneError>;
}

/// ctnetlink through a socket opened per call (blocking: call it off the async workers).
#[derive(Debug, Default, Clone, Copy)]
pub struct NetlinkConntrack;

fn io(what: &str, source: std::io::Error) -> DataplaneError {
    DataplaneError::Io {
        what: what.into(),
        source,
    }
}

fn open() -> Result<Socket, DataplaneError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io("opening a ctnetlink socket", e))?;
    socket
        .bind_auto()
        .map_err(|e| io("binding a ctnetlink socket", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| io("connecting a ctnetlink socket", e))?;
    Ok(socket)
}

fn send(
    socket: &Socket,
    family: NetfilterProtoFamily,
    message: ConntrackMessage,
    flags: u16,
) -> Result<(), DataplaneError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), message)),
    );
    packet.finalize();
    let mut buffer = vec![0; packet.header.length as usize];
    packet.serialize(&mut buffer);
    socket
        .send(&buffer, 0)
        .map_err(|e| io("sending to ctnetlink", e))?;
    Ok(())
}

/// Reads replies until the kernel's DONE (a dump) or its acknowledgement, handing each message
/// before to `each` as it comes (a dump is never held whole).
fn receive(socket: &Socket, mut each: impl FnMut(NetfilterMessage)) -> Result<(), DataplaneError> {
    loop {
        let mut datagram = Vec::with_capacity(1 << 16);
        socket
            .recv(&mut datagram, 0)
            .map_err(|e| io("reading from ctnetlink", e))?;
        let mut offset = 0;
        while offset < datagram.len() {
            let message =
                NetlinkMessage::<NetfilterMessage>::deserialize(&datagram[offset..]).map_err(|e| {
                    io(
                        "decoding a ctnetlink message",
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                    )
                })?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => match error.code {
                    None => return Ok(()),
                    // The entry went away on its own meanwhile.
                    Some(code) if -code.get() == nix::errno::Errno::ENOENT as i32 => return Ok(()),
                    Some(_) => return Err(io("ctnetlink", error.to_io())),
                },
                NetlinkPayload::InnerMessage(inner) => each(inner),
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// The source and destination addresses of `tuple`.
fn addresses(tuple: &[Tuple]) -> (Option<IpAddr>, Option<IpAddr>) {
    let mut found = (None, None);
    for part in tuple {
        if let Tuple::Ip(ips) = part {
            for ip in ips {
                match ip {
                    IPTuple::SourceAddress(address) => found.0 = Some(*address),
                    IPTuple::DestinationAddress(address) => found.1 = Some(*address),
                    _ => {}
                }
            }
        }
    }
    found
}

fn connection(message: NetfilterMessage) -> Option<TrackedConnection> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)) = message.inner else {
        return None;
    };
    let (mut original, mut reply) = (None, None);
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(tuple) => original = Some(tuple),
            ConntrackAttribute::CtaTupleReply(tuple) => reply = Some(tuple),
            _ => {}
        }
    }
    let tuple = original?;
    Some(TrackedConnection {
        original: addresses(&tuple),
        reply: reply.as_deref().map(addresses).unwrap_or_default(),
        tuple,
    })
}

impl NetlinkConntrack {
    /// The tracked connections `keep` accepts, filtered as the dump arrives.
    fn dump(
        &self,
        keep: impl Fn(&TrackedConnection) -> bool,
    ) -> Result<Vec<TrackedConnection>, DataplaneError> {
        let socket = open()?;
        send(
            &socket,
            NetfilterProtoFamily::Unspec,
            ConntrackMessage::Get(Vec::new()),
            NLM_F_DUMP,
        )?;
        let mut kept = Vec::new();
        receive(&socket, |message| {
            if let Some(connection) = connection(message).filter(&keep) {
                kept.push(connection);
            }
        })?;
        Ok(kept)
    }
}

impl Conntrack for NetlinkConntrack {
    fn connections(&self) -> Result<Vec<TrackedConnection>, DataplaneError> {
        self.dump(|_| true)
    }

    /// Tries every doomed connection even when one fails; the first failure is returned after.
    fn delete_touching(&self, addresses: &BTreeSet<IpAddr>) -> Result<usize, DataplaneError> {
        let doomed = self.dump(|c| c.touches(addresses))?;
        let socket = open()?;
        let mut first_failure = None;
        for connection in &doomed {
            let family = match connection.original.0 {
                Some(IpAddr::V6(_)) => NetfilterProtoFamily::IPv6,
                _ => NetfilterProtoFamily::IPv4,
            };
            let message =
                ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(connection.tuple.clone())]);
            let deleted = send(&socket, family, message, NLM_F_ACK).and_then(|()| receive(&socket, drop));
            if let Err(error) = deleted {
                first_failure.get_or_insert(error);
            }
        }
        match first_failure {
            Some(error) => Err(error),
            None => Ok(doomed.len()),
        }
    }
}
