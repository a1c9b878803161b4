//! NFLOG over netlink (`NETLINK_NETFILTER`, nfnetlink_log): a socket bound to one group that
//! hands back the packets iptables' NFLOG target sends it, each with the rule's prefix.

use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::DataplaneError;

/// Bytes of each packet copied to the agent: the IP and transport headers.
const COPIED_BYTES: u32 = 128;
/// The longest a packet waits in the kernel before its batch is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// Packets the kernel batches into one message at most.
const BATCH_PACKETS: u32 = 64;
/// The kernel's buffer per batch.
const BATCH_BYTES: u32 = 64 * 1024;
/// The socket's receive buffer: bursts the reader has not caught up with wait here.
const RECEIVE_BUFFER: usize = 8 << 20;

/// A packet a rule sent to NFLOG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedPacket {
    /// The rule's `--nflog-prefix`.
    pub prefix: String,
    /// The packet's first bytes, from its IP header on.
    pub payload: Vec<u8>,
}

/// What one read from the socket gave.
#[derive(Debug, Default)]
pub struct NflogBatch {
    /// The packets.
    pub packets: Vec<LoggedPacket>,
    /// Whether the kernel dropped packets because the socket's buffer was full (ENOBUFS).
    pub overrun: bool,
}

/// A socket bound to an NFLOG group in the calling thread's network namespace (blocking: read
/// it from a thread of its own).
pub struct NflogSocket {
    socket: Socket,
    buffer: Vec<u8>,
}

fn io(what: String, source: std::io::Error) -> DataplaneError {
    DataplaneError::Io { what, source }
}

impl NflogSocket {
    /// Binds `group` (IPv4 and IPv6 packets); fails when another process holds it.
    pub fn bind(group: u16) -> Result<Self, DataplaneError> {
        let what = |step: &str| format!("NFLOG group {group}: {step}");
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| io(what("opening a socket"), e))?;
        socket
            .bind_auto()
            .map_err(|e| io(what("binding the socket"), e))?;
        socket
            .set_rx_buf_sz(RECEIVE_BUFFER)
            .map_err(|e| io(what("sizing the receive buffer"), e))?;
        // No PfBind: since Linux 3.17 binding the group suffices, and binding the protocol
        // families would make nfnetlink_log the namespace's default packet logger.
        let requests = [config_request(
            NetfilterProtoFamily::Unspec,
            group,
            vec![
                ConfigCmd::Bind.into(),
                ConfigMode::new_packet(COPIED_BYTES).into(),
                Timeout::from(FLUSH_AFTER).into(),
                ConfigNla::QThresh(BATCH_PACKETS),
                ConfigNla::NlBufSiz(BATCH_BYTES),
            ],
        )];
        for request in requests {
            let mut bytes = vec![0; request.header.length as usize];
            request.serialize(&mut bytes);
            socket.send(&bytes, 0).map_err(|e| io(what("configuring"), e))?;
            // The kernel acknowledges each request; an error (EBUSY: the group is taken) says why
            // binding failed.
            let mut reply = vec![0; 4096];
            let size = socket
                .recv(&mut &mut reply[..], 0)
                .map_err(|e| io(what("configuring"), e))?;
            if let Ok(message) = NetlinkMessage::<NetfilterMessage>::deserialize(&reply[..size])
                && let NetlinkPayload::Error(error) = message.payload
                && let Some(code) = error.code
            {
                return Err(io(
                    what("binding the group"),
                    std::io::Error::from_raw_os_error(-code.get()),
                ));
            }
        }
        Ok(Self {
            socket,
            buffer: vec![0; 1 << 20],
        })
    }

    /// Waits for the next batch of packets.
    pub fn receive(&mut self) -> Result<NflogBatch, DataplaneError> {
        let mut batch = NflogBatch::default();
        let size = match self.socket.recv(&mut &mut self.buffer[..], 0) {
            Ok(size) => size,
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => {
                batch.overrun = true;
                return Ok(batch);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(batch),
            Err(e) => return Err(io("reading NFLOG".into(), e)),
        };
        let mut offset = 0;
        while offset + 4 <= size {
            // The message's length, from its header, also when the rest does not parse: one
            // message the crate cannot read is skipped, not the batch.
            let mut length_bytes = [0u8; 4];
            length_bytes.copy_from_slice(&self.buffer[offset..offset + 4]);
            let length = u32::from_ne_bytes(length_bytes) as usize;
            if length == 0 {
                break;
            }
            let end = (offset + length).min(size);
            let parsed = NetlinkMessage::<NetfilterMessage>::deserialize(&self.buffer[offset..end]);
            if let Ok(NetlinkMessage {
                payload:
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(attributes)),
                        ..
                    }),
                ..
            }) = parsed
            {
                let mut packet = LoggedPacket {
                    prefix: String::new(),
                    payload: Vec::new(),
                };
                for attribute in attributes {
                    match attribute {
                        PacketNla::Prefix(text) => packet.prefix = text.to_string_lossy().into_owned(),
                        PacketNla::Payload(bytes) => packet.payload = bytes,
                        _ => {}
                    }
                }
                batch.packets.push(packet);
            }
            offset += length.next_multiple_of(4);
        }
        Ok(batch)
    }

    /// Makes [`receive`](Self::receive) return (with what is queued, maybe nothing) instead of
    /// waiting.
    pub fn set_non_blocking(&self) -> Result<(), DataplaneError> {
        self.socket
            .set_non_blocking(true)
            .map_err(|e| io("NFLOG: non-blocking".into(), e))
    }
}
