//! A node's policy view programmed into the kernel, per family: rendered and applied when it
//! changes (child processes run off the async workers), a failed apply retried at the next
//! keepalive tick, the kernel re-read when the resync clock is due.

use std::sync::Arc;
use std::time::Duration;

use brindle_fanout::Mirror;
use policy_api::view::ViewEntry;

use super::{Family, PolicyApplier, RenderOptions, Renderer};
use crate::core::flow_log::PolicyNames;
use crate::core::follow::{ResyncClock, SyncTarget};
use crate::dataplane::{DataplaneError, Ipsets, Iptables};

/// One family's tables, renderer and applier.
struct FamilyPlane {
    iptables: Arc<dyn Iptables>,
    renderer: Renderer,
    applier: PolicyApplier,
}

/// Renders and applies the view, per family.
pub struct PolicyProgrammer {
    planes: Vec<FamilyPlane>,
    ipsets: Arc<dyn Ipsets>,
    /// Objects the last successful apply holds; `None` after a failure (retried at the next tick).
    applied: Option<u64>,
    /// When the kernel is re-read next.
    resync: ResyncClock,
    /// Where the names of the view's policies go, for flow logs.
    names: Option<Arc<std::sync::RwLock<PolicyNames>>>,
}

impl PolicyProgrammer {
    /// Programs into each family's tables (`families`) and `ipsets`, re-reading them every
    /// `resync_every`.
    pub fn new(
        families: Vec<(Family, Arc<dyn Iptables>)>,
        ipsets: Arc<dyn Ipsets>,
        resync_every: Duration,
    ) -> Self {
        Self {
            planes: families
                .into_iter()
                .map(|(family, iptables)| FamilyPlane {
                    iptables,
                    renderer: Renderer::new(family, RenderOptions::default()),
                    applier: PolicyApplier::new(family),
                })
                .collect(),
            ipsets,
            applied: None,
            resync: ResyncClock::new(resync_every),
            names: None,
        }
    }

    /// Renders with `options` and keeps `names` up to date with the view (for flow logs).
    pub fn with_options(
        mut self,
        options: &RenderOptions,
        names: Arc<std::sync::RwLock<PolicyNames>>,
    ) -> Self {
        for plane in &mut self.planes {
            plane.renderer = Renderer::new(plane.renderer.family(), options.clone());
        }
        self.names = Some(names);
        self
    }
}

#[async_trait::async_trait]
impl SyncTarget<ViewEntry> for PolicyProgrammer {
    async fn program(&mut self, mirror: &Mirror<ViewEntry>, tick: bool) -> Option<u64> {
        if tick {
            if self.resync.due() {
                for plane in &mut self.planes {
                    plane.applier.resync();
                }
            } else if self.applied.is_some() {
                // Nothing failed since the last apply and no re-read is due.
                return self.applied;
            }
        }
        if let Some(names) = &self.names
            && !tick
        {
            *names.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                PolicyNames::of(mirror.state());
        }
        let started = std::time::Instant::now();
        let ipsets = Arc::clone(&self.ipsets);
        // iptables-restore and ipset run as child processes: off the async workers.
        let result = tokio::task::block_in_place(|| {
            let (mut writes, mut objects) = (0, 0);
            for plane in &mut self.planes {
                let rendered = plane.renderer.render(mirror.state());
                writes += plane
                    .applier
                    .apply(plane.iptables.as_ref(), ipsets.as_ref(), &rendered)?;
                objects += rendered.objects();
            }
            Ok::<_, DataplaneError>((writes, objects))
        });
        match result {
            Ok((writes, objects)) => {
                if writes > 0 {
                    tracing::debug!(
                        revision = mirror.revision(),
                        writes,
                        elapsed_us = started.elapsed().as_micros(),
                        "policy applied"
                    );
                }
                self.applied = Some(objects as u64);
                self.applied
            }
            Err(error) => {
                tracing::error!(%error, revision = mirror.revision(), "applying policy; retrying");
                self.applied = None;
                None
            }
        }
    }
}
