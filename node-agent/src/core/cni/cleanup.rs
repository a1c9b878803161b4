//! Mark and sweep of what brindle owns on the node: CNI GC (attachments the runtime no longer
//! has), the start-up reconciliation after a crash, links no record owns, and the endpoints
//! policy-svc holds for this node.

use std::collections::HashSet;

use super::{
    Attachment, AttachmentKey, CniError, CniOps, HOST_PREFIX, INVALID_CONFIG, Phase, Removal, endpoint,
    handle_id,
};

impl CniOps {
    /// GC: frees every attachment of `network` not in `valid` (container id, ifname), IPAM handles
    /// of the network on this node that no valid attachment uses, and brindle links with no record.
    pub async fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<(), CniError> {
        ipam_api::handles::validate_network(network)
            .map_err(|error| CniError::new(INVALID_CONFIG, error.to_string()))?;
        let valid: HashSet<AttachmentKey> = valid
            .iter()
            .map(|(container_id, ifname)| AttachmentKey {
                network: network.to_owned(),
                container_id: container_id.clone(),
                ifname: ifname.clone(),
            })
            .collect();
        // A valid attachment keeps the handle its record names (written by an earlier version,
        // perhaps in another form) as well as the one its key gives today.
        let mut valid_handles: Vec<String> = valid.iter().map(handle_id).collect();
        for attachment in self.on_disk(|records| records.list()).await? {
            if attachment.key.network != network {
                continue;
            }
            if valid.contains(&attachment.key) {
                valid_handles.push(attachment.handle_id);
            } else {
                let _serialised = self.locks.lock(&attachment.key.container_id).await;
                self.undo(&attachment, Removal::Now).await?;
            }
        }
        self.ipam
            .collect_garbage(&self.node, &valid_handles, Some(network))
            .await?;
        self.sweep_links().await?;
        self.sync_endpoints().await
    }

    /// Registers the endpoint of every ready attachment and removes this node's endpoints that
    /// no attachment owns (after a crash between registering and recording, or a lost datastore).
    async fn sync_endpoints(&self) -> Result<(), CniError> {
        let Some(registry) = &self.endpoints else {
            return Ok(());
        };
        let ready: Vec<Attachment> = self
            .on_disk(|records| records.list())
            .await?
            .into_iter()
            .filter(|a| a.phase == Phase::Ready)
            .collect();
        for attachment in &ready {
            // One endpoint policy-svc refuses (an address IPAM no longer holds for it, say) must
            // not stop the others' registration nor the removal of stale ones.
            match registry.register(&endpoint(&self.node, attachment)).await {
                Ok(()) => {}
                Err(refused) if refused.is_refused() => {
                    tracing::warn!(key = ?attachment.key, error = %refused, "policy-svc refused an attachment's endpoint");
                }
                Err(unavailable) => return Err(unavailable.into()),
            }
        }
        let owned: HashSet<&str> = ready.iter().map(|a| a.host_ifname.as_str()).collect();
        for interface in registry.interfaces(&self.node).await? {
            if !owned.contains(interface.as_str()) {
                tracing::info!(%interface, "removing an endpoint no attachment owns");
                let key = policy_api::model::EndpointKey {
                    node: self.node.clone(),
                    interface,
                };
                registry.remove(&key).await?;
            }
        }
        Ok(())
    }

    /// Deletes `brd*` host links that no record owns (the links of records moved aside are kept
    /// until their DEL: their pods may be running).
    async fn sweep_links(&self) -> Result<(), CniError> {
        let mut owned: HashSet<String> = self
            .on_disk(|records| records.list())
            .await?
            .into_iter()
            .map(|a| a.host_ifname)
            .collect();
        owned.extend(self.on_disk(|records| records.quarantined_interfaces()).await?);
        for link in self.netlink.links().await? {
            if link.name.starts_with(HOST_PREFIX)
                && !owned.contains(&link.name)
                && !self.links.is_retired(&link.name)
            {
                tracing::info!(link = %link.name, "removing a brindle link no attachment owns");
                self.netlink.delete_link(&link.name).await?;
            }
        }
        Ok(())
    }

    /// Start-up reconciliation: ADDs interrupted by a crash are undone, this node's IPAM handles
    /// that no record owns are released, and links no record owns are removed. Nothing is touched
    /// that brindle does not own.
    pub async fn reconcile(&self) -> Result<(), CniError> {
        let (interrupted, ready): (Vec<_>, Vec<_>) = self
            .on_disk(|records| records.list())
            .await?
            .into_iter()
            .partition(|a| a.phase == Phase::Adding);
        for attachment in interrupted {
            tracing::info!(key = ?attachment.key, "undoing an ADD interrupted by a restart");
            self.undo(&attachment, Removal::Now).await?;
        }
        let quarantined = self.on_disk(|records| records.quarantined_interfaces()).await?;
        if quarantined.is_empty() {
            let owned: Vec<String> = ready.into_iter().map(|a| a.handle_id).collect();
            let released = self.ipam.collect_garbage(&self.node, &owned, None).await?;
            if released > 0 {
                tracing::info!(
                    released,
                    "released addresses of this node that no attachment owns"
                );
            }
        } else {
            // Which addresses those records held is unknown: releasing what no record owns could
            // free a running pod's. The runtime's DEL (or its CNI GC, which names what is live)
            // frees them instead.
            tracing::warn!(
                ?quarantined,
                "not releasing this node's unowned addresses while attachment records are moved aside"
            );
        }
        self.sweep_links().await?;
        self.sync_endpoints().await
    }
}
