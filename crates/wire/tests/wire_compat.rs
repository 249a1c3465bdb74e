//! proto/ against the published dragonfly-api crates: every message and
//! method dfcache defines must match upstream's names, field numbers, types
//! and oneof arms, and every extension must use a number free in both
//! versions. The published crates' .proto files are compiled with the same
//! vendored protoc and compared descriptor by descriptor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorSet, ServiceDescriptorProto,
};

/// The streaming RPCs (and their messages) follow 2.1.12.
const STREAMING: &str = "2.1.12";
/// Everything else follows today's dfdaemon.
const CURRENT: &str = "2.3.8";

/// Messages whose definition comes from 2.1.12.
fn streaming_message(name: &str) -> bool {
    name.starts_with(".dfdaemon.v2.WritePersistentCacheTask")
        || name.starts_with(".dfdaemon.v2.ReadPersistentCacheTask")
        || name == ".dfdaemon.v2.WriteChunkRequest"
        || name == ".dfdaemon.v2.ReadChunkResponse"
}

/// dfcache's own additions: (message, field number).
const EXTENSIONS: &[(&str, i32)] = &[
    (".dfdaemon.v2.WritePersistentCacheTaskStartedRequest", 6),
    (".dfdaemon.v2.WritePersistentCacheTaskStartedRequest", 7),
    (".dfdaemon.v2.WritePersistentCacheTaskResponse", 2),
    (".dfdaemon.v2.WritePersistentCacheTaskResponse", 3),
    (".dfdaemon.v2.WritePersistentCacheTaskResponse", 4),
    (".dfdaemon.v2.ReadPersistentCacheTaskRequest", 2),
    (".dfdaemon.v2.ReadPersistentCacheTaskRequest", 3),
    (".dfdaemon.v2.ReadPersistentCacheTaskResponse", 3),
    (".dfdaemon.v2.ReadChunkResponse", 2),
];
/// Messages that exist only in dfcache.
const NEW_MESSAGES: &[&str] = &[".dfdaemon.v2.ReadPersistentCacheTaskStartedResponse"];

struct Api {
    messages: HashMap<String, DescriptorProto>,
    services: HashMap<String, ServiceDescriptorProto>,
}

fn index(set: FileDescriptorSet) -> Api {
    fn walk(prefix: &str, msgs: &[DescriptorProto], out: &mut HashMap<String, DescriptorProto>) {
        for m in msgs {
            let name = format!("{prefix}.{}", m.name());
            walk(&name, &m.nested_type, out);
            out.insert(name, m.clone());
        }
    }
    let mut messages = HashMap::new();
    let mut services = HashMap::new();
    for file in set.file {
        let prefix = format!(".{}", file.package());
        walk(&prefix, &file.message_type, &mut messages);
        for s in &file.service {
            services.insert(format!("{prefix}.{}", s.name()), s.clone());
        }
    }
    Api { messages, services }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"))
}

fn find_crate(version: &str) -> Option<PathBuf> {
    let cache = cargo_home().join("registry/cache");
    std::fs::read_dir(cache).ok()?.flatten().find_map(|index| {
        let p = index.path().join(format!("dragonfly-api-{version}.crate"));
        p.exists().then_some(p)
    })
}

/// The published crate's proto/ directory, fetched through cargo (only
/// crates.io is needed) and unpacked into `into`.
fn upstream_protos(version: &str, into: &Path) -> PathBuf {
    if find_crate(version).is_none() {
        let project = into.join("fetch");
        std::fs::create_dir_all(project.join("src")).unwrap();
        std::fs::write(project.join("src/lib.rs"), "").unwrap();
        std::fs::write(
            project.join("Cargo.toml"),
            format!(
                "[package]\nname = \"fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
                 [dependencies]\ndragonfly-api = \"={version}\"\n"
            ),
        )
        .unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .arg("fetch")
            .current_dir(&project)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cargo fetch of dragonfly-api {version} failed"
        );
    }
    let krate = find_crate(version)
        .unwrap_or_else(|| panic!("dragonfly-api {version} is not in the cargo cache"));
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&krate)
        .arg("-C")
        .arg(into)
        .arg(format!("dragonfly-api-{version}/proto"))
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {}", krate.display());
    into.join(format!("dragonfly-api-{version}/proto"))
}

