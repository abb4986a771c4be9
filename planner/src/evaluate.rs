//! The exact measurement of one trajectory. The search verifies every trajectory it returns
//! with this function, and `evaluate` (the console's drag-and-check) calls it directly, so a
//! planned trajectory and a dragged one are judged by the same code, in exact f64 geometry.

use crate::anatomy::Side;
use crate::keepout::{KeepOut, KeepOutKind};
use crate::math::{Point, Real, UnitVector, Vector};
use crate::plan::{Reason, ReasonCode};
use crate::prepare::{PreparedAnatomy, PreparedVertebra};
use crate::request::{Instrument, Safety};

/// The bone entry must lie at least this far behind the posterior wall of the body, mm.
pub const MIN_ENTRY_BEHIND_WALL_MM: Real = 5.0;
/// Tip depth in the body (fraction from the posterior wall) at or beyond which the tip is in
/// the anterior third.
pub const ANTERIOR_THIRD_FRACTION: Real = 2.0 / 3.0;

/// Steepest incidence (angle between the axis and the inward surface normal at the bone
/// entry) at which a cannula can dock without skiving, degrees.
pub const MAX_ENTRY_INCIDENCE_DEG: Real = 75.0;

/// Minimum length of the docking zone behind the bone entry, where the cannula passes the
/// entry cortex.
pub fn docking_zone_mm(instrument: &Instrument, safety: &Safety) -> Real {
    2.0 * (instrument.cannula_radius_mm() + safety.cortex_margin_mm)
}

/// Cosine of the incidence of the axis `dir_vertebra` at the bone entry `entry_vertebra`, from
/// the gradient of the approximate distance grid one millimetre inside.
pub fn entry_incidence_cos(
    vertebra: &PreparedVertebra,
    vertebra_to_grid: &crate::math::Pose,
    entry_vertebra: &Point,
    dir_vertebra: &Vector,
) -> Real {
    let p = entry_vertebra + dir_vertebra;
    let h = vertebra.bone_sdf.spacing_mm;
    let mut g = Vector::zeros();
    for axis in 0..3 {
        let mut e = Vector::zeros();
        e[axis] = h;
        let a = vertebra
            .bone_sdf
            .sample(&(vertebra_to_grid * (p + e)), -10.0) as Real;
        let b = vertebra
            .bone_sdf
            .sample(&(vertebra_to_grid * (p - e)), -10.0) as Real;
        g[axis] = a - b;
    }
    let n = g.norm();
    if n < 1e-9 {
        return 1.0;
    }
    (g / n).dot(dir_vertebra).clamp(-1.0, 1.0)
}

/// Where along the axis (distance from the tip, negative behind it) the cortex margin starts to
/// apply: in front of the plane of the back of the vertebral canal (where the pedicle meets the
/// lamina) and at least the docking zone past the bone entry. Behind it the cannula crosses the
/// posterior elements: there its axis must stay in bone, and the canal and root margins apply as
/// everywhere.
pub fn cortex_start(
    frame: &crate::frame::VertebraFrame,
    tip_vertebra: &Point,
    dir_vertebra: &Vector,
    t_entry: Real,
    docking_mm: Real,
) -> Real {
    let mut start = t_entry + docking_mm;
    if dir_vertebra.y < -1e-9 {
        let t_back = (frame.canal_back_y_mm - tip_vertebra.y) / dir_vertebra.y;
        start = start.max(t_back);
    }
    start.min(0.0)
}

/// Everything measured about one trajectory, in LPS.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub bone_entry: Point,
    pub tip: Point,
    pub direction: UnitVector,
    pub skin_entry: Option<Point>,
    pub length_in_bone_mm: Real,
    pub insertion_length_mm: Real,
    /// Cylinder surface to bone surface beyond the docking zone (negative: breach depth).
    pub cortex_clearance_mm: Real,
    pub canal_clearance_mm: Real,
    pub root_clearance_mm: Real,
    pub forbidden_clearance_mm: Option<Real>,
    pub medial_angle_deg: Real,
    pub cranial_angle_deg: Real,
    pub tip_depth_fraction: Real,
    /// Mean slack to the bone along the path in the pedicle (see [`centring_mm`]).
    pub centring_mm: Real,
    /// Mean distance of the axis from the pedicle's cross-section centres.
    pub axis_offset_mm: Real,
    /// Hard constraints violated (empty: safe).
    pub violations: Vec<Reason>,
    /// Soft goals missed.
    pub soft: Vec<Reason>,
}

