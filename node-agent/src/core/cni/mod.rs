//! The CNI operations: ADD, DEL, CHECK and STATUS built from IPAM calls, the workload wiring and
//! durable attachment records. Requests for one container are serialised; different containers
//! run in parallel. GC and the start-up reconciliation (`cleanup`), the network configuration ADD
//! and CHECK read (`config`), the veth reaper (`reaper`), the sweep of deleted pods' tracked
//! connections (`flows`) and what each failure is to the runtime (`failure`) live beside.

mod cleanup;
pub mod config;
mod failure;
mod flows;
mod reaper;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipam_api::handles::WorkloadHandle;
use ipnet::IpNet;

use super::attachments::{Attachment, AttachmentStore, Phase, RecordError};
use super::endpoints::{EndpointRegistry, endpoint};
use super::ipam::{Families, IpamApi, Owner, PoolChoice};
use super::mtu::MtuDetector;
use super::pods::KubernetesPods;
use super::wiring::{AttachmentKey, HOST_PREFIX, Wired, Wiring, WiringError, Workload};
use crate::dataplane::{Netlink, Sysctl};
use brindle_proto::CniError;
pub use config::NetworkConfig;
pub use flows::FlowSweeper;
use reaper::LinkReaper;

use brindle_proto::cni_codes::{
    CHECK_FAILED, INTERFACE_EXISTS, INVALID_CONFIG, INVALID_ENVIRONMENT, NOT_ATTACHED, NOT_AVAILABLE,
};

/// One CNI request.
#[derive(Debug, Clone)]
pub struct CniRequest {
    /// (network, container id, ifname).
    pub key: AttachmentKey,
    /// CNI_NETNS (empty when the runtime no longer has one).
    pub netns: String,
    /// CNI_ARGS.
    pub args: BTreeMap<String, String>,
}

/// A successful ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The wired pair.
    pub wired: Wired,
    /// The pod's addresses.
    pub addresses: Vec<IpNet>,
    /// The pod namespace.
    pub netns: String,
}

/// The IPAM handle of an attachment (see [`WorkloadHandle`]: Calico's `<network>.<containerID>`
/// where that is unambiguous).
pub fn handle_id(key: &AttachmentKey) -> String {
    workload_handle(key).id()
}

fn workload_handle(key: &AttachmentKey) -> WorkloadHandle {
    WorkloadHandle {
        network: key.network.clone(),
        container_id: key.container_id.clone(),
        ifname: key.ifname.clone(),
    }
}

/// Checks that the request's network name, container id and interface name follow CNI's rules
/// (what keeps handle ids and host interface names unambiguous).
pub fn validate_key(key: &AttachmentKey) -> Result<(), CniError> {
    workload_handle(key).validate().map_err(|error| {
        let code = if error.field == "network name" {
            INVALID_CONFIG
        } else {
            INVALID_ENVIRONMENT
        };
        CniError::new(code, error.to_string())
    })
}

/// How an undo removes the veth.
#[derive(Debug, Clone, Copy)]
enum Removal {
    /// Before answering.
    Now,
    /// In the background.
    Later,
}

/// Per-container locks.
#[derive(Default)]
struct ContainerLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ContainerLocks {
    async fn lock(&self, container_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            Arc::clone(locks.entry(container_id.to_owned()).or_default())
        };
        lock.lock_owned().await
    }
}

/// The agent's CNI operations.
pub struct CniOps {
    node: String,
    netlink: Arc<dyn Netlink>,
    sysctl: Arc<dyn Sysctl>,
    ipam: Arc<dyn IpamApi>,
    records: AttachmentStore,
    locks: ContainerLocks,
    links: LinkReaper,
    /// policy-svc's endpoint registry, when the node enforces policy.
    endpoints: Option<Arc<dyn EndpointRegistry>>,
    /// Kubernetes pods (mirrored by kube-sync), when pods' labels come from them.
    pods: Option<KubernetesPods>,
    /// The pod MTU when the configuration sets none.
    mtu: MtuDetector,
    /// Deletes the tracked connections of deleted pods (the agent's own namespace only).
    flows: Option<FlowSweeper>,
}

