//! The extrapedicular route of one side (thoracic levels whose pedicle cannot take the cannula;
//! clinical.md, "The procedure"): the cannula docks on the rib head-neck (or at the
//! costotransverse junction), passes the pedicle on its lateral side through the gap between rib
//! head and pedicle, and enters the posterolateral vertebral body, its tip in the anterior third.
//!
//! Lines are parameterised by the point `g` where they cross the plane of the measured isthmus
//! ([`crate::pedicle::Pedicle`]), lateral of its bony outline, and by their medial and cranial
//! angles. Each line of the grid is screened on the vertebra's approximate distance grids
//! (body entry, incidence there, cortex clearance in the body, tip at
//! [`TIP_DEPTH_FRACTION`] of the body chord, canal and root clearances); the best are checked
//! to pass through the side's rib behind the body (exactly), then measured exactly by
//! [`crate::evaluate::measure`] under [`RouteRule::Extrapedicular`] in order until one is safe.
//! Only a trajectory that passes the exact measurement is returned. The rib and pleura are never
//! guessed: without the level's `rib` mesh of the side and a `pleura` mesh the side is refused
//! with [`ReasonCode::ExtrapedicularMeshesMissing`].

use rayon::prelude::*;

use crate::anatomy::Level;
use crate::clearance::ClearanceMesh;
use crate::criteria::{
    self, docking_zone_mm, entry_incidence_cos, GridLine, GridSampler, GRID_SAMPLE_STEP_MM,
    MAX_RIB_PEDICLE_GAP_MM, TIP_DEPTH_FRACTION,
};
use crate::error::PlanError;
use crate::evaluate::{self, measure, Measurement, RouteRule, SideContext};
use crate::math::{Point, Real, UnitVector, Vector};
use crate::plan::{Reason, ReasonCode};
use crate::search::SideOutcome;

/// `g` is searched from the isthmus outline's lateral-most point plus the cannula radius
/// outwards over this range, mm (the rib head lies 5-10 mm lateral of a thoracic pedicle).
pub const LATERAL_RANGE_MM: (Real, Real) = (0.0, 12.0);
/// `g` is searched this far above and below the isthmus outline, mm.
pub const HEIGHT_BEYOND_OUTLINE_MM: Real = 3.0;
/// Step of `g` in the isthmus plane, mm.
pub const STEP_MM: Real = 1.5;
/// Medial angles searched, degrees: an extrapedicular path converges more than the pedicle,
/// from lateral of it into the body.
pub const MEDIAL_RANGE_DEG: (Real, Real) = (10.0, 70.0);
/// Cranial angles searched, degrees.
pub const CRANIAL_RANGE_DEG: (Real, Real) = (-30.0, 30.0);
/// Step of the angles, degrees.
pub const STEP_DEG: Real = 5.0;
/// The coarse screening takes every `COARSE_FACTOR`-th line of the grid in each parameter.
const COARSE_FACTOR: usize = 2;
/// The best coarse lines whose neighbours on the full grid are screened.
const FINE_AROUND: usize = 16;
/// Screened lines checked exactly for the rib, best first, and most lines measured exactly.
const MAX_EXACT: usize = 48;
/// Lines measured exactly per batch (in parallel).
const BATCH: usize = 8;
/// How far behind `g` the line is followed for the rib and for bone of the vertebra behind the
/// body entry, mm (past the rib neck and the transverse process).
const BEHIND_G_MM: Real = 60.0;
/// How far in front of `g` the body is looked for, mm (deeper than any thoracic body).
const FORWARD_MM: Real = 100.0;
/// Keep-outs are screened from this far behind `g`, mm (the exact measurement takes the whole
/// cannula).
const KEEP_OUT_BEHIND_MM: Real = 40.0;

/// The extrapedicular context of a side: the same anatomy, side and instrument, the
/// extrapedicular route rule, and the keep-outs without the side's rib of the level.
pub fn context<'a>(base: &SideContext<'a>) -> SideContext<'a> {
    SideContext {
        anatomy: base.anatomy,
        vertebra: base.vertebra,
        keep_outs: base
            .anatomy
            .keep_outs_extrapedicular(base.vertebra.level, base.side),
        side: base.side,
        instrument: base.instrument,
        safety: base.safety,
        route_rule: RouteRule::Extrapedicular,
    }
}

