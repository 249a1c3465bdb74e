//! What a publish asks for, checked before anything is touched: every
//! malformed or missing field is INVALID_ARGUMENT, naming the field.
//!
//! Volume attributes (`volumeAttributes` of the pod's inline volume):
//! - `tree: <tree id>`: the tree, as a read-only directory;
//! - `task: <task id>` with `file: <name>`: one task, as the read-only
//!   file `name` in an otherwise empty directory;
//! - `warmup: "true"|"false"`: return only once the content is local.
//!
//! kubelet adds `csi.storage.k8s.io/...` keys (the pod's name, namespace,
//! uid, service account, `ephemeral`); any other key is refused, so a
//! misspelt attribute (`warmpu`) is an error instead of being ignored.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use dfcache_wire::domain::task_id::is_task_id;
use dfcache_wire::pb::csi::volume_capability::AccessType;
use dfcache_wire::pb::csi::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest};
use tonic::Status;

/// Keys kubelet adds to the attributes (podInfoOnMount, ephemeral).
const KUBELET_PREFIX: &str = "csi.storage.k8s.io/";
/// kubelet's ephemeral volume ids are `csi-` and 64 hex digits; the spec
/// bounds ids at 128 bytes and recommends less.
const MAX_VOLUME_ID: usize = 256;
/// A file name (NAME_MAX).
const MAX_FILE_NAME: usize = 255;

/// What a volume shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Tree { id: String },
    TaskFile { id: String, name: String },
}

impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Tree { id } => write!(f, "tree {id}"),
            Content::TaskFile { id, name } => write!(f, "task {id} as file {name:?}"),
        }
    }
}

/// A checked NodePublishVolume.
#[derive(Debug, Clone)]
pub struct Publish {
    pub volume_id: String,
    pub target: PathBuf,
    pub content: Content,
    pub warmup: bool,
    /// `namespace/name` of the pod, when kubelet says (for the logs).
    pub pod: Option<String>,
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

fn check_volume_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(invalid("volume_id is required"));
    }
    if id.len() > MAX_VOLUME_ID || id.chars().any(|c| c.is_control() || c == '/') {
        let shown: String = id.chars().take(80).collect();
        return Err(invalid(format!(
            "volume_id {shown:?} is malformed: at most {MAX_VOLUME_ID} bytes, no '/' and no control characters"
        )));
    }
    Ok(())
}

fn check_target(target: &str) -> Result<PathBuf, Status> {
    if target.is_empty() {
        return Err(invalid("target_path is required"));
    }
    let path = PathBuf::from(target);
    if target.contains('\0') || !path.is_absolute() || path.parent().is_none() {
        let shown: String = target.chars().take(200).collect();
        return Err(invalid(format!(
            "target_path {shown:?} is not an absolute path below /"
        )));
    }
    Ok(path)
}

/// Checks a NodePublishVolume request.
pub fn parse_publish(req: &NodePublishVolumeRequest) -> Result<Publish, Status> {
    check_volume_id(&req.volume_id)?;
    let target = check_target(&req.target_path)?;
    let capability = req
        .volume_capability
        .as_ref()
        .ok_or_else(|| invalid("volume_capability is required"))?;
    match &capability.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => {
            return Err(invalid(
                "dfcache volumes are file systems: the block access type is not supported",
            ))
        }
        None => return Err(invalid("volume_capability needs the mount access type")),
    }
    // Any mode is accepted (kubelet asks inline volumes for
    // SINGLE_NODE_WRITER, whatever the pod's readOnly) and the volume is
    // read-only whatever it says: the content is immutable.
    if capability.access_mode.is_none() {
        return Err(invalid("volume_capability.access_mode is required"));
    }
    parse_attributes(&req.volume_context, req.volume_id.clone(), target)
}

fn parse_attributes(
    attributes: &HashMap<String, String>,
    volume_id: String,
    target: PathBuf,
) -> Result<Publish, Status> {
    if let Some(key) = attributes.keys().find(|k| {
        !k.starts_with(KUBELET_PREFIX) && !["tree", "task", "file", "warmup"].contains(&k.as_str())
    }) {
        return Err(invalid(format!(
            "unknown volume attribute {key:?}: dfcache volumes take tree, or task and file, and warmup"
        )));
    }
    let get = |k: &str| attributes.get(k).map(String::as_str);
    let content = match (get("tree"), get("task"), get("file")) {
        (Some(_), Some(_), _) => {
            return Err(invalid("a volume has a tree or a task, not both"));
        }
        (Some(_), None, Some(_)) => {
            return Err(invalid(
                "file names the task of a task volume; a tree volume has no file attribute",
            ));
        }
        (Some(id), None, None) => Content::Tree {
            id: checked_id(id, "tree")?,
        },
        (None, Some(id), Some(name)) => Content::TaskFile {
            id: checked_id(id, "task")?,
            name: checked_file_name(name)?,
        },
        (None, Some(_), None) => {
            return Err(invalid(
                "a task volume needs file: the name the task has in the volume",
            ));
        }
        (None, None, _) => {
            return Err(invalid(
                "volume attributes need tree: <tree id>, or task: <task id> and file: <name>",
            ));
        }
    };
    let warmup = match get("warmup") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(invalid(format!(
                "warmup is \"true\" or \"false\", not {other:?}"
            )))
        }
    };
    let pod = match (
        get("csi.storage.k8s.io/pod.namespace"),
        get("csi.storage.k8s.io/pod.name"),
    ) {
        (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
        _ => None,
    };
    Ok(Publish {
        volume_id,
        target,
        content,
        warmup,
        pod,
    })
}

