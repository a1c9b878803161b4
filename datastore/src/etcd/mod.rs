//! The etcd backend: etcd-client with keep-alives, paginated consistent lists, CAS transactions
//! that name the failed compare, and watches that resume on their own.

mod watch;

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions,
    Identity, PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse,
};

use crate::error::StoreError;
use crate::store::{Store, WatchStream};
use crate::types::{Compare, KeyValue, LeaseId, ListResult, Op, Revision, Txn, prefix_end};

/// Keys per page of a list; pages are read at one revision. etcd 3.4 walks every key left in
/// the range to count them for each page, so a list costs pages × keys: after the first page,
/// the rest is read at once when it fits well within [`MAX_RESPONSE_BYTES`] (judged by the
/// page's sizes), so a list usually walks the range twice whatever its length.
const LIST_PAGE: i64 = 10_000;
/// Largest response accepted from etcd (a page of large values, a watch response).
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// The rest of a list is read at once when its estimated size is at most this.
const LIST_REST_BYTES: usize = MAX_RESPONSE_BYTES / 4;

/// TLS material for an etcd cluster with client authentication (PEM files).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// CA bundle that signed the etcd server certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Client private key.
    pub key: Option<PathBuf>,
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port` endpoints of the cluster's members.
    pub endpoints: Vec<String>,
    /// TLS settings; required for `https://` endpoints with a private CA or client auth.
    pub tls: Option<EtcdTls>,
    /// Time allowed to connect to an endpoint.
    pub connect_timeout: Duration,
    /// Time allowed for one unary request.
    pub request_timeout: Duration,
    /// HTTP/2 ping interval; a dead server is noticed after about interval + timeout.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
}

impl EtcdConfig {
    /// Defaults for `endpoints`: 5 s connect and request timeouts, 5 s + 5 s keep-alive.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

/// A [`Store`] on an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

fn read_pem(path: &PathBuf, what: &'static str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::InvalidRequest(format!("cannot read etcd {what} {}: {e}", path.display())))
}

impl EtcdStore {
    /// Connects to etcd; fails with [`StoreError::Unavailable`] if no endpoint answers.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::InvalidRequest("no etcd endpoints given".to_owned()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(config.keepalive_interval, config.keepalive_timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            let mut tls_options = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                tls_options = tls_options.ca_certificate(Certificate::from_pem(read_pem(ca, "CA")?));
            }
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => {
                    let identity = Identity::from_pem(
                        read_pem(cert, "client certificate")?,
                        read_pem(key, "client key")?,
                    );
                    tls_options = tls_options.identity(identity);
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::InvalidRequest(
                        "etcd client certificate and key must be given together".to_owned(),
                    ));
                }
            }
            options = options.with_tls(tls_options);
        }
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(map_error)?;
        Ok(Self { client })
    }
}

/// Maps an etcd-client error onto the store's error kinds.
fn map_error(error: etcd_client::Error) -> StoreError {
    use etcd_client::Error;
    match error {
        Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("request is too large") {
                StoreError::TooLarge {
                    size: 0,
                    limit: crate::types::MAX_REQUEST_BYTES,
                }
            } else if matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            ) || message.contains("no leader")
            {
                StoreError::Unavailable(message.to_owned())
            } else {
                StoreError::backend("etcd request", Error::GRpcStatus(status))
            }
        }
        Error::TransportError(e) => StoreError::Unavailable(format!("etcd transport: {e}")),
        Error::IoError(e) => StoreError::Unavailable(format!("etcd I/O: {e}")),
        other => StoreError::backend("etcd client", other),
    }
}

/// Maps an error of a request involving `lease`, recognising etcd's "lease not found".
fn lease_error(lease: LeaseId) -> impl Fn(etcd_client::Error) -> StoreError {
    move |e| match &e {
        etcd_client::Error::GRpcStatus(status) if status.message().contains("lease not found") => {
            StoreError::LeaseNotFound(lease)
        }
        etcd_client::Error::LeaseKeepAliveError(message) if message.contains("lease not found") => {
            StoreError::LeaseNotFound(lease)
        }
        _ => map_error(e),
    }
}

fn to_revision(revision: i64) -> Revision {
    u64::try_from(revision).unwrap_or(0)
}

fn to_etcd_revision(revision: Revision) -> Result<i64, StoreError> {
    i64::try_from(revision)
        .map_err(|_| StoreError::InvalidRequest(format!("revision {revision} out of range")))
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = kv
        .key_str()
        .map_err(|e| StoreError::backend("decoding an etcd key", e))?
        .to_owned();
    Ok(KeyValue {
        key,
        value: kv.value().to_vec(),
        create_revision: to_revision(kv.create_revision()),
        mod_revision: to_revision(kv.mod_revision()),
        version: to_revision(kv.version()),
        lease: (kv.lease() > 0).then(|| to_revision(kv.lease())),
    })
}

fn convert_compare(compare: &Compare) -> Result<EtcdCompare, StoreError> {
    Ok(match compare {
        Compare::Absent { key } => EtcdCompare::create_revision(key.as_str(), CompareOp::Equal, 0),
        Compare::ModRevision { key, revision } => {
            EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, to_etcd_revision(*revision)?)
        }
        Compare::Value { key, value } => EtcdCompare::value(key.as_str(), CompareOp::Equal, value.clone()),
    })
}