/// Why a side cannot have an extrapedicular route before any line is screened: not a thoracic
/// level, the rib or pleura meshes missing (named), or no measured pedicle to pass beside.
pub fn refusal(ctx: &SideContext<'_>) -> Option<Reason> {
    let level = ctx.vertebra.level;
    let side = ctx.side;
    let reason = |code, message: String| Reason {
        code,
        message,
        value_mm: None,
        limit_mm: None,
        value_deg: None,
        limit_deg: None,
    };
    if level > Level::T12 {
        return Some(reason(
            ReasonCode::ExtrapedicularNotPossible,
            format!("{level} has no rib: an extrapedicular route (between rib head and pedicle) is planned at T1-T12 only"),
        ));
    }
    let mut missing = Vec::new();
    if !ctx.anatomy.has_rib(level, side) {
        missing.push(format!("the {level} {side} `rib` mesh"));
    }
    if !ctx.anatomy.has_pleura() {
        missing.push("a `pleura` mesh".to_string());
    }
    if !missing.is_empty() {
        return Some(reason(
            ReasonCode::ExtrapedicularMeshesMissing,
            format!(
                "an extrapedicular route (between rib head and pedicle, into the body) needs the ribs and pleura meshes; this case lacks {} (the pleura is never guessed from the bone)",
                missing.join(" and ")
            ),
        ));
    }
    if let Err(fault) = &ctx.vertebra.pedicles[side] {
        return Some(reason(
            ReasonCode::PedicleNotFound,
            format!("the {side} pedicle's isthmus could not be measured ({fault}): a route beside it cannot be verified"),
        ));
    }
    None
}

/// A screened line, vertebra frame: `t` in mm along `dir` from `g`.
#[derive(Clone, Copy, Debug)]
struct Line {
    g: Point,
    dir: Vector,
    t_body: Real,
    t_tip: Real,
    score: Real,
}

/// `lo, lo + step, ...` up to `hi`.
fn steps((lo, hi): (Real, Real), step: Real) -> Vec<Real> {
    let n = ((hi - lo) / step + 1e-9).floor() as usize;
    (0..=n).map(|i| lo + i as Real * step).collect()
}

/// The smallest sample of `line` every [`GRID_SAMPLE_STEP_MM`] from `t0` to `t1`.
fn min_along(line: &GridLine<'_>, t0: Real, t1: Real) -> Real {
    let n = ((t1 - t0) / GRID_SAMPLE_STEP_MM).ceil().max(0.0) as usize;
    (0..=n)
        .map(|i| line.at((t0 + i as Real * GRID_SAMPLE_STEP_MM).min(t1)))
        .fold(Real::INFINITY, Real::min)
}

/// `min(cap, min_along(line, t0, t1))` from the same samples, but for samples that the grid's
/// Lipschitz bound keeps at or above the running minimum or the cap
/// ([`crate::criteria::samples_above`], as the transpedicular screening skips them).
fn min_along_below(line: &GridLine<'_>, t0: Real, t1: Real, cap: Real) -> Real {
    let n = ((t1 - t0) / GRID_SAMPLE_STEP_MM).ceil().max(0.0) as usize;
    let mut m = Real::INFINITY;
    let mut i = 0;
    while i <= n {
        let s = line.at((t0 + i as Real * GRID_SAMPLE_STEP_MM).min(t1));
        m = m.min(s);
        i += 1 + crate::criteria::samples_above(s, m.min(cap));
    }
    m.min(cap)
}

/// The first `i` in `i0..n` whose sample at `i` x [`GRID_SAMPLE_STEP_MM`] is inside the bone
/// (above 0; `inside`) or outside it (below 0), as `(i0..n).find(..)` over every sample gives;
/// with `skip`, samples that the grid's Lipschitz bound keeps on the other side are not taken.
fn first_sample(
    line: &GridLine<'_>,
    i0: usize,
    n: usize,
    inside: bool,
    skip: bool,
) -> Option<usize> {
    let mut i = i0;
    while i < n {
        let s = line.at(i as Real * GRID_SAMPLE_STEP_MM);
        if (inside && s > 0.0) || (!inside && s < 0.0) {
            return Some(i);
        }
        i += 1;
        if skip {
            i += crate::criteria::samples_above(if inside { -s } else { s }, 0.0);
        }
    }
    None
}

/// Screen one line on the approximate grids; `None` when it is no usable extrapedicular line.
fn screen(ctx: &SideContext<'_>, params: [Real; 4]) -> Option<Line> {
    screen_with(ctx, params, true)
}