fn checked_id(id: &str, kind: &str) -> Result<String, Status> {
    if is_task_id(id) {
        return Ok(id.to_string());
    }
    let shown: String = id.chars().take(80).collect();
    Err(invalid(format!(
        "{kind} id {shown:?} is malformed: an id is 64 lowercase hex digits"
    )))
}

fn checked_file_name(name: &str) -> Result<String, Status> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        return Ok(name.to_string());
    }
    let shown: String = name.chars().take(80).collect();
    Err(invalid(format!(
        "file {shown:?} is not a file name (1 to {MAX_FILE_NAME} bytes, no '/', not . or ..)"
    )))
}

/// Checks a NodeUnpublishVolume request: the volume and the target.
pub fn parse_unpublish(req: &NodeUnpublishVolumeRequest) -> Result<PathBuf, Status> {
    check_volume_id(&req.volume_id)?;
    check_target(&req.target_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfcache_wire::pb::csi::volume_capability::access_mode::Mode;
    use dfcache_wire::pb::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};
    use dfcache_wire::pb::csi::VolumeCapability;
    use tonic::Code;

    const ID: &str = "2f5a3b1c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    fn request(attributes: &[(&str, &str)]) -> NodePublishVolumeRequest {
        NodePublishVolumeRequest {
            volume_id: "csi-0123".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/model/mount".into(),
            volume_capability: Some(VolumeCapability {
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter as i32,
                }),
                access_type: Some(AccessType::Mount(MountVolume::default())),
            }),
            readonly: false,
            volume_context: attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn refused(req: &NodePublishVolumeRequest, says: &str) {
        let status = parse_publish(req).expect_err("should be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }

    #[test]
    fn a_tree_a_task_file_warmup_and_kubelets_keys_are_accepted() {
        let mut req = request(&[
            ("tree", ID),
            ("warmup", "true"),
            ("csi.storage.k8s.io/pod.name", "app"),
            ("csi.storage.k8s.io/pod.namespace", "ml"),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ]);
        let p = parse_publish(&req).unwrap();
        assert_eq!(p.content, Content::Tree { id: ID.into() });
        assert!(p.warmup);
        assert_eq!(p.pod.as_deref(), Some("ml/app"));
        req.volume_context = request(&[("task", ID), ("file", "model.bin")]).volume_context;
        let p = parse_publish(&req).unwrap();
        assert_eq!(
            p.content,
            Content::TaskFile {
                id: ID.into(),
                name: "model.bin".into()
            }
        );
        assert!(!p.warmup);
    }

    #[test]
    fn missing_and_malformed_fields_are_invalid_arguments_naming_them() {
        let mut req = request(&[("tree", ID)]);
        req.volume_id.clear();
        refused(&req, "volume_id is required");
        req.volume_id = "a/b".into();
        refused(&req, "malformed");
        let mut req = request(&[("tree", ID)]);
        req.target_path.clear();
        refused(&req, "target_path is required");
        req.target_path = "relative/mount".into();
        refused(&req, "absolute");
        let mut req = request(&[("tree", ID)]);
        req.volume_capability = None;
        refused(&req, "volume_capability is required");
        let mut req = request(&[("tree", ID)]);
        if let Some(c) = req.volume_capability.as_mut() {
            c.access_type = Some(AccessType::Block(BlockVolume {}));
        }
        refused(&req, "block");
        let mut req = request(&[("tree", ID)]);
        if let Some(c) = req.volume_capability.as_mut() {
            c.access_mode = None;
        }
        refused(&req, "access_mode is required");
    }

    #[test]
    fn attributes_must_name_one_thing_well() {
        refused(&request(&[]), "need tree");
        refused(&request(&[("tree", "ABC")]), "malformed");
        refused(&request(&[("tree", ID), ("task", ID)]), "not both");
        refused(
            &request(&[("tree", ID), ("file", "x")]),
            "no file attribute",
        );
        refused(&request(&[("task", ID)]), "needs file");
        refused(
            &request(&[("task", ID), ("file", "../x")]),
            "not a file name",
        );
        refused(&request(&[("task", ID), ("file", "..")]), "not a file name");
        refused(&request(&[("task", ID), ("file", "")]), "not a file name");
        refused(&request(&[("tree", ID), ("warmup", "yes")]), "warmup");
        refused(
            &request(&[("tree", ID), ("wramup", "true")]),
            "unknown volume attribute",
        );
    }
}
