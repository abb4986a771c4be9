//! Trajectory search for one side of one vertebra.
//!
//! A line is parameterised in the vertebra frame by the point `q` where it crosses the plane
//! a few millimetres behind the posterior wall of the body (inside the pedicle) and by its
//! medial and cranial angles. Candidates are screened in parallel on the approximate distance
//! grids (a few microseconds each), coarse to fine: every other line of the grid first (3 mm,
//! 10 degree steps), then the grid's neighbours of the best of those. The best are refined
//! locally, and then verified with the exact f64 measurement ([`crate::evaluate::measure`]). Only a trajectory that passes the exact
//! measurement is ever returned; otherwise the side is infeasible with a measured reason.

use rayon::prelude::*;

use crate::error::PlanError;
use crate::evaluate::{self, docking_zone_mm, measure, Measurement, SideContext};
use crate::math::{Point, Pose, Real, Vector};
use crate::plan::{Alternative, AlternativeCode, Reason, ReasonCode};

/// The plane of `q`: this far behind the posterior wall of the body, mm.
pub const REFERENCE_PLANE_BEHIND_WALL_MM: Real = 5.0;
/// Where the tip goes along the body chord (posterior wall 0, anterior cortex 1).
pub const TIP_DEPTH_FRACTION: Real = 0.75;
/// Medial angle range searched, degrees.
pub const MEDIAL_RANGE_DEG: (Real, Real) = (-15.0, 45.0);
/// Cranial angle range searched, degrees.
pub const CRANIAL_RANGE_DEG: (Real, Real) = (-25.0, 25.0);
const COARSE_STEP_DEG: Real = 5.0;
const COARSE_STEP_MM: Real = 1.5;
const SAMPLE_STEP_MM: Real = 0.5;
const SEEDS: usize = 8;
/// Lines screened per chunk between updates of the score threshold.
const SCREEN_CHUNK: usize = 64;
/// Allowance for round-off in the score bounds.
const SCORE_BOUND_TOLERANCE: Real = 1e-9;
const MAX_EXACT: usize = 64;
/// The best lines of the coarse directions whose neighbours on the full grid are screened.
const FINE_AROUND: usize = 16;

/// Bound on the slope of a trilinearly interpolated distance grid, mm per mm: neighbouring
/// cells differ by at most one spacing, so each component of the gradient is at most 1.
const GRID_LIPSCHITZ: Real = 1.732_050_808;
/// Round-off allowance of a grid sample, mm.
const SAMPLE_TOLERANCE_MM: Real = 1e-3;

/// How many of the next samples along a line (every [`SAMPLE_STEP_MM`]) are sure to stay above
/// `floor` after a sample of value `s` (none for non-finite values).
#[inline]
fn samples_above(s: Real, floor: Real) -> usize {
    let room = s - floor - SAMPLE_TOLERANCE_MM;
    if room.is_finite() && room > 0.0 {
        (room / (GRID_LIPSCHITZ * SAMPLE_STEP_MM)) as usize
    } else {
        0
    }
}

/// The result for one side.
#[derive(Clone, Debug)]
pub enum SideOutcome {
    Feasible(Box<Measurement>),
    Infeasible {
        reasons: Vec<Reason>,
        alternatives: Vec<Alternative>,
    },
}

/// A screened line (vertebra frame) with its approximate figures.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// (lateral offset x, superior offset z) of q in the reference plane, medial, cranial.
    params: [Real; 4],
    q: Point,
    dir: Vector,
    t_entry: Real,
    t_tip: Real,
    /// Approximate clearance of the cannula surface to the cortex, mm.
    cortex: Real,
    entry_ok: bool,
    score: Real,
}

struct Screen<'a> {
    ctx: &'a SideContext<'a>,
    vertebra_to_grid: Pose,
    y_ref: Real,
    sign: Real,
    radius: Real,
    canal_half_width: Real,
}

