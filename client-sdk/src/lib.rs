//! kyphoplan client SDK: the typed gRPC [`client`], mesh loaders ([`mesh_io`]), the case
//! directory reader ([`case`]), the plan JSON writer, the readable tables ([`report`]) of the `kyphoplan`
//! CLI, and the exports planning engineers look at ([`export`]: 3D Slicer markups, glTF scene,
//! pictures, HTML plan report).

pub mod bench;
pub mod case;
pub mod client;
pub mod export;
pub mod fuzzing;
pub mod mesh_io;
pub mod replay;
pub mod report;

pub use client::{Client, ClientError, Code, ConnectOptions, FieldViolation, StoredPlan};

/// The plan JSON (CONTRACT.md section 3): `serde_json::to_string_pretty` of the planner plan.
/// The same writer for in-process and server plans, so that both are byte-identical.
pub fn plan_json(plan: &kyphoplan_planner::Plan) -> String {
    serde_json::to_string_pretty(plan).expect("a plan always serialises")
}
