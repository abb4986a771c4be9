//! kyphoplan planner: safe bilateral transpedicular cannula trajectories and balloon placements
//! for balloon kyphoplasty, from CT-derived surface meshes.
//!
//! The data's journey: [`math`] -> [`mesh`] -> [`validate`] -> [`clearance`], [`voxel`],
//! [`polygon`], [`frame`] -> [`pedicle`], [`prepare`] (anatomy, keep-outs) -> [`criteria`]
//! (rules, score, grid measures) -> [`evaluate`](mod@evaluate), [`search`], [`extrapedicular`],
//! [`balloon`] ->
//! [`tolerance`] -> [`planning`] -> [`plan`](mod@plan). [`synth`] (meshed by [`mesher`]) makes test and demo
//! anatomy. The imports between these modules form
//! no cycle. This crate knows nothing of gRPC, protobuf or async runtimes.

// Lets the unit tests share the integration tests' helpers (`tests/common`), which name the
// crate by its name.
#[cfg(test)]
extern crate self as kyphoplan_planner;
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_common;

pub mod anatomy;
pub mod balloon;
pub mod clearance;
pub mod criteria;
pub mod error;
pub mod evaluate;
pub mod extrapedicular;
pub mod frame;
pub mod keepout;
#[cfg(feature = "labelmap")]
pub mod labelmap;
pub mod math;
pub mod mesh;
pub mod mesher;
pub mod pedicle;
pub mod plan;
pub mod polygon;
pub mod request;
pub mod search;
pub mod synth;
pub mod tolerance;
pub mod validate;
pub mod voxel;

pub use anatomy::{AnatomyInput, Level, PatientFrame, PerSide, Role, Side, Structure};
pub use error::{InputError, MeshFault, MeshFix, PlanError};
pub use mesh::TriMesh;
pub use plan::{Evaluation, Plan};
pub use request::{Approach, Instrument, PlanRequest, Procedure, Safety};

/// The planner's version, written into every plan.
pub const PLANNER_VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod planning;
pub mod prepare;

pub use planning::{evaluate, evaluate_with_route, plan, plan_with, PlanControl};
pub use prepare::{validate_anatomy, PrepareOptions, PreparedAnatomy, ValidatedAnatomy};