impl Screen<'_> {
    fn direction(&self, medial_deg: Real, cranial_deg: Real) -> Vector {
        let tm = medial_deg.to_radians().tan();
        let tc = cranial_deg.to_radians().tan();
        Vector::new(-self.sign * tm, -1.0, tc).normalize()
    }

    fn bone(&self, p: &Point) -> Real {
        let g = self.vertebra_to_grid * p;
        self.ctx.vertebra.bone_sdf.sample(&g, -10.0) as Real
    }

    /// The terms of the score that need no grid (alignment with the pedicle's centres,
    /// convergence, tip depth) of the line through `q` along `dir`.
    fn fixed_terms(&self, q: &Point, dir: &Vector, medial: Real) -> Real {
        evaluate::score(
            0.0,
            0.0,
            evaluate::axis_offset_mm(&self.ctx.vertebra.pedicle_centroids[self.ctx.side], q, dir),
            medial,
            TIP_DEPTH_FRACTION,
        )
    }

    /// Screen one line. `None` when it is not a usable line, or when its score is sure to be
    /// below `threshold` (upper bounds of the score are checked as its terms come in, the
    /// cheapest first), so such a line could never be chosen.
    fn candidate(&self, params: [Real; 4], threshold: Real) -> Option<Candidate> {
        let [x, z, medial, cranial] = params;
        let v = self.ctx.vertebra;
        let f = &v.frame;
        let safety = self.ctx.safety;
        let q = Point::new(self.sign * x, self.y_ref, z);
        let dir = self.direction(medial, cranial);
        // Score terms that need no grid: the score is at most the slack reserve plus the
        // largest centring term plus these.
        let fixed_terms = self.fixed_terms(&q, &dir, medial);
        let bound = |worst_at_most: Real, centring_at_most: Real| {
            worst_at_most.min(evaluate::SLACK_RESERVE_MM)
                + evaluate::CENTRING_WEIGHT * centring_at_most
                + fixed_terms
                + SCORE_BOUND_TOLERANCE
        };
        if bound(Real::INFINITY, evaluate::CENTRING_CAP_MM) < threshold {
            return None;
        }
        let bone = &v.bone_sdf;
        // The line in the grid frame: samples at `gq + gd * t`.
        let gq = self.vertebra_to_grid * q;
        let gd = self.vertebra_to_grid.rotation * dir;
        let bone_at = |t: Real| bone.sample(&(gq + gd * t), -10.0) as Real;
        if bone_at(0.0) <= 0.0 {
            return None;
        }
        // March back to the entry and forward to the anterior exit: the first sample outside
        // the bone. Samples that the grid's Lipschitz bound keeps inside are skipped.
        let t_entry = {
            let mut found = None;
            let mut skip = 0usize;
            let mut t = -SAMPLE_STEP_MM;
            while t > -80.0 {
                if skip > 0 {
                    skip -= 1;
                    t -= SAMPLE_STEP_MM;
                    continue;
                }
                let s = bone_at(t);
                if s < 0.0 {
                    let sp = bone_at(t + SAMPLE_STEP_MM);
                    let frac = sp / (sp - s).max(1e-9);
                    found = Some(t + SAMPLE_STEP_MM - frac * SAMPLE_STEP_MM);
                    break;
                }
                skip = samples_above(s, 0.0);
                t -= SAMPLE_STEP_MM;
            }
            found?
        };
        // The entry must be behind the body and lateral of the canal: other lines never score.
        let entry = q + dir * t_entry;
        let entry_ok = entry.y >= f.posterior_wall_y_mm + evaluate::MIN_ENTRY_BEHIND_WALL_MM
            && entry.x * self.sign >= self.canal_half_width;
        if !entry_ok {
            return None;
        }
        // The centring term of evaluate::centring_mm, on the line already in grid coordinates.
        // Its span ends at the posterior wall (`t_wall`), before the tip of any line that
        // reaches the body, so it is taken (and bounded) before the march to the far cortex.
        let t_wall = (f.posterior_wall_y_mm - q.y) / dir.y;
        let centring = match evaluate::pedicle_span(f, &q, &dir, t_entry, t_wall) {
            Some((a, b)) => {
                let n = (((b - a) / 0.5).ceil() as usize).max(1);
                let slack = self.radius + safety.cortex_margin_mm;
                let mut sum = 0.0;
                for i in 0..=n {
                    let d = bone_at(a + (b - a) * (i as Real / n as Real));
                    sum += (d - slack).min(evaluate::CENTRING_CAP_MM);
                }
                sum / (n + 1) as Real
            }
            None => 0.0,
        };
        if bound(Real::INFINITY, centring) < threshold {
            return None;
        }
        let t_exit = {
            let mut found = None;
            let mut skip = 0usize;
            let mut t = SAMPLE_STEP_MM;
            while t < 100.0 {
                if skip > 0 {
                    skip -= 1;
                    t += SAMPLE_STEP_MM;
                    continue;
                }
                let s = bone_at(t);
                if s < 0.0 {
                    found = Some(t);
                    break;
                }
                skip = samples_above(s, 0.0);
                t += SAMPLE_STEP_MM;
            }
            found?
        };
        if t_wall >= t_exit {
            return None;
        }
        let t_tip = t_wall + TIP_DEPTH_FRACTION * (t_exit - t_wall);
        // Cortex from where its margin applies to the tip.
        let tip = q + dir * t_tip;
        let cos_incidence = evaluate::entry_incidence_cos(v, &self.vertebra_to_grid, &entry, &dir);
        if cos_incidence < evaluate::MAX_ENTRY_INCIDENCE_DEG.to_radians().cos() {
            return None;
        }
        let zone = docking_zone_mm(self.ctx.instrument, safety);
        let t_start = t_tip + evaluate::cortex_start(f, &tip, &dir, t_entry - t_tip, zone);
        let cortex = self
            .min_along(bone, -10.0, &gq, &gd, t_start, t_tip, Real::INFINITY)
            .min(bone_at(t_tip))
            - self.radius;
        if bound(cortex - safety.cortex_margin_mm, centring) < threshold {
            return None;
        }
        // Keep-outs along the cannula near the vertebra. Their distance counts in the score
        // only below its cap (the slack reserve): samples that cannot go below it are skipped.
        let keep = |grid: &crate::voxel::Grid<f32>, margin: Real| {
            let cap = self.radius + margin + evaluate::SLACK_RESERVE_MM + 1.0;
            self.min_along(grid, f32::INFINITY, &gq, &gd, t_entry - 40.0, t_tip, cap) - self.radius
        };
        let canal = keep(&v.canal_distance, safety.canal_margin_mm);
        let root = keep(&v.root_distance, safety.nerve_root_margin_mm);
        let forbidden = v
            .forbidden_distance
            .as_ref()
            .map_or(Real::INFINITY, |g| keep(g, safety.canal_margin_mm));
        let worst = (cortex - safety.cortex_margin_mm)
            .min(canal - safety.canal_margin_mm)
            .min(root - safety.nerve_root_margin_mm)
            .min(forbidden - safety.canal_margin_mm);
        if bound(worst, centring) < threshold {
            return None;
        }
        let score = evaluate::score(
            worst,
            centring,
            evaluate::axis_offset_mm(&v.pedicle_centroids[self.ctx.side], &q, &dir),
            medial,
            TIP_DEPTH_FRACTION,
        );
        Some(Candidate {
            params,
            q,
            dir,
            t_entry,
            t_tip,
            cortex,
            entry_ok,
            score,
        })
    }

    /// `min(cap, smallest sample of grid)` at `gq + gd * t` (grid frame), `t` from `t0` in steps of
    /// [`SAMPLE_STEP_MM`] up to `t1`. Samples that the grid's Lipschitz bound keeps at or above
    /// the running minimum (or the cap) cannot change the result and are not taken.
    #[allow(clippy::too_many_arguments)]
    fn min_along(
        &self,
        grid: &crate::voxel::Grid<f32>,
        outside: f32,
        gq: &Point,
        gd: &Vector,
        t0: Real,
        t1: Real,
        cap: Real,
    ) -> Real {
        let mut m = Real::INFINITY;
        let mut skip = 0usize;
        let mut t = t0;
        while t <= t1 {
            if skip > 0 {
                skip -= 1;
                t += SAMPLE_STEP_MM;
                continue;
            }
            let s = grid.sample(&(gq + gd * t), outside) as Real;
            m = m.min(s);
            skip = samples_above(s, m.min(cap));
            t += SAMPLE_STEP_MM;
        }
        m.min(cap)
    }

    /// Pattern search around a seed on the approximate score.
    fn refine(&self, seed: Candidate) -> Candidate {
        let mut best = seed;
        let mut steps = [0.5, 0.5, 2.0, 2.0];
        // Points already tried (bit patterns): a point tried before scored no better than
        // the best at the time, which only rises, so it can never be taken now.
        let key = |p: &[Real; 4]| p.map(Real::to_bits);
        let mut tried = std::collections::HashSet::new();
        tried.insert(key(&seed.params));
        for _ in 0..4 {
            let mut improved = true;
            let mut guard = 0;
            while improved && guard < 40 {
                improved = false;
                guard += 1;
                for axis in 0..4 {
                    for dirn in [-1.0, 1.0] {
                        let mut p = best.params;
                        p[axis] += dirn * steps[axis];
                        p[2] = p[2].clamp(MEDIAL_RANGE_DEG.0, MEDIAL_RANGE_DEG.1);
                        p[3] = p[3].clamp(CRANIAL_RANGE_DEG.0, CRANIAL_RANGE_DEG.1);
                        if !tried.insert(key(&p)) {
                            continue;
                        }
                        if let Some(c) = self.candidate(p, best.score + 1e-9) {
                            if c.score > best.score + 1e-9 {
                                best = c;
                                improved = true;
                            }
                        }
                    }
                }
            }
            steps.iter_mut().for_each(|s| *s *= 0.5);
        }
        best
    }
}

