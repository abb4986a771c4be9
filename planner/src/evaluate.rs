//! The exact measurement of one trajectory. The search verifies every trajectory it returns
//! with this function, and `evaluate` (the console's drag-and-check) calls it directly, so a
//! planned trajectory and a dragged one are judged by the same code, in exact f64 geometry.

use crate::anatomy::Side;
use crate::criteria::{
    self, angles_deg, axis_offset_mm, balloon_room_ml, breach_grade, centring_mm, cortex_start,
    docking_footprint_mm, docking_zone_mm, entry_incidence_cos, pedicle_span, GridSampler,
    ANTERIOR_THIRD_FRACTION, COSTOTRANSVERSE_JUNCTION_MM, EXTRAPEDICULAR_ISTHMUS_CLEARANCE_MM,
    MAX_RIB_PEDICLE_GAP_MM, MIN_ENTRY_BEHIND_WALL_MM,
};
use crate::keepout::{KeepOut, KeepOutKind};
use crate::math::{Point, Real, UnitVector};
use crate::pedicle::{Pedicle, PedicleFault};
use crate::plan::{Reason, ReasonCode, Route};
use crate::prepare::{PreparedAnatomy, PreparedVertebra};
use crate::request::{Instrument, Safety};

/// Everything measured about one trajectory, in LPS.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub bone_entry_lps: Point,
    pub tip_lps: Point,
    /// Unit direction from the bone entry to the tip.
    pub direction_lps: UnitVector,
    pub skin_entry_lps: Option<Point>,
    pub length_in_bone_mm: Real,
    pub insertion_length_mm: Real,
    /// Cylinder surface to bone surface beyond the docking zone (negative: breach depth).
    pub cortex_clearance_mm: Real,
    /// Angle between the axis and the inward normal of the bone surface the cannula docks on
    /// ([`crate::clearance::ClearanceMesh::footprint_normal`]), degrees.
    pub entry_incidence_deg: Real,
    /// Length of axis behind the bone entry over which the cortex margin is waived while the
    /// cannula docks ([`criteria::docking_zone_mm`]), mm.
    pub docking_zone_mm: Real,
    /// Where the cortex margin starts, mm along the axis from the bone entry towards the tip:
    /// the end of the docking zone for a transpedicular path; for an extrapedicular one the end
    /// of the docking zone where the cannula enters the body after the rib-pedicle gap (on the
    /// rib and in the gap no cortex margin applies: its route rule does).
    pub cortex_from_mm: Real,
    /// The route the path takes past the pedicle, as recognised from the measured isthmus.
    pub route: Route,
    pub canal_clearance_mm: Real,
    pub root_clearance_mm: Real,
    pub forbidden_clearance_mm: Option<Real>,
    pub medial_angle_deg: Real,
    pub cranial_angle_deg: Real,
    pub tip_depth_fraction: Real,
    /// Mean slack to the bone along the path in the pedicle ([`criteria::centring_mm`]).
    pub centring_mm: Real,
    /// Mean distance of the axis from the pedicle's cross-section centres.
    pub axis_offset_mm: Real,
    /// The largest balloon the line leaves room for, on the bone's distance grid
    /// ([`criteria::balloon_room_ml`]), ml.
    pub balloon_room_ml: Real,
    /// Hard constraints violated (empty: safe).
    pub violations: Vec<Reason>,
    /// Soft goals missed.
    pub soft: Vec<Reason>,
}

impl Measurement {
    /// Smallest slack over the margins (negative when a margin is violated).
    pub fn worst_slack_mm(&self, safety: &Safety) -> Real {
        criteria::worst_slack_mm(
            safety,
            self.cortex_clearance_mm,
            self.canal_clearance_mm,
            self.root_clearance_mm,
            self.forbidden_clearance_mm,
        )
    }

    /// [`criteria::score`]: higher is better.
    pub fn score(&self, safety: &Safety) -> Real {
        criteria::score(
            self.worst_slack_mm(safety),
            self.balloon_room_ml,
            self.centring_mm,
            self.axis_offset_mm,
            self.medial_angle_deg,
            self.tip_depth_fraction,
        )
    }
}

fn reason(
    code: ReasonCode,
    message: String,
    value_mm: Option<Real>,
    limit_mm: Option<Real>,
) -> Reason {
    Reason {
        code,
        message,
        value_mm,
        limit_mm,
        value_deg: None,
        limit_deg: None,
    }
}

/// `ENTRY_INCIDENCE_TOO_STEEP`: the cannula `meets` (where it docks or enters) the bone
/// `incidence_deg` from the surface normal, over `max_incidence_deg`.
fn incidence_too_steep(meets: &str, incidence_deg: Real, max_incidence_deg: Real) -> Reason {
    Reason {
        code: ReasonCode::EntryIncidenceTooSteep,
        message: format!(
            "the cannula {meets} {incidence_deg:.0} degrees from its surface normal (at most {max_incidence_deg} degrees): the trocar would skive off the sloped cortex"
        ),
        value_mm: None,
        limit_mm: None,
        value_deg: Some(incidence_deg),
        limit_deg: Some(max_incidence_deg),
    }
}

/// `PEDICLE_NOT_FOUND`: the isthmus could not be measured (`fault`), so `route` (the route
/// through it, or past it) cannot be verified.
fn pedicle_not_found(fault: &PedicleFault, route: &str) -> Reason {
    reason(
        ReasonCode::PedicleNotFound,
        format!(
            "the pedicle's isthmus could not be measured ({fault}): {route} cannot be verified"
        ),
        None,
        None,
    )
}

