//! A `dfcache csi` process and a CSI client for it, generated from the
//! CSI spec (`dfcache_wire::pb::csi`), calling it over its Unix socket as
//! kubelet does; and a guard that detaches the volumes a test published.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dfcache_wire::pb::csi::identity_client::IdentityClient;
use dfcache_wire::pb::csi::node_client::NodeClient;
use dfcache_wire::pb::csi::volume_capability::access_mode::Mode;
use dfcache_wire::pb::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use dfcache_wire::pb::csi::*;
use tonic::transport::Channel;
use tonic::Status;

use super::{bin, terminate};

/// kubelet's deadline for a CSI call is minutes; a test's is shorter.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct CsiPlugin {
    child: Option<Child>,
    pub socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl CsiPlugin {
    /// `dfcache csi` on `socket`, publishing from the mount at `mnt`.
    pub fn start(socket: &Path, mnt: &Path) -> CsiPlugin {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut plugin = CsiPlugin {
            child: None,
            socket: socket.to_path_buf(),
            rt,
        };
        plugin.spawn(mnt);
        plugin
    }

    /// A client of a plugin already listening on `socket` (one a container
    /// runs): the test plays kubelet.
    pub fn attach(socket: &Path) -> CsiPlugin {
        CsiPlugin {
            child: None,
            socket: socket.to_path_buf(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
        }
    }

    fn spawn(&mut self, mnt: &Path) {
        let child = Command::new(bin())
            .arg("csi")
            .arg(format!("--csi-endpoint=unix://{}", self.socket.display()))
            .arg("--mountpoint")
            .arg(mnt)
            .args(["--node-id", "test-node"])
            .env(
                "DFCACHE_LOG_LEVEL",
                std::env::var("DFCACHE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dfcache csi");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("dfcache csi exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("dfcache csi did not listen on {}", self.socket.display());
    }

    /// SIGKILL, as a crash or an OOM kill of the plugin's container.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new plugin on the same socket (its predecessor's file is stale).
    pub fn restart(&mut self, mnt: &Path) {
        self.kill();
        self.spawn(mnt);
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        terminate(self.child.take()?)
    }

    fn channel(&self) -> Channel {
        let _entered = self.rt.enter();
        dfcache_client::connect_channel(&self.socket)
    }

    fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        self.rt.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(reply) => reply.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded("the test's deadline passed")),
            }
        })
    }

    pub fn plugin_info(&self) -> GetPluginInfoResponse {
        let mut c = IdentityClient::new(self.channel());
        self.call(c.get_plugin_info(GetPluginInfoRequest {}))
            .expect("GetPluginInfo")
    }

    pub fn plugin_capabilities(&self) -> GetPluginCapabilitiesResponse {
        let mut c = IdentityClient::new(self.channel());
        self.call(c.get_plugin_capabilities(GetPluginCapabilitiesRequest {}))
            .expect("GetPluginCapabilities")
    }

    pub fn probe(&self) -> ProbeResponse {
        let mut c = IdentityClient::new(self.channel());
        self.call(c.probe(ProbeRequest {})).expect("Probe")
    }

    pub fn node_capabilities(&self) -> NodeGetCapabilitiesResponse {
        let mut c = NodeClient::new(self.channel());
        self.call(c.node_get_capabilities(NodeGetCapabilitiesRequest {}))
            .expect("NodeGetCapabilities")
    }

    pub fn node_info(&self) -> NodeGetInfoResponse {
        let mut c = NodeClient::new(self.channel());
        self.call(c.node_get_info(NodeGetInfoRequest {}))
            .expect("NodeGetInfo")
    }

    pub fn publish(&self, req: NodePublishVolumeRequest) -> Result<(), Status> {
        let mut c = NodeClient::new(self.channel());
        self.call(c.node_publish_volume(req)).map(|_| ())
    }

    pub fn unpublish(&self, volume_id: &str, target: &Path) -> Result<(), Status> {
        let mut c = NodeClient::new(self.channel());
        self.call(c.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: target.to_string_lossy().into(),
        }))
        .map(|_| ())
    }
}

impl Drop for CsiPlugin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What kubelet sends for an inline ephemeral volume: the mount access
/// type, SINGLE_NODE_WRITER, and `readonly` from the pod (false here:
/// the plugin must keep the volume read-only anyway).
pub fn publish_request(
    volume_id: &str,
    target: &Path,
    attributes: &[(&str, &str)],
) -> NodePublishVolumeRequest {
    let mut context: std::collections::HashMap<String, String> = attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    context.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    context.insert("csi.storage.k8s.io/pod.name".into(), "app".into());
    context.insert("csi.storage.k8s.io/pod.namespace".into(), "default".into());
    NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: false,
        volume_context: context,
        ..Default::default()
    }
}

/// Mount points at or below `dir`, deepest last, from /proc/self/mountinfo.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Lines of /proc/self/mountinfo whose mount point is `path`.
pub fn mountinfo_at(path: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy().replace(' ', "\\040");
    table
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .map(str::to_string)
        .collect()
}

/// Detaches every mount below its directory when dropped, also when the
/// test fails: volumes the plugin published outlive it.
pub struct PublishedBelow(pub PathBuf);

impl Drop for PublishedBelow {
    fn drop(&mut self) {
        for mount in mounts_below(&self.0).iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}
