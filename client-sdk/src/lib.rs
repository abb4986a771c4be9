//! kyphoplan client SDK: the typed gRPC [`client`] (its errors are typed data, no tonic types),
//! mesh loaders ([`mesh_io`]), the case directory reader ([`case`]) and the plan JSON writer
//! ([`plan_json`]). The `kyphoplan` command line, its exports, the replay and the bench are the
//! crate `kyphoplan-cli` (`client-sdk/cli/`).
//!
//! With the feature `fuzzing`, `fuzzing` holds the bodies of the cargo-fuzz targets; with
//! `grpc-raw`, `Client::raw` and friends open the generated tonic client for calls the typed
//! client does not cover.

pub mod case;
pub mod client;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod mesh_io;

pub use client::{
    Client, ClientError, Code, ConnectOptions, FieldViolation, LabelMapUpload, StoredPlan,
};

/// The plan JSON (CONTRACT.md section 3): `serde_json::to_string_pretty` of the planner plan.
/// The same writer for in-process and server plans, so that both are byte-identical.
pub fn plan_json(plan: &kyphoplan_planner::Plan) -> String {
    serde_json::to_string_pretty(plan).expect("a plan always serialises")
}
