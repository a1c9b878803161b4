//! The connections a server accepts: at most so many per source address, closed when they send
//! nothing at first ([`FIRST_BYTES_WITHIN`], or the idle timeout if shorter) or stay silent too
//! long afterwards — so idle or
//! half-open connections cannot pile up.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use brindle_metrics::Counters;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::limits::{FIRST_BYTES_WITHIN, LimitArgs};

/// Open connections per source address.
#[derive(Debug, Default)]
struct OpenConnections(Mutex<HashMap<IpAddr, usize>>);

impl OpenConnections {
    /// Counts a connection from `address` unless it already holds `limit`.
    fn admit(self: &Arc<Self>, address: IpAddr, limit: usize) -> Option<Slot> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            open: Arc::clone(self),
            address,
        })
    }
}

/// One admitted connection's place; given back when the connection is dropped.
#[derive(Debug)]
struct Slot {
    open: Arc<OpenConnections>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// An accepted connection that fails its reads once it has been silent too long.
#[derive(Debug)]
pub struct GuardedStream {
    inner: TcpStream,
    /// Silence allowed once the first bytes came.
    idle: Duration,
    last_read: Option<Instant>,
    deadline: Pin<Box<Sleep>>,
    _slot: Slot,
}

impl GuardedStream {
    fn new(inner: TcpStream, idle: Duration, slot: Slot) -> Self {
        Self {
            inner,
            idle,
            last_read: None,
            deadline: Box::pin(tokio::time::sleep(FIRST_BYTES_WITHIN.min(idle))),
            _slot: slot,
        }
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_read = Some(Instant::now());
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
            Poll::Pending => {}
        }
        // Nothing to read: the deadline decides, moved on lazily by the reads since it was set.
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let Some(last_read) = self.last_read else {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes soon enough after connecting",
                )));
            };
            let due = last_read + self.idle;
            if due <= Instant::now() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("silent for {:?}", self.idle),
                )));
            }
            self.deadline.as_mut().reset(due.into());
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The accepted connections of `listener`, within `limits`; each refused one is counted in
/// `refused` (label `limit`).
pub fn guarded(
    listener: TcpListener,
    limits: &LimitArgs,
    refused: Counters,
) -> impl Stream<Item = io::Result<GuardedStream>> + Send + 'static {
    let open = Arc::new(OpenConnections::default());
    let (per_address, idle) = (limits.max_connections_per_address, limits.idle_timeout());
    futures_util::stream::unfold(listener, move |listener| {
        let (open, refused) = (Arc::clone(&open), refused.clone());
        async move {
            loop {
                let (stream, peer): (TcpStream, SocketAddr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // Out of descriptors or a connection reset before it was accepted: the
                    // listener itself is fine.
                    Err(error) => {
                        tracing::debug!(%error, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Some(slot) = open.admit(peer.ip(), per_address) else {
                    refused
                        .get_or_create(&vec![("limit", "connections_per_address".to_owned())])
                        .inc();
                    tracing::debug!(%peer, per_address, "refusing a connection: its address holds the most allowed");
                    continue;
                };
                // Small gRPC messages must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Some((Ok(GuardedStream::new(stream, idle, slot)), listener));
            }
        }
    })
}
