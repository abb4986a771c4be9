//! The top of the journey: plan every requested level and side, or evaluate one trajectory.

// Kept at its former path for callers (`kyphoplan_planner::planning::PlanError`).
pub use crate::error::PlanError;

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::anatomy::{Level, PatientFrame, PerSide, Side};
use crate::balloon::{self, BalloonFit};
use crate::criteria::MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM;
use crate::error::InputError;
use crate::evaluate::{measure, Measurement, RouteRule, SideContext};
use crate::math::{array, point, vec_array, Point, Vector};
use crate::pedicle::Pedicle;
use crate::plan::{
    Alternative, AlternativeCode, Balloon, Clearances, Evaluation, LevelPlan, PedicleSummary, Plan,
    Reason, ReasonCode, Route, SideAttempt, SidePlan, Trajectory, VertebraFrameSummary,
};
use crate::prepare::{PreparedAnatomy, PreparedVertebra};
use crate::request::{Approach, Instrument, PlanRequest, Procedure, Safety};
use crate::search::{SearchMode, SideOutcome, MIDLINE_TOLERANCE_MM};
use crate::tolerance::{self, search_side_required};

/// Cement per level is estimated as the cavities plus this fraction that interdigitates.
pub const CEMENT_INTERDIGITATION_FRACTION: f64 = 0.2;
/// Vertebroplasty cement per level as a fraction of the vertebral body's volume (dimensionless,
/// of [`body_volume_ml`]): 16.2 %, the mean fill that restored the strength of osteoporotic
/// vertebral bodies ex vivo (Molloy et al., Spine 2003;28(14):1549-54, PMID 12865843; 29.8 %
/// restored stiffness).
pub const VERTEBROPLASTY_FILL_FRACTION: f64 = 0.162;

/// Hooks a caller (the server's streaming RPC, the CLI's progress bar) gives a plan run.
pub struct PlanControl<'a> {
    /// Polled between candidate batches; `true` stops the run with [`PlanError::Cancelled`].
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
    /// Called once per finished level (in any order), with the number done and the total.
    pub on_level: &'a (dyn Fn(&LevelPlan, usize, usize) + Sync),
}

impl PlanControl<'static> {
    pub fn none() -> Self {
        PlanControl {
            cancelled: &|| false,
            on_level: &|_, _, _| {},
        }
    }
}

/// Plan every requested level of `anatomy` (both sides).
pub fn plan(anatomy: &PreparedAnatomy, request: &PlanRequest) -> Result<Plan, InputError> {
    match plan_with(anatomy, request, &PlanControl::none()) {
        Ok(p) => Ok(p),
        Err(PlanError::Input(e)) => Err(e),
        Err(PlanError::Cancelled) => unreachable!("never cancelled"),
    }
}

/// [`plan`] with cancellation and progress.
pub fn plan_with(
    anatomy: &PreparedAnatomy,
    request: &PlanRequest,
    control: &PlanControl<'_>,
) -> Result<Plan, PlanError> {
    let levels: Vec<Level> = match request.levels() {
        Some(l) => {
            for level in l {
                if anatomy.vertebra(*level).is_none() {
                    return Err(InputError::LevelNotInAnatomy { level: *level }.into());
                }
            }
            let mut l = l.to_vec();
            l.sort();
            l
        }
        None => anatomy.levels(),
    };
    let done = AtomicUsize::new(0);
    let total = levels.len();
    let planned: Vec<Result<LevelPlan, PlanError>> = levels
        .par_iter()
        .map(|&level| {
            if (control.cancelled)() {
                return Err(PlanError::Cancelled);
            }
            let lp = plan_level(anatomy, level, request, control.cancelled)?;
            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
            (control.on_level)(&lp, n, total);
            Ok(lp)
        })
        .collect();
    let mut out = Vec::with_capacity(planned.len());
    for p in planned {
        out.push(p?);
    }
    Ok(Plan {
        case: anatomy.name().to_string(),
        frame: anatomy.frame(),
        levels: out,
        instrument: request.instrument().clone(),
        safety: request.safety().clone(),
        procedure: request.procedure(),
        approaches: request.approaches().to_vec(),
        cannula_alternatives_mm: request.cannula_alternatives_mm().to_vec(),
        mesh_fixes: anatomy.mesh_fixes().to_vec(),
        planner_version: crate::PLANNER_VERSION.to_string(),
    })
}