impl Measurement {
    /// Smallest slack over the margins (negative when a margin is violated).
    pub fn worst_slack_mm(&self, safety: &Safety) -> Real {
        let mut w = (self.cortex_clearance_mm - safety.cortex_margin_mm)
            .min(self.canal_clearance_mm - safety.canal_margin_mm)
            .min(self.root_clearance_mm - safety.nerve_root_margin_mm);
        if let Some(f) = self.forbidden_clearance_mm {
            w = w.min(f - safety.canal_margin_mm);
        }
        w
    }

    /// Higher is better: the worst clearance slack first, a little for convergence towards the
    /// midline and for a tip in the anterior third.
    pub fn score(&self, safety: &Safety) -> Real {
        score(
            self.worst_slack_mm(safety),
            self.centring_mm,
            self.axis_offset_mm,
            self.medial_angle_deg,
            self.tip_depth_fraction,
        )
    }
}

/// The worst slack counts in the score up to this reserve, mm: beyond it, a trajectory is
/// comfortably safe and alignment with the pedicle decides.
pub const SLACK_RESERVE_MM: Real = 1.0;
/// Each sample of the centring term counts at most this much slack, mm.
pub const CENTRING_CAP_MM: Real = 6.0;
/// Weight of the centring term in the score.
pub const CENTRING_WEIGHT: Real = 0.5;
/// Penalty per millimetre of mean distance between the path and the centres of the pedicle's
/// cross-sections (the anatomical pedicle axis).
pub const ALIGNMENT_WEIGHT_PER_MM: Real = 0.2;
/// Weight of convergence towards the midline, per degree of medial angle (up to 30 degrees).
pub const CONVERGENCE_WEIGHT_PER_DEG: Real = 0.005;

/// The score of the search and of evaluation (one formula for both): the worst slack over the
/// margins dominates up to [`SLACK_RESERVE_MM`]; then the centring term (mean slack to the bone
/// inside the pedicle) aligns the cannula with the pedicle; convergence and a tip in the anterior
/// third add a little.
pub fn score(
    worst_slack_mm: Real,
    centring_mm: Real,
    axis_offset_mm: Real,
    medial_angle_deg: Real,
    tip_depth_fraction: Real,
) -> Real {
    let convergence = CONVERGENCE_WEIGHT_PER_DEG * medial_angle_deg.clamp(0.0, 30.0);
    let tip = if tip_depth_fraction >= ANTERIOR_THIRD_FRACTION {
        0.0
    } else {
        -2.0 * (ANTERIOR_THIRD_FRACTION - tip_depth_fraction)
    };
    worst_slack_mm.min(SLACK_RESERVE_MM) + CENTRING_WEIGHT * centring_mm
        - ALIGNMENT_WEIGHT_PER_MM * axis_offset_mm
        + convergence
        + tip
}

/// Mean distance from the line through `origin` along unit `dir` to `centroids` (all vertebra
/// frame), 0 without centroids.
pub fn axis_offset_mm(centroids: &[Point], origin: &Point, dir: &Vector) -> Real {
    if centroids.is_empty() {
        return 0.0;
    }
    centroids
        .iter()
        .map(|c| {
            let w = c - origin;
            (w - dir * w.dot(dir)).norm()
        })
        .sum::<Real>()
        / centroids.len() as Real
}

/// The part of a path inside the pedicle: between the plane of the back of the canal and the
/// posterior wall of the body, clipped to `[t0, t1]` (distances along `dir` from `origin`, all
/// in the vertebra frame). `None` when the path does not cross that slab.
pub fn pedicle_span(
    frame: &crate::frame::VertebraFrame,
    origin: &Point,
    dir: &Vector,
    t0: Real,
    t1: Real,
) -> Option<(Real, Real)> {
    if dir.y > -1e-9 {
        return None;
    }
    let t_back = (frame.canal_back_y_mm - origin.y) / dir.y;
    let t_wall = (frame.posterior_wall_y_mm - origin.y) / dir.y;
    let a = t_back.max(t0);
    let b = t_wall.min(t1);
    (b > a).then_some((a, b))
}