fn workload(attachment: &Attachment, mtu: u32) -> Workload {
    Workload {
        key: attachment.key.clone(),
        netns: PathBuf::from(&attachment.netns),
        addresses: attachment.addresses.clone(),
        blackholes: Vec::new(),
        mtu,
    }
}

impl CniOps {
    /// Operations for `node` (call inside a tokio runtime: it starts the veth reaper).
    pub fn new(
        node: &str,
        netlink: Arc<dyn Netlink>,
        sysctl: Arc<dyn Sysctl>,
        ipam: Arc<dyn IpamApi>,
        records: AttachmentStore,
    ) -> Self {
        Self {
            node: node.to_owned(),
            links: LinkReaper::start(Arc::clone(&netlink)),
            mtu: MtuDetector::without_routing(Arc::clone(&netlink), Vec::new()),
            flows: None,
            netlink,
            sysctl,
            ipam,
            records,
            locks: ContainerLocks::default(),
            endpoints: None,
            pods: None,
        }
    }

    /// Takes a Kubernetes pod's labels, named ports and requested addresses from its Pod object
    /// (mirrored by kube-sync) instead of the CNI request; an ADD waits for the Pod.
    #[must_use]
    pub fn with_kubernetes_pods(mut self, pods: KubernetesPods) -> Self {
        self.pods = Some(pods);
        self
    }

    /// Deletes the tracked connections of every removed attachment's addresses with `sweeper`.
    #[must_use]
    pub fn with_flow_sweeper(mut self, sweeper: FlowSweeper) -> Self {
        self.flows = Some(sweeper);
        self
    }

    /// Detects the pod MTU with `detector` when the configuration sets none.
    #[must_use]
    pub fn with_mtu_detector(mut self, detector: MtuDetector) -> Self {
        self.mtu = detector;
        self
    }

    /// The configuration's MTU, or the detected one.
    async fn pod_mtu(&self, config: &NetworkConfig) -> Result<u32, CniError> {
        match config.mtu {
            Some(mtu) => Ok(mtu),
            None => self.mtu.pod_mtu().await,
        }
    }

    /// Registers every attachment as a workload endpoint with `registry` (policy enforcement).
    #[must_use]
    pub fn with_endpoints(mut self, registry: Arc<dyn EndpointRegistry>) -> Self {
        self.endpoints = Some(registry);
        self
    }

