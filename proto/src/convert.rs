//! The one conversion between `kyphoplan.v1` messages and planner types, both directions.
//!
//! Planner -> proto never fails. Proto -> planner fails with an [`InputError`] naming the field
//! path (e.g. `structures[2].descriptor.level`) when a message is missing, an enum is
//! unspecified or unknown, or a packed array has the wrong length. Every message is destructured
//! exhaustively, so a new proto field breaks the build until someone decides what it means.
//! Every f64 is copied as is: a plan survives planner -> proto -> planner bit for bit.

use kyphoplan_planner::anatomy::{AnatomyInput, Level, PatientFrame, Role, Side, Structure};
use kyphoplan_planner::error::{InputError, MeshFix};
use kyphoplan_planner::evaluate::RouteRule;
use kyphoplan_planner::math::Point;
use kyphoplan_planner::mesh::TriMesh;
use kyphoplan_planner::plan::{
    Alternative, AlternativeCode, Balloon, Clearances, Evaluation, KeepOutSource, KeepOutSummary,
    LevelPlan, NavigationTolerance, PedicleSummary, Plan, Reason, ReasonCode, Route, SideAttempt,
    SidePlan, StructureNotice, Trajectory, VertebraFrameSummary,
};
use kyphoplan_planner::request::{
    Approach, Instrument, PlanRequest, Procedure, Safety, DEFAULT_APPROACHES, DEFAULT_PROCEDURE,
};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::pb;

type Result<T> = std::result::Result<T, InputError>;

fn missing(field: &str) -> InputError {
    InputError::invalid(field, "unset", "required")
}

fn required<T>(v: Option<T>, field: &str) -> Result<T> {
    v.ok_or_else(|| missing(field))
}

/// A required number of a message whose f64 fields have explicit presence (so that -0.0 keeps
/// its sign on the wire).
fn num(v: Option<f64>, field: &str, name: &str) -> Result<f64> {
    v.ok_or_else(|| missing(&format!("{field}.{name}")))
}

// ---------------------------------------------------------------------------------------------
// Enums

pub fn level_to_pb(level: Level) -> pb::Level {
    match level {
        Level::T1 => pb::Level::T1,
        Level::T2 => pb::Level::T2,
        Level::T3 => pb::Level::T3,
        Level::T4 => pb::Level::T4,
        Level::T5 => pb::Level::T5,
        Level::T6 => pb::Level::T6,
        Level::T7 => pb::Level::T7,
        Level::T8 => pb::Level::T8,
        Level::T9 => pb::Level::T9,
        Level::T10 => pb::Level::T10,
        Level::T11 => pb::Level::T11,
        Level::T12 => pb::Level::T12,
        Level::L1 => pb::Level::L1,
        Level::L2 => pb::Level::L2,
        Level::L3 => pb::Level::L3,
        Level::L4 => pb::Level::L4,
        Level::L5 => pb::Level::L5,
        Level::S1 => pb::Level::S1,
    }
}

/// `None` for LEVEL_UNSPECIFIED; an error for values this version does not know.
pub fn level_from_pb_opt(v: i32, field: &str) -> Result<Option<Level>> {
    let level =
        pb::Level::try_from(v).map_err(|_| InputError::invalid(field, v, "unknown level value"))?;
    Ok(match level {
        pb::Level::Unspecified => None,
        pb::Level::T1 => Some(Level::T1),
        pb::Level::T2 => Some(Level::T2),
        pb::Level::T3 => Some(Level::T3),
        pb::Level::T4 => Some(Level::T4),
        pb::Level::T5 => Some(Level::T5),
        pb::Level::T6 => Some(Level::T6),
        pb::Level::T7 => Some(Level::T7),
        pb::Level::T8 => Some(Level::T8),
        pb::Level::T9 => Some(Level::T9),
        pb::Level::T10 => Some(Level::T10),
        pb::Level::T11 => Some(Level::T11),
        pb::Level::T12 => Some(Level::T12),
        pb::Level::L1 => Some(Level::L1),
        pb::Level::L2 => Some(Level::L2),
        pb::Level::L3 => Some(Level::L3),
        pb::Level::L4 => Some(Level::L4),
        pb::Level::L5 => Some(Level::L5),
        pb::Level::S1 => Some(Level::S1),
    })
}

pub fn level_from_pb(v: i32, field: &str) -> Result<Level> {
    level_from_pb_opt(v, field)?
        .ok_or_else(|| InputError::invalid(field, "LEVEL_UNSPECIFIED", "a level is required"))
}

pub fn side_to_pb(side: Side) -> pb::Side {
    match side {
        Side::Left => pb::Side::Left,
        Side::Right => pb::Side::Right,
    }
}

pub fn side_from_pb_opt(v: i32, field: &str) -> Result<Option<Side>> {
    let side =
        pb::Side::try_from(v).map_err(|_| InputError::invalid(field, v, "unknown side value"))?;
    Ok(match side {
        pb::Side::Unspecified => None,
        pb::Side::Left => Some(Side::Left),
        pb::Side::Right => Some(Side::Right),
    })
}

pub fn side_from_pb(v: i32, field: &str) -> Result<Side> {
    side_from_pb_opt(v, field)?
        .ok_or_else(|| InputError::invalid(field, "SIDE_UNSPECIFIED", "a side is required"))
}

pub fn frame_to_pb(frame: PatientFrame) -> pb::Frame {
    match frame {
        PatientFrame::Lps => pb::Frame::Lps,
        PatientFrame::Ras => pb::Frame::Ras,
    }
}

pub fn frame_from_pb(v: i32, field: &str) -> Result<PatientFrame> {
    let frame =
        pb::Frame::try_from(v).map_err(|_| InputError::invalid(field, v, "unknown frame value"))?;
    match frame {
        pb::Frame::Unspecified => Err(InputError::invalid(
            field,
            "FRAME_UNSPECIFIED",
            "the frame is required (FRAME_LPS or FRAME_RAS)",
        )),
        pb::Frame::Lps => Ok(PatientFrame::Lps),
        pb::Frame::Ras => Ok(PatientFrame::Ras),
    }
}

pub fn reason_code_to_pb(code: ReasonCode) -> pb::ReasonCode {
    match code {
        ReasonCode::PedicleCorridorTooNarrow => pb::ReasonCode::PedicleCorridorTooNarrow,
        ReasonCode::PedicleNotFound => pb::ReasonCode::PedicleNotFound,
        ReasonCode::CanalTooClose => pb::ReasonCode::CanalTooClose,
        ReasonCode::NerveRootTooClose => pb::ReasonCode::NerveRootTooClose,
        ReasonCode::ForbiddenStructureTooClose => pb::ReasonCode::ForbiddenStructureTooClose,
        ReasonCode::WorkingLengthTooShort => pb::ReasonCode::WorkingLengthTooShort,
        ReasonCode::SkinNotReached => pb::ReasonCode::SkinNotReached,
        ReasonCode::BalloonDoesNotFit => pb::ReasonCode::BalloonDoesNotFit,
        ReasonCode::CortexMarginViolated => pb::ReasonCode::CortexMarginViolated,
        ReasonCode::CanalMarginViolated => pb::ReasonCode::CanalMarginViolated,
        ReasonCode::NerveRootMarginViolated => pb::ReasonCode::NerveRootMarginViolated,
        ReasonCode::ForbiddenMarginViolated => pb::ReasonCode::ForbiddenMarginViolated,
        ReasonCode::TipOutsideBody => pb::ReasonCode::TipOutsideBody,
        ReasonCode::TipNotInAnteriorThird => pb::ReasonCode::TipNotInAnteriorThird,
        ReasonCode::EntryWrongSide => pb::ReasonCode::EntryWrongSide,
        ReasonCode::EntryNotPosterior => pb::ReasonCode::EntryNotPosterior,
        ReasonCode::NotThroughPedicle => pb::ReasonCode::NotThroughPedicle,
        ReasonCode::LeavesBone => pb::ReasonCode::LeavesBone,
        ReasonCode::EntryIncidenceTooSteep => pb::ReasonCode::EntryIncidenceTooSteep,
        ReasonCode::BilateralNotPossible => pb::ReasonCode::BilateralNotPossible,
        ReasonCode::UnipedicularNotPossible => pb::ReasonCode::UnipedicularNotPossible,
        ReasonCode::MidlineNotReached => pb::ReasonCode::MidlineNotReached,
        ReasonCode::OtherSideChosen => pb::ReasonCode::OtherSideChosen,
        ReasonCode::ErrorToleranceTooLow => pb::ReasonCode::ErrorToleranceTooLow,
        ReasonCode::EntryNotOnRib => pb::ReasonCode::EntryNotOnRib,
        ReasonCode::NotLateralOfPedicle => pb::ReasonCode::NotLateralOfPedicle,
        ReasonCode::ExtrapedicularMeshesMissing => pb::ReasonCode::ExtrapedicularMeshesMissing,
        ReasonCode::ExtrapedicularNotPossible => pb::ReasonCode::ExtrapedicularNotPossible,
        ReasonCode::CannulaTooSmallForBalloon => pb::ReasonCode::CannulaTooSmallForBalloon,
    }
}