/// The transpedicular route rule, against the measured pedicle ([`crate::pedicle`]): the bone
/// entry lies behind the isthmus, and the cannula crosses the isthmus inside its bony outline by
/// `margin_mm`. A pedicle that could not be measured cannot vouch for the route. Returns the
/// route recognised: through the isthmus (transpedicular), past it on the lateral side
/// (extrapedicular), or neither.
fn route_through_isthmus(
    pedicle: &Result<Pedicle, PedicleFault>,
    side: Side,
    entry_vertebra: &Point,
    tip_vertebra: &Point,
    radius_mm: Real,
    margin_mm: Real,
    violations: &mut Vec<Reason>,
) -> Route {
    let p = match pedicle {
        Ok(p) => p,
        Err(fault) => {
            violations.push(pedicle_not_found(fault, "the route through it"));
            return Route::Unrecognised;
        }
    };
    // Only a violation's message needs the words; measure runs for every verified candidate.
    let size = || {
        format!(
            "isthmus {:.1} mm wide, {:.1} mm high",
            p.width_mm, p.height_mm
        )
    };
    let Some(c) = p.crossing(entry_vertebra, tip_vertebra, radius_mm) else {
        let (_, entry_along) = p.isthmus_coordinates(entry_vertebra);
        violations.push(reason(
            ReasonCode::NotThroughPedicle,
            format!(
                "the bone entry lies {entry_along:.1} mm in front of the pedicle's isthmus: the cannula enters the bone beside the pedicle, not through it ({})",
                size()
            ),
            Some(entry_along),
            Some(0.0),
        ));
        return Route::Unrecognised;
    };
    if !c.inside {
        violations.push(reason(
            ReasonCode::NotThroughPedicle,
            format!(
                "the cannula axis passes {:.1} mm outside the bony outline of the pedicle's isthmus ({})",
                -c.clearance_mm - radius_mm,
                size()
            ),
            Some(c.clearance_mm),
            Some(margin_mm),
        ));
    } else if c.clearance_mm < margin_mm {
        violations.push(reason(
            ReasonCode::CortexMarginViolated,
            format!(
                "at the pedicle's isthmus the cannula keeps {:.2} mm inside the bony outline (cortex margin {margin_mm} mm; {})",
                c.clearance_mm,
                size()
            ),
            Some(c.clearance_mm),
            Some(margin_mm),
        ));
    }
    if c.inside {
        return Route::Transpedicular;
    }
    // Outside the outline: lateral of the isthmus centre is the extrapedicular corridor
    // (between the pedicle and the rib head at thoracic levels); medial is towards the canal.
    let [u, v] = c.crossing_uv_mm;
    let crossing_vertebra = p.isthmus_center_vertebra_mm
        + p.width_dir_vertebra.into_inner() * u
        + p.height_dir_vertebra.into_inner() * v;
    if (crossing_vertebra.x - p.isthmus_center_vertebra_mm.x) * side.sign() > 0.0 {
        Route::Extrapedicular
    } else {
        Route::Unrecognised
    }
}

/// The extrapedicular route rule, against the measured pedicle: the axis crosses the isthmus
/// plane outside the isthmus's bony outline, on its lateral side, with the cannula's surface
/// at least [`EXTRAPEDICULAR_ISTHMUS_CLEARANCE_MM`] outside it. `far_back_vertebra` is a point
/// of the axis well behind the docking point (the docking point itself may lie in front of the
/// isthmus plane, on the rib head).
fn route_past_isthmus(
    pedicle: &Result<Pedicle, PedicleFault>,
    side: Side,
    far_back_vertebra: &Point,
    tip_vertebra: &Point,
    radius_mm: Real,
    violations: &mut Vec<Reason>,
) -> Route {
    let p = match pedicle {
        Ok(p) => p,
        Err(fault) => {
            violations.push(pedicle_not_found(fault, "a route past it"));
            return Route::Unrecognised;
        }
    };
    let Some(c) = p.crossing(far_back_vertebra, tip_vertebra, radius_mm) else {
        violations.push(reason(
            ReasonCode::NotLateralOfPedicle,
            "the cannula axis never crosses the plane of the pedicle's isthmus".into(),
            None,
            None,
        ));
        return Route::Unrecognised;
    };
    if c.inside {
        violations.push(reason(
            ReasonCode::NotLateralOfPedicle,
            format!(
                "the cannula axis passes through the pedicle's isthmus ({:.1} mm wide): that is a transpedicular line, not one lateral of the pedicle",
                p.width_mm
            ),
            Some(c.clearance_mm),
            Some(EXTRAPEDICULAR_ISTHMUS_CLEARANCE_MM),
        ));
        return Route::Unrecognised;
    }
    let [u, v] = c.crossing_uv_mm;
    let crossing_vertebra = p.isthmus_center_vertebra_mm
        + p.width_dir_vertebra.into_inner() * u
        + p.height_dir_vertebra.into_inner() * v;
    if (crossing_vertebra.x - p.isthmus_center_vertebra_mm.x) * side.sign() <= 0.0 {
        violations.push(reason(
            ReasonCode::NotLateralOfPedicle,
            "the cannula axis passes medial of the pedicle's isthmus, towards the canal".into(),
            None,
            None,
        ));
        return Route::Unrecognised;
    }
    // Outside: `clearance_mm` is -(axis distance to the outline + radius).
    let outside_mm = -c.clearance_mm - 2.0 * radius_mm;
    if outside_mm < EXTRAPEDICULAR_ISTHMUS_CLEARANCE_MM {
        violations.push(reason(
            ReasonCode::NotLateralOfPedicle,
            format!(
                "the cannula cuts {:.2} mm into the lateral wall of the pedicle's isthmus ({:.1} mm wide): it must pass beside it",
                -outside_mm, p.width_mm
            ),
            Some(outside_mm),
            Some(EXTRAPEDICULAR_ISTHMUS_CLEARANCE_MM),
        ));
    }
    Route::Extrapedicular
}

/// Where a line is inside a closed surface, from its sorted crossings: the intervals of `t`
/// (distance along the line from the tip) up to the tip, `t <= 0`.
fn inside_behind(crossings: &[Real]) -> Vec<(Real, Real)> {
    crossings
        .chunks(2)
        .filter_map(|w| {
            let a = w[0];
            let b = w.get(1).copied().unwrap_or(Real::INFINITY);
            (a < 0.0).then_some((a, b.min(0.0)))
        })
        .collect()
}

/// A stretch of the line inside the rib or the vertebra (their union), and which of the two
/// it starts and ends in.
#[derive(Clone, Copy, Debug)]
struct BoneRun {
    from: Real,
    to: Real,
    starts_in_rib: bool,
    ends_in_rib: bool,
}

/// The union of the vertebra's and the rib's inside intervals, in order along the line.
fn bone_runs(vertebra: &[(Real, Real)], rib: &[(Real, Real)]) -> Vec<BoneRun> {
    let mut all: Vec<(Real, Real, bool)> = vertebra
        .iter()
        .map(|&(a, b)| (a, b, false))
        .chain(rib.iter().map(|&(a, b)| (a, b, true)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.2.cmp(&y.2)));
    let mut runs: Vec<BoneRun> = Vec::new();
    for (a, b, is_rib) in all {
        match runs.last_mut() {
            Some(r) if a <= r.to => {
                if b > r.to {
                    r.to = b;
                    r.ends_in_rib = is_rib;
                }
            }
            _ => runs.push(BoneRun {
                from: a,
                to: b,
                starts_in_rib: is_rib,
                ends_in_rib: is_rib,
            }),
        }
    }
    runs
}

/// What the extrapedicular rule found along the line (distances from the tip).
struct ExtrapedicularPath {
    /// Where the cannula docks: the first bone (rib or vertebra) within the working length.
    t_dock: Option<Real>,
    /// Whether it docks on the rib (else on the vertebra).
    dock_on_rib: bool,
    /// Where the axis enters the vertebra for the last time before the tip (the body entry).
    t_body: Option<Real>,
}