/// `lo, lo + step, ...` up to `hi`, accumulated (the grid's values).
fn steps((lo, hi): (Real, Real), step: Real) -> Vec<Real> {
    let mut v = Vec::new();
    let mut a = lo;
    while a <= hi + 1e-9 {
        v.push(a);
        a += step;
    }
    v
}

/// Index of a line of the grid: (q, medial angle, cranial angle).
type LineIndex = (usize, usize, usize);

/// Deterministic order of candidates: by score, then by parameters.
fn order(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then_with(|| {
        a.params
            .partial_cmp(&b.params)
            .unwrap_or(std::cmp::Ordering::Equal)
    })
}

/// Lines screened so far, and the score threshold of the verification queue.
struct Screening {
    coarse: Vec<(Candidate, LineIndex)>,
    threshold: Real,
}

impl Screening {
    fn new() -> Self {
        Screening {
            coarse: Vec::new(),
            threshold: Real::NEG_INFINITY,
        }
    }

    /// Screen `lines` in fixed chunks: once MAX_EXACT lines are scored, a line whose score
    /// bound falls below the MAX_EXACT-th best so far cannot reach the verification queue and
    /// is dropped. The chunks do not depend on the thread count, so neither does the result;
    /// and the top MAX_EXACT lines are the ones a full screening would give, in whatever order
    /// the lines come. Lines best aligned with the pedicle come first, so the threshold rises
    /// early.
    fn screen(
        &mut self,
        screen: &Screen<'_>,
        lines: &[LineIndex],
        line: &(dyn Fn(LineIndex) -> [Real; 4] + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), PlanError> {
        let mut ordered: Vec<(Real, [Real; 4], LineIndex)> = lines
            .iter()
            .map(|&i| {
                let p = line(i);
                let q = Point::new(screen.sign * p[0], screen.y_ref, p[1]);
                (
                    screen.fixed_terms(&q, &screen.direction(p[2], p[3]), p[2]),
                    p,
                    i,
                )
            })
            .collect();
        ordered.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal))
        });
        for chunk in ordered.chunks(SCREEN_CHUNK) {
            // Polled per chunk (a few milliseconds of work) so a cancelled run frees its CPU
            // soon.
            if cancelled() {
                return Err(PlanError::Cancelled);
            }
            let threshold = self.threshold;
            let got: Vec<(Candidate, LineIndex)> = chunk
                .par_iter()
                .filter_map(|(_, p, i)| screen.candidate(*p, threshold).map(|c| (c, *i)))
                .filter(|(c, _)| c.entry_ok)
                .collect();
            self.coarse.extend(got);
            if self.coarse.len() >= MAX_EXACT {
                let mut scores: Vec<Real> = self.coarse.iter().map(|c| c.0.score).collect();
                let (_, kth, _) =
                    scores.select_nth_unstable_by(MAX_EXACT - 1, |a, b| b.total_cmp(a));
                self.threshold = *kth;
            }
        }
        Ok(())
    }

    fn sort(&mut self) {
        self.coarse.sort_by(|a, b| order(&a.0, &b.0));
    }
}

