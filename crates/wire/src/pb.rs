//! Generated protobuf and tonic code, from proto/: Dragonfly's dfdaemon
//! API, and the CSI services of a node plugin.

// Module paths mirror the proto packages, as the generated code expects.
pub mod common {
    pub mod v2 {
        tonic::include_proto!("common.v2");
    }
    pub use v2::*;
}
pub mod dfdaemon {
    pub mod v2 {
        tonic::include_proto!("dfdaemon.v2");
    }
    pub use v2::*;
}
/// The Container Storage Interface (spec v1.x), the part a node plugin
/// serves: what kubelet sends `dfcache csi`.
pub mod csi {
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
    pub use v1::*;
}
/// The descriptor set of proto/, for the wire-compatibility test.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/dfcache_descriptor.bin"));