fn convert_op(op: &Op) -> Result<TxnOp, StoreError> {
    Ok(match op {
        Op::Put { key, value, lease } => {
            let options = match lease {
                Some(lease) => Some(PutOptions::new().with_lease(to_etcd_revision(*lease)?)),
                None => None,
            };
            TxnOp::put(key.as_str(), value.clone(), options)
        }
        Op::Delete { key } => TxnOp::delete(key.as_str(), None),
    })
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let response = kv.get(key, None).await.map_err(map_error)?;
        response.kvs().first().map(convert_kv).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<ListResult, StoreError> {
        let mut client = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
        let mut start = prefix.as_bytes().to_vec();
        let mut result = ListResult::default();
        let mut rest_at_once = false;
        // Set when reading the rest at once failed: pages only from then on.
        let mut paged_only = false;
        loop {
            let mut options = GetOptions::new().with_range(end.clone());
            if !rest_at_once {
                options = options.with_limit(LIST_PAGE);
            }
            if result.revision > 0 {
                options = options.with_revision(to_etcd_revision(result.revision)?);
            }
            let response = match client.get(start.clone(), Some(options)).await {
                Ok(response) => response,
                Err(error) if rest_at_once => {
                    // Larger than estimated: back to pages.
                    tracing::debug!(%error, "reading the rest of a list at once; paging instead");
                    rest_at_once = false;
                    paged_only = true;
                    continue;
                }
                Err(error) => return Err(map_error(error)),
            };
            if result.revision == 0 {
                result.revision = to_revision(response.header().map_or(0, |h| h.revision()));
            }
            let mut bytes = 0;
            for kv in response.kvs() {
                bytes += kv.key().len() + kv.value().len();
                result.kvs.push(convert_kv(kv)?);
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                    let read = response.kvs().len();
                    let rest = usize::try_from(response.count())
                        .unwrap_or(usize::MAX)
                        .saturating_sub(read);
                    rest_at_once = !paged_only && rest.saturating_mul(bytes / read + 1) <= LIST_REST_BYTES;
                }
                _ => return Ok(result),
            }
        }
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let mut kv = self.client.kv_client();
        let options = GetOptions::new().with_count_only();
        let response = kv.get("/", Some(options)).await.map_err(map_error)?;
        Ok(to_revision(response.header().map_or(0, |h| h.revision())))
    }

    async fn txn(&self, txn: Txn) -> Result<Revision, StoreError> {
        txn.validate()?;
        let compares = txn
            .compares
            .iter()
            .map(convert_compare)
            .collect::<Result<Vec<_>, _>>()?;
        let ops = txn.ops.iter().map(convert_op).collect::<Result<Vec<_>, _>>()?;
        // On failure, read every compared key back to name the compare that failed.
        let reads: Vec<_> = txn.compares.iter().map(|c| TxnOp::get(c.key(), None)).collect();
        let request = EtcdTxn::new().when(compares).and_then(ops).or_else(reads);
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let lease = txn.ops.iter().find_map(|op| match op {
            Op::Put { lease, .. } => *lease,
            Op::Delete { .. } => None,
        });
        let response = kv.txn(request).await.map_err(|e| match lease {
            Some(lease) => lease_error(lease)(e),
            None => map_error(e),
        })?;
        if response.succeeded() {
            return Ok(to_revision(response.header().map_or(0, |h| h.revision())));
        }
        let current = response.op_responses();
        for (compare, read) in txn.compares.iter().zip(current) {
            let kv = match read {
                TxnOpResponse::Get(get) => get.kvs().first().map(convert_kv).transpose()?,
                _ => None,
            };
            if !compare.holds(kv.as_ref()) {
                return Err(StoreError::Conflict {
                    key: compare.key().to_owned(),
                });
            }
        }
        // Every compare holds on re-read: the conflicting write was undone in between.
        Err(StoreError::Conflict {
            key: txn
                .compares
                .first()
                .map(|c| c.key().to_owned())
                .unwrap_or_default(),
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> WatchStream {
        watch::watch(self.client.clone(), prefix.to_owned(), after)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let options = CompactionOptions::new().with_physical();
        match kv.compact(to_etcd_revision(revision)?, Some(options)).await {
            Ok(_) => Ok(()),
            // Compacting at or below an earlier compaction is a no-op, as on the embedded store.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("has been compacted") =>
            {
                Ok(())
            }
            Err(etcd_client::Error::GRpcStatus(status)) if status.message().contains("future revision") => {
                Err(StoreError::InvalidRequest(format!(
                    "cannot compact at revision {revision}: it is in the future"
                )))
            }
            Err(e) => Err(map_error(e)),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut lease = self.client.lease_client();
        let response = lease.grant(seconds, None).await.map_err(map_error)?;
        Ok(to_revision(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let id = to_etcd_revision(lease)?;
        let mut client = self.client.lease_client();
        let (mut keeper, mut responses) = client.keep_alive(id).await.map_err(lease_error(lease))?;
        keeper.keep_alive().await.map_err(lease_error(lease))?;
        let response = responses
            .message()
            .await
            .map_err(lease_error(lease))?
            .ok_or_else(|| StoreError::Unavailable("etcd closed the keep-alive stream".to_owned()))?;
        if response.ttl() <= 0 {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(Duration::from_secs(to_revision(response.ttl())))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut client = self.client.lease_client();
        client
            .revoke(to_etcd_revision(lease)?)
            .await
            .map_err(lease_error(lease))?;
        Ok(())
    }
}