/// The extrapedicular rule along the line: docking on the rib head-neck or at the
/// costotransverse junction ([`COSTOTRANSVERSE_JUNCTION_MM`]), then in bone (rib or vertebra)
/// to the tip but for one gap from the rib into the vertebra of at most
/// [`MAX_RIB_PEDICLE_GAP_MM`]; no bone behind the docking point within the working length.
fn extrapedicular_path(
    ctx: &SideContext<'_>,
    vertebra_crossings: &[Real],
    tip_lps: &Point,
    dir_lps: &UnitVector,
    violations: &mut Vec<Reason>,
) -> ExtrapedicularPath {
    let level = ctx.vertebra.level;
    let wl = ctx.instrument.cannula_working_length_mm;
    let rib = ctx.anatomy.rib(level, ctx.side);
    let vert = inside_behind(vertebra_crossings);
    let rib_iv = match rib {
        Some(k) => inside_behind(&k.clearance.line_crossings(tip_lps, dir_lps)),
        None => {
            violations.push(reason(
                ReasonCode::ExtrapedicularMeshesMissing,
                format!(
                    "an extrapedicular route docks on the rib: the case has no {level} {} `rib` mesh",
                    ctx.side
                ),
                None,
                None,
            ));
            Vec::new()
        }
    };
    let runs: Vec<BoneRun> = bone_runs(&vert, &rib_iv)
        .into_iter()
        .filter(|r| r.to > -wl)
        .collect();
    let t_body = vert.last().filter(|iv| iv.1 >= 0.0).map(|iv| iv.0);
    let Some(first) = runs.first().copied() else {
        violations.push(reason(
            ReasonCode::NotThroughPedicle,
            "the cannula axis never enters the bone behind the tip".into(),
            None,
            None,
        ));
        return ExtrapedicularPath {
            t_dock: None,
            dock_on_rib: false,
            t_body,
        };
    };
    if first.from <= -wl {
        violations.push(reason(
            ReasonCode::NotThroughPedicle,
            format!(
                "the approach passes through bone {:.1} mm behind the tip, beyond the working length {wl} mm",
                -first.from
            ),
            Some(-first.from),
            Some(wl),
        ));
    }
    let t_dock = first.from.max(-wl);
    let dock_lps = tip_lps + dir_lps.into_inner() * t_dock;
    let dock_on_rib = first.starts_in_rib;
    if !dock_on_rib {
        let to_rib = rib.map_or(Real::INFINITY, |k| k.clearance.distance_to_point(&dock_lps));
        if to_rib > COSTOTRANSVERSE_JUNCTION_MM {
            violations.push(reason(
                ReasonCode::EntryNotOnRib,
                format!(
                    "the cannula docks on the vertebra {to_rib:.1} mm from the rib: an extrapedicular path docks on the rib head-neck or at the costotransverse junction (within {COSTOTRANSVERSE_JUNCTION_MM} mm of the rib)"
                ),
                Some(to_rib),
                Some(COSTOTRANSVERSE_JUNCTION_MM),
            ));
        }
    }
    // Gaps between the runs from the docking point to the tip: one, from the rib into the
    // vertebra and short enough, is the rib-pedicle gap the route is named for.
    let gaps: Vec<(Real, Real, bool)> = runs
        .windows(2)
        .map(|w| (w[0].to, w[1].from, w[0].ends_in_rib && !w[1].starts_in_rib))
        .collect();
    let named = gaps.len() == 1 && gaps[0].2 && gaps[0].1 - gaps[0].0 <= MAX_RIB_PEDICLE_GAP_MM;
    if !gaps.is_empty() && !named {
        let outside_mm: Real = gaps.iter().map(|g| g.1 - g.0).sum();
        violations.push(reason(
            ReasonCode::LeavesBone,
            format!(
                "between the docking point ({:.1} mm before the tip) and the tip {outside_mm:.1} mm of the path is outside the bone in {} stretches: an extrapedicular path may leave bone only once, from the rib into the vertebra, for at most {MAX_RIB_PEDICLE_GAP_MM} mm",
                -t_dock,
                gaps.len()
            ),
            Some(outside_mm),
            Some(MAX_RIB_PEDICLE_GAP_MM),
        ));
    }
    ExtrapedicularPath {
        t_dock: Some(t_dock),
        dock_on_rib,
        t_body,
    }
}

/// Which route rule a side's trajectories are held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteRule {
    /// Through the isthmus of the pedicle (every approach but the extrapedicular one).
    Transpedicular,
    /// Past the pedicle on its lateral side: docking on the rib head-neck or at the
    /// costotransverse junction, through the rib-pedicle gap into the posterolateral body
    /// (`criteria`'s extrapedicular rules). The level's rib of the side is then bone, not a
    /// keep-out ([`PreparedAnatomy::keep_outs_extrapedicular`]).
    Extrapedicular,
}

/// One side of one vertebra, with what applies to it.
pub struct SideContext<'a> {
    pub anatomy: &'a PreparedAnatomy,
    pub vertebra: &'a PreparedVertebra,
    /// Given keep-outs and the vertebra's derived ones.
    pub keep_outs: Vec<&'a KeepOut>,
    pub side: Side,
    pub instrument: &'a Instrument,
    pub safety: &'a Safety,
    /// The route rule [`measure`] holds the trajectory to.
    pub route_rule: RouteRule,
}

impl<'a> SideContext<'a> {
    /// `side` of `vertebra` under the transpedicular route rule, with the vertebra's keep-outs.
    pub fn transpedicular(
        anatomy: &'a PreparedAnatomy,
        vertebra: &'a PreparedVertebra,
        side: Side,
        instrument: &'a Instrument,
        safety: &'a Safety,
    ) -> Self {
        SideContext {
            anatomy,
            vertebra,
            keep_outs: anatomy.keep_outs(vertebra.level),
            side,
            instrument,
            safety,
            route_rule: RouteRule::Transpedicular,
        }
    }
}

/// Measure the straight cannula whose axis runs from `from_lps` (any point on the approach behind
/// the tip) to `tip_lps`, on `side` of `vertebra`. The two must differ.
pub fn measure(ctx: &SideContext<'_>, from_lps: &Point, tip_lps: &Point) -> Measurement {
    measure_scoped(ctx, from_lps, tip_lps, Scope::Full)
}