/// [`screen`]; with `prune`, samples that cannot change the line's score are skipped: along
/// the grids the Lipschitz bound keeps them on the same side of zero or above the running
/// minimum; the cortex above [`crate::criteria::SLACK_RESERVE_MM`] past its margin, and the
/// keep-outs above that or above the cortex's slack, cannot change the worst slack the score
/// counts (`prune = false`: every sample, the slow path the tests compare with).
fn screen_with(ctx: &SideContext<'_>, params: [Real; 4], prune: bool) -> Option<Line> {
    let v = ctx.vertebra;
    let f = &v.frame;
    let p = v.pedicles[ctx.side].as_ref().ok()?;
    let (safety, instrument) = (ctx.safety, ctx.instrument);
    let r = instrument.cannula_radius_mm();
    let sign = ctx.side.sign();
    let [u, w, medial, cranial] = params;
    let g = p.isthmus_center_vertebra_mm
        + p.width_dir_vertebra.into_inner() * u
        + p.height_dir_vertebra.into_inner() * w;
    let dir = Vector::new(
        -sign * medial.to_radians().tan(),
        -1.0,
        cranial.to_radians().tan(),
    )
    .normalize();
    let to_grid = f.vertebra_to_grid();
    let bone_grid = GridSampler::bone(&v.bone_sdf, to_grid);
    let bone = bone_grid.line(&g, &dir);
    // The body entry: the first sample in the bone in front of g; then its exit.
    let n_forward = (FORWARD_MM / GRID_SAMPLE_STEP_MM) as usize;
    let ts = |i: usize| i as Real * GRID_SAMPLE_STEP_MM;
    let i_in = first_sample(&bone, 0, n_forward, true, prune)?;
    let i_out = first_sample(&bone, i_in, n_forward, false, prune)?;
    // The zero crossing between two samples of opposite sign.
    let interpolate = |a: Real, b: Real| {
        let (sa, sb) = (bone.at(a), bone.at(b));
        let d = sa - sb;
        if d.abs() < 1e-12 {
            a
        } else {
            a + (b - a) * sa / d
        }
    };
    let t_body = if i_in == 0 {
        0.0
    } else {
        interpolate(ts(i_in - 1), ts(i_in))
    };
    let t_exit = interpolate(ts(i_out - 1), ts(i_out));
    let t_wall = (f.posterior_wall_y_mm - g.y) / dir.y;
    if t_exit <= t_wall.max(t_body) + 2.0 {
        return None;
    }
    let t_tip = t_wall + TIP_DEPTH_FRACTION * (t_exit - t_wall);
    let body_entry = g + dir * t_body;
    let cos_incidence = entry_incidence_cos(&bone_grid, &body_entry, &dir);
    if cos_incidence < safety.max_entry_incidence_deg.to_radians().cos() {
        return None;
    }
    let zone = docking_zone_mm(
        instrument,
        safety,
        cos_incidence,
        crate::search::DOCKING_DROP_SCREEN_MM,
    );
    if t_tip <= t_body + zone {
        return None;
    }
    // The score counts the worst slack up to the reserve: samples of the cortex past it (with
    // a millimetre to spare), and of the keep-outs past it or past the cortex's slack (with a
    // micrometre), cannot change it.
    let reserve = crate::criteria::SLACK_RESERVE_MM;
    let cortex = if prune {
        min_along_below(
            &bone,
            t_body + zone,
            t_tip,
            r + safety.cortex_margin_mm + reserve + 1.0,
        )
    } else {
        min_along(&bone, t_body + zone, t_tip)
    } - r;
    // No bone of the vertebra behind g (a second run of vertebra bone, e.g. the transverse
    // process, would leave and re-enter it).
    let back = bone_grid.line(&g, &(-dir));
    let n_back = (BEHIND_G_MM / GRID_SAMPLE_STEP_MM) as usize;
    if first_sample(&back, 1, n_back + 1, true, prune).is_some() {
        return None;
    }
    let cortex_slack = cortex - safety.cortex_margin_mm;
    let keep = |grid: &crate::voxel::KeepOutGrid, margin: Real| {
        let line = GridSampler::keep_out(grid, to_grid).line(&g, &dir);
        if prune {
            let cap = (r + margin + reserve + 1.0).min(cortex_slack + margin + r + 1e-6);
            min_along_below(&line, -KEEP_OUT_BEHIND_MM, t_tip, cap) - r
        } else {
            min_along(&line, -KEEP_OUT_BEHIND_MM, t_tip) - r
        }
    };
    let canal = keep(&v.canal_distance, safety.canal_margin_mm);
    let root = keep(&v.root_distance, safety.nerve_root_margin_mm);
    let worst = criteria::worst_slack_mm(safety, cortex, canal, root, None);
    // The balloon's room is not screened here (lines beside the pedicle are few and each
    // verified one is scored by `measure`, which measures it).
    let score = criteria::score(worst, 0.0, 0.0, 0.0, medial, TIP_DEPTH_FRACTION);
    Some(Line {
        g,
        dir,
        t_body,
        t_tip,
        score,
    })
}