/// Mean slack (distance minus cannula radius minus cortex margin, each sample capped at
/// [`CENTRING_CAP_MM`]) to the bone surface along `a-b` in the vertebra frame, from the
/// approximate distance grid.
pub fn centring_mm(
    vertebra: &PreparedVertebra,
    vertebra_to_grid: &crate::math::Pose,
    a_vertebra: &Point,
    b_vertebra: &Point,
    radius_mm: Real,
    margin_mm: Real,
) -> Real {
    let len = (b_vertebra - a_vertebra).norm();
    let n = ((len / 0.5).ceil() as usize).max(1);
    let mut sum = 0.0;
    for i in 0..=n {
        let p = a_vertebra + (b_vertebra - a_vertebra) * (i as Real / n as Real);
        let d = vertebra.bone_sdf.sample(&(vertebra_to_grid * p), -10.0) as Real;
        sum += (d - radius_mm - margin_mm).min(CENTRING_CAP_MM);
    }
    sum / (n + 1) as Real
}

/// Medial and cranial angles (degrees) of a direction given in the vertebra frame.
pub fn angles_deg(side: Side, dir_vertebra: &Vector) -> (Real, Real) {
    let forward = -dir_vertebra.y;
    let medial = (-side.sign() * dir_vertebra.x).atan2(forward).to_degrees();
    let cranial = dir_vertebra.z.atan2(forward).to_degrees();
    (medial, cranial)
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
    }
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
}