fn plan_level(
    anatomy: &PreparedAnatomy,
    level: Level,
    request: &PlanRequest,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<LevelPlan, PlanError> {
    let vertebra = anatomy.vertebra(level).expect("checked by the caller");
    let (instrument, safety) = (request.instrument(), request.safety());
    let ctx =
        PerSide::from_fn(|s| SideContext::transpedicular(anatomy, vertebra, s, instrument, safety));
    let frame = anatomy.frame();
    let pedicles: PerSide<Option<PedicleSummary>> = PerSide::from_fn(|side| {
        vertebra.pedicles[side]
            .as_ref()
            .ok()
            .map(|p| pedicle_summary(vertebra, p, frame))
    });
    let procedure = request.procedure();
    // The other cannulas a side may fall back to (smaller ones; for kyphoplasty possibly a
    // larger one when the requested cannula carries no balloon), largest first, and their
    // contexts.
    let mut diameters: Vec<f64> = request.cannula_alternatives_mm().to_vec();
    diameters.sort_by(|a, b| b.total_cmp(a));
    let smaller: Vec<Instrument> = diameters
        .iter()
        .map(|&d| Instrument {
            cannula_outer_diameter_mm: d,
            ..instrument.clone()
        })
        .collect();
    let smaller_ctx: Vec<PerSide<SideContext<'_>>> = smaller
        .iter()
        .map(|i| PerSide::from_fn(|s| SideContext::transpedicular(anatomy, vertebra, s, i, safety)))
        .collect();
    let extra_ctx: Vec<PerSide<SideContext<'_>>> = std::iter::once(&ctx)
        .chain(smaller_ctx.iter())
        .map(|c| PerSide::from_fn(|s| crate::extrapedicular::context(&c[s])))
        .collect();
    // Each side's candidates in order: the requested cannula through the pedicle, then each
    // alternative; for the extrapedicular approach then the same cannulas beside the pedicle.
    let transpedicular_chain: PerSide<Vec<&SideContext<'_>>> = PerSide::from_fn(|s| {
        std::iter::once(&ctx[s])
            .chain(smaller_ctx.iter().map(|c| &c[s]))
            .collect()
    });
    let extrapedicular_chain: PerSide<Vec<&SideContext<'_>>> = PerSide::from_fn(|s| {
        transpedicular_chain[s]
            .iter()
            .copied()
            .chain(extra_ctx.iter().map(|c| &c[s]))
            .collect()
    });
    // The approaches in order of preference: the first possible one is the level's.
    let mut approach_reasons = Vec::new();
    let mut chosen: Option<(Approach, PerSide<SidePlan>)> = None;
    let mut bilateral_sides: Option<PerSide<SidePlan>> = None;
    let mut unipedicular_sides: Option<PerSide<SidePlan>> = None;
    let mut extrapedicular_sides: Option<PerSide<SidePlan>> = None;
    // The transpedicular candidates' outcomes, once searched, for the extrapedicular approach.
    let mut transpedicular_tried: Option<PerSide<Vec<SideOutcome>>> = None;
    for &approach in request.approaches() {
        match approach {
            Approach::BilateralTranspedicular => {
                let (sides, tried) = plan_bilateral(
                    &transpedicular_chain,
                    None,
                    procedure,
                    &pedicles,
                    frame,
                    cancelled,
                )?;
                transpedicular_tried = Some(tried);
                if sides.left.feasible && sides.right.feasible {
                    chosen = Some((approach, sides));
                    break;
                }
                approach_reasons.push(not_possible(
                    ReasonCode::BilateralNotPossible,
                    "bilateral transpedicular",
                    &sides,
                ));
                bilateral_sides = Some(sides);
            }
            Approach::Extrapedicular => {
                let (sides, _) = plan_bilateral(
                    &extrapedicular_chain,
                    transpedicular_tried.as_ref(),
                    procedure,
                    &pedicles,
                    frame,
                    cancelled,
                )?;
                if sides.left.feasible && sides.right.feasible {
                    chosen = Some((approach, sides));
                    break;
                }
                approach_reasons.push(not_possible(
                    ReasonCode::ExtrapedicularNotPossible,
                    "extrapedicular (each side through its pedicle or beside it)",
                    &sides,
                ));
                extrapedicular_sides = Some(sides);
            }
            Approach::Unipedicular => {
                let (sides, pick) =
                    plan_unipedicular(&ctx, procedure, &pedicles, frame, cancelled)?;
                if let Some(side) = pick {
                    // The other side: why it could not be used, or that it is not needed.
                    let other = side.other();
                    let mut sides = sides;
                    let from_bilateral = bilateral_sides
                        .as_ref()
                        .filter(|b| !b[other].feasible)
                        .map(|b| b[other].clone());
                    sides[other] = match from_bilateral {
                        Some(s) => s,
                        None if !sides[other].feasible => sides[other].clone(),
                        None => not_used(other, side, pedicles[other].clone()),
                    };
                    chosen = Some((approach, sides));
                    break;
                }
                approach_reasons.push(not_possible(
                    ReasonCode::UnipedicularNotPossible,
                    "unipedicular",
                    &sides,
                ));
                unipedicular_sides = Some(sides);
            }
        }
    }
    let unipedicular_tried = request.approaches().contains(&Approach::Unipedicular)
        && (chosen.is_none() || chosen.as_ref().map(|c| c.0) == Some(Approach::Unipedicular));
    let (approach, mut sides) = match chosen {
        Some((a, s)) => (Some(a), s),
        None => (
            None,
            extrapedicular_sides
                .or(bilateral_sides)
                .or(unipedicular_sides)
                .expect("a request allows at least one approach"),
        ),
    };
    // Suggest a unipedicular approach from a feasible other side, unless it was planned.
    for side in Side::BOTH {
        if unipedicular_tried {
            sides[side]
                .alternatives
                .retain(|a| a.code != AlternativeCode::UnipedicularFromOtherSide);
            continue;
        }
        let other = side.other();
        if !sides[side].feasible
            && sides[other].feasible
            && !sides[side]
                .alternatives
                .iter()
                .any(|a| a.code == AlternativeCode::UnipedicularFromOtherSide)
        {
            sides[side].alternatives.push(Alternative {
                code: AlternativeCode::UnipedicularFromOtherSide,
                message: format!(
                    "unipedicular {procedure} from the {other}, aimed medially so the {} ends on the midline",
                    match procedure {
                        Procedure::Kyphoplasty => "balloon",
                        Procedure::Vertebroplasty => "tip",
                    }
                ),
            });
        }
    }
    let sides: Vec<SidePlan> = sides.into_iter().collect();
    let cement = match procedure {
        Procedure::Kyphoplasty => {
            let volumes: Vec<f64> = sides
                .iter()
                .filter_map(|s| s.balloon.as_ref().map(|b| b.volume_ml))
                .collect();
            if volumes.is_empty() {
                None
            } else {
                Some(round(
                    volumes.iter().sum::<f64>() * (1.0 + CEMENT_INTERDIGITATION_FRACTION),
                    2,
                ))
            }
        }
        Procedure::Vertebroplasty => sides
            .iter()
            .any(|s| s.feasible)
            .then(|| round(vertebroplasty_cement_ml(vertebra), 2)),
    };
    let mut keep_outs = Vec::new();
    for k in anatomy.keep_outs(level) {
        let margin = match k.kind {
            crate::keepout::KeepOutKind::Canal | crate::keepout::KeepOutKind::Forbidden => {
                safety.canal_margin_mm
            }
            crate::keepout::KeepOutKind::NerveRoot(_) => safety.nerve_root_margin_mm,
        };
        keep_outs.push(k.summary(margin));
    }
    Ok(LevelPlan {
        level,
        sides,
        cement_volume_estimate_ml: cement,
        vertebra_frame: Some(frame_summary(vertebra, frame)),
        keep_outs,
        approach,
        approach_reasons,
    })
}

