//! Typed errors. Every error names the structure or field at fault and says why, with the
//! measured number where there is one, so that a caller can act on it.

use thiserror::Error;

use crate::anatomy::{Level, Side};

/// What is wrong with one mesh.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum MeshFault {
    #[error("the mesh is empty ({vertices} vertices, {triangles} triangles)")]
    Empty { vertices: usize, triangles: usize },
    #[error("vertex {vertex} has a NaN or infinite coordinate")]
    NonFiniteVertex { vertex: usize },
    #[error(
        "triangle {triangle} refers to vertex {index}, but the mesh has {vertex_count} vertices"
    )]
    IndexOutOfRange {
        triangle: usize,
        index: u32,
        vertex_count: usize,
    },
    #[error("triangle {triangle} repeats vertex {vertex}")]
    RepeatedVertex { triangle: usize, vertex: u32 },
    #[error("triangle {triangle} has zero area ({area_mm2:.3e} mm^2)")]
    ZeroAreaTriangle { triangle: usize, area_mm2: f64 },
    #[error(
        "the mesh is open (not watertight): {boundary_edges} boundary edges, e.g. edge {edge:?}"
    )]
    Open {
        boundary_edges: usize,
        edge: [u32; 2],
    },
    #[error("edge {edge:?} is shared by {faces} triangles (non-manifold)")]
    NonManifoldEdge { edge: [u32; 2], faces: usize },
    #[error("inconsistent winding: edge {edge:?} is used twice in the same direction")]
    InconsistentWinding { edge: [u32; 2] },
    #[error("the triangles face inwards (signed volume {signed_volume_mm3:.1} mm^3)")]
    InwardWinding { signed_volume_mm3: f64 },
    #[error("{extent_mm:.3} mm across is not a vertebra (expected {min_mm} to {max_mm} mm){hint}")]
    ImplausibleSize {
        extent_mm: f64,
        min_mm: f64,
        max_mm: f64,
        /// e.g. " - the coordinates look like metres; give millimetres".
        hint: String,
    },
    #[error("the mesh has {triangles} triangles, over the limit of {limit}")]
    TooLarge { triangles: usize, limit: usize },
}

/// A fix the planner applied to an input mesh instead of refusing it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeshFix {
    /// The mesh was consistently wound inwards; its triangles were flipped.
    FlippedInwardWinding,
}

/// Input the planner refuses.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum InputError {
    #[error("structure '{structure}': {fault}")]
    Mesh { structure: String, fault: MeshFault },
    #[error("level {level} is given by more than one vertebra ('{first}' and '{second}')")]
    DuplicateLevel {
        level: Level,
        first: String,
        second: String,
    },
    #[error("level {level} was requested but the anatomy has no vertebra for it")]
    LevelNotInAnatomy { level: Level },
    #[error("nerve root '{structure}' for {level} {side} is given twice")]
    DuplicateNerveRoot {
        structure: String,
        level: Level,
        side: Side,
    },
    #[error("the anatomy has no vertebra")]
    NoVertebra,
    #[error("{field} = {value}: {reason}")]
    InvalidParameter {
        field: String,
        value: String,
        reason: String,
    },
    #[error("level {level}: {reason}")]
    UnrecognisedVertebra { level: Level, reason: String },
}

impl InputError {
    pub fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        InputError::InvalidParameter {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The name of the structure or request field at fault.
    pub fn field(&self) -> String {
        match self {
            InputError::Mesh { structure, .. } => structure.clone(),
            InputError::DuplicateLevel { second, .. } => second.clone(),
            InputError::LevelNotInAnatomy { .. } => "levels".into(),
            InputError::DuplicateNerveRoot { structure, .. } => structure.clone(),
            InputError::NoVertebra => "structures".into(),
            InputError::InvalidParameter { field, .. } => field.clone(),
            InputError::UnrecognisedVertebra { level, .. } => level.to_string(),
        }
    }
}

/// Planning (or preparation) stopped before it finished.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum PlanError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("planning was cancelled")]
    Cancelled,
}
