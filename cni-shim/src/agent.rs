//! The node agent as the shim sees it: one call per CNI command over the agent's unix socket,
//! with bounded connect and call timeouts; a call that fails is the CNI error the runtime sees
//! (STATUS: "not available", the others: "try again later").

use std::time::Duration;

use brindle_proto::agent::v1::cni_client::CniClient;
use brindle_proto::agent::v1::{AddResponse, CniInvocation, CniOutcome, GcRequest};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{AGENT_FAILURE, CniError, NOT_AVAILABLE, TRY_AGAIN_LATER};

/// How long connecting to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long ADD, DEL and GC may take (they include IPAM round trips).
const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long CHECK and STATUS may take.
const SHORT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the agent failed.
#[derive(Debug)]
enum CallError {
    /// The agent's socket could not be reached (agent down, wrong path).
    Unreachable(String),
    /// The call timed out.
    TimedOut,
    /// The agent answered with a gRPC error.
    Failed(tonic::Status),
}

/// What a call that cannot reach the agent means to the runtime: try again later (ADD, DEL,
/// CHECK, GC), or not available (STATUS).
type Unreachable = (u32, &'static str);
const TRY_AGAIN: Unreachable = (
    TRY_AGAIN_LATER,
    "brindle node agent is not reachable; try again later",
);
const NOT_SERVING: Unreachable = (NOT_AVAILABLE, "brindle node agent is not available");

impl CallError {
    /// The CNI error of the failed call; `(code, what)` when the agent could not be reached.
    fn into_cni(self, (code, what): Unreachable) -> CniError {
        match self {
            Self::Unreachable(why) => CniError::new(code, what).with_details(why),
            Self::TimedOut => CniError::new(code, "brindle node agent did not answer in time"),
            Self::Failed(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                CniError::new(code, what).with_details(status.message().to_owned())
            }
            Self::Failed(status) => {
                CniError::new(AGENT_FAILURE, "brindle node agent failed").with_details(status.to_string())
            }
        }
    }
}

/// The node agent's CNI endpoint.
pub trait Agent {
    /// ADD.
    fn add(&self, socket: &str, request: CniInvocation) -> Result<AddResponse, CniError>;
    /// DEL.
    fn del(&self, socket: &str, request: CniInvocation) -> Result<CniOutcome, CniError>;
    /// CHECK.
    fn check(&self, socket: &str, request: CniInvocation) -> Result<CniOutcome, CniError>;
    /// STATUS.
    fn status(&self, socket: &str, request: CniInvocation) -> Result<CniOutcome, CniError>;
    /// GC.
    fn gc(&self, socket: &str, request: GcRequest) -> Result<CniOutcome, CniError>;
}

/// The real agent, reached over its unix socket on a single-threaded runtime.
pub struct SocketAgent;

impl SocketAgent {
    fn call<T, F, Fut>(&self, socket: &str, timeout: Duration, call: F) -> Result<T, CallError>
    where
        F: FnOnce(CniClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CallError::Unreachable(format!("starting the I/O runtime: {e}")))?;
        runtime.block_on(async {
            let path = socket.to_owned();
            let connector = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
            });
            let channel = Endpoint::from_static("http://brindle-agent")
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(timeout)
                .connect_with_connector(connector)
                .await
                .map_err(|e| CallError::Unreachable(format!("{socket}: {}", source_text(&e))))?;
            match tokio::time::timeout(timeout, call(CniClient::new(channel))).await {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(CallError::Failed(status)),
                Err(_) => Err(CallError::TimedOut),
            }
        })
    }
}

/// The innermost cause of an error, which names what actually failed (e.g. "No such file").
fn source_text(error: &dyn std::error::Error) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

impl Agent for SocketAgent {
    fn add(&self, socket: &str, request: CniInvocation) -> Result<AddResponse, CniError> {
        self.call(
            socket,
            LONG_CALL_TIMEOUT,
            |mut c| async move { c.add(request).await },
        )
        .map_err(|e| e.into_cni(TRY_AGAIN))
    }
    fn del(&self, socket: &str, request: CniInvocation) -> Result<CniOutcome, CniError> {
        self.call(
            socket,
            LONG_CALL_TIMEOUT,
            |mut c| async move { c.del(request).await },
        )
        .map_err(|e| e.into_cni(TRY_AGAIN))
    }
    fn check(&self, socket: &str, request: CniInvocation) -> Result<CniOutcome, CniError> {
        self.call(socket, SHORT_CALL_TIMEOUT, |mut c| async move {
            c.check(request).await
        })
        .map_err(|e| e.into_cni(TRY_AGAIN))
    }
    fn status(&self, socket: &str, request: CniInvocation) -> Result<CniOutcome, CniError> {
        self.call(socket, SHORT_CALL_TIMEOUT, |mut c| async move {
            c.status(request).await
        })
        .map_err(|e| e.into_cni(NOT_SERVING))
    }
    fn gc(&self, socket: &str, request: GcRequest) -> Result<CniOutcome, CniError> {
        self.call(
            socket,
            LONG_CALL_TIMEOUT,
            |mut c| async move { c.gc(request).await },
        )
        .map_err(|e| e.into_cni(TRY_AGAIN))
    }
}