pub fn reason_code_from_pb(v: i32, field: &str) -> Result<ReasonCode> {
    let code = pb::ReasonCode::try_from(v)
        .map_err(|_| InputError::invalid(field, v, "unknown reason code"))?;
    Ok(match code {
        pb::ReasonCode::Unspecified => {
            return Err(InputError::invalid(
                field,
                "REASON_CODE_UNSPECIFIED",
                "a reason code is required",
            ))
        }
        pb::ReasonCode::PedicleCorridorTooNarrow => ReasonCode::PedicleCorridorTooNarrow,
        pb::ReasonCode::PedicleNotFound => ReasonCode::PedicleNotFound,
        pb::ReasonCode::CanalTooClose => ReasonCode::CanalTooClose,
        pb::ReasonCode::NerveRootTooClose => ReasonCode::NerveRootTooClose,
        pb::ReasonCode::ForbiddenStructureTooClose => ReasonCode::ForbiddenStructureTooClose,
        pb::ReasonCode::WorkingLengthTooShort => ReasonCode::WorkingLengthTooShort,
        pb::ReasonCode::SkinNotReached => ReasonCode::SkinNotReached,
        pb::ReasonCode::BalloonDoesNotFit => ReasonCode::BalloonDoesNotFit,
        pb::ReasonCode::CortexMarginViolated => ReasonCode::CortexMarginViolated,
        pb::ReasonCode::CanalMarginViolated => ReasonCode::CanalMarginViolated,
        pb::ReasonCode::NerveRootMarginViolated => ReasonCode::NerveRootMarginViolated,
        pb::ReasonCode::ForbiddenMarginViolated => ReasonCode::ForbiddenMarginViolated,
        pb::ReasonCode::TipOutsideBody => ReasonCode::TipOutsideBody,
        pb::ReasonCode::TipNotInAnteriorThird => ReasonCode::TipNotInAnteriorThird,
        pb::ReasonCode::EntryWrongSide => ReasonCode::EntryWrongSide,
        pb::ReasonCode::EntryNotPosterior => ReasonCode::EntryNotPosterior,
        pb::ReasonCode::NotThroughPedicle => ReasonCode::NotThroughPedicle,
        pb::ReasonCode::LeavesBone => ReasonCode::LeavesBone,
        pb::ReasonCode::EntryIncidenceTooSteep => ReasonCode::EntryIncidenceTooSteep,
        pb::ReasonCode::BilateralNotPossible => ReasonCode::BilateralNotPossible,
        pb::ReasonCode::UnipedicularNotPossible => ReasonCode::UnipedicularNotPossible,
        pb::ReasonCode::MidlineNotReached => ReasonCode::MidlineNotReached,
        pb::ReasonCode::OtherSideChosen => ReasonCode::OtherSideChosen,
        pb::ReasonCode::ErrorToleranceTooLow => ReasonCode::ErrorToleranceTooLow,
        pb::ReasonCode::EntryNotOnRib => ReasonCode::EntryNotOnRib,
        pb::ReasonCode::NotLateralOfPedicle => ReasonCode::NotLateralOfPedicle,
        pb::ReasonCode::ExtrapedicularMeshesMissing => ReasonCode::ExtrapedicularMeshesMissing,
        pb::ReasonCode::ExtrapedicularNotPossible => ReasonCode::ExtrapedicularNotPossible,
        pb::ReasonCode::CannulaTooSmallForBalloon => ReasonCode::CannulaTooSmallForBalloon,
    })
}

pub fn route_to_pb(route: Route) -> pb::Route {
    match route {
        Route::Transpedicular => pb::Route::Transpedicular,
        Route::Extrapedicular => pb::Route::Extrapedicular,
        Route::Unrecognised => pb::Route::Unrecognised,
    }
}

/// `None` for ROUTE_UNSPECIFIED (plans made before the route was recognised).
pub fn route_from_pb(v: i32, field: &str) -> Result<Option<Route>> {
    let route =
        pb::Route::try_from(v).map_err(|_| InputError::invalid(field, v, "unknown route"))?;
    Ok(match route {
        pb::Route::Unspecified => None,
        pb::Route::Transpedicular => Some(Route::Transpedicular),
        pb::Route::Extrapedicular => Some(Route::Extrapedicular),
        pb::Route::Unrecognised => Some(Route::Unrecognised),
    })
}

pub fn alternative_code_to_pb(code: AlternativeCode) -> pb::AlternativeCode {
    match code {
        AlternativeCode::SmallerCannula => pb::AlternativeCode::SmallerCannula,
        AlternativeCode::UnipedicularFromOtherSide => {
            pb::AlternativeCode::UnipedicularFromOtherSide
        }
        AlternativeCode::Extrapedicular => pb::AlternativeCode::Extrapedicular,
        AlternativeCode::SmallerMargins => pb::AlternativeCode::SmallerMargins,
        AlternativeCode::LongerCannula => pb::AlternativeCode::LongerCannula,
    }
}

pub fn alternative_code_from_pb(v: i32, field: &str) -> Result<AlternativeCode> {
    let code = pb::AlternativeCode::try_from(v)
        .map_err(|_| InputError::invalid(field, v, "unknown alternative code"))?;
    Ok(match code {
        pb::AlternativeCode::Unspecified => {
            return Err(InputError::invalid(
                field,
                "ALTERNATIVE_CODE_UNSPECIFIED",
                "an alternative code is required",
            ))
        }
        pb::AlternativeCode::SmallerCannula => AlternativeCode::SmallerCannula,
        pb::AlternativeCode::UnipedicularFromOtherSide => {
            AlternativeCode::UnipedicularFromOtherSide
        }
        pb::AlternativeCode::Extrapedicular => AlternativeCode::Extrapedicular,
        pb::AlternativeCode::SmallerMargins => AlternativeCode::SmallerMargins,
        pb::AlternativeCode::LongerCannula => AlternativeCode::LongerCannula,
    })
}

pub fn keep_out_source_to_pb(source: KeepOutSource) -> pb::KeepOutSource {
    match source {
        KeepOutSource::Given => pb::KeepOutSource::Given,
        KeepOutSource::Derived => pb::KeepOutSource::Derived,
    }
}

pub fn keep_out_source_from_pb(v: i32, field: &str) -> Result<KeepOutSource> {
    let source = pb::KeepOutSource::try_from(v)
        .map_err(|_| InputError::invalid(field, v, "unknown keep-out source"))?;
    match source {
        pb::KeepOutSource::Unspecified => Err(InputError::invalid(
            field,
            "KEEP_OUT_SOURCE_UNSPECIFIED",
            "a keep-out source is required",
        )),
        pb::KeepOutSource::Given => Ok(KeepOutSource::Given),
        pb::KeepOutSource::Derived => Ok(KeepOutSource::Derived),
    }
}

pub fn mesh_fix_to_pb(fix: &MeshFix) -> pb::MeshFix {
    match fix {
        MeshFix::FlippedInwardWinding => pb::MeshFix::FlippedInwardWinding,
    }
}