/// Why each balloon of a planned level is the size it is ([`balloon::limit`], measured again on
/// `anatomy`): per side with a balloon, what bounds its diameter, the distance and margin, and
/// the body height through its centre. The explanation of a level whose cement estimate is
/// under [`crate::criteria::LOW_CEMENT_ML`]. `plan` must have been planned on `anatomy`.
pub fn balloon_limits(
    anatomy: &PreparedAnatomy,
    plan: &Plan,
    level: &LevelPlan,
) -> Vec<(Side, balloon::BalloonLimit)> {
    let Some(vertebra) = anatomy.vertebra(level.level) else {
        return Vec::new();
    };
    let frame = plan.frame;
    let bilateral = level.approach != Some(Approach::Unipedicular);
    let mut out = Vec::new();
    for s in &level.sides {
        let (Some(t), Some(b)) = (&s.trajectory, &s.balloon) else {
            continue;
        };
        let instrument = Instrument {
            cannula_outer_diameter_mm: t.cannula_outer_diameter_mm,
            ..plan.instrument.clone()
        };
        let ctx = SideContext::transpedicular(anatomy, vertebra, s.side, &instrument, &plan.safety);
        let center = frame.to_lps(&point(b.center_mm));
        let axis = frame.dir_to_lps(&Vector::from(b.axis)).normalize();
        let fit = BalloonFit {
            proximal: center - axis * (0.5 * b.length_mm),
            distal: center + axis * (0.5 * b.length_mm),
            axis,
            length_mm: b.length_mm,
            diameter_mm: b.diameter_mm,
            volume_ml: b.volume_ml,
            room_diameter_mm: b.diameter_mm,
            cortex_clearance_mm: b.cortex_clearance_mm,
            posterior_wall_clearance_mm: b.posterior_wall_clearance_mm,
        };
        let entry = frame.to_lps(&point(t.bone_entry_mm));
        out.push((s.side, balloon::limit(&ctx, &entry, &fit, bilateral)));
    }
    out
}

/// The vertebral body's volume, ml, as the elliptic cylinder of its measured width, depth and
/// height (the frame's body extents): pi / 4 x width x depth x height.
pub fn body_volume_ml(vertebra: &PreparedVertebra) -> f64 {
    let f = &vertebra.frame;
    std::f64::consts::FRAC_PI_4 * f.body_width_mm * f.body_depth_mm * f.body_height_mm / 1000.0
}