/// The codes of the violations [`measure`] reports on the line from `from_lps` to `tip_lps`,
/// in its order, but for the ones it decides under the docking zone and the entry incidence:
/// the cortex clearance from the end of the docking zone to the tip and
/// `ENTRY_INCIDENCE_TOO_STEEP` are not judged (the route rules the tolerance's re-check leaves
/// out, `tolerance::margin_violation`). The same decisions by the same exact queries, without
/// the docking surface, the cortex distance and the score's grid terms, and with the
/// keep-outs' margins decided by [`KeepOut::segment_within`] (a walk that stops at the
/// verdict) instead of their exact distances; `planner/tests/tolerance.rs` checks the codes
/// against [`measure`]'s on many perturbed lines.
pub fn margin_codes(ctx: &SideContext<'_>, from_lps: &Point, tip_lps: &Point) -> Vec<ReasonCode> {
    measure_scoped(ctx, from_lps, tip_lps, Scope::Margins)
        .violations
        .iter()
        .map(|v| v.code)
        .collect()
}

/// Whether the line from `from_lps` to `tip_lps` is safe: `measure(..).violations.is_empty()`,
/// decided by the same exact queries, but with the cortex and keep-out margins decided by
/// [`crate::clearance::ClearanceMesh::segment_within`] / [`KeepOut::segment_within`] (walks that stop at the
/// verdict) instead of exact distances, and without the score's grid terms. Returns the
/// verdict and the measurement's frame fields (`tip_lps`, `direction_lps`,
/// `tip_depth_fraction`, what [`crate::search::SearchMode::accepts`] reads); its clearances
/// are placeholders (-inf where a margin is violated, +inf elsewhere) and its score means
/// nothing. The search and the extrapedicular search decide with it which of their candidates
/// to measure in full (`planner/tests/route.rs` and `search::tests` check it against
/// [`measure`]).
pub fn verdict(ctx: &SideContext<'_>, from_lps: &Point, tip_lps: &Point) -> (bool, Measurement) {
    let m = measure_scoped(ctx, from_lps, tip_lps, Scope::Verdict);
    (m.violations.is_empty(), m)
}

/// [`verdict`] for a caller that needs only safe lines: `Some` of the verdict's measurement
/// (the same, field for field) where [`verdict`] finds the line safe, `None` where it does not.
/// An unsafe line is given up at the first violation found. With `deep_first`, a
/// transpedicular line first has its cortex margin judged from the deepest point the docking
/// zone can reach (so a line through a pedicle too narrow for it is given up before the docking
/// surface is measured; the argument at `Scope::Judge`): worth its walk where the line is
/// likely unsafe, a walk more where it is safe; the answer is the same either way. The
/// search's verification and the extrapedicular search's queue judge their lines with it.
pub fn judge(
    ctx: &SideContext<'_>,
    from_lps: &Point,
    tip_lps: &Point,
    deep_first: bool,
) -> Option<Measurement> {
    let m = measure_scoped(ctx, from_lps, tip_lps, Scope::Judge { deep_first });
    m.violations.is_empty().then_some(m)
}

/// How much deeper than the exact walk a [`Scope::Judge`] cortex walk must find the bone to
/// give a line up, mm: round-off of the segment-triangle distance on a sub-segment (the exact
/// walk's segment contains it), never a rule.
const JUDGE_ROUNDING_MM: Real = 1e-9;

/// The deepest point behind the tip, on the axis, where the cortex margin of a transpedicular
/// line whose bone entry is `t_entry` (distance from the tip, negative) can start when the
/// cosine of its incidence is at least `cos_incidence`: the end of the longest docking zone
/// that incidence allows ([`docking_zone_mm`], its surface drop at most the footprint's radius,
/// since a corner within the radius of the entry lies at most that far under the tangent
/// plane).
fn deepest_cortex_start(
    instrument: &Instrument,
    safety: &Safety,
    t_entry: Real,
    cos_incidence: Real,
) -> Real {
    let footprint = docking_footprint_mm(instrument, safety, cos_incidence);
    cortex_start(
        t_entry,
        docking_zone_mm(
            instrument,
            safety,
            cos_incidence,
            footprint + JUDGE_ROUNDING_MM,
        ),
    )
}

/// Whether the cortex slack of the transpedicular line of `ctx` with its tip at `tip_lps`
/// along `dir_lps` and its bone entry at `t_entry` is sure to be under `slack_mm` (by
/// [`JUDGE_ROUNDING_MM`]), whatever the surface's drop, when the cosine of its incidence is at
/// least `cos_incidence`: some triangle that near the axis from [`deepest_cortex_start`] to
/// the tip, a piece of the one the cortex margin covers. Decided before the docking surface is
/// measured.
fn cortex_slack_surely_under(
    ctx: &SideContext<'_>,
    tip_lps: &Point,
    dir_lps: &UnitVector,
    t_entry: Real,
    cos_incidence: Real,
    slack_mm: Real,
) -> bool {
    let start = deepest_cortex_start(ctx.instrument, ctx.safety, t_entry, cos_incidence);
    let cap = slack_mm + ctx.instrument.cannula_radius_mm() + ctx.safety.cortex_margin_mm
        - JUDGE_ROUNDING_MM;
    start < 0.0
        && ctx.vertebra.bone.segment_within(
            &(tip_lps + dir_lps.into_inner() * start),
            tip_lps,
            |d| d < cap,
        )
}

/// The placeholder [`Scope::Below`] returns for a line whose score is sure to be below the
/// bound's floor: a score of minus infinity.
fn below_floor(tip_lps: &Point, dir_lps: UnitVector) -> Measurement {
    Measurement {
        cortex_clearance_mm: Real::NEG_INFINITY,
        canal_clearance_mm: Real::INFINITY,
        root_clearance_mm: Real::INFINITY,
        medial_angle_deg: 0.0,
        tip_depth_fraction: 1.0,
        centring_mm: 0.0,
        axis_offset_mm: 0.0,
        balloon_room_ml: 0.0,
        ..given_up(tip_lps, dir_lps, Vec::new())
    }
}

/// The placeholder [`Scope::Judge`] returns for an unsafe line: its violations so far and
/// nothing else measured.
fn given_up(tip_lps: &Point, dir_lps: UnitVector, violations: Vec<Reason>) -> Measurement {
    Measurement {
        bone_entry_lps: *tip_lps,
        tip_lps: *tip_lps,
        direction_lps: dir_lps,
        skin_entry_lps: None,
        length_in_bone_mm: Real::NAN,
        insertion_length_mm: Real::NAN,
        cortex_clearance_mm: Real::NAN,
        entry_incidence_deg: Real::NAN,
        docking_zone_mm: Real::NAN,
        cortex_from_mm: Real::NAN,
        route: Route::Unrecognised,
        canal_clearance_mm: Real::NAN,
        root_clearance_mm: Real::NAN,
        forbidden_clearance_mm: None,
        medial_angle_deg: Real::NAN,
        cranial_angle_deg: Real::NAN,
        tip_depth_fraction: Real::NAN,
        centring_mm: Real::NAN,
        axis_offset_mm: Real::NAN,
        balloon_room_ml: Real::NAN,
        violations,
        soft: Vec::new(),
    }
}

