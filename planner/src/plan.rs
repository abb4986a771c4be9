//! What the planner returns: the plan of every requested level and side, and the evaluation of
//! a given trajectory. These types serialise to the plan JSON of the contract
//! (`../shared/CONTRACT.md` section 3); fields may be added, never renamed or removed.
//! Every coordinate here is in the case's own frame (LPS or RAS), millimetres.

use serde::{Deserialize, Serialize};

use crate::anatomy::{Level, PatientFrame, Side};
use crate::error::MeshFix;
use crate::request::{Approach, Instrument, Procedure, Safety, DEFAULT_APPROACHES};

/// Why a side cannot be done safely, or which constraint a trajectory violates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReasonCode {
    /// No straight corridor through the pedicle fits cannula + 2 x cortex margin.
    PedicleCorridorTooNarrow,
    /// The pedicle of this side could not be found in the bone (e.g. missing or fused).
    PedicleNotFound,
    /// A straight path that fits the pedicle comes too close to the spinal canal.
    CanalTooClose,
    /// A straight path that fits the pedicle comes too close to the exiting nerve root.
    NerveRootTooClose,
    /// A straight path comes too close to a forbidden structure.
    ForbiddenStructureTooClose,
    /// From the skin (or the bone entry) to the tip is longer than the cannula's working length.
    WorkingLengthTooShort,
    /// The line behind the bone entry never meets the skin mesh.
    SkinNotReached,
    /// No balloon of the given sizes fits the vertebral body with the margins.
    BalloonDoesNotFit,
    // Violations reported by evaluation.
    /// Part of the cannula leaves the bone or comes closer than the cortex margin to its surface.
    CortexMarginViolated,
    CanalMarginViolated,
    NerveRootMarginViolated,
    ForbiddenMarginViolated,
    /// The tip is outside the vertebral body (through the anterior wall, or not in the body).
    TipOutsideBody,
    /// The tip is not in the anterior third of the vertebral body (a soft goal).
    TipNotInAnteriorThird,
    /// The bone entry is not on the named side, lateral of the canal.
    EntryWrongSide,
    /// The bone entry is not behind the vertebral body.
    EntryNotPosterior,
    /// The path does not go through the pedicle: the cannula axis never enters the bone, enters
    /// it beside the pedicle or passes outside the isthmus, or the approach crosses bone behind
    /// the entry.
    NotThroughPedicle,
    /// Between the bone entry and the tip the cannula axis leaves the bone and re-enters it.
    LeavesBone,
    /// The cannula meets the bone more obliquely than the request's `max_entry_incidence_deg`.
    EntryIncidenceTooSteep,
    // Why a level did not get a preferred approach (proto numbers 20 and up).
    /// Bilateral transpedicular was not possible: a side is infeasible (the message names it
    /// and its first reason, with that reason's measured number).
    BilateralNotPossible,
    /// Unipedicular was not possible from either side.
    UnipedicularNotPossible,
    /// Unipedicular: no safe line from this side puts the balloon (kyphoplasty) or the tip
    /// (vertebroplasty) on the mid-sagittal plane within the tolerance.
    MidlineNotReached,
    /// Unipedicular: the level's one cannula goes through the other side's pedicle, so this
    /// side is not used.
    OtherSideChosen,
    /// The request's navigation error (`navigation_error_mm` / `navigation_error_deg`) is more
    /// than any safe line's certified tolerance covers ([`NavigationTolerance`]): the reason
    /// carries the best tolerance found (`value_mm` translation, `value_deg` rotation).
    ErrorToleranceTooLow,
    // The extrapedicular route (proto numbers 30 and up).
    /// An extrapedicular path does not dock on the rib head-neck or at the costotransverse
    /// junction (`criteria::COSTOTRANSVERSE_JUNCTION_MM`).
    EntryNotOnRib,
    /// An extrapedicular path does not pass the pedicle's isthmus outside its lateral wall
    /// (through it, medial of it, or cutting into it).
    NotLateralOfPedicle,
    /// An extrapedicular route needs the level's `rib` mesh of the side and a `pleura` mesh;
    /// the case lacks them (the message names them; the pleura is never guessed from bone).
    ExtrapedicularMeshesMissing,
    /// No extrapedicular line of the side is safe (the best one's violations follow), or, as a
    /// level's approach reason, extrapedicular was not possible on a side.
    ExtrapedicularNotPossible,
    /// A cannula of the request (its own or one of `cannula_alternatives_mm`) is too small for
    /// a balloon catheter (`criteria::MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM`; value_mm: the
    /// cannula, limit_mm: the smallest that carries a balloon): a kyphoplasty side does not take
    /// it (vertebroplasty could).
    CannulaTooSmallForBalloon,
}

/// The route a trajectory takes past the pedicle, as recognised from the measured isthmus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Through the isthmus of the pedicle, inside its bony outline.
    Transpedicular,
    /// Past the isthmus on its lateral side (between pedicle and rib head at thoracic levels).
    Extrapedicular,
    /// Neither: the entry is in front of the isthmus, the path passes medial of it, or the
    /// pedicle could not be measured.
    Unrecognised,
}

