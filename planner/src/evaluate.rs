//! The exact measurement of one trajectory. The search verifies every trajectory it returns
//! with this function, and `evaluate` (the console's drag-and-check) calls it directly, so a
//! planned trajectory and a dragged one are judged by the same code, in exact f64 geometry.

use crate::anatomy::Side;
use crate::criteria::{
    self, angles_deg, axis_offset_mm, balloon_room_ml, breach_grade, centring_mm, cortex_start,
    docking_footprint_mm, docking_zone_mm, entry_incidence_cos, pedicle_span, GridSampler,
    ANTERIOR_THIRD_FRACTION, MIN_ENTRY_BEHIND_WALL_MM,
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
            violations.push(reason(
                ReasonCode::PedicleNotFound,
                format!("the pedicle's isthmus could not be measured ({fault}): the route through it cannot be verified"),
                None,
                None,
            ));
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

/// Measure the straight cannula whose axis runs from `from_lps` (any point on the approach behind
/// the tip) to `tip_lps`, on `side` of `vertebra`. The two must differ.
pub fn measure(ctx: &SideContext<'_>, from_lps: &Point, tip_lps: &Point) -> Measurement {
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
    let t_entry = t_last_entry.map(|last| {
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
    let bone_entry_lps = tip_lps + dir_lps.into_inner() * t_entry.unwrap_or(0.0);
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

    // Behind the bone entry, within the cannula's reach, no bone: the cannula would start in it.
    if let Some(te) = t_entry {
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
        if te < last {
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
            {
                continue;
            }
            if other.bone.distance_to_segment(&tail_lps, &outside_end_lps) <= 0.0 {
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
    let lps_to_vertebra = &frame.lps_to_vertebra;
    let tip_vertebra = lps_to_vertebra * tip_lps;
    let dir_vertebra = lps_to_vertebra.rotation * dir_lps.into_inner();
    let entry_vertebra = lps_to_vertebra * bone_entry_lps;
    let bone_grid = GridSampler::bone(&vertebra.bone_sdf, frame.vertebra_to_grid());
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
    if t_entry.is_some() && incidence_deg > max_incidence_deg {
        violations.push(Reason {
            code: ReasonCode::EntryIncidenceTooSteep,
            message: format!(
                "the cannula meets the bone {incidence_deg:.0} degrees from its surface normal (at most {max_incidence_deg} degrees): the trocar would skive off the sloped cortex"
            ),
            value_mm: None,
            limit_mm: None,
            value_deg: Some(incidence_deg),
            limit_deg: Some(max_incidence_deg),
        });
    }
    let drop_mm = normal_lps.map_or(0.0, |n| {
        let footprint = docking_footprint_mm(instrument, safety, cos_incidence);
        bone.surface_drop_mm(&bone_entry_lps, &n, dir_lps.as_ref(), footprint)
    });
    let zone = docking_zone_mm(instrument, safety, cos_incidence, drop_mm);
    let t_start = cortex_start(t_entry.unwrap_or(0.0), zone);
    let cortex_from_lps = tip_lps + dir_lps.into_inner() * t_start;
    let cortex = if !tip_inside {
        -bone.distance_to_point(tip_lps) - r
    } else {
        bone.distance_to_segment(&cortex_from_lps, tip_lps) - r
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

    // The transpedicular route: through the isthmus, inside its bony outline by the cortex
    // margin, from a bone entry behind it. The cortex clearance above starts only after the
    // docking zone, which for a large cannula or an entry close to the isthmus can reach past it.
    let route = if t_entry.is_some() {
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

    // Keep-outs along the whole cannula in the patient.
    let tail_lps = match skin_entry_lps {
        Some(s) => s,
        None => tip_lps - dir_lps.into_inner() * wl,
    };
    let mut canal = Real::INFINITY;
    let mut root = Real::INFINITY;
    let mut forbidden: Option<Real> = None;
    for k in keep_outs {
        let d = k.distance_to_segment(&tail_lps, tip_lps) - r;
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
    if entry_vertebra.y < frame.posterior_wall_y_mm + MIN_ENTRY_BEHIND_WALL_MM {
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
    let balloon_room = balloon_room_ml(
        &instrument.balloon_lengths_mm,
        instrument.balloon_max_diameter_mm,
        safety.cortex_margin_mm,
        |s| bone_grid.at(&(tip_vertebra - dir_vertebra * s)),
        |s| frame.posterior_wall_y_mm - (tip_vertebra - dir_vertebra * s).y,
        |s| side.sign() * (tip_vertebra - dir_vertebra * s).x,
    );
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
        route,
        canal_clearance_mm: canal,
        root_clearance_mm: root,
        forbidden_clearance_mm: forbidden,
        medial_angle_deg: medial,
        cranial_angle_deg: cranial,
        tip_depth_fraction: depth_fraction,
        centring_mm: centring,
        axis_offset_mm: axis_offset_mm(
            &vertebra.pedicle_centroids[side],
            &tip_vertebra,
            &dir_vertebra,
        ),
        balloon_room_ml: balloon_room,
        violations,
        soft,
    }
}