/// An upper bound on [`measure`]'s score of the line from `from_lps` to `tip_lps`
/// (`measure(..).score(safety)`, never below it): the score with the worst slack at its cap
/// ([`criteria::SLACK_RESERVE_MM`]), from the terms that need no exact distance (the balloon
/// room, the centring, the alignment, the convergence and the tip's depth, by the same code as
/// [`measure`]'s). [`score_below`] tightens it for one line; the search's diagnosis of an
/// infeasible side orders and prunes its lines with the two.
pub fn score_ceiling(ctx: &SideContext<'_>, from_lps: &Point, tip_lps: &Point) -> Real {
    measure_scoped(ctx, from_lps, tip_lps, Scope::Terms).score(ctx.safety)
}

/// An upper bound on [`measure`]'s score of the line from `from_lps` to `tip_lps`, below
/// [`score_ceiling`] where a clearance's slack is below `slack_below_mm`: [`measure`] with each
/// clearance taken as the distance of the first triangle its walk finds with a slack below
/// `slack_below_mm`, or infinity where there is none
/// ([`crate::clearance::ClearanceMesh::distance_to_segment_at_most`]). Each is at least the
/// exact clearance, and the score never falls as a slack grows, so the bound holds; and a walk
/// that only has to find one near triangle stops early. A line whose bound falls below a
/// score already measured cannot beat it. Minus infinity, not a bound, for a transpedicular
/// line whose cortex slack is found below `slack_below_mm` (by 1e-9 mm, for round-off) before
/// its docking surface is measured: its score is then below
/// `score_ceiling(..) - SLACK_RESERVE_MM + slack_below_mm`, the floor the caller asks about.
pub fn score_below(
    ctx: &SideContext<'_>,
    from_lps: &Point,
    tip_lps: &Point,
    slack_below_mm: Real,
) -> Real {
    measure_scoped(ctx, from_lps, tip_lps, Scope::Below(slack_below_mm)).score(ctx.safety)
}

/// How much of a [`Measurement`] [`measure_scoped`] computes.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// Everything.
    Full,
    /// Everything, but each clearance only bounded from above: by the distance of some
    /// triangle whose slack over its margin is below the given one, or infinity where there is
    /// none ([`score_below`]).
    Below(Real),
    /// Only the score's terms that need no exact distance; every clearance infinite, no
    /// docking surface, route or keep-out ([`score_ceiling`]). Its violations mean nothing.
    Terms,
    /// Only the violations [`margin_codes`] returns; the other fields are placeholders (the
    /// keep-out clearances are -inf where the margin is violated, +inf elsewhere), never
    /// returned.
    Margins,
    /// Every violation [`measure`] reports (by code; the values in their messages are
    /// placeholders where a margin decides), the cortex and keep-out margins decided without
    /// their exact distances ([`verdict`]); no centring or balloon term.
    Verdict,
    /// [`Scope::Verdict`] up to the first violation found, then given up ([`judge`]): a line
    /// it finds safe has run exactly the verdict's course. With `deep_first`, before the
    /// docking surface, a transpedicular line's cortex margin is judged on the axis from
    /// [`deepest_cortex_start`] to the tip: that piece lies within the verdict's (which starts
    /// where the docking zone ends, no deeper unless the incidence is itself a violation), so
    /// a breach of the margin there, by [`JUDGE_ROUNDING_MM`] to spare, is one of the verdict.
    Judge { deep_first: bool },
}