    /// Runs `work` on the attachment records on the blocking pool: file writes and fsyncs must
    /// not hold an async worker.
    async fn on_disk<T: Send + 'static>(
        &self,
        work: impl FnOnce(&AttachmentStore) -> Result<T, RecordError> + Send + 'static,
    ) -> Result<T, RecordError> {
        let records = self.records.clone();
        let dir = records.dir().to_owned();
        tokio::task::spawn_blocking(move || work(&records))
            .await
            .map_err(|error| RecordError::Io {
                what: "the records' I/O task failed on",
                path: dir,
                source: std::io::Error::other(error),
            })?
    }

    fn wiring(&self) -> Wiring<'_> {
        Wiring::new(self.netlink.as_ref(), self.sysctl.as_ref())
    }

    /// ADD: allocate, wire, record. A failure undoes everything it did.
    pub async fn add(&self, request: &CniRequest, config: &NetworkConfig) -> Result<Added, CniError> {
        config.check_node(&self.node)?;
        let _serialised = self.locks.lock(&request.key.container_id).await;
        let _running = self.links.add_running();
        if let Some(existing) = self
            .on_disk({
                let key = request.key.clone();
                move |records| records.load(&key)
            })
            .await?
        {
            if existing.phase == Phase::Ready {
                return Err(CniError::new(
                    INTERFACE_EXISTS,
                    format!(
                        "{} is already attached to container {}",
                        request.key.ifname, request.key.container_id
                    ),
                )
                .with_details("DEL it first"));
            }
            self.undo(&existing, Removal::Now).await?;
        }
        let namespace = request.args.get("K8S_POD_NAMESPACE").cloned().unwrap_or_default();
        let pod = request.args.get("K8S_POD_NAME").cloned().unwrap_or_default();
        let (mut labels, mut ports, mut requested_ips) = (
            config.labels.clone(),
            config.ports.clone(),
            config.requested_ips.clone(),
        );
        let mtu = self.pod_mtu(config).await?;
        let mut pools = config.pools.clone();
        let mut pools_from = "the network configuration's ipam.ipv4_pools / ipv6_pools";
        if let Some(pods) = &self.pods
            && !pod.is_empty()
        {
            let uid = request.args.get("K8S_POD_UID").map_or("", String::as_str);
            let metadata = pods.metadata(&namespace, &pod, uid).await?;
            (labels, ports) = (metadata.labels, metadata.ports);
            // Calico's precedence: the pod's (or its namespace's) annotation, then the
            // configuration.
            if !metadata.pools.ipv4.is_empty() || !metadata.pools.ipv6.is_empty() {
                pools_from = "the pod's (or its namespace's) annotations";
            }
            if !metadata.pools.ipv4.is_empty() {
                pools.ipv4 = metadata.pools.ipv4;
            }
            if !metadata.pools.ipv6.is_empty() {
                pools.ipv6 = metadata.pools.ipv6;
            }
            if !metadata.requested_ips.is_empty() {
                if !requested_ips.is_empty() {
                    return Err(CniError::new(
                        INVALID_CONFIG,
                        format!(
                            "pod {namespace}/{pod} asks for addresses both in the network configuration and in its {} annotation",
                            super::pods::IP_ADDRS_ANNOTATION
                        ),
                    ));
                }
                requested_ips = metadata.requested_ips;
            }
        }
        let mut attachment = Attachment {
            key: request.key.clone(),
            netns: request.netns.clone(),
            handle_id: handle_id(&request.key),
            host_ifname: request.key.host_ifname(),
            addresses: Vec::new(),
            namespace,
            pod,
            labels,
            ports,
            phase: Phase::Adding,
        };
        // The intent is recorded before anything is allocated, so a crash mid-ADD is undone on start.
        self.on_disk({
            let attachment = attachment.clone();
            move |records| records.save_intent(&attachment)
        })
        .await?;
        self.links.wait_deleted(&attachment.host_ifname).await;
        let attached = match self
            .allocate_and_wire(
                &mut attachment,
                &requested_ips,
                config.families,
                (&pools, pools_from),
                mtu,
            )
            .await
        {
            Ok(wired) => self.register(&attachment).await.map(|()| wired),
            Err(failure) => Err(failure),
        };
        match attached {
            Ok(wired) => {
                attachment.phase = Phase::Ready;
                self.on_disk({
                    let attachment = attachment.clone();
                    move |records| records.save(&attachment)
                })
                .await?;
                Ok(Added {
                    wired,
                    addresses: attachment.addresses,
                    netns: attachment.netns,
                })
            }
            Err(failure) => {
                if let Err(undo) = self.undo(&attachment, Removal::Now).await {
                    tracing::warn!(key = ?attachment.key, error = ?undo, "undoing a failed ADD; the start-up sweep retries");
                }
                Err(failure)
            }
        }
    }

    async fn allocate_and_wire(
        &self,
        attachment: &mut Attachment,
        requested: &[IpAddr],
        families: Families,
        (pools, pools_from): (&PoolChoice, &str),
        mtu: u32,
    ) -> Result<Wired, CniError> {
        let ipv6 = if requested.is_empty() {
            families.ipv6
        } else {
            requested.iter().any(IpAddr::is_ipv6)
        };
        let owner = Owner {
            namespace: attachment.namespace.clone(),
            pod: attachment.pod.clone(),
            container_id: attachment.key.container_id.clone(),
            interface: attachment.key.ifname.clone(),
        };
        // The interface does not depend on the addresses: it is built while IPAM allocates, and
        // addressed once both are done (both finish before a failure is reported, so the undo
        // that follows sees everything either of them did).
        let wiring = self.wiring();
        let netns = PathBuf::from(&attachment.netns);
        let timed = |started: std::time::Instant| started.elapsed().as_micros();
        let started = std::time::Instant::now();
        let ((created, create_us), (assigned, ipam_us)) = tokio::join!(
            async {
                let mut created = wiring.create(&attachment.key, &netns, mtu, ipv6).await;
                // The pod namespace re-used right after a DEL: its old interface goes with a veth
                // still waiting for the bulk delete. Delete the retired veths now and try again.
                if matches!(created, Err(WiringError::InterfaceExists { .. }))
                    && self.links.delete_retired_now().await
                {
                    created = wiring.create(&attachment.key, &netns, mtu, ipv6).await;
                }
                (created, timed(started))
            },
            async {
                let assigned = self
                    .ipam
                    .assign(
                        &attachment.handle_id,
                        &self.node,
                        &owner,
                        requested,
                        families,
                        pools,
                    )
                    .await;
                (assigned, timed(started))
            },
        );
        let wired = created?;
        let leases = assigned.map_err(|error| {
            let failure = CniError::from(error);
            if pools == &PoolChoice::default() {
                return failure;
            }
            let msg = format!(
                "{} (pools chosen by {pools_from}: ipv4 {:?}, ipv6 {:?})",
                failure.msg, pools.ipv4, pools.ipv6
            );
            CniError { msg, ..failure }
        })?;
        attachment.addresses = leases.iter().map(|l| IpNet::from(l.ip)).collect();
        let mut workload = workload(attachment, mtu);
        workload.blackholes = leases.iter().filter(|l| !l.borrowed).map(|l| l.block).collect();
        workload.blackholes.dedup();
        wiring.address(&workload, &wired).await?;
        tracing::debug!(
            key = ?attachment.key,
            create_us,
            ipam_us,
            total_us = timed(started),
            "attached"
        );
        Ok(wired)
    }

    /// Registers the attachment's workload endpoint (when the node enforces policy).
    async fn register(&self, attachment: &Attachment) -> Result<(), CniError> {
        match &self.endpoints {
            Some(registry) => Ok(registry.register(&endpoint(&self.node, attachment)).await?),
            None => Ok(()),
        }
    }

    /// Removes the workload endpoint, the veth (now, or in the background for DEL), releases the
    /// addresses, forgets the record. The endpoint of a ready attachment must be gone before
    /// anything else is (its address must leave every policy's sets before it can be reused); an
    /// interrupted ADD's is removed on a best-effort basis (the start-up sweep catches the rest).
    async fn undo(&self, attachment: &Attachment, removal: Removal) -> Result<(), CniError> {
        if let Some(registry) = &self.endpoints {
            let key = endpoint(&self.node, attachment).key;
            match registry.remove(&key).await {
                Ok(()) => {}
                Err(error) if attachment.phase == Phase::Ready => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(%error, interface = %key.interface, "removing the endpoint of an unfinished ADD")
                }
            }
        }
        match removal {
            Removal::Now => {
                self.wiring().detach(&attachment.host_ifname).await?;
            }
            Removal::Later => {
                let (pod_side, host_side) = tokio::join!(
                    self.retire_pod_side(attachment),
                    self.links.delete_soon(&attachment.host_ifname)
                );
                host_side?;
                if !pod_side {
                    self.wiring().detach(&attachment.host_ifname).await?;
                }
            }
        }
        if let Some(flows) = &self.flows {
            flows
                .forget(attachment.addresses.iter().map(IpNet::addr).collect())
                .await;
        }
        self.ipam.release(&attachment.handle_id).await?;
        self.on_disk({
            let (key, host_ifname) = (attachment.key.clone(), attachment.host_ifname.clone());
            move |records| {
                records.remove(&key)?;
                records.forget_quarantined(&host_ifname)
            }
        })
        .await?;
        Ok(())
    }

    /// Clears the pod's side of a DEL before it answers (no interface `CNI_IFNAME`, none of the
    /// pod's addresses: see [`Netlink::retire_pod_interface`]) while the veth waits for the bulk
    /// delete; `false` when that failed and the veth must be deleted before DEL answers. A pod
    /// namespace that is gone has nothing left to clear.
    async fn retire_pod_side(&self, attachment: &Attachment) -> bool {
        if attachment.netns.is_empty() {
            return true;
        }
        match self
            .netlink
            .retire_pod_interface(std::path::Path::new(&attachment.netns), &attachment.key.ifname)
            .await
        {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(key = ?attachment.key, %error, "clearing the pod's interface failed; deleting the veth now");
                false
            }
        }
    }

    /// DEL: idempotent and best effort — a missing netns, link or record is fine; the addresses
    /// are released (if IPAM is unreachable the record stays so a retry or GC frees them).
    pub async fn del(&self, request: &CniRequest) -> Result<(), CniError> {
        let _serialised = self.locks.lock(&request.key.container_id).await;
        let attachment = self
            .on_disk({
                let key = request.key.clone();
                move |records| records.load(&key)
            })
            .await?
            .unwrap_or_else(|| Attachment {
                key: request.key.clone(),
                netns: request.netns.clone(),
                handle_id: handle_id(&request.key),
                host_ifname: request.key.host_ifname(),
                addresses: Vec::new(),
                namespace: String::new(),
                pod: String::new(),
                labels: BTreeMap::new(),
                ports: Vec::new(),
                phase: Phase::Ready,
            });
        // Deleting a veth takes the kernel tens of milliseconds: DEL clears the pod's side, takes
        // the host side down and leaves the delete to the reaper. An ADD reusing the host name
        // waits; a restart sweeps what a crash left.
        self.undo(&attachment, Removal::Later).await
    }

    /// CHECK: the pod interface, its addresses and routes, the host veth and route, and that IPAM
    /// still holds the handle; the error names what is missing.
    pub async fn check(&self, request: &CniRequest, config: &NetworkConfig) -> Result<(), CniError> {
        config.check_node(&self.node)?;
        let _serialised = self.locks.lock(&request.key.container_id).await;
        let attachment = self
            .on_disk({
                let key = request.key.clone();
                move |records| records.load(&key)
            })
            .await?
            .filter(|a| a.phase == Phase::Ready)
            .ok_or_else(|| {
                CniError::new(
                    NOT_ATTACHED,
                    format!(
                        "no attachment {} of container {}",
                        request.key.ifname, request.key.container_id
                    ),
                )
            })?;
        // CHECK compares no MTU: nothing to detect (which could wait for route-svc).
        let mtu = config.mtu.unwrap_or_default();
        let mut problems = self.wiring().check(&workload(&attachment, mtu)).await?;
        if !self.ipam.holds(&attachment.handle_id).await? {
            problems.push(format!("IPAM no longer holds handle {}", attachment.handle_id));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(CHECK_FAILED, problems.join("; ")))
        }
    }

    /// STATUS: can this node serve an ADD now?
    pub async fn status(&self) -> Result<(), CniError> {
        match self.ipam.has_free_addresses().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(CniError::new(
                NOT_AVAILABLE,
                "no enabled IP pool has a free address",
            )),
            Err(error) => {
                Err(CniError::new(NOT_AVAILABLE, "ipam-svc is not reachable").with_details(error.to_string()))
            }
        }
    }
}