/// A reason with its measured number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub code: ReasonCode,
    pub message: String,
    /// The measured number the reason is about, in millimetres (null when it has none).
    pub value_mm: Option<f64>,
    /// The limit it was held against, in millimetres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_mm: Option<f64>,
    /// The measured angle the reason is about, in degrees (for angular rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_deg: Option<f64>,
    /// The angular limit it was held against, in degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_deg: Option<f64>,
}

/// Something that could work instead of the infeasible approach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlternativeCode {
    SmallerCannula,
    UnipedicularFromOtherSide,
    Extrapedicular,
    SmallerMargins,
    LongerCannula,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub code: AlternativeCode,
    pub message: String,
}

/// Clearances of the cannula cylinder (surface to surface), millimetres.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Clearances {
    /// To the bone surface, from the end of the entry zone to the tip (negative: outside bone).
    pub cortex: f64,
    /// To the spinal canal (given or derived).
    pub canal: f64,
    /// To the nearest nerve root (given or derived).
    pub nerve_root: f64,
    /// To the nearest forbidden structure, when the case has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbidden: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// Where the cannula axis crosses the bone surface.
    pub bone_entry_mm: [f64; 3],
    /// The cannula tip.
    pub target_mm: [f64; 3],
    /// Where the axis crosses the skin (null without a skin mesh).
    pub skin_entry_mm: Option<[f64; 3]>,
    pub cannula_outer_diameter_mm: f64,
    /// Convergence towards the midline in the vertebra's axial plane.
    pub medial_angle_deg: f64,
    /// Tilt towards the head in the vertebra's sagittal plane.
    pub cranial_angle_deg: f64,
    pub clearance_mm: Clearances,
    /// Unit vector from bone entry to tip.
    pub direction: [f64; 3],
    pub length_in_bone_mm: f64,
    /// Skin (or bone entry) to tip, the length of cannula the approach uses.
    pub insertion_length_mm: f64,
    /// Depth of the tip in the vertebral body from its posterior wall, as a fraction of the
    /// body's depth along the axis (0 posterior wall, 1 anterior wall; anterior third >= 0.667).
    pub tip_depth_fraction: f64,
    /// Higher is better: worst pedicle-wall clearance first, then tip placement and convergence.
    pub score: f64,
    /// Angle between the axis and the inward normal of the bone surface under the cannula at the
    /// bone entry, degrees (null in plans written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_incidence_deg: Option<f64>,
    /// The route recognised from the measured isthmus (null in plans written before it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Balloon {
    pub center_mm: [f64; 3],
    /// Unit vector along the cannula axis, towards the tip.
    pub axis: [f64; 3],
    pub length_mm: f64,
    pub diameter_mm: f64,
    pub volume_ml: f64,
    /// Inflated balloon surface to the bone surface.
    pub cortex_clearance_mm: f64,
    /// Inflated balloon surface to the posterior wall of the vertebral body.
    pub posterior_wall_clearance_mm: f64,
}

/// How much navigation error a trajectory (with its balloon) tolerates ([`crate::tolerance`]):
/// certified tolerances from the exact clearance profile, and the probability of a margin
/// violation under the error model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NavigationTolerance {
    /// Largest rigid translation, any direction and no rotation, under which every hard margin
    /// holds (certified; 0 when a margin is already violated), mm.
    pub translation_mm: f64,
    /// Largest rotation about the bone entry, any axis and no translation, under which every
    /// hard margin holds (certified), degrees.
    pub rotation_deg: f64,
    /// The margin that limits the translation (e.g. `cannula to cortex`, `balloon to canal`).
    pub translation_limited_by: String,
    /// The margin that limits the rotation.
    pub rotation_limited_by: String,
    /// Fraction of the error model's samples (translation and rotation about the bone entry,
    /// RMS `sigma_mm` / `sigma_deg`) under which a hard margin fails by exact re-measurement.
    pub violation_probability: f64,
    /// The cannula's own certified translation tolerance (its margins alone; the balloon,
    /// inflated as large as its margins allow, usually limits the side), mm.
    pub cannula_translation_mm: f64,
    /// The cannula's own certified rotation tolerance about the bone entry, degrees.
    pub cannula_rotation_deg: f64,
    /// RMS translation of the error model, mm.
    pub sigma_mm: f64,
    /// RMS rotation of the error model, degrees.
    pub sigma_deg: f64,
    /// Number of deterministic (Halton) samples the probability is estimated from.
    pub samples: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SidePlan {
    pub side: Side,
    pub feasible: bool,
    pub trajectory: Option<Trajectory>,
    pub balloon: Option<Balloon>,
    pub reasons: Vec<Reason>,
    #[serde(default)]
    pub alternatives: Vec<Alternative>,
    /// This side's pedicle as measured from the mesh, feasible or not (absent when it could not
    /// be measured: the reasons then say so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pedicle: Option<PedicleSummary>,
    /// The approach this side's search was for (a feasible unipedicular side carries the
    /// level's one cannula, aimed across the midline).
    #[serde(default = "default_side_approach")]
    pub approach: Approach,
    /// The feasible side's tolerance to navigation error, cannula and balloon (absent on
    /// infeasible sides and in plans written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub navigation_tolerance: Option<NavigationTolerance>,
    /// What was tried on this side, in order, when more than the requested cannula through the
    /// pedicle was (the request's `cannula_alternatives_mm`, an extrapedicular route): each
    /// candidate with its route and cannula, whether it was safe, and the measured reasons it
    /// failed. The side's trajectory is the first safe one. Empty when only the requested
    /// cannula through the pedicle was tried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<SideAttempt>,
}