/// Whether a screened line passes through the rib behind its body entry, leaves it at most
/// [`MAX_RIB_PEDICLE_GAP_MM`] before the body, and docks on it within the incidence limit:
/// exact on the rib's mesh (the rule [`crate::evaluate::measure`] then checks in full).
fn through_rib(ctx: &SideContext<'_>, rib: &ClearanceMesh, l: &Line) -> bool {
    let to_lps = ctx.vertebra.frame.vertebra_to_lps();
    let body_lps = to_lps * (l.g + l.dir * l.t_body);
    let dir_lps = UnitVector::new_normalize(to_lps.rotation * l.dir);
    let crossings: Vec<Real> = rib
        .line_crossings(&body_lps, &dir_lps)
        .into_iter()
        .filter(|&t| t < 0.0 && t > -(BEHIND_G_MM + l.t_body))
        .collect();
    let (Some(&dock), Some(&exit)) = (crossings.first(), crossings.last()) else {
        return false;
    };
    if !crossings.len().is_multiple_of(2) || -exit > MAX_RIB_PEDICLE_GAP_MM {
        return false;
    }
    let r = ctx.instrument.cannula_radius_mm();
    let dock_lps = body_lps + dir_lps.into_inner() * dock;
    rib.footprint_normal(&dock_lps, dir_lps.as_ref(), r)
        .is_some_and(|n| {
            -n.dot(dir_lps.as_ref()) >= ctx.safety.max_entry_incidence_deg.to_radians().cos()
        })
}

/// The values of the grid's four parameters: `g`'s offsets along the isthmus's width (from its
/// lateral-most point plus the cannula radius, [`LATERAL_RANGE_MM`]) and height (past the
/// outline, [`HEIGHT_BEYOND_OUTLINE_MM`]), every [`STEP_MM`]; the medial and cranial angles every
/// [`STEP_DEG`]. The side's pedicle must be measured ([`refusal`]).
fn grid_values(ctx: &SideContext<'_>) -> [Vec<Real>; 4] {
    let v = ctx.vertebra;
    let p = v.pedicles[ctx.side].as_ref().expect("checked by refusal");
    let r = ctx.instrument.cannula_radius_mm();
    let (u_lat, v_lo, v_hi) = p.outline_uv_mm.iter().fold(
        (Real::NEG_INFINITY, Real::INFINITY, Real::NEG_INFINITY),
        |(a, b, c), q| (a.max(q[0]), b.min(q[1]), c.max(q[1])),
    );
    let us = steps(
        (
            u_lat + r + LATERAL_RANGE_MM.0,
            u_lat + r + LATERAL_RANGE_MM.1,
        ),
        STEP_MM,
    );
    let ws = steps(
        (
            v_lo - HEIGHT_BEYOND_OUTLINE_MM,
            v_hi + HEIGHT_BEYOND_OUTLINE_MM,
        ),
        STEP_MM,
    );
    let medials = steps(MEDIAL_RANGE_DEG, STEP_DEG);
    let cranials = steps(CRANIAL_RANGE_DEG, STEP_DEG);
    [us, ws, medials, cranials]
}

