//! The `kyphoplan.v1` gRPC API: generated messages and service stubs ([`pb`]), the encoded
//! descriptor set for reflection, the service's codec ([`codec`]: an undecodable request is
//! INVALID_ARGUMENT), and the one conversion between API messages and planner types
//! ([`convert`]) that the server and the client SDK share.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("kyphoplan.v1");
}

pub mod codec;
pub mod convert;

/// The encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kyphoplan_descriptor.bin"));

/// The fully qualified service name, e.g. for health checks.
pub const SERVICE_NAME: &str = "kyphoplan.v1.PlanningService";