/// One candidate a side tried ([`SidePlan::attempts`]): actually planned and verified.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideAttempt {
    /// The route planned: transpedicular or extrapedicular.
    pub route: Route,
    /// The cannula's outer diameter, mm.
    pub cannula_outer_diameter_mm: f64,
    /// A safe trajectory was found (and, for kyphoplasty, a balloon fitted).
    pub feasible: bool,
    /// Why not, with the measured numbers (empty when feasible).
    pub reasons: Vec<Reason>,
}

fn default_side_approach() -> Approach {
    Approach::BilateralTranspedicular
}

fn default_procedure() -> Procedure {
    crate::request::DEFAULT_PROCEDURE
}

fn default_approaches() -> Vec<Approach> {
    DEFAULT_APPROACHES.to_vec()
}

/// A pedicle measured from the mesh, in the case frame: what a surgeon reads off the CT first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PedicleSummary {
    /// Area centroid of the isthmus, the narrowest cross-section between body and arch.
    pub isthmus_center_mm: [f64; 3],
    /// Unit direction of the pedicle axis through the isthmus centre, pointing into the body
    /// (the normal of the isthmus section).
    pub axis: [f64; 3],
    /// Outer transverse width of the isthmus.
    pub width_mm: f64,
    /// Outer height of the isthmus.
    pub height_mm: f64,
    /// Area of the isthmus section.
    pub area_mm2: f64,
}

/// The vertebra's own anatomical frame, as estimated from its mesh, in the case frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VertebraFrameSummary {
    pub body_center_mm: [f64; 3],
    pub anterior: [f64; 3],
    pub left: [f64; 3],
    pub superior: [f64; 3],
    pub body_depth_mm: f64,
    pub body_width_mm: f64,
    pub body_height_mm: f64,
}

/// Where a keep-out came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepOutSource {
    /// A mesh of the case.
    Given,
    /// Derived from the bone geometry (no mesh was given).
    Derived,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeepOutSummary {
    /// spinal_canal | nerve_root | forbidden
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    pub source: KeepOutSource,
    /// The mesh it came from, or how it was derived.
    pub from: String,
    pub margin_mm: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelPlan {
    pub level: Level,
    pub sides: Vec<SidePlan>,
    /// Rough cement volume for the level: the cavities the balloons make plus 20 % that
    /// interdigitates (null when no side is feasible).
    pub cement_volume_estimate_ml: Option<f64>,
    pub vertebra_frame: Option<VertebraFrameSummary>,
    pub keep_outs: Vec<KeepOutSummary>,
    /// The approach the level got: the first of the request's approaches that is possible
    /// (null when none is).
    #[serde(default)]
    pub approach: Option<Approach>,
    /// Why each approach preferred to the one taken (all of them, when none was possible) was
    /// not possible, in the order of preference.
    #[serde(default)]
    pub approach_reasons: Vec<Reason>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StructureNotice {
    pub structure: String,
    pub fix: MeshFix,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub case: String,
    pub frame: PatientFrame,
    pub levels: Vec<LevelPlan>,
    pub instrument: Instrument,
    pub safety: Safety,
    #[serde(default = "default_procedure")]
    pub procedure: Procedure,
    /// The approaches allowed, in order of preference.
    #[serde(default = "default_approaches")]
    pub approaches: Vec<Approach>,
    /// Smaller cannulas a side could fall back to, outer diameters in mm (the request's
    /// `cannula_alternatives_mm`; absent when none were given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cannula_alternatives_mm: Vec<f64>,
    /// Fixes applied to input meshes (e.g. inward winding flipped).
    #[serde(default)]
    pub mesh_fixes: Vec<StructureNotice>,
    pub planner_version: String,
}

/// A violated constraint of an evaluated trajectory.
pub type Violation = Reason;

/// The verdict on one given trajectory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub level: Level,
    pub side: Side,
    /// No hard constraint is violated.
    pub safe: bool,
    pub trajectory: Trajectory,
    /// Hard violations first; soft goals missed (TIP_NOT_IN_ANTERIOR_THIRD) are listed too but
    /// do not make the trajectory unsafe.
    pub violations: Vec<Violation>,
    /// The trajectory's tolerance to navigation error (the cannula alone: evaluation places no
    /// balloon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub navigation_tolerance: Option<NavigationTolerance>,
}
