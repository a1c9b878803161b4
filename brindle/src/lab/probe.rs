//! Reachability probes between lab pods: echo servers (TCP and UDP) inside a pod's namespace, and
//! probes from inside another — a TCP probe connects and gets its byte echoed, a UDP probe gets
//! its datagram echoed — all of one pod's probes at once, each bounded by a timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::netns::Namespace;

/// The transport a probe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Echo servers running in a namespace until dropped.
pub struct EchoServers {
    stop: watch::Sender<bool>,
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts TCP and UDP echo servers on `ports` (all addresses) inside `namespace`; returns once
/// they listen.
pub fn serve(namespace: &Namespace, ports: &[u16]) -> anyhow::Result<EchoServers> {
    let (stop, stopped) = watch::channel(false);
    let (ready, listening) = std::sync::mpsc::channel();
    let ports = ports.to_vec();
    let _thread = namespace.spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for port in ports {
                let address = SocketAddr::from(([0, 0, 0, 0], port));
                let tcp = tokio::net::TcpListener::bind(address).await?;
                let udp = tokio::net::UdpSocket::bind(address).await?;
                tasks.push(tokio::spawn(tcp_echo(tcp)));
                tasks.push(tokio::spawn(udp_echo(udp)));
            }
            let _ = ready.send(());
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
            for task in tasks {
                task.abort();
            }
            anyhow::Ok(())
        })
    });
    listening
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("echo servers in {} did not start", namespace.name))?;
    Ok(EchoServers { stop })
}

async fn tcp_echo(listener: tokio::net::TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buffer).await {
                if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn udp_echo(socket: tokio::net::UdpSocket) {
    let mut buffer = [0u8; 2048];
    while let Ok((n, peer)) = socket.recv_from(&mut buffer).await {
        let _ = socket.send_to(&buffer[..n], peer).await;
    }
}

/// One probe target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Address.
    pub ip: IpAddr,
    /// Transport.
    pub transport: Transport,
    /// Port.
    pub port: u16,
}

/// Probes every target from inside `namespace` at once; `true` where the echo came back within
/// `timeout`.
pub fn probe(namespace: &Namespace, targets: Vec<Target>, timeout: Duration) -> anyhow::Result<Vec<bool>> {
    namespace.block_on(move || async move {
        let probes = targets.into_iter().map(|target| async move {
            let address = SocketAddr::new(target.ip, target.port);
            let echoed = async {
                match target.transport {
                    Transport::Tcp => {
                        let mut stream = tokio::net::TcpStream::connect(address).await?;
                        stream.write_all(b"p").await?;
                        let mut byte = [0u8; 1];
                        stream.read_exact(&mut byte).await?;
                        anyhow::Ok(byte == *b"p")
                    }
                    Transport::Udp => {
                        let socket = tokio::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
                        socket.connect(address).await?;
                        let mut byte = [0u8; 1];
                        // A datagram may be lost: send again every 100 ms until the echo comes.
                        loop {
                            socket.send(b"p").await?;
                            if let Ok(received) =
                                tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut byte)).await
                            {
                                received?;
                                return anyhow::Ok(byte == *b"p");
                            }
                        }
                    }
                }
            };
            matches!(tokio::time::timeout(timeout, echoed).await, Ok(Ok(true)))
        });
        Ok(futures_util::future::join_all(probes).await)
    })
}
