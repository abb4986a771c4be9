//! What planning engineers look at: a 3D Slicer markups file ([`slicer`]), a binary glTF scene
//! ([`gltf`]), PNG pictures per level ([`pictures`]) and one self-contained HTML report
//! ([`report`]).
//!
//! Frames: a [`Plan`] reports coordinates in the case frame (`plan.frame`, LPS or RAS); a
//! [`PreparedAnatomy`] holds its meshes in LPS. Every exporter converts meshes to the case frame
//! with [`PatientFrame::from_lps`] (Slicer, glTF), or maps both into the vertebra's own frame
//! (`lps_to_vertebra`: +x left, +y posterior, +z superior) for the pictures.

pub mod gltf;
pub mod pictures;
mod raster;
pub mod report;
pub mod slicer;

use std::path::{Path, PathBuf};

use kyphoplan_planner::anatomy::{Level, PatientFrame};
use kyphoplan_planner::math::Point;
use kyphoplan_planner::mesh::TriMesh;
use kyphoplan_planner::plan::{LevelPlan, Plan, SidePlan};
use kyphoplan_planner::prepare::{PreparedAnatomy, PreparedVertebra};
use kyphoplan_planner::request::Approach;

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {path}: {message}")]
    Encode { path: PathBuf, message: String },
    #[error("level {0} of the plan is not in the anatomy")]
    LevelNotInAnatomy(Level),
    #[error("the plan is of frame {plan}, the anatomy of frame {anatomy}")]
    FrameMismatch { plan: String, anatomy: String },
}

impl ExportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ExportError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Write `bytes` to `path`, creating its parent directory.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| ExportError::io(parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| ExportError::io(path, e))
}

/// The plan and the anatomy must speak of the same frame.
pub(crate) fn check_frames(plan: &Plan, anatomy: &PreparedAnatomy) -> Result<(), ExportError> {
    if plan.frame != anatomy.frame() {
        return Err(ExportError::FrameMismatch {
            plan: plan.frame.name().to_string(),
            anatomy: anatomy.frame().name().to_string(),
        });
    }
    Ok(())
}

/// The vertebra of `level`, or the error that names it.
pub(crate) fn vertebra_of(
    anatomy: &PreparedAnatomy,
    level: Level,
) -> Result<&PreparedVertebra, ExportError> {
    anatomy
        .vertebra(level)
        .ok_or(ExportError::LevelNotInAnatomy(level))
}

/// An LPS mesh in the case frame.
pub(crate) fn mesh_lps_to_case(frame: PatientFrame, mesh_lps: &TriMesh) -> TriMesh {
    mesh_lps.mapped(|p| frame.from_lps(p))
}

pub(crate) fn point(a: [f64; 3]) -> Point {
    Point::new(a[0], a[1], a[2])
}

/// "L3 left" for a bilateral transpedicular side (the names before approaches existed), "L3
/// left unipedicular" for a unipedicular one.
pub(crate) fn side_title(level: Level, side: &SidePlan) -> String {
    match side.approach {
        Approach::BilateralTranspedicular => format!("{} {}", level.name(), side.side.name()),
        a => format!("{} {} {a}", level.name(), side.side.name()),
    }
}

/// The feasible sides of a level with their trajectory.
pub(crate) fn feasible_sides(
    level: &LevelPlan,
) -> impl Iterator<Item = (&SidePlan, &kyphoplan_planner::plan::Trajectory)> {
    level
        .sides
        .iter()
        .filter(|s| s.feasible)
        .filter_map(|s| s.trajectory.as_ref().map(|t| (s, t)))
}

/// The contract's name of a reason code ("PEDICLE_CORRIDOR_TOO_NARROW").
pub(crate) fn code_name<T: serde::Serialize + std::fmt::Debug>(code: &T) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{code:?}"))
}