fn compile(proto_dir: &Path, out: &Path) -> Api {
    let protoc = protoc_bin_vendored::protoc_bin_path().unwrap();
    let include = protoc_bin_vendored::include_path().unwrap();
    let status = Command::new(protoc)
        .arg("--experimental_allow_proto3_optional")
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("-I{}", proto_dir.display()))
        .arg(format!("-I{}", include.display()))
        .arg("common.proto")
        .arg("dfdaemon.proto")
        .status()
        .unwrap();
    assert!(status.success(), "protoc failed on {}", proto_dir.display());
    index(FileDescriptorSet::decode(std::fs::read(out).unwrap().as_slice()).unwrap())
}

fn describe(f: &FieldDescriptorProto, owner: &DescriptorProto) -> String {
    let oneof = f
        .oneof_index
        .filter(|_| !f.proto3_optional())
        .map(|i| owner.oneof_decl[i as usize].name().to_string());
    format!(
        "{} #{} {:?} {:?} {} optional={} oneof={oneof:?}",
        f.name(),
        f.number(),
        f.label(),
        f.r#type(),
        f.type_name(),
        f.proto3_optional()
    )
}

fn fields(m: &DescriptorProto) -> HashMap<i32, String> {
    m.field
        .iter()
        .map(|f| (f.number(), describe(f, m)))
        .collect()
}

#[test]
fn proto_matches_published_dragonfly_api() {
    let tmp = tempfile::tempdir().unwrap();
    let streaming = compile(
        &upstream_protos(STREAMING, tmp.path()),
        &tmp.path().join("a.bin"),
    );
    let current = compile(
        &upstream_protos(CURRENT, tmp.path()),
        &tmp.path().join("b.bin"),
    );
    let ours = index(FileDescriptorSet::decode(dfcache_wire::pb::FILE_DESCRIPTOR_SET).unwrap());

    let mut checked = 0;
    for (name, ours_msg) in &ours.messages {
        if name.starts_with(".google.") || NEW_MESSAGES.contains(&name.as_str()) {
            continue;
        }
        let (source, other) = if streaming_message(name) {
            (&streaming, &current)
        } else {
            (&current, &streaming)
        };
        let theirs = source
            .messages
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the source version"));
        let (ours_f, theirs_f) = (fields(ours_msg), fields(theirs));
        for (number, want) in &theirs_f {
            assert_eq!(ours_f.get(number), Some(want), "{name} field {number}");
        }
        for number in ours_f.keys().filter(|n| !theirs_f.contains_key(n)) {
            assert!(
                EXTENSIONS.contains(&(name.as_str(), *number)),
                "{name} field {number} is neither upstream's nor a listed extension"
            );
            if let Some(m) = other.messages.get(name) {
                assert!(
                    !fields(m).contains_key(number),
                    "{name} extension {number} collides with the other version"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} messages compared");
    for (msg, number) in EXTENSIONS {
        assert!(
            fields(&ours.messages[*msg]).contains_key(number),
            "extension {msg} {number} missing"
        );
    }

    // Every method: same name, request and response types and streaming
    // flags as the version it comes from. Delete is on DfdaemonDownload in
    // 2.1.12 (and only on DfdaemonUpload in 2.3.x).
    let service = &ours.services[".dfdaemon.v2.DfdaemonDownload"];
    for method in &service.method {
        let name = method.name();
        let source = if name.starts_with("Write")
            || name.starts_with("Read")
            || name.starts_with("Delete")
        {
            &streaming
        } else {
            &current
        };
        let theirs = source.services[".dfdaemon.v2.DfdaemonDownload"]
            .method
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("method {name} not upstream"));
        let sig = |m: &prost_types::MethodDescriptorProto| {
            (
                m.input_type().to_string(),
                m.output_type().to_string(),
                m.client_streaming(),
                m.server_streaming(),
            )
        };
        assert_eq!(sig(method), sig(theirs), "method {name}");
    }
    assert_eq!(service.method.len(), 8);
}