/// Search the best safe extrapedicular trajectory of one side. `ctx` must be an extrapedicular
/// context ([`context`]). `accepts` is what the caller further needs of a safe trajectory
/// (kyphoplasty: room for a balloon); a safe line it refuses is passed over for the next.
pub fn search_side(
    ctx: &SideContext<'_>,
    accepts: &(dyn Fn(&Measurement) -> bool + Sync),
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<SideOutcome, PlanError> {
    debug_assert_eq!(ctx.route_rule, RouteRule::Extrapedicular);
    if let Some(reason) = refusal(ctx) {
        return Ok(SideOutcome::Infeasible {
            reasons: vec![reason],
            alternatives: vec![],
        });
    }
    let v = ctx.vertebra;
    let [us, ws, medials, cranials] = grid_values(ctx);
    let dims = [us.len(), ws.len(), medials.len(), cranials.len()];
    let params = |i: [usize; 4]| [us[i[0]], ws[i[1]], medials[i[2]], cranials[i[3]]];
    let mut every = Vec::with_capacity(dims.iter().product());
    for a in 0..dims[0] {
        for b in 0..dims[1] {
            for c in 0..dims[2] {
                for d in 0..dims[3] {
                    every.push([a, b, c, d]);
                }
            }
        }
    }
    let order = |a: &(Line, [usize; 4]), b: &(Line, [usize; 4])| {
        b.0.score.total_cmp(&a.0.score).then_with(|| a.1.cmp(&b.1))
    };
    let screen_all = |lines: &[[usize; 4]]| -> Vec<(Line, [usize; 4])> {
        lines
            .par_iter()
            .filter_map(|&i| screen(ctx, params(i)).map(|l| (l, i)))
            .collect()
    };
    // Coarse to fine: every COARSE_FACTOR-th line in each parameter, then the grid's 3^4
    // neighbourhoods of the FINE_AROUND best; every line when no coarse line was usable.
    let coarse: Vec<[usize; 4]> = every
        .iter()
        .copied()
        .filter(|i| i.iter().all(|k| k % COARSE_FACTOR == 0))
        .collect();
    let mut screened = screen_all(&coarse);
    screened.sort_by(order);
    let mut seen: std::collections::BTreeSet<[usize; 4]> = coarse.iter().copied().collect();
    let fine: Vec<[usize; 4]> = if screened.is_empty() {
        every
            .iter()
            .copied()
            .filter(|i| !seen.contains(i))
            .collect()
    } else {
        let mut fine = Vec::new();
        for (_, best) in screened.iter().take(FINE_AROUND) {
            for k in 0..81usize {
                let mut n = *best;
                let mut code = k;
                let mut ok = true;
                for (axis, slot) in n.iter_mut().enumerate() {
                    let delta = (code % 3) as i64 - 1;
                    code /= 3;
                    let moved = *slot as i64 + delta;
                    if moved < 0 || moved >= dims[axis] as i64 {
                        ok = false;
                        break;
                    }
                    *slot = moved as usize;
                }
                if ok && seen.insert(n) {
                    fine.push(n);
                }
            }
        }
        fine
    };
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    screened.extend(screen_all(&fine));
    screened.sort_by(order);
    let n_screened = coarse.len() + fine.len();
    let screened: Vec<Line> = screened.into_iter().map(|(l, _)| l).collect();
    // The best lines that pass through the side's rib just behind the body entry (exactly).
    let to_lps = v.frame.vertebra_to_lps();
    let rib = ctx
        .anatomy
        .rib(v.level, ctx.side)
        .expect("checked by refusal");
    let mut queue: Vec<Line> = Vec::new();
    for chunk in screened.chunks(4 * BATCH) {
        let through: Vec<Line> = chunk
            .par_iter()
            .filter(|l| through_rib(ctx, &rib.clearance, l))
            .copied()
            .collect();
        queue.extend(through);
        if queue.len() >= MAX_EXACT {
            queue.truncate(MAX_EXACT);
            break;
        }
    }
    if queue.is_empty() {
        return Ok(SideOutcome::Infeasible {
            reasons: vec![Reason {
                code: ReasonCode::ExtrapedicularNotPossible,
                message: format!(
                    "no straight line lateral of the {} pedicle ({} screened) both passes through the {} {} rib and reaches the body with the cannula's margins",
                    ctx.side,
                    n_screened,
                    v.level,
                    ctx.side
                ),
                value_mm: None,
                limit_mm: None,
                value_deg: None,
                limit_deg: None,
            }],
            alternatives: vec![],
        });
    }
    // Each line is judged first by `evaluate::verdict` (the same violations as `measure`,
    // decided by walks that stop at the margins' verdicts); only safe lines are measured in
    // full before `accepts`, and the unsafe ones only if no line is taken (for the best one's
    // reasons): the result is the one measuring every line would give.
    let endpoints = |l: &Line| {
        (
            to_lps * (l.g - l.dir * BEHIND_G_MM),
            to_lps * (l.g + l.dir * l.t_tip),
        )
    };
    let mut not_taken: Vec<Result<Measurement, Line>> = Vec::new();
    let mut measured = 0;
    let mut refused = 0;
    for batch in queue.chunks(BATCH) {
        if cancelled() {
            return Err(PlanError::Cancelled);
        }
        let judged: Vec<Option<Measurement>> = batch
            .par_iter()
            .map(|l| {
                let (from, tip) = endpoints(l);
                evaluate::judge(ctx, &from, &tip, false).map(|_| measure(ctx, &from, &tip))
            })
            .collect();
        measured += judged.len();
        let mut best_safe: Option<Measurement> = None;
        for (l, j) in batch.iter().zip(judged) {
            match j {
                Some(m) if accepts(&m) => {
                    debug_assert!(m.violations.is_empty());
                    let sc = m.score(ctx.safety);
                    if best_safe.as_ref().is_none_or(|b| sc > b.score(ctx.safety)) {
                        best_safe = Some(m);
                    }
                }
                Some(m) => {
                    refused += 1;
                    not_taken.push(Ok(m));
                }
                None => not_taken.push(Err(*l)),
            }
        }
        if let Some(m) = best_safe {
            return Ok(SideOutcome::Feasible(Box::new(m)));
        }
    }
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    // The best-scoring line not taken (the first of the highest score in order).
    let not_taken: Vec<Measurement> = not_taken
        .into_par_iter()
        .map(|j| {
            j.unwrap_or_else(|l| {
                let (from, tip) = endpoints(&l);
                measure(ctx, &from, &tip)
            })
        })
        .collect();
    let mut best_any: Option<Measurement> = None;
    for m in not_taken {
        let sc = m.score(ctx.safety);
        if best_any.as_ref().is_none_or(|b| sc > b.score(ctx.safety)) {
            best_any = Some(m);
        }
    }
    let best = best_any.expect("at least one line was measured");
    let mut reasons = vec![Reason {
        code: ReasonCode::ExtrapedicularNotPossible,
        message: format!(
            "no extrapedicular line of the {} side is safe{} ({} screened, {measured} measured exactly); the best one's violations follow",
            ctx.side,
            if refused > 0 { format!(" with room for what the procedure needs ({refused} safe lines had no room for a balloon)") } else { String::new() },
            n_screened
        ),
        value_mm: None,
        limit_mm: None,
        value_deg: None,
        limit_deg: None,
    }];
    for viol in &best.violations {
        if !reasons.iter().any(|x| x.code == viol.code) {
            reasons.push(viol.clone());
        }
    }
    Ok(SideOutcome::Infeasible {
        reasons,
        alternatives: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anatomy::Side;
    use crate::prepare::{PrepareOptions, PreparedAnatomy};
    use crate::request::{Instrument, Safety};

    /// The pruned screening (samples skipped by the grids' Lipschitz bound, the reserve and
    /// the cortex's slack) keeps and drops the same lines with the same figures, bit for bit,
    /// as every sample, on every line of the grid of each side of the built-in mean T5 and T8
    /// with their ribs and pleura.
    #[test]
    fn pruned_screening_matches_every_sample() {
        let options = crate::synth::SpineOptions {
            with_soft_tissue: false,
            with_ribs_and_pleura: true,
        };
        let (instrument, safety) = (Instrument::contract_default(), Safety::contract_default());
        let (mut kept, mut dropped) = (0usize, 0usize);
        for level in [Level::T5, Level::T8] {
            let input =
                crate::synth::spine_with(&[level], &crate::math::Pose::identity(), &options).0;
            let anatomy = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
            let vertebra = anatomy.vertebra(level).unwrap();
            for side in [Side::Left, Side::Right] {
                let base = SideContext {
                    anatomy: &anatomy,
                    vertebra,
                    keep_outs: anatomy.keep_outs(level),
                    side,
                    instrument: &instrument,
                    safety: &safety,
                    route_rule: RouteRule::Transpedicular,
                };
                let ctx = context(&base);
                assert!(refusal(&ctx).is_none());
                let [us, ws, medials, cranials] = grid_values(&ctx);
                for &u in &us {
                    for &w in &ws {
                        for &m in &medials {
                            for &c in &cranials {
                                let p = [u, w, m, c];
                                let bits = |l: Option<Line>| {
                                    l.map(|l| {
                                        [l.g.x, l.g.z, l.dir.x, l.t_body, l.t_tip, l.score]
                                            .map(Real::to_bits)
                                    })
                                };
                                let slow = screen_with(&ctx, p, false);
                                if slow.is_some() {
                                    kept += 1;
                                } else {
                                    dropped += 1;
                                }
                                assert_eq!(
                                    bits(screen(&ctx, p)),
                                    bits(slow),
                                    "{level} {side} {p:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(
            kept > 1000 && dropped > 1000,
            "{kept} kept, {dropped} dropped"
        );
    }
}