/// Search the best safe trajectory of one side.
pub fn search_side(
    ctx: &SideContext<'_>,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<SideOutcome, PlanError> {
    search_side_with(ctx, cancelled, Screens::CoarseToFine)
}

/// Which lines of the grid are screened.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Screens {
    /// Every other line in each parameter, then the neighbours of the best (the planner).
    CoarseToFine,
    /// Every line of the grid (the slow oracle of the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Exhaustive,
}

fn search_side_with(
    ctx: &SideContext<'_>,
    cancelled: &(dyn Fn() -> bool + Sync),
    screens: Screens,
) -> Result<SideOutcome, PlanError> {
    let v = ctx.vertebra;
    let f = &v.frame;
    let screen = Screen {
        ctx,
        vertebra_to_grid: f.lps_to_grid * f.vertebra_to_lps(),
        y_ref: f.posterior_wall_y_mm + REFERENCE_PLANE_BEHIND_WALL_MM,
        sign: ctx.side.sign(),
        radius: ctx.instrument.cannula_radius_mm(),
        canal_half_width: f.canal_half_width_mm[ctx.side],
    };
    // The grid of lines: q in the reference plane every COARSE_STEP_MM where the bone is deep
    // enough, directions every COARSE_STEP_DEG. The values are accumulated as in the original
    // loops, so each line of the grid has the same bits whichever stage screens it.
    let hw = f.canal_half_width_mm[ctx.side];
    let (pz0, pz1) = f.pedicle_z_range_mm[ctx.side];
    // q positions: (x, z) values and their grid indices.
    let mut qs: Vec<(Real, Real, usize, usize)> = Vec::new();
    let mut x = hw - 3.0;
    let mut ix = 0;
    while x <= hw + 22.0 {
        let mut z = pz0;
        let mut iz = 0;
        while z <= pz1 {
            let q = Point::new(screen.sign * x, screen.y_ref, z);
            if screen.bone(&q) >= 0.5 * (screen.radius + ctx.safety.cortex_margin_mm) {
                qs.push((x, z, ix, iz));
            }
            z += COARSE_STEP_MM;
            iz += 1;
        }
        x += COARSE_STEP_MM;
        ix += 1;
    }
    let q_at: std::collections::BTreeMap<(usize, usize), usize> = qs
        .iter()
        .enumerate()
        .map(|(i, q)| ((q.2, q.3), i))
        .collect();
    let medials = steps(MEDIAL_RANGE_DEG, COARSE_STEP_DEG);
    let cranials = steps(CRANIAL_RANGE_DEG, COARSE_STEP_DEG);
    let line =
        |(iq, im, ic): LineIndex| -> [Real; 4] { [qs[iq].0, qs[iq].1, medials[im], cranials[ic]] };
    let mut all_lines = Vec::with_capacity(qs.len() * medials.len() * cranials.len());
    for iq in 0..qs.len() {
        for im in 0..medials.len() {
            for ic in 0..cranials.len() {
                all_lines.push((iq, im, ic));
            }
        }
    }
    // Coarse to fine: first every other line of the grid in each of the four parameters
    // (3 mm, 10 degree steps), then the grid's neighbours of the best of those.
    let first: Vec<LineIndex> = all_lines
        .iter()
        .copied()
        .filter(|&(iq, im, ic)| {
            screens == Screens::Exhaustive
                || qs[iq].2.is_multiple_of(2)
                    && qs[iq].3.is_multiple_of(2)
                    && im.is_multiple_of(2)
                    && ic.is_multiple_of(2)
        })
        .collect();
    let mut screening = Screening::new();
    screening.screen(&screen, &first, &line, cancelled)?;
    screening.sort();
    let mut seen: std::collections::BTreeSet<LineIndex> = first.iter().copied().collect();
    let mut second = Vec::new();
    for &(_, (iq, im, ic)) in screening.coarse.iter().take(FINE_AROUND) {
        let (_, _, ix, iz) = qs[iq];
        for dx in -1i64..=1 {
            for dz in -1i64..=1 {
                let (nx, nz) = (ix as i64 + dx, iz as i64 + dz);
                if nx < 0 || nz < 0 {
                    continue;
                }
                let Some(&nq) = q_at.get(&(nx as usize, nz as usize)) else {
                    continue;
                };
                for dm in -1i64..=1 {
                    for dc in -1i64..=1 {
                        let (m, c) = (im as i64 + dm, ic as i64 + dc);
                        if m < 0 || c < 0 || m >= medials.len() as i64 || c >= cranials.len() as i64
                        {
                            continue;
                        }
                        let key = (nq, m as usize, c as usize);
                        if seen.insert(key) {
                            second.push(key);
                        }
                    }
                }
            }
        }
    }
    if screening.coarse.is_empty() {
        // No usable line among the coarse ones (a narrow or odd pedicle): screen the whole
        // grid, so that "no line" is never claimed from a subset.
        second = all_lines
            .iter()
            .copied()
            .filter(|l| !seen.contains(l))
            .collect();
    }
    screening.screen(&screen, &second, &line, cancelled)?;
    screening.sort();
    let coarse: Vec<Candidate> = screening.coarse.into_iter().map(|(c, _)| c).collect();
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    if coarse.is_empty() {
        return Ok(infeasible_no_corridor(ctx, qs.is_empty()));
    }
    let seeds: Vec<Candidate> = coarse.iter().take(SEEDS).copied().collect();
    let mut refined: Vec<Candidate> = seeds.par_iter().map(|c| screen.refine(*c)).collect();
    refined.sort_by(order);
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    // Exact verification: refined seeds first, then the coarse list in order.
    let queue: Vec<Candidate> = refined
        .iter()
        .chain(coarse.iter().skip(SEEDS))
        .take(MAX_EXACT)
        .copied()
        .collect();
    let to_lps = f.vertebra_to_lps();
    let mut best_feasible: Option<Measurement> = None;
    let mut best_any: Option<Measurement> = None;
    for batch in queue.chunks(SEEDS) {
        let measured: Vec<Measurement> = batch
            .par_iter()
            .map(|c| {
                let from = to_lps * (c.q + c.dir * (c.t_entry - 10.0));
                let tip = to_lps * (c.q + c.dir * c.t_tip);
                measure(ctx, &from, &tip)
            })
            .collect();
        for m in measured {
            let sc = m.score(ctx.safety);
            if m.violations.is_empty() {
                if best_feasible
                    .as_ref()
                    .is_none_or(|b| sc > b.score(ctx.safety))
                {
                    best_feasible = Some(m);
                }
            } else if best_any.as_ref().is_none_or(|b| sc > b.score(ctx.safety)) {
                best_any = Some(m);
            }
        }
        if best_feasible.is_some() {
            break;
        }
        if cancelled() {
            return Err(PlanError::Cancelled);
        }
    }
    if let Some(m) = best_feasible {
        return Ok(SideOutcome::Feasible(Box::new(m)));
    }
    // Infeasible: report the best candidate's violations, and the widest bony corridor found.
    let best = best_any.expect("at least one candidate was measured");
    // The widest corridor over every line (the screening above dropped low scores).
    let all: Vec<Candidate> = all_lines
        .par_iter()
        .filter_map(|i| screen.candidate(line(*i), Real::NEG_INFINITY))
        .filter(|c| c.entry_ok)
        .collect();
    let bone_best = all
        .iter()
        .max_by(|a, b| {
            a.cortex.total_cmp(&b.cortex).then_with(|| {
                b.params
                    .partial_cmp(&a.params)
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        })
        .copied()
        .expect("non-empty");
    let bone_m = measure(
        ctx,
        &(to_lps * (bone_best.q + bone_best.dir * (bone_best.t_entry - 10.0))),
        &(to_lps * (bone_best.q + bone_best.dir * bone_best.t_tip)),
    );
    let r = ctx.instrument.cannula_radius_mm();
    let corridor = 2.0 * (best.cortex_clearance_mm.max(bone_m.cortex_clearance_mm) + r);
    Ok(diagnose(ctx, &best, corridor))
}

fn corridor_reason(ctx: &SideContext<'_>, corridor_mm: Real) -> Reason {
    let d = ctx.instrument.cannula_outer_diameter_mm;
    let m = ctx.safety.cortex_margin_mm;
    Reason {
        code: ReasonCode::PedicleCorridorTooNarrow,
        message: format!(
            "narrowest corridor {corridor_mm:.1} mm < cannula {d} mm + 2 x {m} mm margin"
        ),
        value_mm: Some(corridor_mm),
        limit_mm: Some(d + 2.0 * m),
    }
}

fn infeasible_no_corridor(ctx: &SideContext<'_>, no_bone: bool) -> SideOutcome {
    let reason = if no_bone {
        Reason {
            code: ReasonCode::PedicleNotFound,
            message: format!(
                "no bone deeper than half the cannula radius plus margin in the {} pedicle region",
                ctx.side
            ),
            value_mm: None,
            limit_mm: None,
        }
    } else {
        Reason {
            code: ReasonCode::PedicleNotFound,
            message: format!(
                "no straight line through the {} pedicle enters the bone behind the body and lateral of the canal",
                ctx.side
            ),
            value_mm: None,
            limit_mm: None,
        }
    };
    SideOutcome::Infeasible {
        reasons: vec![reason],
        alternatives: vec![extrapedicular()],
    }
}

fn extrapedicular() -> Alternative {
    Alternative {
        code: AlternativeCode::Extrapedicular,
        message: "an extrapedicular approach (lateral of the pedicle) may work: plan it by hand and check it with evaluate".into(),
    }
}

/// Turn the best candidate's violations into planning reasons with measured numbers.
fn diagnose(ctx: &SideContext<'_>, best: &Measurement, corridor_mm: Real) -> SideOutcome {
    let mut reasons = Vec::new();
    let mut alternatives = Vec::new();
    let r = ctx.instrument.cannula_radius_mm();
    let margin = ctx.safety.cortex_margin_mm;
    let fits_corridor = corridor_mm >= ctx.instrument.cannula_outer_diameter_mm + 2.0 * margin;
    if !fits_corridor {
        reasons.push(corridor_reason(ctx, corridor_mm));
        let max_d = corridor_mm - 2.0 * margin;
        if max_d >= 1.5 {
            alternatives.push(Alternative {
                code: AlternativeCode::SmallerCannula,
                message: format!(
                    "a cannula of at most {:.1} mm outer diameter fits the corridor (e.g. a 13-15 gauge vertebroplasty needle)",
                    (max_d * 10.0).floor() / 10.0
                ),
            });
        }
        alternatives.push(extrapedicular());
    }
    for v in &best.violations {
        let (code, keep) = match v.code {
            ReasonCode::CortexMarginViolated => {
                (ReasonCode::PedicleCorridorTooNarrow, fits_corridor)
            }
            ReasonCode::CanalMarginViolated => (ReasonCode::CanalTooClose, true),
            ReasonCode::NerveRootMarginViolated => (ReasonCode::NerveRootTooClose, true),
            ReasonCode::ForbiddenMarginViolated => (ReasonCode::ForbiddenStructureTooClose, true),
            ReasonCode::WorkingLengthTooShort => (ReasonCode::WorkingLengthTooShort, true),
            ReasonCode::SkinNotReached => (ReasonCode::SkinNotReached, true),
            other => (other, true),
        };
        if !keep {
            continue;
        }
        if code == ReasonCode::PedicleCorridorTooNarrow {
            // The corridor fits, but the best line found still grazes the cortex.
            reasons.push(Reason {
                code,
                message: format!(
                    "the best straight path keeps only {:.2} mm from the cortex (margin {margin} mm)",
                    v.value_mm.unwrap_or(0.0)
                ),
                value_mm: Some(2.0 * (v.value_mm.unwrap_or(0.0) + r)),
                limit_mm: Some(ctx.instrument.cannula_outer_diameter_mm + 2.0 * margin),
            });
            continue;
        }
        if reasons.iter().any(|x: &Reason| x.code == code) {
            continue;
        }
        reasons.push(Reason {
            code,
            message: v.message.clone(),
            value_mm: v.value_mm,
            limit_mm: v.limit_mm,
        });
        match code {
            ReasonCode::WorkingLengthTooShort => alternatives.push(Alternative {
                code: AlternativeCode::LongerCannula,
                message: format!(
                    "a working length of at least {:.0} mm would reach",
                    best.insertion_length_mm.ceil()
                ),
            }),
            ReasonCode::CanalTooClose | ReasonCode::NerveRootTooClose
                if !alternatives
                    .iter()
                    .any(|a| a.code == AlternativeCode::SmallerCannula) =>
            {
                alternatives.push(Alternative {
                    code: AlternativeCode::SmallerCannula,
                    message: "a thinner cannula leaves more room to the protected structure".into(),
                })
            }
            _ => {}
        }
    }
    if reasons.is_empty() {
        reasons.push(corridor_reason(ctx, corridor_mm));
    }
    SideOutcome::Infeasible {
        reasons,
        alternatives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anatomy::{AnatomyInput, Level, Side};
    use crate::prepare::{PrepareOptions, PreparedAnatomy};
    use crate::request::{Instrument, Safety};

    use crate::test_common as common;

    /// Search every side of `input` both ways: the same sides must come out feasible, and the
    /// coarse-to-fine line's exactly measured score must be no worse than the exhaustive one's.
    fn compare_with_exhaustive(input: AnatomyInput) {
        let name = input.name.clone();
        let anatomy = PreparedAnatomy::prepare(input, &PrepareOptions::standard())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (instrument, safety) = (Instrument::contract_default(), Safety::contract_default());
        let never = || false;
        for level in anatomy.levels() {
            let vertebra = anatomy.vertebra(level).expect("level");
            for side in [Side::Left, Side::Right] {
                let ctx = SideContext {
                    anatomy: &anatomy,
                    vertebra,
                    keep_outs: anatomy.keep_outs(level),
                    side,
                    instrument: &instrument,
                    safety: &safety,
                };
                let fast = search_side_with(&ctx, &never, Screens::CoarseToFine).unwrap();
                let slow = search_side_with(&ctx, &never, Screens::Exhaustive).unwrap();
                match (fast, slow) {
                    (SideOutcome::Feasible(f), SideOutcome::Feasible(s)) => {
                        assert!(f.violations.is_empty());
                        let (fs, ss) = (f.score(&safety), s.score(&safety));
                        assert!(
                            fs >= ss - 1e-9,
                            "{name} {level} {side}: coarse to fine scores {fs}, every line {ss}"
                        );
                    }
                    (
                        SideOutcome::Infeasible { reasons: a, .. },
                        SideOutcome::Infeasible { reasons: b, .. },
                    ) => {
                        assert_eq!(a, b, "{name} {level} {side}");
                    }
                    (f, s) => {
                        panic!("{name} {level} {side}: coarse to fine {f:?}, every line {s:?}")
                    }
                }
            }
        }
    }

    /// The coarse-to-fine screening against the slow, obvious search (every line of the grid)
    /// on the built-in L1-L5 (posed as in a CT) and a vertebra too narrow for the cannula.
    #[test]
    fn coarse_to_fine_matches_the_exhaustive_grid_on_synthetic_vertebrae() {
        compare_with_exhaustive(crate::synth::demo_anatomy());
        let mut params = crate::synth::VertebraParams::mean(Level::L3);
        params.pedicle_width_mm = 4.4;
        let v = crate::synth::vertebra(&params, &crate::math::Pose::identity());
        compare_with_exhaustive(common::single_vertebra("narrow", Level::L3, v.mesh));
    }

    /// The same on the real meshes of `../shared/anatomy` (skipped without them, a failure
    /// under CI=true).
    #[test]
    fn coarse_to_fine_matches_the_exhaustive_grid_on_real_vertebrae() {
        let Some(dir) = common::shared_anatomy() else {
            return;
        };
        for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
            compare_with_exhaustive(common::load_set(&dir, set));
        }
    }
}