/// [`measure`], or with [`Scope::Margins`] the part [`margin_codes`] needs.
fn measure_scoped(
    ctx: &SideContext<'_>,
    from_lps: &Point,
    tip_lps: &Point,
    scope: Scope,
) -> Measurement {
    let full = matches!(scope, Scope::Full | Scope::Below(_));
    // The score's terms are computed in full and for the ceiling.
    let terms = full || scope == Scope::Terms;
    // The docking surface, the entry incidence and the cortex margin are judged in full and
    // for the verdict, not for the margin codes or the ceiling.
    let docking = !matches!(scope, Scope::Margins | Scope::Terms);
    let SideContext {
        anatomy,
        vertebra,
        keep_outs,
        side,
        instrument,
        safety,
        route_rule,
    } = ctx;
    let side = *side;
    let extrapedicular = *route_rule == RouteRule::Extrapedicular;
    let r = instrument.cannula_radius_mm();
    let wl = instrument.cannula_working_length_mm;
    let dir_lps = UnitVector::new_normalize(tip_lps - from_lps);
    let frame = &vertebra.frame;
    let bone = &vertebra.bone;
    let mut violations = Vec::new();
    let mut soft = Vec::new();

    // Where the axis crosses the bone, as distances along the axis from the tip. The bone entry
    // is where the cannula first meets this vertebra's bone within its working length; every
    // crossing after it and before the tip is a leave-and-re-enter.
    let crossings = bone.line_crossings(tip_lps, &dir_lps);
    let tip_inside = bone.contains_point(tip_lps);
    let behind: Vec<Real> = crossings.iter().copied().filter(|&t| t < 0.0).collect();
    let t_last_entry = behind.last().copied();
    // The extrapedicular rule finds its own docking point (on the rib, or at the
    // costotransverse junction) and body entry.
    let ep = extrapedicular
        .then(|| extrapedicular_path(ctx, &crossings, tip_lps, &dir_lps, &mut violations));
    let t_entry_pedicle = t_last_entry.map(|last| {
        // Entries alternate with exits backwards from the last entry.
        behind
            .iter()
            .rev()
            .step_by(2)
            .copied()
            .take_while(|&t| t > -wl)
            .last()
            .unwrap_or(last)
    });
    let t_entry = match &ep {
        Some(e) => e.t_dock,
        None => t_entry_pedicle,
    };
    let bone_entry_lps = tip_lps + dir_lps.into_inner() * t_entry.unwrap_or(0.0);
    if t_entry.is_none() && !extrapedicular {
        violations.push(reason(
            ReasonCode::NotThroughPedicle,
            "the cannula axis never enters the bone behind the tip".into(),
            None,
            None,
        ));
    }
    // `Scope::Judge` gives a line up at its first violation.
    let (judge, deep_first) = match scope {
        Scope::Judge { deep_first } => (true, deep_first),
        _ => (false, false),
    };
    if !tip_inside {
        if judge {
            violations.push(reason(
                ReasonCode::TipOutsideBody,
                String::new(),
                None,
                None,
            ));
        }
    } else if let (true, false, Some(te)) = (deep_first, extrapedicular, t_entry) {
        // The cosine a little under the limit's: an incidence within the limit has a cosine at
        // least this, whatever the round-off of `acos` and `to_degrees`; a steeper incidence is
        // a violation of its own.
        let cos_min = safety.max_entry_incidence_deg.to_radians().cos() - JUDGE_ROUNDING_MM;
        if cortex_slack_surely_under(ctx, tip_lps, &dir_lps, te, cos_min, 0.0) {
            violations.push(reason(
                ReasonCode::CortexMarginViolated,
                String::new(),
                None,
                None,
            ));
        }
    }
    if judge && !violations.is_empty() {
        return given_up(tip_lps, dir_lps, violations);
    }
    let length_in_bone = if tip_inside {
        -t_entry.unwrap_or(0.0)
    } else {
        0.0
    };
    if !tip_inside {
        let d = bone.distance_to_point(tip_lps);
        violations.push(reason(
            ReasonCode::TipOutsideBody,
            format!("the tip is outside the bone, {d:.1} mm from its surface"),
            Some(d),
            None,
        ));
    }

    // Skin and insertion length.
    let mut skin_entry_lps = None;
    let mut insertion = -t_entry.unwrap_or(0.0);
    if let Some(skin) = anatomy.skin() {
        let before = t_entry.unwrap_or(0.0);
        match skin
            .line_crossings(tip_lps, &dir_lps)
            .into_iter()
            .rfind(|&t| t < before)
        {
            Some(t) => {
                skin_entry_lps = Some(tip_lps + dir_lps.into_inner() * t);
                insertion = -t;
            }
            None => violations.push(reason(
                ReasonCode::SkinNotReached,
                "the line behind the bone entry never meets the skin".into(),
                None,
                None,
            )),
        }
    }
    if insertion > wl {
        violations.push(reason(
            ReasonCode::WorkingLengthTooShort,
            format!(
                "{} to tip is {insertion:.1} mm, longer than the working length {wl} mm",
                if skin_entry_lps.is_some() {
                    "skin"
                } else {
                    "bone entry"
                }
            ),
            Some(insertion),
            Some(wl),
        ));
    }

    // Behind the bone entry, within the cannula's reach, no bone: the cannula would start in it
    // (the extrapedicular rule checks the rib's and the vertebra's bone together).
    if let Some(te) = t_entry.filter(|_| !extrapedicular) {
        if let Some(&t_other) = behind.iter().rev().find(|&&t| t < te) {
            if t_other > -wl {
                violations.push(reason(
                    ReasonCode::NotThroughPedicle,
                    format!(
                        "the approach passes through bone of {} {:.1} mm behind the bone entry",
                        vertebra.level,
                        te - t_other
                    ),
                    Some(te - t_other),
                    None,
                ));
            }
        }
    }
    // From the bone entry to the tip the axis stays in the bone: no leave-and-re-enter.
    if let (Some(te), Some(last)) = (t_entry, t_last_entry) {
        if te < last && !extrapedicular {
            let gaps: Vec<(Real, Real)> = behind
                .iter()
                .copied()
                .filter(|&t| t >= te && t <= last)
                .collect::<Vec<_>>()
                .windows(2)
                .skip(1)
                .step_by(2)
                .map(|w| (w[0], w[1]))
                .collect();
            let outside_mm: Real = gaps.iter().map(|(a, b)| b - a).sum();
            let (exit, _) = gaps.first().copied().unwrap_or((te, last));
            violations.push(reason(
                ReasonCode::LeavesBone,
                format!(
                    "the cannula enters the bone of {} {:.1} mm before the tip, leaves it {:.1} mm before the tip and re-enters: {outside_mm:.1} mm of its path between entry and tip is outside the bone",
                    vertebra.level, -te, -exit
                ),
                Some(outside_mm),
                Some(0.0),
            ));
        }
        let tail_lps = tip_lps - dir_lps.into_inner() * wl.max(insertion);
        let outside_end_lps = tip_lps + dir_lps.into_inner() * (te - 0.5);
        for other in anatomy.vertebrae() {
            if other.level == vertebra.level
                || other.level.index().abs_diff(vertebra.level.index()) > 1
                || scope == Scope::Terms
            {
                continue;
            }
            // `distance_to_segment(..) <= 0.0`, walked only as far as the verdict needs.
            if other
                .bone
                .segment_within(&tail_lps, &outside_end_lps, |d| d <= 0.0)
            {
                violations.push(reason(
                    ReasonCode::NotThroughPedicle,
                    format!("the approach passes through the bone of {}", other.level),
                    None,
                    None,
                ));
            }
        }
    }

    if judge && !violations.is_empty() {
        return given_up(tip_lps, dir_lps, violations);
    }
    // Cortex clearance from where it applies to the tip.
    let lps_to_vertebra = &frame.lps_to_vertebra;
    let tip_vertebra = lps_to_vertebra * tip_lps;
    let dir_vertebra = lps_to_vertebra.rotation * dir_lps.into_inner();
    let entry_vertebra = lps_to_vertebra * bone_entry_lps;
    let bone_grid = GridSampler::bone(&vertebra.bone_sdf, frame.vertebra_to_grid());
    // The docking surface, the incidence and the cortex clearance (not for the margin codes:
    // `Scope::Margins`).
    let (incidence_deg, zone, cortex_from, cortex) = if docking {
        // Incidence on the exact surface under the cannula's footprint (the distance grid's
        // gradient only if no triangle faces the axis there, which an entry on the mesh rules out).
        let normal_lps = bone.footprint_normal(&bone_entry_lps, dir_lps.as_ref(), r);
        let cos_incidence = match normal_lps {
            Some(n) => -n.dot(dir_lps.as_ref()),
            None => entry_incidence_cos(&bone_grid, &entry_vertebra, &dir_vertebra),
        }
        .clamp(-1.0, 1.0);
        let incidence_deg = cos_incidence.acos().to_degrees();
        let max_incidence_deg = safety.max_entry_incidence_deg;
        if t_entry.is_some() && incidence_deg > max_incidence_deg && !extrapedicular {
            violations.push(incidence_too_steep(
                "meets the bone",
                incidence_deg,
                max_incidence_deg,
            ));
        }
        // `Scope::Below`: a transpedicular line whose cortex, from the deepest point its
        // docking zone can reach at this incidence, already has a slack under the bound's,
        // scores under the bound's floor (the score rises with the worst slack one for one):
        // given up before the surface's drop is measured.
        if let (Scope::Below(slack_mm), false, true, Some(te)) =
            (scope, extrapedicular, tip_inside, t_entry)
        {
            if cortex_slack_surely_under(ctx, tip_lps, &dir_lps, te, cos_incidence, slack_mm) {
                return below_floor(tip_lps, dir_lps);
            }
        }
        let drop_mm = normal_lps.map_or(0.0, |n| {
            let footprint = docking_footprint_mm(instrument, safety, cos_incidence);
            bone.surface_drop_mm(&bone_entry_lps, &n, dir_lps.as_ref(), footprint)
        });
        let zone = docking_zone_mm(instrument, safety, cos_incidence, drop_mm);
        let mut t_start = cortex_start(t_entry.unwrap_or(0.0), zone);
        let mut incidence_deg = incidence_deg;
        let mut zone = zone;
        let mut cortex_from = zone;
        if let Some(e) = &ep {
            // Extrapedicular: the incidence limit holds where the cannula docks (on the rib, or
            // at the costotransverse junction on the vertebra) and again where it meets the body's
            // cortex after the rib-pedicle gap; the cortex margin applies from the end of the body
            // entry's docking zone to the tip.
            let incidence = |mesh: &crate::clearance::ClearanceMesh, at: &Point| {
                let n = mesh.footprint_normal(at, dir_lps.as_ref(), r);
                // No face under the footprint: taken as grazing (90 degrees), refused.
                let cos = n.map_or(0.0, |n| -n.dot(dir_lps.as_ref())).clamp(-1.0, 1.0);
                (n, cos)
            };
            let rib = anatomy.rib(vertebra.level, side);
            let dock_mesh = match rib {
                Some(k) if e.dock_on_rib => &k.clearance,
                _ => bone,
            };
            let (_, cos_dock) = incidence(dock_mesh, &bone_entry_lps);
            incidence_deg = cos_dock.acos().to_degrees();
            let t_body = e.t_body.unwrap_or(0.0);
            let body_entry_lps = tip_lps + dir_lps.into_inner() * t_body;
            let (n_body, cos_body) = incidence(bone, &body_entry_lps);
            let body_deg = cos_body.acos().to_degrees();
            for (what, deg) in [
                ("docks on the bone", incidence_deg),
                ("enters the vertebral body", body_deg),
            ] {
                if e.t_dock.is_some() && deg > max_incidence_deg {
                    violations.push(incidence_too_steep(what, deg, max_incidence_deg));
                }
            }
            let drop_body = n_body.map_or(0.0, |n| {
                let footprint = docking_footprint_mm(instrument, safety, cos_body);
                bone.surface_drop_mm(&body_entry_lps, &n, dir_lps.as_ref(), footprint)
            });
            zone = docking_zone_mm(instrument, safety, cos_body, drop_body);
            t_start = cortex_start(t_body, zone);
            cortex_from = t_body - t_entry.unwrap_or(0.0) + zone;
        }
        let cortex_from_lps = tip_lps + dir_lps.into_inner() * t_start;
        let cortex = if !tip_inside {
            -bone.distance_to_point(tip_lps) - r
        } else if let Scope::Below(slack_mm) = scope {
            let cap = slack_mm + r + safety.cortex_margin_mm;
            bone.distance_to_segment_at_most(&cortex_from_lps, tip_lps, cap) - r
        } else if full {
            bone.distance_to_segment(&cortex_from_lps, tip_lps) - r
        } else {
            // Only the verdict `cortex < margin` below: -inf where it holds, +inf elsewhere.
            let margin = safety.cortex_margin_mm;
            if bone.segment_within(&cortex_from_lps, tip_lps, |d| d - r < margin) {
                Real::NEG_INFINITY
            } else {
                Real::INFINITY
            }
        };
        if cortex < safety.cortex_margin_mm {
            let msg = if cortex < 0.0 {
                format!(
                    "the cannula breaches the cortex by {:.1} mm (Gertzbein-Robbins grade {})",
                    -cortex,
                    breach_grade(-cortex)
                )
            } else {
                format!(
                    "the cannula comes within {cortex:.2} mm of the bone surface (cortex margin {} mm)",
                    safety.cortex_margin_mm
                )
            };
            violations.push(reason(
                ReasonCode::CortexMarginViolated,
                msg,
                Some(cortex),
                Some(safety.cortex_margin_mm),
            ));
        }
        (incidence_deg, zone, cortex_from, cortex)
    } else {
        // No cortex clearance measured: infinite, an upper bound (`Scope::Terms`).
        (Real::NAN, Real::NAN, Real::NAN, Real::INFINITY)
    };

    if judge && !violations.is_empty() {
        return given_up(tip_lps, dir_lps, violations);
    }
    // The transpedicular route: through the isthmus, inside its bony outline by the cortex
    // margin, from a bone entry behind it. The cortex clearance above starts only after the
    // docking zone, which for a large cannula or an entry close to the isthmus can reach past it.
    let route = if extrapedicular {
        route_past_isthmus(
            &vertebra.pedicles[side],
            side,
            &(tip_vertebra - dir_vertebra * (wl + 100.0)),
            &tip_vertebra,
            r,
            &mut violations,
        )
    } else if t_entry.is_some() && scope != Scope::Terms {
        route_through_isthmus(
            &vertebra.pedicles[side],
            side,
            &entry_vertebra,
            &tip_vertebra,
            r,
            safety.cortex_margin_mm,
            &mut violations,
        )
    } else {
        Route::Unrecognised
    };

    if judge && !violations.is_empty() {
        return given_up(tip_lps, dir_lps, violations);
    }
    // Keep-outs along the whole cannula in the patient.
    let tail_lps = match skin_entry_lps {
        Some(s) => s,
        None => tip_lps - dir_lps.into_inner() * wl,
    };
    let mut canal = Real::INFINITY;
    let mut root = Real::INFINITY;
    let mut forbidden: Option<Real> = None;
    // The smallest exact distance so far of each kind (canal, root, forbidden): a keep-out at
    // least that far cannot lower its kind's minimum, so its walk stops there.
    let mut nearest = [Real::INFINITY; 3];
    // No keep-out is measured for the score's terms alone: every clearance stays infinite.
    let keep_outs = if scope == Scope::Terms {
        &[][..]
    } else {
        &keep_outs[..]
    };
    for k in keep_outs {
        let kind = match k.kind {
            KeepOutKind::Canal => 0,
            KeepOutKind::NerveRoot(_) => 1,
            KeepOutKind::Forbidden => 2,
        };
        let margin = match k.kind {
            KeepOutKind::Canal | KeepOutKind::Forbidden => safety.canal_margin_mm,
            KeepOutKind::NerveRoot(_) => safety.nerve_root_margin_mm,
        };
        let d = if let Scope::Below(slack_mm) = scope {
            k.distance_to_segment_at_most(&tail_lps, tip_lps, slack_mm + r + margin) - r
        } else if full {
            let raw = k.distance_to_segment_below(&tail_lps, tip_lps, nearest[kind]);
            nearest[kind] = nearest[kind].min(raw);
            raw - r
        } else {
            // Only the verdict `d < margin` below: -inf where it holds, +inf elsewhere.
            if k.segment_within(&tail_lps, tip_lps, |d| d - r < margin) {
                Real::NEG_INFINITY
            } else {
                Real::INFINITY
            }
        };
        match k.kind {
            KeepOutKind::Canal => canal = canal.min(d),
            KeepOutKind::NerveRoot(_) => root = root.min(d),
            KeepOutKind::Forbidden => forbidden = Some(forbidden.map_or(d, |f: Real| f.min(d))),
        }
        if judge && d < margin {
            let code = match k.kind {
                KeepOutKind::Canal => ReasonCode::CanalMarginViolated,
                KeepOutKind::NerveRoot(_) => ReasonCode::NerveRootMarginViolated,
                KeepOutKind::Forbidden => ReasonCode::ForbiddenMarginViolated,
            };
            violations.push(reason(code, String::new(), None, None));
            return given_up(tip_lps, dir_lps, violations);
        }
    }
    let margin_check = |v: Real, margin: Real, code, what: &str, out: &mut Vec<Reason>| {
        if v < margin {
            out.push(reason(
                code,
                format!("the cannula comes within {v:.2} mm of the {what} (margin {margin} mm)"),
                Some(v),
                Some(margin),
            ));
        }
    };
    margin_check(
        canal,
        safety.canal_margin_mm,
        ReasonCode::CanalMarginViolated,
        "spinal canal",
        &mut violations,
    );
    margin_check(
        root,
        safety.nerve_root_margin_mm,
        ReasonCode::NerveRootMarginViolated,
        "nerve root",
        &mut violations,
    );
    if let Some(f) = forbidden {
        margin_check(
            f,
            safety.canal_margin_mm,
            ReasonCode::ForbiddenMarginViolated,
            "forbidden structure",
            &mut violations,
        );
    }

    // Frame checks: entry behind the body and lateral of the canal; tip in the body.
    // (An extrapedicular cannula docks on the rib head-neck, which may lie in front of that
    // line: its rule above replaces this one.)
    if entry_vertebra.y < frame.posterior_wall_y_mm + MIN_ENTRY_BEHIND_WALL_MM && !extrapedicular {
        violations.push(reason(
            ReasonCode::EntryNotPosterior,
            format!(
                "the bone entry is {:.1} mm behind the posterior wall of the body (at least {MIN_ENTRY_BEHIND_WALL_MM} mm)",
                entry_vertebra.y - frame.posterior_wall_y_mm
            ),
            Some(entry_vertebra.y - frame.posterior_wall_y_mm),
            Some(MIN_ENTRY_BEHIND_WALL_MM),
        ));
    }
    let lateral = entry_vertebra.x * side.sign();
    if lateral < frame.canal_half_width_mm[side] {
        violations.push(reason(
            ReasonCode::EntryWrongSide,
            format!(
                "the bone entry is {lateral:.1} mm to the {side} of the midline, inside the canal's edge at {:.1} mm",
                frame.canal_half_width_mm[side]
            ),
            Some(lateral),
            Some(frame.canal_half_width_mm[side]),
        ));
    }
    let forward = -dir_vertebra.y;
    let mut depth_fraction = 0.0;
    if forward <= 1e-6 {
        violations.push(reason(
            ReasonCode::NotThroughPedicle,
            "the cannula does not point anteriorly".into(),
            None,
            None,
        ));
    } else {
        // Body chord along the axis: from the posterior-wall plane to the anterior exit.
        let t_pw = (frame.posterior_wall_y_mm - tip_vertebra.y) / dir_vertebra.y;
        let t_exit = crossings.iter().copied().find(|&t| t > 0.0);
        if tip_vertebra.y > frame.posterior_wall_y_mm {
            violations.push(reason(
                ReasonCode::TipOutsideBody,
                format!(
                    "the tip is {:.1} mm behind the posterior wall of the body",
                    tip_vertebra.y - frame.posterior_wall_y_mm
                ),
                Some(tip_vertebra.y - frame.posterior_wall_y_mm),
                None,
            ));
        }
        if let Some(tx) = t_exit {
            let chord = tx - t_pw;
            if chord > 0.0 {
                depth_fraction = ((0.0 - t_pw) / chord).clamp(-1.0, 1.0);
            }
        }
        if depth_fraction < ANTERIOR_THIRD_FRACTION {
            soft.push(reason(
                ReasonCode::TipNotInAnteriorThird,
                format!(
                    "the tip is at {:.0} % of the body depth (anterior third from {:.0} %)",
                    depth_fraction * 100.0,
                    ANTERIOR_THIRD_FRACTION * 100.0
                ),
                None,
                None,
            ));
        }
    }
    let (medial, cranial) = angles_deg(side, &dir_vertebra);
    let in_pedicle = pedicle_span(
        frame,
        &entry_vertebra,
        &dir_vertebra,
        0.0,
        -t_entry.unwrap_or(0.0),
    );
    // Centring in, and alignment with, the pedicle do not apply to a path beside it (nor
    // to the margin codes).
    let in_pedicle = in_pedicle.filter(|_| !extrapedicular && terms);
    let centring = match in_pedicle {
        Some((a, b)) => {
            let (a, b) = (
                entry_vertebra + dir_vertebra * a,
                entry_vertebra + dir_vertebra * b,
            );
            centring_mm((b - a).norm(), r, safety.cortex_margin_mm, |f| {
                bone_grid.at(&(a + (b - a) * f))
            })
        }
        None => 0.0,
    };
    let balloon_room = if terms {
        let behind_tip = bone_grid.line(&tip_vertebra, &-dir_vertebra);
        balloon_room_ml(
            &instrument.balloon_lengths_mm,
            instrument.balloon_max_diameter_mm,
            safety.cortex_margin_mm,
            |s| behind_tip.at(s),
            |s| frame.posterior_wall_y_mm - (tip_vertebra - dir_vertebra * s).y,
            |s| side.sign() * (tip_vertebra - dir_vertebra * s).x,
        )
    } else {
        Real::NAN
    };
    Measurement {
        bone_entry_lps,
        tip_lps: *tip_lps,
        direction_lps: dir_lps,
        skin_entry_lps,
        length_in_bone_mm: length_in_bone,
        insertion_length_mm: insertion,
        cortex_clearance_mm: cortex,
        entry_incidence_deg: incidence_deg,
        docking_zone_mm: zone,
        cortex_from_mm: cortex_from,
        route,
        canal_clearance_mm: canal,
        root_clearance_mm: root,
        forbidden_clearance_mm: forbidden,
        medial_angle_deg: medial,
        cranial_angle_deg: cranial,
        tip_depth_fraction: depth_fraction,
        centring_mm: centring,
        axis_offset_mm: if extrapedicular {
            0.0
        } else {
            axis_offset_mm(
                &vertebra.pedicle_centroids[side],
                &tip_vertebra,
                &dir_vertebra,
            )
        },
        balloon_room_ml: balloon_room,
        violations,
        soft,
    }
}