/// Measure the straight cannula whose axis runs from `from` (any point on the approach behind
/// the tip) to `tip`, on `side` of `vertebra`. `from` and `tip` must differ.
pub fn measure(ctx: &SideContext<'_>, from: &Point, tip: &Point) -> Measurement {
    let SideContext {
        anatomy,
        vertebra,
        keep_outs,
        side,
        instrument,
        safety,
    } = ctx;
    let side = *side;
    let r = instrument.cannula_radius_mm();
    let wl = instrument.cannula_working_length_mm;
    let u = UnitVector::new_normalize(tip - from);
    let frame = &vertebra.frame;
    let bone = &vertebra.bone;
    let mut violations = Vec::new();
    let mut soft = Vec::new();

    // Where the axis crosses the bone, as distances along u from the tip.
    let crossings = bone.line_crossings(tip, &u);
    let tip_inside = bone.contains_point(tip);
    let behind: Vec<Real> = crossings.iter().copied().filter(|&t| t < 0.0).collect();
    let t_entry = behind.last().copied();
    let bone_entry = tip + u.into_inner() * t_entry.unwrap_or(0.0);
    if t_entry.is_none() {
        violations.push(reason(
            ReasonCode::NotThroughPedicle,
            "the cannula axis never enters the bone behind the tip".into(),
            None,
            None,
        ));
    }
    let length_in_bone = if tip_inside {
        -t_entry.unwrap_or(0.0)
    } else {
        0.0
    };
    if !tip_inside {
        let d = bone.distance_to_point(tip);
        violations.push(reason(
            ReasonCode::TipOutsideBody,
            format!("the tip is outside the bone, {d:.1} mm from its surface"),
            Some(d),
            None,
        ));
    }

    // Skin and insertion length.
    let mut skin_entry = None;
    let mut insertion = -t_entry.unwrap_or(0.0);
    if let Some(skin) = anatomy.skin() {
        let before = t_entry.unwrap_or(0.0);
        match skin
            .line_crossings(tip, &u)
            .into_iter()
            .rfind(|&t| t < before)
        {
            Some(t) => {
                skin_entry = Some(tip + u.into_inner() * t);
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
                if skin_entry.is_some() {
                    "skin"
                } else {
                    "bone entry"
                }
            ),
            Some(insertion),
            Some(wl),
        ));
    }

    // The approach behind the entry must not pass through bone.
    if let Some(te) = t_entry {
        if let Some(&t_other) = behind.iter().rev().nth(1) {
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
        let tail = tip - u.into_inner() * wl.max(insertion);
        let outside_end = tip + u.into_inner() * (te - 0.5);
        for other in anatomy.vertebrae() {
            if other.level == vertebra.level
                || other.level.index().abs_diff(vertebra.level.index()) > 1
            {
                continue;
            }
            if other.bone.distance_to_segment(&tail, &outside_end) <= 0.0 {
                violations.push(reason(
                    ReasonCode::NotThroughPedicle,
                    format!("the approach passes through the bone of {}", other.level),
                    None,
                    None,
                ));
            }
        }
    }

    // Cortex clearance from where it applies to the tip.
    let to_v = &frame.lps_to_vertebra;
    let tip_v = to_v * tip;
    let u_v = to_v.rotation * u.into_inner();
    let vertebra_to_grid = frame.lps_to_grid * frame.vertebra_to_lps();
    let cos_incidence =
        entry_incidence_cos(vertebra, &vertebra_to_grid, &(to_v * bone_entry), &u_v);
    if t_entry.is_some() && cos_incidence < MAX_ENTRY_INCIDENCE_DEG.to_radians().cos() {
        violations.push(reason(
            ReasonCode::NotThroughPedicle,
            format!(
                "the cannula meets the bone {:.0} degrees from its surface normal (at most {MAX_ENTRY_INCIDENCE_DEG}): it would skive",
                cos_incidence.clamp(-1.0, 1.0).acos().to_degrees()
            ),
            None,
            None,
        ));
    }
    let zone = docking_zone_mm(instrument, safety);
    let t_start = cortex_start(frame, &tip_v, &u_v, t_entry.unwrap_or(0.0), zone);
    let cortex_from = tip + u.into_inner() * t_start;
    let cortex = if !tip_inside {
        -bone.distance_to_point(tip) - r
    } else {
        bone.distance_to_segment(&cortex_from, tip) - r
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

    // Keep-outs along the whole cannula in the patient.
    let tail = match skin_entry {
        Some(s) => s,
        None => tip - u.into_inner() * wl,
    };
    let mut canal = Real::INFINITY;
    let mut root = Real::INFINITY;
    let mut forbidden: Option<Real> = None;
    for k in keep_outs {
        let d = k.distance_to_segment(&tail, tip) - r;
        match k.kind {
            KeepOutKind::Canal => canal = canal.min(d),
            KeepOutKind::NerveRoot(_) => root = root.min(d),
            KeepOutKind::Forbidden => forbidden = Some(forbidden.map_or(d, |f: Real| f.min(d))),
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
    let entry_v = to_v * bone_entry;
    if entry_v.y < frame.posterior_wall_y_mm + MIN_ENTRY_BEHIND_WALL_MM {
        violations.push(reason(
            ReasonCode::EntryNotPosterior,
            format!(
                "the bone entry is {:.1} mm behind the posterior wall of the body (at least {MIN_ENTRY_BEHIND_WALL_MM} mm)",
                entry_v.y - frame.posterior_wall_y_mm
            ),
            Some(entry_v.y - frame.posterior_wall_y_mm),
            Some(MIN_ENTRY_BEHIND_WALL_MM),
        ));
    }
    let lateral = entry_v.x * side.sign();
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
    let forward = -u_v.y;
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
        let t_pw = (frame.posterior_wall_y_mm - tip_v.y) / u_v.y;
        let t_exit = crossings.iter().copied().find(|&t| t > 0.0);
        if tip_v.y > frame.posterior_wall_y_mm {
            violations.push(reason(
                ReasonCode::TipOutsideBody,
                format!(
                    "the tip is {:.1} mm behind the posterior wall of the body",
                    tip_v.y - frame.posterior_wall_y_mm
                ),
                Some(tip_v.y - frame.posterior_wall_y_mm),
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
    let (medial, cranial) = angles_deg(side, &u_v);
    let entry_vertebra = to_v * bone_entry;
    let centring = match pedicle_span(frame, &entry_vertebra, &u_v, 0.0, -t_entry.unwrap_or(0.0)) {
        Some((a, b)) => centring_mm(
            vertebra,
            &vertebra_to_grid,
            &(entry_vertebra + u_v * a),
            &(entry_vertebra + u_v * b),
            r,
            safety.cortex_margin_mm,
        ),
        None => 0.0,
    };
    Measurement {
        bone_entry,
        tip: *tip,
        direction: u,
        skin_entry,
        length_in_bone_mm: length_in_bone,
        insertion_length_mm: insertion,
        cortex_clearance_mm: cortex,
        canal_clearance_mm: canal,
        root_clearance_mm: root,
        forbidden_clearance_mm: forbidden,
        medial_angle_deg: medial,
        cranial_angle_deg: cranial,
        tip_depth_fraction: depth_fraction,
        centring_mm: centring,
        axis_offset_mm: axis_offset_mm(&vertebra.pedicle_centroids[side], &tip_v, &u_v),
        violations,
        soft,
    }
}

/// Gertzbein-Robbins grade of a breach depth: A none, B < 2 mm, C < 4, D < 6, E >= 6.
pub fn breach_grade(breach_mm: Real) -> char {
    match breach_mm {
        b if b <= 0.0 => 'A',
        b if b < 2.0 => 'B',
        b if b < 4.0 => 'C',
        b if b < 6.0 => 'D',
        _ => 'E',
    }
}
