//! One subscriber's session over any transport: it says hello (node, revision it has), gets its
//! start and then the batches, acknowledges what it applied, and both sides send keepalives so a
//! dead peer is noticed. A subscriber that stops reading or falls out of the history is evicted.

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::state::Storage;
use crate::{Batch, EncodedSnapshot, Fanout, FanoutError, Start};

/// What a subscriber says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// First message: who it is and the revision it has (0: nothing).
    Hello {
        /// The node it acts for.
        node: String,
        /// Last revision it applied.
        resume_revision: u64,
    },
    /// It applied everything up to `revision`.
    Ack {
        /// The revision.
        revision: u64,
        /// Kernel objects it has programmed for that state.
        programmed: u64,
    },
    /// It is alive.
    Keepalive,
}

/// What a session sends.
#[derive(Debug, Clone)]
pub enum ServerMessage<V> {
    /// The whole state.
    Snapshot(Arc<EncodedSnapshot>),
    /// Changes (after a resume, the first one may be empty: "you are current at `to`").
    Delta(Arc<Batch<V>>),
    /// Nothing new; the server is alive.
    Keepalive,
}

/// Serves one subscriber: reads its messages from `incoming`, queues what it must receive on
/// `outgoing`. Returns `Ok` when the subscriber goes away, the reason otherwise (the transport
/// turns it into a status the subscriber sees).
pub async fn serve<V, St, S, E>(
    fanout: &Fanout<V, St>,
    mut incoming: S,
    outgoing: mpsc::Sender<ServerMessage<V>>,
) -> Result<(), FanoutError>
where
    V: Clone + PartialEq + Send + Sync + 'static,
    St: Storage<V>,
    S: Stream<Item = Result<ClientMessage, E>> + Unpin,
    E: std::fmt::Display,
{
    let config = &fanout.shared.config;
    let (node, resume_revision) = match tokio::time::timeout(config.keepalive_timeout, incoming.next()).await
    {
        Err(_) => {
            return Err(FanoutError::Protocol(format!(
                "no hello within {:.1} s",
                config.keepalive_timeout.as_secs_f64()
            )));
        }
        Ok(None | Some(Err(_))) => return Ok(()),
        Ok(Some(Ok(ClientMessage::Hello {
            node,
            resume_revision,
        }))) if !node.is_empty() => (node, resume_revision),
        Ok(Some(Ok(ClientMessage::Hello { .. }))) => {
            return Err(FanoutError::Protocol("hello.node is empty".into()));
        }
        Ok(Some(Ok(other))) => {
            return Err(FanoutError::Protocol(format!(
                "the first message must be hello, not {other:?}"
            )));
        }
    };
    fanout.update_status(&node, |s| s.connected = true);
    let mut session = Session {
        fanout,
        node: &node,
        outgoing,
        last_sent: Instant::now(),
        last_heard: Instant::now(),
    };
    let result = session.run(&mut incoming, resume_revision).await;
    fanout.update_status(&node, |s| s.connected = false);
    match result {
        Err(FanoutError::Closed) => Ok(()),
        other => other,
    }
}

struct Session<'a, V, St: Storage<V>> {
    fanout: &'a Fanout<V, St>,
    node: &'a str,
    outgoing: mpsc::Sender<ServerMessage<V>>,
    last_sent: Instant,
    last_heard: Instant,
}

impl<V: Clone + PartialEq + Send + Sync + 'static, St: Storage<V>> Session<'_, V, St> {
    async fn run<S, E>(&mut self, incoming: &mut S, resume_revision: u64) -> Result<(), FanoutError>
    where
        S: Stream<Item = Result<ClientMessage, E>> + Unpin,
        E: std::fmt::Display,
    {
        let config = &self.fanout.shared.config;
        let (mut subscription, start) = self.fanout.subscribe(resume_revision).await?;
        match start {
            Start::Snapshot(snapshot) => {
                let revision = snapshot.revision;
                self.send(ServerMessage::Snapshot(snapshot), revision).await?;
            }
            Start::Resume { batches, revision } if batches.is_empty() => {
                let current = Batch {
                    from: revision,
                    to: revision,
                    upserts: Vec::new(),
                    removed: Vec::new(),
                    replaced: Vec::new(),
                };
                self.send(ServerMessage::Delta(Arc::new(current)), revision)
                    .await?;
            }
            Start::Resume { batches, .. } => {
                for batch in batches {
                    let revision = batch.to;
                    self.send(ServerMessage::Delta(batch), revision).await?;
                }
            }
        }
        // Nothing was read while the first state was being prepared (a service still loading a
        // large cluster takes longer than the keepalive timeout): silence counts from here.
        self.last_heard = Instant::now();
        loop {
            let keepalive_due = self.last_sent + config.keepalive_interval;
            let silence_limit = self.last_heard + config.keepalive_timeout;
            tokio::select! {
                message = incoming.next() => match message {
                    None => return Ok(()),
                    Some(Err(error)) => {
                        tracing::debug!(node = self.node, %error, "subscriber stream ended");
                        return Ok(());
                    }
                    Some(Ok(message)) => self.heard(message)?,
                },
                batches = subscription.next() => {
                    for batch in batches? {
                        let revision = batch.to;
                        self.send(ServerMessage::Delta(batch), revision).await?;
                    }
                }
                () = tokio::time::sleep_until(keepalive_due.min(silence_limit)) => {
                    if Instant::now() >= silence_limit {
                        return Err(FanoutError::KeepaliveTimeout {
                            seconds: config.keepalive_timeout.as_secs_f64(),
                        });
                    }
                    self.send(ServerMessage::Keepalive, 0).await?;
                }
            }
        }
    }

    fn heard(&mut self, message: ClientMessage) -> Result<(), FanoutError> {
        self.last_heard = Instant::now();
        match message {
            ClientMessage::Hello { .. } => Err(FanoutError::Protocol("hello sent twice".into())),
            ClientMessage::Ack { revision, programmed } => {
                self.fanout.update_status(self.node, |s| {
                    s.acked_revision = revision;
                    s.acked_at = Some(SystemTime::now());
                    s.programmed = programmed;
                });
                Ok(())
            }
            ClientMessage::Keepalive => Ok(()),
        }
    }

    /// Queues `message`, waiting at most the send timeout for room; `revision` > 0 is recorded as
    /// sent.
    async fn send(&mut self, message: ServerMessage<V>, revision: u64) -> Result<(), FanoutError> {
        let timeout = self.fanout.shared.config.send_timeout;
        match tokio::time::timeout(timeout, self.outgoing.send(message)).await {
            Err(_) => Err(FanoutError::SlowSubscriber {
                seconds: timeout.as_secs_f64(),
            }),
            // The transport dropped its end: the subscriber is gone.
            Ok(Err(_)) => Err(FanoutError::Closed),
            Ok(Ok(())) => {
                self.last_sent = Instant::now();
                if revision > 0 {
                    self.fanout
                        .update_status(self.node, |s| s.sent_revision = revision);
                }
                Ok(())
            }
        }
    }
}