pub fn mesh_fix_from_pb(v: i32, field: &str) -> Result<MeshFix> {
    let fix =
        pb::MeshFix::try_from(v).map_err(|_| InputError::invalid(field, v, "unknown mesh fix"))?;
    match fix {
        pb::MeshFix::Unspecified => Err(InputError::invalid(
            field,
            "MESH_FIX_UNSPECIFIED",
            "a mesh fix is required",
        )),
        pb::MeshFix::FlippedInwardWinding => Ok(MeshFix::FlippedInwardWinding),
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry

pub fn point_to_pb(p: [f64; 3]) -> pb::Point3Mm {
    let [x_mm, y_mm, z_mm] = p;
    pb::Point3Mm {
        x_mm: Some(x_mm),
        y_mm: Some(y_mm),
        z_mm: Some(z_mm),
    }
}

/// Every coordinate is required.
pub fn point_from_pb(p: pb::Point3Mm, field: &str) -> Result<[f64; 3]> {
    let pb::Point3Mm { x_mm, y_mm, z_mm } = p;
    Ok([
        num(x_mm, field, "x_mm")?,
        num(y_mm, field, "y_mm")?,
        num(z_mm, field, "z_mm")?,
    ])
}

pub fn required_point(p: Option<pb::Point3Mm>, field: &str) -> Result<[f64; 3]> {
    point_from_pb(required(p, field)?, field)
}

pub fn unit_to_pb(v: [f64; 3]) -> pb::UnitVector3 {
    let [x, y, z] = v;
    pb::UnitVector3 {
        x: Some(x),
        y: Some(y),
        z: Some(z),
    }
}

pub fn required_unit(v: Option<pb::UnitVector3>, field: &str) -> Result<[f64; 3]> {
    let pb::UnitVector3 { x, y, z } = required(v, field)?;
    Ok([
        num(x, field, "x")?,
        num(y, field, "y")?,
        num(z, field, "z")?,
    ])
}

// ---------------------------------------------------------------------------------------------
// Anatomy

pub fn descriptor_to_pb(name: &str, role: &Role) -> pb::StructureDescriptor {
    let (role, level, side) = match *role {
        Role::Vertebra { level } => (pb::Role::Vertebra, Some(level), None),
        Role::SpinalCanal => (pb::Role::SpinalCanal, None, None),
        Role::NerveRoot { level, side } => (pb::Role::NerveRoot, Some(level), Some(side)),
        Role::Skin => (pb::Role::Skin, None, None),
        Role::Forbidden => (pb::Role::Forbidden, None, None),
        Role::Rib { level, side } => (pb::Role::Rib, Some(level), Some(side)),
        Role::Pleura => (pb::Role::Pleura, None, None),
    };
    pb::StructureDescriptor {
        role: role as i32,
        level: level.map_or(pb::Level::Unspecified, level_to_pb) as i32,
        side: side.map_or(pb::Side::Unspecified, side_to_pb) as i32,
        name: name.to_owned(),
    }
}

/// A descriptor's name and role. `field` is the descriptor's path, e.g. `structures[2]`.
pub fn descriptor_from_pb(d: pb::StructureDescriptor, field: &str) -> Result<(String, Role)> {
    let pb::StructureDescriptor {
        role,
        level,
        side,
        name,
    } = d;
    let f = |s: &str| format!("{field}.{s}");
    if name.trim().is_empty() {
        return Err(InputError::invalid(
            f("name"),
            "\"\"",
            "a structure name is required",
        ));
    }
    let level = level_from_pb_opt(level, &f("level"))?;
    let side = side_from_pb_opt(side, &f("side"))?;
    let role_pb = pb::Role::try_from(role)
        .map_err(|_| InputError::invalid(f("role"), role, "unknown role"))?;
    let no_level = |kind: &str| -> Result<()> {
        match level {
            Some(l) => Err(InputError::invalid(
                f("level"),
                l,
                format!("a {kind} has no level: leave it LEVEL_UNSPECIFIED"),
            )),
            None => Ok(()),
        }
    };
    let no_side = |kind: &str| -> Result<()> {
        match side {
            Some(s) => Err(InputError::invalid(
                f("side"),
                s,
                format!("a {kind} has no side: leave it SIDE_UNSPECIFIED"),
            )),
            None => Ok(()),
        }
    };
    let need_level =
        || level.ok_or_else(|| InputError::invalid(f("level"), "LEVEL_UNSPECIFIED", "required"));
    let role = match role_pb {
        pb::Role::Unspecified => {
            return Err(InputError::invalid(
                f("role"),
                "ROLE_UNSPECIFIED",
                "a role is required",
            ))
        }
        pb::Role::Vertebra => {
            no_side("vertebra")?;
            Role::Vertebra {
                level: need_level()?,
            }
        }
        pb::Role::SpinalCanal => {
            no_level("spinal canal")?;
            no_side("spinal canal")?;
            Role::SpinalCanal
        }
        pb::Role::NerveRoot => Role::NerveRoot {
            level: need_level()?,
            side: side
                .ok_or_else(|| InputError::invalid(f("side"), "SIDE_UNSPECIFIED", "required"))?,
        },
        pb::Role::Skin => {
            no_level("skin")?;
            no_side("skin")?;
            Role::Skin
        }
        pb::Role::Forbidden => {
            no_level("forbidden structure")?;
            no_side("forbidden structure")?;
            Role::Forbidden
        }
        pb::Role::Rib => Role::Rib {
            level: need_level()?,
            side: side
                .ok_or_else(|| InputError::invalid(f("side"), "SIDE_UNSPECIFIED", "required"))?,
        },
        pb::Role::Pleura => {
            no_level("pleura")?;
            no_side("pleura")?;
            Role::Pleura
        }
    };
    Ok((name, role))
}

pub fn mesh_to_pb(mesh: &TriMesh) -> pb::Mesh {
    let TriMesh {
        vertices_mm,
        triangles,
    } = mesh;
    pb::Mesh {
        vertices_mm: vertices_mm.iter().flat_map(|p| [p.x, p.y, p.z]).collect(),
        triangles: triangles.iter().flatten().copied().collect(),
    }
}

/// Packed arrays to a mesh; the lengths must be multiples of 3. Values are not validated here
/// (the planner's preparation names NaN vertices and bad indices).
pub fn mesh_from_parts(vertices_mm: &[f64], triangles: &[u32], field: &str) -> Result<TriMesh> {
    if !vertices_mm.len().is_multiple_of(3) {
        return Err(InputError::invalid(
            format!("{field}.vertices_mm"),
            vertices_mm.len(),
            "the number of coordinates must be a multiple of 3 (x, y, z per vertex)",
        ));
    }
    if !triangles.len().is_multiple_of(3) {
        return Err(InputError::invalid(
            format!("{field}.triangles"),
            triangles.len(),
            "the number of indices must be a multiple of 3 (3 per triangle)",
        ));
    }
    Ok(TriMesh::new(
        vertices_mm
            .chunks_exact(3)
            .map(|c| Point::new(c[0], c[1], c[2]))
            .collect(),
        triangles
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect(),
    ))
}

pub fn mesh_from_pb(mesh: pb::Mesh, field: &str) -> Result<TriMesh> {
    let pb::Mesh {
        vertices_mm,
        triangles,
    } = mesh;
    mesh_from_parts(&vertices_mm, &triangles, field)
}

pub fn anatomy_to_pb(anatomy: &AnatomyInput) -> pb::AnatomyData {
    let AnatomyInput {
        name,
        frame,
        structures,
    } = anatomy;
    pb::AnatomyData {
        labelmap: None,
        name: name.clone(),
        frame: frame_to_pb(*frame) as i32,
        structures: structures
            .iter()
            .map(|s| {
                let Structure { name, role, mesh } = s;
                pb::Structure {
                    descriptor: Some(descriptor_to_pb(name, role)),
                    mesh: Some(mesh_to_pb(mesh)),
                }
            })
            .collect(),
    }
}

/// The meshes of an anatomy message. A label map (`labelmap`) is refused here: it is meshed by
/// the server (`kyphoplan_server::labelmap`), which takes it off before calling this.
pub fn anatomy_from_pb(anatomy: pb::AnatomyData) -> Result<AnatomyInput> {
    let pb::AnatomyData {
        name,
        frame,
        structures,
        labelmap,
    } = anatomy;
    if labelmap.is_some() {
        return Err(InputError::invalid(
            "labelmap",
            "set",
            "a label map is meshed by the server; this conversion takes meshes only",
        ));
    }
    if name.trim().is_empty() {
        return Err(InputError::invalid(
            "name",
            "\"\"",
            "the anatomy needs a name",
        ));
    }
    let frame = frame_from_pb(frame, "frame")?;
    let structures = structures
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let pb::Structure { descriptor, mesh } = s;
            let field = format!("structures[{i}]");
            let (name, role) = descriptor_from_pb(
                required(descriptor, &format!("{field}.descriptor"))?,
                &format!("{field}.descriptor"),
            )?;
            let mesh = mesh_from_pb(
                required(mesh, &format!("{field}.mesh"))?,
                &format!("{field}.mesh"),
            )?;
            Ok(Structure { name, role, mesh })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(AnatomyInput {
        name,
        frame,
        structures,
    })
}

/// The content address of an anatomy: lowercase hex SHA-256 of its protobuf encoding (see
/// `AnatomyData` in the proto file).
pub fn anatomy_id(anatomy: &pb::AnatomyData) -> String {
    anatomy_id_of_bytes(&anatomy.encode_to_vec())
}

/// [`anatomy_id`] of an already encoded `AnatomyData`.
pub fn anatomy_id_of_bytes(encoded: &[u8]) -> String {
    hex::encode(Sha256::digest(encoded))
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Every field set: what a client sends for a fully resolved instrument.
pub fn instrument_options_to_pb(instrument: &Instrument) -> pb::InstrumentOptions {
    let Instrument {
        cannula_outer_diameter_mm,
        cannula_working_length_mm,
        balloon_lengths_mm,
        balloon_max_diameter_mm,
    } = instrument;
    pb::InstrumentOptions {
        cannula_outer_diameter_mm: Some(*cannula_outer_diameter_mm),
        cannula_working_length_mm: Some(*cannula_working_length_mm),
        balloon_lengths_mm: Some(pb::BalloonLengths {
            values_mm: balloon_lengths_mm.clone(),
        }),
        balloon_max_diameter_mm: Some(*balloon_max_diameter_mm),
    }
}

/// Unset fields (or an unset message) take [`Instrument::contract_default`], field by field. Not
/// validated here: [`PlanRequest::new`] and `Instrument::validate` name bad values.
pub fn instrument_from_options(options: Option<pb::InstrumentOptions>) -> Instrument {
    let d = Instrument::contract_default();
    let Some(pb::InstrumentOptions {
        cannula_outer_diameter_mm,
        cannula_working_length_mm,
        balloon_lengths_mm,
        balloon_max_diameter_mm,
    }) = options
    else {
        return d;
    };
    Instrument {
        cannula_outer_diameter_mm: cannula_outer_diameter_mm.unwrap_or(d.cannula_outer_diameter_mm),
        cannula_working_length_mm: cannula_working_length_mm.unwrap_or(d.cannula_working_length_mm),
        balloon_lengths_mm: balloon_lengths_mm
            .map(|pb::BalloonLengths { values_mm }| values_mm)
            .unwrap_or(d.balloon_lengths_mm),
        balloon_max_diameter_mm: balloon_max_diameter_mm.unwrap_or(d.balloon_max_diameter_mm),
    }
}

pub fn safety_options_to_pb(safety: &Safety) -> pb::SafetyOptions {
    let Safety {
        cortex_margin_mm,
        canal_margin_mm,
        nerve_root_margin_mm,
        max_entry_incidence_deg,
        navigation_error_mm,
        navigation_error_deg,
    } = safety;
    pb::SafetyOptions {
        cortex_margin_mm: Some(*cortex_margin_mm),
        canal_margin_mm: Some(*canal_margin_mm),
        nerve_root_margin_mm: Some(*nerve_root_margin_mm),
        max_entry_incidence_deg: Some(*max_entry_incidence_deg),
        navigation_error_mm: *navigation_error_mm,
        navigation_error_deg: *navigation_error_deg,
    }
}

/// Unset fields take [`Safety::contract_default`], field by field. Not validated here.
pub fn safety_from_options(options: Option<pb::SafetyOptions>) -> Safety {
    let d = Safety::contract_default();
    let Some(pb::SafetyOptions {
        cortex_margin_mm,
        canal_margin_mm,
        nerve_root_margin_mm,
        max_entry_incidence_deg,
        navigation_error_mm,
        navigation_error_deg,
    }) = options
    else {
        return d;
    };
    Safety {
        cortex_margin_mm: cortex_margin_mm.unwrap_or(d.cortex_margin_mm),
        canal_margin_mm: canal_margin_mm.unwrap_or(d.canal_margin_mm),
        nerve_root_margin_mm: nerve_root_margin_mm.unwrap_or(d.nerve_root_margin_mm),
        max_entry_incidence_deg: max_entry_incidence_deg.unwrap_or(d.max_entry_incidence_deg),
        navigation_error_mm,
        navigation_error_deg,
    }
}

/// The levels of a request (`None` when empty: every vertebra).
pub fn levels_from_pb(levels: &[i32], field: &str) -> Result<Option<Vec<Level>>> {
    if levels.is_empty() {
        return Ok(None);
    }
    levels
        .iter()
        .enumerate()
        .map(|(i, l)| level_from_pb(*l, &format!("{field}[{i}]")))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The planning parts of a CreatePlanRequest, validated into a [`PlanRequest`]. For
/// vertebroplasty an unset cannula diameter is [`Instrument::default_for`]'s needle.
pub fn plan_request_from_pb(
    levels: &[i32],
    instrument: Option<pb::InstrumentOptions>,
    safety: Option<pb::SafetyOptions>,
    procedure: i32,
    approaches: &[i32],
) -> Result<PlanRequest> {
    let procedure = procedure_from_pb(procedure, "procedure")?;
    let approaches = if approaches.is_empty() {
        DEFAULT_APPROACHES.to_vec()
    } else {
        approaches
            .iter()
            .enumerate()
            .map(|(i, a)| approach_from_pb(*a, &format!("approaches[{i}]")))
            .collect::<Result<Vec<_>>>()?
    };
    let needle_unset = instrument
        .as_ref()
        .is_none_or(|i| i.cannula_outer_diameter_mm.is_none());
    let mut instrument = instrument_from_options(instrument);
    if needle_unset {
        instrument.cannula_outer_diameter_mm =
            Instrument::default_for(procedure).cannula_outer_diameter_mm;
    }
    PlanRequest::new(
        levels_from_pb(levels, "levels")?,
        instrument,
        safety_from_options(safety),
    )?
    .with_procedure(procedure, approaches)
}

pub fn procedure_to_pb(p: Procedure) -> pb::Procedure {
    match p {
        Procedure::Kyphoplasty => pb::Procedure::Kyphoplasty,
        Procedure::Vertebroplasty => pb::Procedure::Vertebroplasty,
    }
}

/// PROCEDURE_UNSPECIFIED is the default procedure (kyphoplasty).
pub fn procedure_from_pb(v: i32, field: &str) -> Result<Procedure> {
    let p = pb::Procedure::try_from(v)
        .map_err(|_| InputError::invalid(field, v, "unknown procedure value"))?;
    Ok(match p {
        pb::Procedure::Unspecified => DEFAULT_PROCEDURE,
        pb::Procedure::Kyphoplasty => Procedure::Kyphoplasty,
        pb::Procedure::Vertebroplasty => Procedure::Vertebroplasty,
    })
}

pub fn approach_to_pb(a: Approach) -> pb::Approach {
    match a {
        Approach::BilateralTranspedicular => pb::Approach::BilateralTranspedicular,
        Approach::Unipedicular => pb::Approach::Unipedicular,
        Approach::Extrapedicular => pb::Approach::Extrapedicular,
    }
}

/// `None` for APPROACH_UNSPECIFIED.
pub fn approach_from_pb_opt(v: i32, field: &str) -> Result<Option<Approach>> {
    let a = pb::Approach::try_from(v)
        .map_err(|_| InputError::invalid(field, v, "unknown approach value"))?;
    Ok(match a {
        pb::Approach::Unspecified => None,
        pb::Approach::BilateralTranspedicular => Some(Approach::BilateralTranspedicular),
        pb::Approach::Unipedicular => Some(Approach::Unipedicular),
        pb::Approach::Extrapedicular => Some(Approach::Extrapedicular),
    })
}

pub fn approach_from_pb(v: i32, field: &str) -> Result<Approach> {
    approach_from_pb_opt(v, field)?.ok_or_else(|| {
        InputError::invalid(field, "APPROACH_UNSPECIFIED", "an approach is required")
    })
}

/// The checked parameters of an EvaluateTrajectoryRequest (all but its anatomy).
#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateParams {
    pub level: Level,
    pub side: Side,
    pub entry_mm: [f64; 3],
    pub target_mm: [f64; 3],
    pub instrument: Instrument,
    pub safety: Safety,
    /// The route rule of the request's `route` (unspecified: transpedicular).
    pub route_rule: RouteRule,
}

/// The route rule of an EvaluateTrajectoryRequest's `route` (`field`): unspecified or
/// transpedicular -> [`RouteRule::Transpedicular`], extrapedicular ->
/// [`RouteRule::Extrapedicular`]; unrecognised or unknown values are refused.
pub fn route_rule_from_pb(v: i32, field: &str) -> Result<RouteRule> {
    match route_from_pb(v, field)? {
        None | Some(Route::Transpedicular) => Ok(RouteRule::Transpedicular),
        Some(Route::Extrapedicular) => Ok(RouteRule::Extrapedicular),
        Some(Route::Unrecognised) => Err(InputError::invalid(
            field,
            "ROUTE_UNRECOGNISED",
            "a trajectory is evaluated as transpedicular or extrapedicular",
        )),
    }
}

/// The `route` of an EvaluateTrajectoryRequest for `rule`.
pub fn route_rule_to_pb(rule: RouteRule) -> pb::Route {
    match rule {
        RouteRule::Transpedicular => pb::Route::Transpedicular,
        RouteRule::Extrapedicular => pb::Route::Extrapedicular,
    }
}

/// An EvaluateTrajectoryRequest split into its anatomy (not resolved here) and its
/// parameters, validated: level and side given, points given and finite, instrument and safety
/// (defaults field by field) in range.
pub fn evaluate_request_from_pb(
    request: pb::EvaluateTrajectoryRequest,
) -> Result<(
    Option<pb::evaluate_trajectory_request::Anatomy>,
    EvaluateParams,
)> {
    let pb::EvaluateTrajectoryRequest {
        anatomy,
        level,
        side,
        entry_mm,
        target_mm,
        instrument,
        safety,
        route,
    } = request;
    let level = level_from_pb(level, "level")?;
    let side = side_from_pb(side, "side")?;
    let route_rule = route_rule_from_pb(route, "route")?;
    let entry_mm = required_point(entry_mm, "entry_mm")?;
    let target_mm = required_point(target_mm, "target_mm")?;
    for (field, p) in [("entry_mm", entry_mm), ("target_mm", target_mm)] {
        if p.iter().any(|c| !c.is_finite()) {
            return Err(InputError::invalid(
                field,
                format!("{p:?}"),
                "must be finite",
            ));
        }
    }
    let instrument = instrument_from_options(instrument);
    let safety = safety_from_options(safety);
    instrument.validate()?;
    safety.validate()?;
    Ok((
        anatomy,
        EvaluateParams {
            level,
            side,
            entry_mm,
            target_mm,
            instrument,
            safety,
            route_rule,
        },
    ))
}

/// A CreatePlanRequest for `request` (every parameter explicit) with the given anatomy.
pub fn create_plan_request_to_pb(
    anatomy: pb::create_plan_request::Anatomy,
    request: &PlanRequest,
) -> pb::CreatePlanRequest {
    pb::CreatePlanRequest {
        anatomy: Some(anatomy),
        levels: request
            .levels()
            .unwrap_or_default()
            .iter()
            .map(|l| level_to_pb(*l) as i32)
            .collect(),
        instrument: Some(instrument_options_to_pb(request.instrument())),
        safety: Some(safety_options_to_pb(request.safety())),
        procedure: procedure_to_pb(request.procedure()) as i32,
        approaches: request
            .approaches()
            .iter()
            .map(|a| approach_to_pb(*a) as i32)
            .collect(),
        cannula_alternatives_mm: request.cannula_alternatives_mm().to_vec(),
        request_id: String::new(),
    }
}

/// [`plan_request_from_pb`]'s request with a CreatePlanRequest's `cannula_alternatives_mm`
/// (validated; the error names `cannula_alternatives_mm[i]`).
pub fn with_cannula_alternatives(
    request: PlanRequest,
    diameters_mm: &[f64],
) -> Result<PlanRequest> {
    request.with_cannula_alternatives(diameters_mm.to_vec())
}

// ---------------------------------------------------------------------------------------------
// Plans

pub fn instrument_to_pb(instrument: &Instrument) -> pb::Instrument {
    let Instrument {
        cannula_outer_diameter_mm,
        cannula_working_length_mm,
        balloon_lengths_mm,
        balloon_max_diameter_mm,
    } = instrument;
    pb::Instrument {
        cannula_outer_diameter_mm: Some(*cannula_outer_diameter_mm),
        cannula_working_length_mm: Some(*cannula_working_length_mm),
        balloon_lengths_mm: balloon_lengths_mm.clone(),
        balloon_max_diameter_mm: Some(*balloon_max_diameter_mm),
    }
}

pub fn instrument_from_pb(instrument: pb::Instrument, field: &str) -> Result<Instrument> {
    let pb::Instrument {
        cannula_outer_diameter_mm,
        cannula_working_length_mm,
        balloon_lengths_mm,
        balloon_max_diameter_mm,
    } = instrument;
    Ok(Instrument {
        cannula_outer_diameter_mm: num(
            cannula_outer_diameter_mm,
            field,
            "cannula_outer_diameter_mm",
        )?,
        cannula_working_length_mm: num(
            cannula_working_length_mm,
            field,
            "cannula_working_length_mm",
        )?,
        balloon_lengths_mm,
        balloon_max_diameter_mm: num(balloon_max_diameter_mm, field, "balloon_max_diameter_mm")?,
    })
}

pub fn safety_to_pb(safety: &Safety) -> pb::Safety {
    let Safety {
        cortex_margin_mm,
        canal_margin_mm,
        nerve_root_margin_mm,
        max_entry_incidence_deg,
        navigation_error_mm,
        navigation_error_deg,
    } = safety;
    pb::Safety {
        cortex_margin_mm: Some(*cortex_margin_mm),
        canal_margin_mm: Some(*canal_margin_mm),
        nerve_root_margin_mm: Some(*nerve_root_margin_mm),
        max_entry_incidence_deg: Some(*max_entry_incidence_deg),
        navigation_error_mm: *navigation_error_mm,
        navigation_error_deg: *navigation_error_deg,
    }
}

pub fn safety_from_pb(safety: pb::Safety, field: &str) -> Result<Safety> {
    let pb::Safety {
        cortex_margin_mm,
        canal_margin_mm,
        nerve_root_margin_mm,
        max_entry_incidence_deg,
        navigation_error_mm,
        navigation_error_deg,
    } = safety;
    Ok(Safety {
        navigation_error_mm,
        navigation_error_deg,
        cortex_margin_mm: num(cortex_margin_mm, field, "cortex_margin_mm")?,
        canal_margin_mm: num(canal_margin_mm, field, "canal_margin_mm")?,
        nerve_root_margin_mm: num(nerve_root_margin_mm, field, "nerve_root_margin_mm")?,
        // Plans stored before the limit was a request field were made under the default.
        max_entry_incidence_deg: max_entry_incidence_deg
            .unwrap_or(Safety::contract_default().max_entry_incidence_deg),
    })
}

pub fn reason_to_pb(reason: &Reason) -> pb::Reason {
    let Reason {
        code,
        message,
        value_mm,
        limit_mm,
        value_deg,
        limit_deg,
    } = reason;
    pb::Reason {
        code: reason_code_to_pb(*code) as i32,
        message: message.clone(),
        value_mm: *value_mm,
        limit_mm: *limit_mm,
        value_deg: *value_deg,
        limit_deg: *limit_deg,
    }
}

pub fn reason_from_pb(reason: pb::Reason, field: &str) -> Result<Reason> {
    let pb::Reason {
        code,
        message,
        value_mm,
        limit_mm,
        value_deg,
        limit_deg,
    } = reason;
    Ok(Reason {
        code: reason_code_from_pb(code, &format!("{field}.code"))?,
        message,
        value_mm,
        limit_mm,
        value_deg,
        limit_deg,
    })
}

fn reasons_from_pb(reasons: Vec<pb::Reason>, field: &str) -> Result<Vec<Reason>> {
    reasons
        .into_iter()
        .enumerate()
        .map(|(i, r)| reason_from_pb(r, &format!("{field}[{i}]")))
        .collect()
}

pub fn clearances_to_pb(c: &Clearances) -> pb::Clearances {
    let Clearances {
        cortex,
        canal,
        nerve_root,
        forbidden,
    } = c;
    pb::Clearances {
        cortex_mm: Some(*cortex),
        canal_mm: Some(*canal),
        nerve_root_mm: Some(*nerve_root),
        forbidden_mm: *forbidden,
    }
}

pub fn clearances_from_pb(c: pb::Clearances, field: &str) -> Result<Clearances> {
    let pb::Clearances {
        cortex_mm,
        canal_mm,
        nerve_root_mm,
        forbidden_mm,
    } = c;
    Ok(Clearances {
        cortex: num(cortex_mm, field, "cortex_mm")?,
        canal: num(canal_mm, field, "canal_mm")?,
        nerve_root: num(nerve_root_mm, field, "nerve_root_mm")?,
        forbidden: forbidden_mm,
    })
}

pub fn trajectory_to_pb(t: &Trajectory) -> pb::Trajectory {
    let Trajectory {
        bone_entry_mm,
        target_mm,
        skin_entry_mm,
        cannula_outer_diameter_mm,
        medial_angle_deg,
        cranial_angle_deg,
        clearance_mm,
        direction,
        length_in_bone_mm,
        insertion_length_mm,
        tip_depth_fraction,
        score,
        entry_incidence_deg,
        route,
    } = t;
    pb::Trajectory {
        bone_entry_mm: Some(point_to_pb(*bone_entry_mm)),
        target_mm: Some(point_to_pb(*target_mm)),
        skin_entry_mm: skin_entry_mm.map(point_to_pb),
        cannula_outer_diameter_mm: Some(*cannula_outer_diameter_mm),
        medial_angle_deg: Some(*medial_angle_deg),
        cranial_angle_deg: Some(*cranial_angle_deg),
        clearance_mm: Some(clearances_to_pb(clearance_mm)),
        direction: Some(unit_to_pb(*direction)),
        length_in_bone_mm: Some(*length_in_bone_mm),
        insertion_length_mm: Some(*insertion_length_mm),
        tip_depth_fraction: Some(*tip_depth_fraction),
        score: Some(*score),
        entry_incidence_deg: *entry_incidence_deg,
        route: route.map_or(pb::Route::Unspecified, route_to_pb) as i32,
    }
}

pub fn trajectory_from_pb(t: pb::Trajectory, field: &str) -> Result<Trajectory> {
    let pb::Trajectory {
        bone_entry_mm,
        target_mm,
        skin_entry_mm,
        cannula_outer_diameter_mm,
        medial_angle_deg,
        cranial_angle_deg,
        clearance_mm,
        direction,
        length_in_bone_mm,
        insertion_length_mm,
        tip_depth_fraction,
        score,
        entry_incidence_deg,
        route,
    } = t;
    let f = |s: &str| format!("{field}.{s}");
    Ok(Trajectory {
        bone_entry_mm: required_point(bone_entry_mm, &f("bone_entry_mm"))?,
        target_mm: required_point(target_mm, &f("target_mm"))?,
        skin_entry_mm: skin_entry_mm
            .map(|p| point_from_pb(p, &f("skin_entry_mm")))
            .transpose()?,
        cannula_outer_diameter_mm: num(
            cannula_outer_diameter_mm,
            field,
            "cannula_outer_diameter_mm",
        )?,
        medial_angle_deg: num(medial_angle_deg, field, "medial_angle_deg")?,
        cranial_angle_deg: num(cranial_angle_deg, field, "cranial_angle_deg")?,
        clearance_mm: clearances_from_pb(
            required(clearance_mm, &f("clearance_mm"))?,
            &f("clearance_mm"),
        )?,
        direction: required_unit(direction, &f("direction"))?,
        length_in_bone_mm: num(length_in_bone_mm, field, "length_in_bone_mm")?,
        insertion_length_mm: num(insertion_length_mm, field, "insertion_length_mm")?,
        tip_depth_fraction: num(tip_depth_fraction, field, "tip_depth_fraction")?,
        score: num(score, field, "score")?,
        entry_incidence_deg,
        route: route_from_pb(route, &f("route"))?,
    })
}

pub fn balloon_to_pb(b: &Balloon) -> pb::Balloon {
    let Balloon {
        center_mm,
        axis,
        length_mm,
        diameter_mm,
        volume_ml,
        cortex_clearance_mm,
        posterior_wall_clearance_mm,
    } = b;
    pb::Balloon {
        center_mm: Some(point_to_pb(*center_mm)),
        axis: Some(unit_to_pb(*axis)),
        length_mm: Some(*length_mm),
        diameter_mm: Some(*diameter_mm),
        volume_ml: Some(*volume_ml),
        cortex_clearance_mm: Some(*cortex_clearance_mm),
        posterior_wall_clearance_mm: Some(*posterior_wall_clearance_mm),
    }
}

pub fn balloon_from_pb(b: pb::Balloon, field: &str) -> Result<Balloon> {
    let pb::Balloon {
        center_mm,
        axis,
        length_mm,
        diameter_mm,
        volume_ml,
        cortex_clearance_mm,
        posterior_wall_clearance_mm,
    } = b;
    Ok(Balloon {
        center_mm: required_point(center_mm, &format!("{field}.center_mm"))?,
        axis: required_unit(axis, &format!("{field}.axis"))?,
        length_mm: num(length_mm, field, "length_mm")?,
        diameter_mm: num(diameter_mm, field, "diameter_mm")?,
        volume_ml: num(volume_ml, field, "volume_ml")?,
        cortex_clearance_mm: num(cortex_clearance_mm, field, "cortex_clearance_mm")?,
        posterior_wall_clearance_mm: num(
            posterior_wall_clearance_mm,
            field,
            "posterior_wall_clearance_mm",
        )?,
    })
}

pub fn navigation_tolerance_to_pb(t: &NavigationTolerance) -> pb::NavigationTolerance {
    let NavigationTolerance {
        translation_mm,
        rotation_deg,
        translation_limited_by,
        rotation_limited_by,
        violation_probability,
        cannula_translation_mm,
        cannula_rotation_deg,
        sigma_mm,
        sigma_deg,
        samples,
    } = t;
    pb::NavigationTolerance {
        translation_mm: Some(*translation_mm),
        rotation_deg: Some(*rotation_deg),
        translation_limited_by: translation_limited_by.clone(),
        rotation_limited_by: rotation_limited_by.clone(),
        violation_probability: Some(*violation_probability),
        cannula_translation_mm: Some(*cannula_translation_mm),
        cannula_rotation_deg: Some(*cannula_rotation_deg),
        sigma_mm: Some(*sigma_mm),
        sigma_deg: Some(*sigma_deg),
        samples: *samples,
    }
}

pub fn navigation_tolerance_from_pb(
    t: pb::NavigationTolerance,
    field: &str,
) -> Result<NavigationTolerance> {
    let pb::NavigationTolerance {
        translation_mm,
        rotation_deg,
        translation_limited_by,
        rotation_limited_by,
        violation_probability,
        cannula_translation_mm,
        cannula_rotation_deg,
        sigma_mm,
        sigma_deg,
        samples,
    } = t;
    Ok(NavigationTolerance {
        translation_mm: num(translation_mm, field, "translation_mm")?,
        rotation_deg: num(rotation_deg, field, "rotation_deg")?,
        translation_limited_by,
        rotation_limited_by,
        violation_probability: num(violation_probability, field, "violation_probability")?,
        cannula_translation_mm: num(cannula_translation_mm, field, "cannula_translation_mm")?,
        cannula_rotation_deg: num(cannula_rotation_deg, field, "cannula_rotation_deg")?,
        sigma_mm: num(sigma_mm, field, "sigma_mm")?,
        sigma_deg: num(sigma_deg, field, "sigma_deg")?,
        samples,
    })
}

pub fn side_attempt_to_pb(a: &SideAttempt) -> pb::SideAttempt {
    let SideAttempt {
        route,
        cannula_outer_diameter_mm,
        feasible,
        reasons,
    } = a;
    pb::SideAttempt {
        route: route_to_pb(*route) as i32,
        cannula_outer_diameter_mm: Some(*cannula_outer_diameter_mm),
        feasible: *feasible,
        reasons: reasons.iter().map(reason_to_pb).collect(),
    }
}

pub fn side_attempt_from_pb(a: pb::SideAttempt, field: &str) -> Result<SideAttempt> {
    let pb::SideAttempt {
        route,
        cannula_outer_diameter_mm,
        feasible,
        reasons,
    } = a;
    Ok(SideAttempt {
        route: route_from_pb(route, &format!("{field}.route"))?.ok_or_else(|| {
            InputError::invalid(
                format!("{field}.route"),
                "ROUTE_UNSPECIFIED",
                "a route is required",
            )
        })?,
        cannula_outer_diameter_mm: num(
            cannula_outer_diameter_mm,
            field,
            "cannula_outer_diameter_mm",
        )?,
        feasible,
        reasons: reasons_from_pb(reasons, &format!("{field}.reasons"))?,
    })
}

pub fn side_plan_to_pb(s: &SidePlan) -> pb::SidePlan {
    let SidePlan {
        side,
        feasible,
        trajectory,
        balloon,
        reasons,
        alternatives,
        pedicle,
        approach,
        navigation_tolerance,
        attempts,
    } = s;
    pb::SidePlan {
        attempts: attempts.iter().map(side_attempt_to_pb).collect(),
        navigation_tolerance: navigation_tolerance
            .as_ref()
            .map(navigation_tolerance_to_pb),
        approach: approach_to_pb(*approach) as i32,
        pedicle: pedicle.as_ref().map(pedicle_to_pb),
        side: side_to_pb(*side) as i32,
        feasible: *feasible,
        trajectory: trajectory.as_ref().map(trajectory_to_pb),
        balloon: balloon.as_ref().map(balloon_to_pb),
        reasons: reasons.iter().map(reason_to_pb).collect(),
        alternatives: alternatives
            .iter()
            .map(|a| {
                let Alternative { code, message } = a;
                pb::Alternative {
                    code: alternative_code_to_pb(*code) as i32,
                    message: message.clone(),
                }
            })
            .collect(),
    }
}

pub fn side_plan_from_pb(s: pb::SidePlan, field: &str) -> Result<SidePlan> {
    let pb::SidePlan {
        side,
        feasible,
        trajectory,
        balloon,
        reasons,
        alternatives,
        pedicle,
        approach,
        navigation_tolerance,
        attempts,
    } = s;
    let f = |s: &str| format!("{field}.{s}");
    Ok(SidePlan {
        attempts: attempts
            .into_iter()
            .enumerate()
            .map(|(i, a)| side_attempt_from_pb(a, &f(&format!("attempts[{i}]"))))
            .collect::<Result<Vec<_>>>()?,
        navigation_tolerance: navigation_tolerance
            .map(|t| navigation_tolerance_from_pb(t, &f("navigation_tolerance")))
            .transpose()?,
        approach: approach_from_pb(approach, &f("approach"))?,
        pedicle: pedicle
            .map(|p| pedicle_from_pb(p, &f("pedicle")))
            .transpose()?,
        side: side_from_pb(side, &f("side"))?,
        feasible,
        trajectory: trajectory
            .map(|t| trajectory_from_pb(t, &f("trajectory")))
            .transpose()?,
        balloon: balloon
            .map(|b| balloon_from_pb(b, &f("balloon")))
            .transpose()?,
        reasons: reasons_from_pb(reasons, &f("reasons"))?,
        alternatives: alternatives
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let pb::Alternative { code, message } = a;
                Ok(Alternative {
                    code: alternative_code_from_pb(
                        code,
                        &format!("{field}.alternatives[{i}].code"),
                    )?,
                    message,
                })
            })
            .collect::<Result<Vec<_>>>()?,
    })
}

pub fn pedicle_to_pb(p: &PedicleSummary) -> pb::Pedicle {
    let PedicleSummary {
        isthmus_center_mm,
        axis,
        width_mm,
        height_mm,
        area_mm2,
    } = p;
    pb::Pedicle {
        isthmus_center_mm: Some(point_to_pb(*isthmus_center_mm)),
        axis: Some(unit_to_pb(*axis)),
        width_mm: Some(*width_mm),
        height_mm: Some(*height_mm),
        area_mm2: Some(*area_mm2),
    }
}

pub fn pedicle_from_pb(p: pb::Pedicle, field: &str) -> Result<PedicleSummary> {
    let pb::Pedicle {
        isthmus_center_mm,
        axis,
        width_mm,
        height_mm,
        area_mm2,
    } = p;
    let f = |s: &str| format!("{field}.{s}");
    Ok(PedicleSummary {
        isthmus_center_mm: required_point(isthmus_center_mm, &f("isthmus_center_mm"))?,
        axis: required_unit(axis, &f("axis"))?,
        width_mm: num(width_mm, field, "width_mm")?,
        height_mm: num(height_mm, field, "height_mm")?,
        area_mm2: num(area_mm2, field, "area_mm2")?,
    })
}

pub fn vertebra_frame_to_pb(v: &VertebraFrameSummary) -> pb::VertebraFrame {
    let VertebraFrameSummary {
        body_center_mm,
        anterior,
        left,
        superior,
        body_depth_mm,
        body_width_mm,
        body_height_mm,
    } = v;
    pb::VertebraFrame {
        body_center_mm: Some(point_to_pb(*body_center_mm)),
        anterior: Some(unit_to_pb(*anterior)),
        left: Some(unit_to_pb(*left)),
        superior: Some(unit_to_pb(*superior)),
        body_depth_mm: Some(*body_depth_mm),
        body_width_mm: Some(*body_width_mm),
        body_height_mm: Some(*body_height_mm),
    }
}

pub fn vertebra_frame_from_pb(v: pb::VertebraFrame, field: &str) -> Result<VertebraFrameSummary> {
    let pb::VertebraFrame {
        body_center_mm,
        anterior,
        left,
        superior,
        body_depth_mm,
        body_width_mm,
        body_height_mm,
    } = v;
    let f = |s: &str| format!("{field}.{s}");
    Ok(VertebraFrameSummary {
        body_center_mm: required_point(body_center_mm, &f("body_center_mm"))?,
        anterior: required_unit(anterior, &f("anterior"))?,
        left: required_unit(left, &f("left"))?,
        superior: required_unit(superior, &f("superior"))?,
        body_depth_mm: num(body_depth_mm, field, "body_depth_mm")?,
        body_width_mm: num(body_width_mm, field, "body_width_mm")?,
        body_height_mm: num(body_height_mm, field, "body_height_mm")?,
    })
}

pub fn keep_out_to_pb(k: &KeepOutSummary) -> pb::KeepOut {
    let KeepOutSummary {
        kind,
        side,
        source,
        from,
        margin_mm,
    } = k;
    pb::KeepOut {
        kind: kind.clone(),
        side: side.map_or(pb::Side::Unspecified, side_to_pb) as i32,
        source: keep_out_source_to_pb(*source) as i32,
        from: from.clone(),
        margin_mm: Some(*margin_mm),
    }
}

pub fn keep_out_from_pb(k: pb::KeepOut, field: &str) -> Result<KeepOutSummary> {
    let pb::KeepOut {
        kind,
        side,
        source,
        from,
        margin_mm,
    } = k;
    Ok(KeepOutSummary {
        kind,
        side: side_from_pb_opt(side, &format!("{field}.side"))?,
        source: keep_out_source_from_pb(source, &format!("{field}.source"))?,
        from,
        margin_mm: num(margin_mm, field, "margin_mm")?,
    })
}

pub fn level_plan_to_pb(l: &LevelPlan) -> pb::LevelPlan {
    let LevelPlan {
        level,
        sides,
        cement_volume_estimate_ml,
        vertebra_frame,
        keep_outs,
        approach,
        approach_reasons,
    } = l;
    pb::LevelPlan {
        approach: approach.map_or(pb::Approach::Unspecified, approach_to_pb) as i32,
        approach_reasons: approach_reasons.iter().map(reason_to_pb).collect(),
        level: level_to_pb(*level) as i32,
        sides: sides.iter().map(side_plan_to_pb).collect(),
        cement_volume_estimate_ml: *cement_volume_estimate_ml,
        vertebra_frame: vertebra_frame.as_ref().map(vertebra_frame_to_pb),
        keep_outs: keep_outs.iter().map(keep_out_to_pb).collect(),
    }
}

pub fn level_plan_from_pb(l: pb::LevelPlan, field: &str) -> Result<LevelPlan> {
    let pb::LevelPlan {
        level,
        sides,
        cement_volume_estimate_ml,
        vertebra_frame,
        keep_outs,
        approach,
        approach_reasons,
    } = l;
    let f = |s: &str| format!("{field}.{s}");
    Ok(LevelPlan {
        approach: approach_from_pb_opt(approach, &f("approach"))?,
        approach_reasons: approach_reasons
            .into_iter()
            .enumerate()
            .map(|(i, r)| reason_from_pb(r, &format!("{field}.approach_reasons[{i}]")))
            .collect::<Result<Vec<_>>>()?,
        level: level_from_pb(level, &f("level"))?,
        sides: sides
            .into_iter()
            .enumerate()
            .map(|(i, s)| side_plan_from_pb(s, &format!("{field}.sides[{i}]")))
            .collect::<Result<Vec<_>>>()?,
        cement_volume_estimate_ml,
        vertebra_frame: vertebra_frame
            .map(|v| vertebra_frame_from_pb(v, &f("vertebra_frame")))
            .transpose()?,
        keep_outs: keep_outs
            .into_iter()
            .enumerate()
            .map(|(i, k)| keep_out_from_pb(k, &format!("{field}.keep_outs[{i}]")))
            .collect::<Result<Vec<_>>>()?,
    })
}

pub fn structure_notice_to_pb(n: &StructureNotice) -> pb::StructureNotice {
    let StructureNotice { structure, fix } = n;
    pb::StructureNotice {
        structure: structure.clone(),
        fix: mesh_fix_to_pb(fix) as i32,
    }
}

pub fn structure_notice_from_pb(n: pb::StructureNotice, field: &str) -> Result<StructureNotice> {
    let pb::StructureNotice { structure, fix } = n;
    Ok(StructureNotice {
        structure,
        fix: mesh_fix_from_pb(fix, &format!("{field}.fix"))?,
    })
}

/// The plan message of a planner plan. `plan_id`, `anatomy_id`, `create_time_unix_ms` and
/// `purge_time_unix_ms` are server metadata: left empty here, set by the server.
pub fn plan_to_pb(plan: &Plan) -> pb::Plan {
    let Plan {
        case,
        frame,
        levels,
        instrument,
        safety,
        mesh_fixes,
        planner_version,
        procedure,
        approaches,
        cannula_alternatives_mm,
    } = plan;
    pb::Plan {
        cannula_alternatives_mm: cannula_alternatives_mm.clone(),
        procedure: procedure_to_pb(*procedure) as i32,
        approaches: approaches
            .iter()
            .map(|a| approach_to_pb(*a) as i32)
            .collect(),
        plan_id: String::new(),
        anatomy_id: String::new(),
        create_time_unix_ms: 0,
        purge_time_unix_ms: None,
        case_name: case.clone(),
        frame: frame_to_pb(*frame) as i32,
        levels: levels.iter().map(level_plan_to_pb).collect(),
        instrument: Some(instrument_to_pb(instrument)),
        safety: Some(safety_to_pb(safety)),
        mesh_fixes: mesh_fixes.iter().map(structure_notice_to_pb).collect(),
        planner_version: planner_version.clone(),
    }
}

/// The planner plan of a plan message; the server metadata (`plan_id`, `anatomy_id`,
/// `create_time_unix_ms`, `purge_time_unix_ms`) is not part of it (nor of the plan JSON).
pub fn plan_from_pb(plan: pb::Plan) -> Result<Plan> {
    let pb::Plan {
        plan_id: _,
        anatomy_id: _,
        create_time_unix_ms: _,
        purge_time_unix_ms: _,
        case_name,
        frame,
        levels,
        instrument,
        safety,
        mesh_fixes,
        planner_version,
        procedure,
        approaches,
        cannula_alternatives_mm,
    } = plan;
    Ok(Plan {
        cannula_alternatives_mm,
        procedure: procedure_from_pb(procedure, "procedure")?,
        approaches: approaches
            .iter()
            .enumerate()
            .map(|(i, a)| approach_from_pb(*a, &format!("approaches[{i}]")))
            .collect::<Result<Vec<_>>>()?,
        case: case_name,
        frame: frame_from_pb(frame, "frame")?,
        levels: levels
            .into_iter()
            .enumerate()
            .map(|(i, l)| level_plan_from_pb(l, &format!("levels[{i}]")))
            .collect::<Result<Vec<_>>>()?,
        instrument: instrument_from_pb(required(instrument, "instrument")?, "instrument")?,
        safety: safety_from_pb(required(safety, "safety")?, "safety")?,
        mesh_fixes: mesh_fixes
            .into_iter()
            .enumerate()
            .map(|(i, n)| structure_notice_from_pb(n, &format!("mesh_fixes[{i}]")))
            .collect::<Result<Vec<_>>>()?,
        planner_version,
    })
}

pub fn evaluation_to_pb(e: &Evaluation) -> pb::Evaluation {
    let Evaluation {
        level,
        side,
        safe,
        trajectory,
        violations,
        navigation_tolerance,
    } = e;
    pb::Evaluation {
        navigation_tolerance: navigation_tolerance
            .as_ref()
            .map(navigation_tolerance_to_pb),
        level: level_to_pb(*level) as i32,
        side: side_to_pb(*side) as i32,
        safe: *safe,
        trajectory: Some(trajectory_to_pb(trajectory)),
        violations: violations.iter().map(reason_to_pb).collect(),
    }
}

pub fn evaluation_from_pb(e: pb::Evaluation) -> Result<Evaluation> {
    let pb::Evaluation {
        level,
        side,
        safe,
        trajectory,
        violations,
        navigation_tolerance,
    } = e;
    Ok(Evaluation {
        navigation_tolerance: navigation_tolerance
            .map(|t| navigation_tolerance_from_pb(t, "navigation_tolerance"))
            .transpose()?,
        level: level_from_pb(level, "level")?,
        side: side_from_pb(side, "side")?,
        safe,
        trajectory: trajectory_from_pb(required(trajectory, "trajectory")?, "trajectory")?,
        violations: reasons_from_pb(violations, "violations")?,
    })
}
