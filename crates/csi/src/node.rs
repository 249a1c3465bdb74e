//! The CSI Node service: NodePublishVolume and NodeUnpublishVolume, and
//! what kubelet asks at registration (capabilities: none, so no staging;
//! the node's id).
//!
//! A publish: check the request; if the target already holds this volume,
//! succeed (idempotent), if it holds another, ALREADY_EXISTS; look the
//! content up in the node's mount (NOT_FOUND if neither the daemon nor
//! the network has it); warm it up if asked; then mount. Mount-table
//! changes run one at a time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};
use tracing::{info, info_span, Instrument};

use dfcache_wire::pb::csi::node_server::Node;
use dfcache_wire::pb::csi::*;

use crate::error::PublishError;
use crate::node_mount::NodeMount;
use crate::publish::{self, Existing};
use crate::volume::{self, Publish};
use crate::warmup::Warmups;

pub struct NodeService {
    pub node_mount: NodeMount,
    pub node_id: String,
    pub warmups: Warmups,
    /// Held while the mount table is read and changed.
    pub mount_table: Arc<Mutex<()>>,
}

impl NodeService {
    /// Runs `f` on a blocking thread, holding the mount-table lock.
    async fn locked<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, PublishError> + Send + 'static,
    ) -> Result<T, PublishError> {
        let lock = self.mount_table.clone();
        tokio::task::spawn_blocking(move || {
            let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
            f()
        })
        .await
        .map_err(|e| {
            PublishError::io(
                "changing the mount table",
                "",
                std::io::Error::other(e.to_string()),
            )
        })?
    }

    async fn publish(&self, p: Publish) -> Result<(), PublishError> {
        let target = resolve(&p.target)?.ok_or_else(|| PublishError::NoParent(p.target.clone()))?;
        let content = p.content.clone();
        let (at, wanted) = (target.clone(), content.clone());
        match self.locked(move || publish::existing(&at, &wanted)).await? {
            Existing::Same => {
                info!("already published");
                return Ok(());
            }
            Existing::Other(existing) => {
                return Err(PublishError::AlreadyPublished {
                    path: target,
                    existing,
                })
            }
            Existing::Nothing => {}
        }
        self.node_mount.check_live().await?;
        let source = self.node_mount.look_up(&content).await?;
        if p.warmup {
            self.warmups.warm(&source).await?;
        }
        let at = target.clone();
        let made = self
            .locked(move || match publish::existing(&at, &content)? {
                // Another call published it meanwhile.
                Existing::Same => Ok(false),
                Existing::Other(existing) => {
                    Err(PublishError::AlreadyPublished { path: at, existing })
                }
                Existing::Nothing => publish::publish(&at, &source, &content).map(|()| true),
            })
            .await?;
        if made {
            info!("published");
        }
        Ok(())
    }
}

/// `target` with its parent resolved (the mount table has real paths);
/// None if the parent does not exist.
fn resolve(target: &Path) -> Result<Option<PathBuf>, PublishError> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(Some(target.to_path_buf()));
    };
    match std::fs::canonicalize(parent) {
        Ok(parent) => Ok(Some(parent.join(name))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PublishError::io("resolving", parent, e)),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let p = volume::parse_publish(&req)?;
        let span = info_span!(
            "publish",
            volume_id = %p.volume_id,
            target = %p.target.display(),
            content = %p.content,
            warmup = p.warmup,
            readonly = req.readonly,
            pod = p.pod.as_deref().unwrap_or("-"),
        );
        self.publish(p).instrument(span).await?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let target = volume::parse_unpublish(&req)?;
        let span = info_span!("unpublish", volume_id = %req.volume_id, target = %target.display());
        async {
            if let Some(target) = resolve(&target)? {
                self.locked(move || publish::unpublish(&target)).await?;
            }
            info!("unpublished");
            Ok::<_, PublishError>(())
        }
        .instrument(span)
        .await?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        // No STAGE_UNSTAGE_VOLUME: a publish needs nothing staged.
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