/// Vertebroplasty cement for a level, ml: [`VERTEBROPLASTY_FILL_FRACTION`] of
/// [`body_volume_ml`].
pub fn vertebroplasty_cement_ml(vertebra: &PreparedVertebra) -> f64 {
    VERTEBROPLASTY_FILL_FRACTION * body_volume_ml(vertebra)
}

/// One side's candidates searched in order until one is safe: each context of `chain` (its
/// cannula, its route rule) planned and verified; `prior` holds outcomes of the chain's first
/// candidates already searched. For kyphoplasty a cannula too small for a balloon (the
/// requested one or an alternative) is not searched ([`too_small_for_balloon`]). Returns the
/// index of the one taken (when none is safe, the last one searched, or the first when none
/// was searched) and every outcome, in order.
fn search_chain(
    chain: &[&SideContext<'_>],
    prior: Option<&Vec<SideOutcome>>,
    procedure: Procedure,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(usize, Vec<SideOutcome>), PlanError> {
    let mut outcomes = Vec::with_capacity(chain.len());
    let mut last_searched = 0;
    for (i, c) in chain.iter().enumerate() {
        let cannula_mm = c.instrument.cannula_outer_diameter_mm;
        if carries_no_balloon(procedure, cannula_mm) {
            outcomes.push(too_small_for_balloon(cannula_mm));
            continue;
        }
        last_searched = i;
        // Kyphoplasty needs room for a balloon on the line beside the pedicle, whose tip comes
        // into the body at a steeper angle than through it: room by the rule the plan then
        // applies to a bilateral side's balloon, kept to its own half of the body (issue 15:
        // without it, lines whose only balloons crossed the midline were taken and then
        // refused with BALLOON_DOES_NOT_FIT at T4-T5 of the mean spine).
        let balloon_room = |m: &Measurement| {
            procedure == Procedure::Vertebroplasty
                || !balloon::keep_to_own_half(c, balloon::options(c, m)).is_empty()
        };
        let outcome = match prior.and_then(|p| p.get(i)) {
            Some(o) => o.clone(),
            None => match c.route_rule {
                RouteRule::Extrapedicular => {
                    crate::extrapedicular::search_side(c, &balloon_room, cancelled)?
                }
                RouteRule::Transpedicular => {
                    search_side_required(c, SearchMode::Bilateral, cancelled)?
                }
            },
        };
        let safe = matches!(outcome, SideOutcome::Feasible(_));
        outcomes.push(outcome);
        if safe {
            return Ok((i, outcomes));
        }
    }
    Ok((last_searched, outcomes))
}

/// Whether `procedure` cannot use a cannula of `cannula_mm` outer diameter at all: kyphoplasty
/// with a cannula under [`MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM`] (no balloon catheter passes
/// it), whether it is the request's own cannula or one of its alternatives.
fn carries_no_balloon(procedure: Procedure, cannula_mm: f64) -> bool {
    procedure == Procedure::Kyphoplasty && cannula_mm < MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM
}

/// Why a kyphoplasty side does not use a cannula too small for a balloon catheter
/// ([`carries_no_balloon`]): the measured refusal, value the cannula, limit
/// [`MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM`].
fn too_small_for_balloon_reason(cannula_mm: f64) -> Reason {
    Reason {
        code: ReasonCode::CannulaTooSmallForBalloon,
        message: format!(
            "cannula {cannula_mm} mm < {MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM} mm, the smallest outer diameter that carries a balloon catheter: not searched for kyphoplasty; vertebroplasty could use it"
        ),
        value_mm: Some(cannula_mm),
        limit_mm: Some(MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM),
        value_deg: None,
        limit_deg: None,
    }
}

/// A kyphoplasty side's outcome for a cannula too small for a balloon catheter
/// ([`too_small_for_balloon_reason`]): not planned.
fn too_small_for_balloon(cannula_mm: f64) -> SideOutcome {
    SideOutcome::Infeasible {
        reasons: vec![too_small_for_balloon_reason(cannula_mm)],
        alternatives: vec![],
    }
}

/// What a side tried ([`SidePlan::attempts`]), when it had more than one candidate or its only
/// one was refused without a search ([`too_small_for_balloon`]).
fn attempts(chain: &[&SideContext<'_>], outcomes: &[SideOutcome]) -> Vec<SideAttempt> {
    let refused_unsearched = |o: &SideOutcome| match o {
        SideOutcome::Infeasible { reasons, .. } => reasons
            .iter()
            .any(|r| r.code == ReasonCode::CannulaTooSmallForBalloon),
        SideOutcome::Feasible(_) => false,
    };
    if chain.len() < 2 && !outcomes.iter().any(refused_unsearched) {
        return Vec::new();
    }
    chain
        .iter()
        .zip(outcomes)
        .map(|(c, o)| SideAttempt {
            route: match c.route_rule {
                RouteRule::Transpedicular => Route::Transpedicular,
                RouteRule::Extrapedicular => Route::Extrapedicular,
            },
            cannula_outer_diameter_mm: c.instrument.cannula_outer_diameter_mm,
            feasible: matches!(o, SideOutcome::Feasible(_)),
            reasons: match o {
                SideOutcome::Feasible(_) => Vec::new(),
                SideOutcome::Infeasible { reasons, .. } => reasons.clone(),
            },
        })
        .collect()
}

/// Both sides searched with one cannula each, with their balloons (kyphoplasty: the best pair
/// that keeps apart; if none, the larger single balloon). Each side takes the first safe
/// candidate of its chain ([`search_chain`]): the requested cannula through the pedicle, the
/// smaller ones, then (extrapedicular approach) beside the pedicle. Returns the sides and the
/// outcomes each side's chain gave.
fn plan_bilateral(
    chain: &PerSide<Vec<&SideContext<'_>>>,
    prior: Option<&PerSide<Vec<SideOutcome>>>,
    procedure: Procedure,
    pedicles: &PerSide<Option<PedicleSummary>>,
    frame: PatientFrame,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(PerSide<SidePlan>, PerSide<Vec<SideOutcome>>), PlanError> {
    let (left, right) = rayon::join(
        || search_chain(&chain.left, prior.map(|p| &p.left), procedure, cancelled),
        || search_chain(&chain.right, prior.map(|p| &p.right), procedure, cancelled),
    );
    let ((il, tried_left), (ir, tried_right)) = (left?, right?);
    let taken = PerSide::new(il, ir);
    let tried = PerSide::new(tried_left, tried_right);
    let ctx: PerSide<&SideContext<'_>> = PerSide::from_fn(|s| chain[s][taken[s]]);
    let outcomes: PerSide<SideOutcome> = PerSide::from_fn(|s| tried[s][taken[s]].clone());
    let opts: PerSide<Vec<BalloonFit>> = PerSide::par_from_fn(|side| match &outcomes[side] {
        SideOutcome::Feasible(m) if procedure == Procedure::Kyphoplasty => {
            balloon::keep_to_own_half(ctx[side], balloon::options(ctx[side], m))
        }
        _ => Vec::new(),
    });
    let fits: PerSide<Option<BalloonFit>>;
    let mut crowded = false;
    match (opts.left.is_empty(), opts.right.is_empty()) {
        (false, false) => match balloon::best_pair(&opts.left, &opts.right) {
            Some((l, r)) => fits = PerSide::new(Some(l), Some(r)),
            None => {
                crowded = true;
                let l = balloon::best_single(&opts.left);
                let r = balloon::best_single(&opts.right);
                let left_wins = l.as_ref().map(|b| b.volume_ml) >= r.as_ref().map(|b| b.volume_ml);
                fits = if left_wins {
                    PerSide::new(l, None)
                } else {
                    PerSide::new(None, r)
                };
            }
        },
        _ => fits = opts.as_ref().map(|o| balloon::best_single(o)),
    }
    let sides = PerSide::par_from_fn(|side| {
        let mut plan = side_plan(
            side,
            &outcomes[side],
            fits[side].as_ref(),
            crowded,
            SideReport {
                frame,
                pedicle: pedicles[side].clone(),
                procedure,
                approach: match ctx[side].route_rule {
                    RouteRule::Transpedicular => Approach::BilateralTranspedicular,
                    RouteRule::Extrapedicular => Approach::Extrapedicular,
                },
            },
            ctx[side],
        );
        plan.attempts = attempts(&chain[side], &tried[side]);
        plan
    });
    Ok((sides, tried))
}

/// Both sides searched for a unipedicular plan ([`SearchMode::Unipedicular`]) with the
/// requested cannula; for kyphoplasty, the largest balloon whose centre lies within
/// [`MIDLINE_TOLERANCE_MM`] of the mid-sagittal plane (a requested cannula too small for a
/// balloon is refused on both sides, [`too_small_for_balloon`]). Returns the sides' plans and the side chosen: the feasible one with the
/// higher score (left on a tie).
fn plan_unipedicular(
    ctx: &PerSide<SideContext<'_>>,
    procedure: Procedure,
    pedicles: &PerSide<Option<PedicleSummary>>,
    frame: PatientFrame,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(PerSide<SidePlan>, Option<Side>), PlanError> {
    let (instrument, safety) = (ctx.left.instrument, ctx.left.safety);
    let mode = SearchMode::Unipedicular {
        midline_behind_tip_mm: match procedure {
            Procedure::Kyphoplasty => {
                0.5 * instrument
                    .balloon_lengths_mm
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min)
            }
            Procedure::Vertebroplasty => 0.0,
        },
    };
    let outcomes = if carries_no_balloon(procedure, instrument.cannula_outer_diameter_mm) {
        PerSide::from_fn(|_| too_small_for_balloon(instrument.cannula_outer_diameter_mm))
    } else {
        let (left, right) = rayon::join(
            || search_side_required(&ctx.left, mode, cancelled),
            || search_side_required(&ctx.right, mode, cancelled),
        );
        PerSide::new(left?, right?)
    };
    let fits: PerSide<Option<BalloonFit>> = PerSide::par_from_fn(|side| match &outcomes[side] {
        SideOutcome::Feasible(m) if procedure == Procedure::Kyphoplasty => {
            let to_vertebra = ctx[side].vertebra.frame.lps_to_vertebra;
            let centred: Vec<BalloonFit> = balloon::options(&ctx[side], m)
                .into_iter()
                .filter(|b| (to_vertebra * b.center()).x.abs() <= MIDLINE_TOLERANCE_MM)
                .collect();
            balloon::best_single(&centred)
        }
        _ => None,
    });
    let sides = PerSide::par_from_fn(|side| {
        side_plan(
            side,
            &outcomes[side],
            fits[side].as_ref(),
            false,
            SideReport {
                frame,
                pedicle: pedicles[side].clone(),
                procedure,
                approach: Approach::Unipedicular,
            },
            &ctx[side],
        )
    });
    let score = |side: Side| match (&outcomes[side], sides[side].feasible) {
        (SideOutcome::Feasible(m), true) => Some(m.score(safety)),
        _ => None,
    };
    let pick = match (score(Side::Left), score(Side::Right)) {
        (Some(l), Some(r)) => Some(if r > l { Side::Right } else { Side::Left }),
        (Some(_), None) => Some(Side::Left),
        (None, Some(_)) => Some(Side::Right),
        (None, None) => None,
    };
    Ok((sides, pick))
}

/// Why an approach was not possible: each infeasible side with its first reason.
fn not_possible(code: ReasonCode, what: &str, sides: &PerSide<SidePlan>) -> Reason {
    let mut parts = Vec::new();
    let mut value_mm = None;
    let mut limit_mm = None;
    let mut value_deg = None;
    let mut limit_deg = None;
    for side in Side::BOTH {
        if sides[side].feasible {
            continue;
        }
        match sides[side].reasons.first() {
            Some(r) => {
                parts.push(format!("{side}: {:?}, {}", r.code, r.message));
                if value_mm.is_none() && value_deg.is_none() {
                    value_mm = r.value_mm;
                    limit_mm = r.limit_mm;
                    value_deg = r.value_deg;
                    limit_deg = r.limit_deg;
                }
            }
            None => parts.push(format!("{side}: infeasible")),
        }
    }
    Reason {
        code,
        message: format!("{what} not possible ({})", parts.join("; ")),
        value_mm,
        limit_mm,
        value_deg,
        limit_deg,
    }
}

/// The side a unipedicular plan does not use.
fn not_used(side: Side, chosen: Side, pedicle: Option<PedicleSummary>) -> SidePlan {
    SidePlan {
        side,
        feasible: false,
        trajectory: None,
        balloon: None,
        reasons: vec![Reason {
            code: ReasonCode::OtherSideChosen,
            message: format!(
                "the level is planned unipedicular through the {chosen} pedicle (the better of the two); this side is not used"
            ),
            value_mm: None,
            limit_mm: None,
            value_deg: None,
            limit_deg: None,
        }],
        alternatives: vec![],
        pedicle,
        approach: Approach::Unipedicular,
        navigation_tolerance: None,
        attempts: vec![],
    }
}

/// What a side's plan reports besides its outcome: the frame it reports in, its pedicle, the
/// procedure and the approach searched.
struct SideReport {
    frame: PatientFrame,
    pedicle: Option<PedicleSummary>,
    procedure: Procedure,
    approach: Approach,
}

/// One side's plan from its search outcome and its balloon (`crowded`: the balloons of both
/// sides did not fit together).
fn side_plan(
    side: Side,
    outcome: &SideOutcome,
    fit: Option<&BalloonFit>,
    crowded: bool,
    report: SideReport,
    ctx: &SideContext<'_>,
) -> SidePlan {
    let SideReport {
        frame,
        pedicle,
        procedure,
        approach,
    } = report;
    let (instrument, safety) = (ctx.instrument, ctx.safety);
    // The chosen trajectory's tolerance (with its balloon), and the requirement's last check:
    // the search certified the cannula, the balloon was fitted with widened margins, and the
    // pair is certified here before it may leave as feasible.
    let feasible = |m: &Measurement, b: Option<&BalloonFit>| -> SidePlan {
        let profile = tolerance::Profile::new(ctx, m, b);
        if let Some((need_mm, need_deg)) = safety.navigation_error() {
            if !profile.covers(need_mm, need_deg).0 {
                return SidePlan {
                    side,
                    feasible: false,
                    trajectory: None,
                    balloon: None,
                    reasons: vec![tolerance::too_low(
                        need_mm,
                        need_deg,
                        &profile.certificate(),
                    )],
                    alternatives: vec![],
                    pedicle: pedicle.clone(),
                    approach,
                    navigation_tolerance: None,
                    attempts: vec![],
                };
            }
        }
        SidePlan {
            side,
            feasible: true,
            trajectory: Some(trajectory(m, frame, instrument, safety)),
            balloon: b.map(|b| balloon_out(b, frame)),
            reasons: vec![],
            alternatives: vec![],
            pedicle: pedicle.clone(),
            approach,
            navigation_tolerance: Some(tolerance::navigation_tolerance(ctx, m, b)),
            attempts: vec![],
        }
    };
    match outcome {
        SideOutcome::Feasible(m) if procedure == Procedure::Vertebroplasty => feasible(m, None),
        SideOutcome::Feasible(m) => match fit {
            Some(b) => feasible(m, Some(b)),
            None => {
                // A bilateral side's widest balloon on the path, measured, says why none fits.
                let widest = (approach != Approach::Unipedicular && !crowded)
                    .then(|| balloon::widest(ctx, m, true))
                    .flatten();
                SidePlan {
                side,
                feasible: false,
                trajectory: None,
                balloon: None,
                reasons: vec![Reason {
                    code: ReasonCode::BalloonDoesNotFit,
                    message: if approach == Approach::Unipedicular {
                        format!(
                            "a safe cannula path exists, but no balloon of length {:?} mm centred within {MIDLINE_TOLERANCE_MM} mm of the midline inflates to {} mm inside the body with the margins",
                            instrument.balloon_lengths_mm,
                            balloon::MIN_BALLOON_DIAMETER_MM
                        )
                    } else if crowded {
                        format!(
                            "a safe cannula path exists, but its balloon cannot inflate to {} mm without touching the other side's balloon",
                            balloon::MIN_BALLOON_DIAMETER_MM
                        )
                    } else {
                        match &widest {
                            Some(w) => format!(
                                "a safe cannula path exists, but no balloon of length {:?} mm inflates to {} mm inside the body with the margins: the widest, {} mm long, has room for {:.1} mm < {} mm, limited by {} ({})",
                                instrument.balloon_lengths_mm,
                                balloon::MIN_BALLOON_DIAMETER_MM,
                                w.length_mm,
                                w.room_diameter_mm,
                                balloon::MIN_BALLOON_DIAMETER_MM,
                                w.what(),
                                w.measured()
                            ),
                            None => format!(
                                "a safe cannula path exists, but no balloon of length {:?} mm has both ends inside the body along it",
                                instrument.balloon_lengths_mm
                            ),
                        }
                    },
                    value_mm: widest.as_ref().map(|w| round(w.room_diameter_mm, 2)),
                    limit_mm: Some(balloon::MIN_BALLOON_DIAMETER_MM),
                    value_deg: None,
                    limit_deg: None,
                }],
                alternatives: vec![Alternative {
                    code: AlternativeCode::UnipedicularFromOtherSide,
                    message: "vertebroplasty through this path, or a unipedicular balloon from the other side".into(),
                }],
                pedicle,
                approach,
                navigation_tolerance: None,
                attempts: vec![],
            }
            }
        },
        SideOutcome::Infeasible {
            reasons,
            alternatives,
        } => SidePlan {
            side,
            feasible: false,
            trajectory: None,
            balloon: None,
            reasons: reasons.clone(),
            alternatives: alternatives.clone(),
            pedicle,
            approach,
            navigation_tolerance: None,
            attempts: vec![],
        },
    }
}

/// A measured pedicle as the plan reports it, in the case frame.
fn pedicle_summary(v: &PreparedVertebra, p: &Pedicle, frame: PatientFrame) -> PedicleSummary {
    let to_lps = v.frame.vertebra_to_lps();
    PedicleSummary {
        isthmus_center_mm: lps_to_case_point(&(to_lps * p.isthmus_center_vertebra_mm), frame),
        axis: lps_to_case_dir(&(to_lps.rotation * p.axis_vertebra.into_inner()), frame),
        width_mm: p.width_mm,
        height_mm: p.height_mm,
        area_mm2: p.area_mm2,
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// An LPS point as the plan reports it: in the case frame.
fn lps_to_case_point(p_lps: &Point, case_frame: PatientFrame) -> [f64; 3] {
    array(&case_frame.from_lps(p_lps))
}

/// An LPS direction as the plan reports it: in the case frame.
fn lps_to_case_dir(v_lps: &Vector, case_frame: PatientFrame) -> [f64; 3] {
    vec_array(&case_frame.dir_from_lps(v_lps))
}

fn frame_summary(v: &PreparedVertebra, frame: PatientFrame) -> VertebraFrameSummary {
    let f = &v.frame;
    let (a, l, s) = f.axes_lps();
    VertebraFrameSummary {
        body_center_mm: lps_to_case_point(&(f.vertebra_to_lps() * Point::origin()), frame),
        anterior: lps_to_case_dir(&a, frame),
        left: lps_to_case_dir(&l, frame),
        superior: lps_to_case_dir(&s, frame),
        body_depth_mm: f.body_depth_mm,
        body_width_mm: f.body_width_mm,
        body_height_mm: f.body_height_mm,
    }
}

fn trajectory(
    m: &Measurement,
    frame: PatientFrame,
    instrument: &Instrument,
    safety: &Safety,
) -> Trajectory {
    Trajectory {
        bone_entry_mm: lps_to_case_point(&m.bone_entry_lps, frame),
        target_mm: lps_to_case_point(&m.tip_lps, frame),
        skin_entry_mm: m.skin_entry_lps.map(|p| lps_to_case_point(&p, frame)),
        cannula_outer_diameter_mm: instrument.cannula_outer_diameter_mm,
        medial_angle_deg: m.medial_angle_deg,
        cranial_angle_deg: m.cranial_angle_deg,
        clearance_mm: Clearances {
            cortex: m.cortex_clearance_mm,
            canal: m.canal_clearance_mm,
            nerve_root: m.root_clearance_mm,
            forbidden: m.forbidden_clearance_mm,
        },
        direction: lps_to_case_dir(&m.direction_lps.into_inner(), frame),
        length_in_bone_mm: m.length_in_bone_mm,
        insertion_length_mm: m.insertion_length_mm,
        tip_depth_fraction: m.tip_depth_fraction,
        score: m.score(safety),
        entry_incidence_deg: Some(m.entry_incidence_deg),
        route: Some(m.route),
    }
}

fn balloon_out(b: &BalloonFit, frame: PatientFrame) -> Balloon {
    Balloon {
        center_mm: lps_to_case_point(&b.center(), frame),
        axis: lps_to_case_dir(&b.axis, frame),
        length_mm: b.length_mm,
        diameter_mm: b.diameter_mm,
        volume_ml: b.volume_ml,
        cortex_clearance_mm: b.cortex_clearance_mm,
        posterior_wall_clearance_mm: b.posterior_wall_clearance_mm,
    }
}

/// Measure a given trajectory (e.g. dragged by the surgeon): `entry_mm` is any point on the
/// approach behind the tip (skin or bone entry), `target_mm` the tip, both in the case frame.
/// Held to the transpedicular route rule ([`evaluate_with_route`] for the extrapedicular one).
pub fn evaluate(
    anatomy: &PreparedAnatomy,
    level: Level,
    side: Side,
    entry_mm: [f64; 3],
    target_mm: [f64; 3],
    instrument: &Instrument,
    safety: &Safety,
) -> Result<Evaluation, InputError> {
    evaluate_with_route(
        anatomy,
        level,
        side,
        entry_mm,
        target_mm,
        instrument,
        safety,
        RouteRule::Transpedicular,
    )
}

/// [`evaluate`] under the route rule the trajectory claims: [`RouteRule::Extrapedicular`]
/// measures it as a plan's extrapedicular side is measured (docking on the rib head-neck, past
/// the isthmus on its lateral side, the side's rib bone rather than a keep-out), and refuses
/// it as a plan would when the case lacks the level's rib of the side or a pleura mesh, or the
/// level has no rib ([`crate::extrapedicular::refusal`]).
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with_route(
    anatomy: &PreparedAnatomy,
    level: Level,
    side: Side,
    entry_mm: [f64; 3],
    target_mm: [f64; 3],
    instrument: &Instrument,
    safety: &Safety,
    route_rule: RouteRule,
) -> Result<Evaluation, InputError> {
    instrument.validate()?;
    safety.validate()?;
    for (field, p) in [("entry_mm", entry_mm), ("target_mm", target_mm)] {
        if p.iter().any(|c| !c.is_finite()) {
            return Err(InputError::invalid(
                field,
                format!("{p:?}"),
                "coordinates must be finite",
            ));
        }
    }
    let vertebra = anatomy
        .vertebra(level)
        .ok_or(InputError::LevelNotInAnatomy { level })?;
    let frame = anatomy.frame();
    let entry_lps = frame.to_lps(&point(entry_mm));
    let target_lps = frame.to_lps(&point(target_mm));
    if (target_lps - entry_lps).norm() < 1e-3 {
        return Err(InputError::invalid(
            "target_mm",
            format!("{target_mm:?}"),
            "entry and target coincide: a trajectory needs two distinct points",
        ));
    }
    let base = SideContext::transpedicular(anatomy, vertebra, side, instrument, safety);
    let ctx = match route_rule {
        RouteRule::Transpedicular => base,
        RouteRule::Extrapedicular => crate::extrapedicular::context(&base),
    };
    let mut m = measure(&ctx, &entry_lps, &target_lps);
    if route_rule == RouteRule::Extrapedicular {
        // The refusal a plan would give (it names every mesh missing) replaces `measure`'s
        // verdict of the same code.
        if let Some(refused) = crate::extrapedicular::refusal(&ctx) {
            m.violations.retain(|v| v.code != refused.code);
            m.violations.insert(0, refused);
        }
    }
    let mut violations = m.violations.clone();
    violations.extend(m.soft.iter().cloned());
    Ok(Evaluation {
        level,
        side,
        safe: m.violations.is_empty(),
        trajectory: trajectory(&m, frame, instrument, safety),
        violations,
        navigation_tolerance: Some(tolerance::navigation_tolerance(&ctx, &m, None)),
    })
}
