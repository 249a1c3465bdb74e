//! The CSI Identity service: the driver's name and version, no
//! capabilities (no controller), and readiness: ready while the node's
//! dfcache mount is mounted and answers.

use tonic::{Request, Response, Status};
use tracing::debug;

use dfcache_wire::pb::csi::identity_server::Identity;
use dfcache_wire::pb::csi::*;

use crate::node_mount::NodeMount;
use crate::DRIVER_NAME;

pub struct IdentityService {
    pub node_mount: NodeMount,
    pub version: String,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: self.version.clone(),
            manifest: Default::default(),
        }))
    }

    /// None: inline ephemeral volumes need no controller, and every node
    /// reaches the same P2P network (no topology).
    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    /// Not ready (rather than an error, which would have the plugin
    /// restarted) while the node's mount is missing or dead: the plugin
    /// is healthy, and restarting it would not bring the mount back.
    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let ready = match self.node_mount.check_live().await {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "not ready");
                false
            }
        };
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
