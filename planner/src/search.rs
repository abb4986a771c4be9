//! Trajectory search for one side of one vertebra.
//!
//! A line is parameterised in the vertebra frame by the point `q` where it crosses the plane
//! a few millimetres behind the posterior wall of the body (inside the pedicle) and by its
//! medial and cranial angles. [`search_side`] takes these steps, each a function below:
//!
//! 1. `LineGrid::new`: the grid of lines ([`GRID_STEP_MM`], [`GRID_STEP_DEG`]).
//! 2. `screen_coarse`: every [`COARSE_FACTOR`]-th line in each parameter is screened in
//!    parallel on the approximate distance grids (a few microseconds each).
//!    The incidence limit at the bone entry cuts the space of lines into patches; so that a
//!    patch between coarse lines is not missed, the coarse lines are screened with the limit
//!    relaxed by [`COARSE_INCIDENCE_SLACK_DEG`]: the lines over the request's limit only choose
//!    where to look closer (one pass gives both screenings, `Screening::screen`).
//! 3. `screen_fine`: the grid's neighbours of the best of those, under the true limit.
//! 4. `refine_best`: the best are refined locally by pattern search.
//! 5. `verify`: candidates are measured exactly in f64 ([`crate::evaluate::measure`]) in order
//!    until one passes. Only a trajectory that passes the exact measurement is ever returned.
//!    The refined lines are judged first, and where the pedicle is roomy steps 2-3 first keep
//!    only what they need, screening the lines they dropped again for the rest of the queue
//!    only when none of the refined lines passes (`screen_and_verify`): the same queue, bit
//!    for bit.
//! 6. `diagnose_infeasible`: otherwise the side is infeasible with measured reasons and the
//!    widest corridor found.
//!
//! What a line is worth (rules, weights, score, the grid measures) is [`crate::criteria`]'s.

use rayon::prelude::*;

use crate::anatomy::Level;
use crate::criteria::{
    self, centring_mm, docking_zone_mm, entry_incidence_cos, pedicle_span, samples_above, GridLine,
    GridSampler, ANTERIOR_THIRD_FRACTION, BALLOON_WEIGHT_PER_ML, CENTRING_CAP_MM, CENTRING_WEIGHT,
    GRID_SAMPLE_STEP_MM, MIN_ENTRY_BEHIND_WALL_MM, SLACK_RESERVE_MM, TIP_DEPTH_FRACTION,
};
use crate::error::PlanError;
use crate::evaluate::{self, measure, Measurement, SideContext};
use crate::math::{FixedHashMap, FixedHashSet, Point, Pose, Real, Vector};
use crate::plan::{Alternative, AlternativeCode, Reason, ReasonCode};

/// The plane of `q`: this far behind the posterior wall of the body, mm (the pedicle's
/// narrowest part, the isthmus, lies just behind the body).
pub const REFERENCE_PLANE_BEHIND_WALL_MM: Real = 5.0;
/// Medial angle range searched, degrees (lumbar pedicles converge by up to ~30 degrees; a
/// little divergence and extra convergence are allowed for rotated or odd pedicles).
pub const MEDIAL_RANGE_DEG: (Real, Real) = (-15.0, 45.0);
/// How far from the mid-sagittal plane (x = 0 in the vertebra frame) the balloon's centre
/// (kyphoplasty) or the tip (vertebroplasty) of a unipedicular plan may lie, mm: well below the
/// execution error a plan must survive anyway (registration 0.7-1.5 mm, robot-guided tip
/// 1.9 +/- 1.5 mm; clinical.md "Navigation and execution error"), so a plan within it is on the
/// midline as far as anyone can place it.
pub const MIDLINE_TOLERANCE_MM: Real = 1.0;
/// Where a unipedicular line may cross the midline, as fractions of the body's depth from its
/// posterior wall (its tip, beyond, must be in the anterior third; see
/// [`UNIPEDICULAR_MAX_TIP_DEPTH_FRACTION`]).
pub const UNIPEDICULAR_MIDLINE_DEPTH_RANGE: (Real, Real) = (0.3, 0.85);
/// A unipedicular line's tip is searched up to this fraction of the body's depth along the
/// line (a search preference, not a safety rule): deeper tips leave the balloon behind them
/// too close to the anterior cortex to inflate (measured on the mean L3: a tip at 0.9 leaves
/// room for the smallest 5 mm balloon only); the bilateral tip sits at [`TIP_DEPTH_FRACTION`].
pub const UNIPEDICULAR_MAX_TIP_DEPTH_FRACTION: Real = 0.8;
/// Cranial angle range searched, degrees.
pub const CRANIAL_RANGE_DEG: (Real, Real) = (-25.0, 25.0);
/// `q` is searched from this far medial of the canal's edge, mm (the pedicle's medial wall
/// lies at about the canal's edge)...
pub const Q_MEDIAL_OF_CANAL_EDGE_MM: Real = 3.0;
/// ... to this far lateral of it, mm (past the lateral wall of the widest pedicle, L5's 18 mm).
pub const Q_LATERAL_OF_CANAL_EDGE_MM: Real = 22.0;
/// Step of the grid of lines in the directions (medial and cranial angles), degrees.
pub const GRID_STEP_DEG: Real = 5.0;
/// Step of the grid of lines in `q` (lateral and superior offsets), mm.
pub const GRID_STEP_MM: Real = 1.5;
/// The coarse screening takes every `COARSE_FACTOR`-th line of the grid in each of the four
/// parameters (3 mm, 10 degrees).
pub const COARSE_FACTOR: usize = 2;
/// The best lines of the coarse screening whose neighbours on the full grid are screened.
const FINE_AROUND: usize = 16;
/// The surface drop under the cannula's footprint the screening assumes when it places the end
/// of the docking zone, mm (the exact measurement measures it: [`criteria::docking_zone_mm`]).
/// A round posterior surface of a pedicle of 8-10 mm falls away by a few tenths of a millimetre
/// over a 3 mm footprint; lines that fall short by less are weeded out by the verification.
pub const DOCKING_DROP_SCREEN_MM: Real = 0.5;
/// The relaxed coarse screening accepts bone entries this much steeper than the request's
/// incidence limit, degrees: the entry's incidence changes by tens of degrees between
/// neighbouring coarse lines where the axis moves from one face of the posterior elements to
/// another, so a coarse line just over the limit can have fine neighbours under it.
pub const COARSE_INCIDENCE_SLACK_DEG: Real = 20.0;
/// Lines refined by pattern search (and measured in each batch of the verification).
const SEEDS: usize = 8;
/// Lines screened per chunk between updates of the score threshold.
const SCREEN_CHUNK: usize = 64;
/// Allowance for round-off in the score bounds.
const SCORE_BOUND_TOLERANCE: Real = 1e-9;
/// Most lines measured exactly; the screening's threshold keeps this many when the first batch
/// of the verification has no safe line ([`screen_and_verify`]).
const MAX_EXACT: usize = 64;
/// A pedicle whose outer width leaves at least this much beyond the cannula and its two cortex
/// margins is roomy, mm. Rules of speed only, the plan is the same either way: a roomy side's
/// screening first keeps only the first batch of the verification ([`screen_and_verify`]) and
/// takes the balloon term before the centring term ([`Screen::roomy`]); a tighter one keeps the
/// whole queue at once and takes the centring first. On the built-in spine the first batch
/// has a safe line on every lumbar side (3.2 mm or more to spare) and none on T8's (0.38 mm)
/// or T5's (none), where screening the dropped lines again cost 3-6 % more instructions than
/// keeping the whole queue at once, and the balloon first 4 % more.
const ROOMY_PEDICLE_SPARE_MM: Real = 2.0;
/// The exact measurement is given the line from this far behind the screened bone entry, mm
/// (any point behind the tip will do; this one is clear of the bone).
const FROM_BEHIND_ENTRY_MM: Real = 10.0;
/// The march back from `q` to the bone entry gives up this far behind `q`, mm (longer than any
/// pedicle and lamina).
const MARCH_BACK_MM: Real = 80.0;
/// The march forward from `q` to the anterior cortex gives up this far ahead, mm (deeper than
/// any vertebral body).
const MARCH_FORWARD_MM: Real = 100.0;
/// Keep-outs are screened along the cannula from this far behind the bone entry, mm (the
/// roots and canal near the vertebra; the exact measurement takes the whole cannula).
const KEEP_OUT_SCREEN_BEHIND_ENTRY_MM: Real = 40.0;
/// `q` must be at least this fraction of (cannula radius + cortex margin) inside the bone.
const Q_MIN_DEPTH_FRACTION: Real = 0.5;
/// A keep-out march looks at the block bounds ([`crate::voxel::KeepOutGrid`]) only after a
/// sample at least this many samples' Lipschitz room above the running minimum (or the cap):
/// nearer, a block is seldom above it and the look is wasted. A rule of speed only; on T8
/// (instructions, one thread) 2 gave 205.2 M, 4 204.6 M, 8 205.3 M, looking after every sample
/// 215.3 M and no blocks 210.0 M.
const FAR_SAMPLES: usize = 8;

/// Where `line` first reads outside the bone (below 0) marching from `t = 0` by `step` (negative
/// to march backwards) for at most `limit` mm: the sample's `t`, or `None`. Samples that the
/// grid's Lipschitz bound keeps inside are skipped.
fn first_outside(line: &GridLine<'_>, step: Real, limit: Real) -> Option<Real> {
    let mut skip = 0usize;
    let mut t = step;
    while t.abs() < limit {
        if skip > 0 {
            skip -= 1;
            t += step;
            continue;
        }
        let s = line.at(t);
        if s < 0.0 {
            return Some(t);
        }
        skip = samples_above(s, 0.0);
        t += step;
    }
    None
}

/// `min(cap, smallest sample of line)` from a start `t0` in steps of [`GRID_SAMPLE_STEP_MM`]
/// up to an end `t1`, taken in pieces: the minimum so far carried on to a further end with the
/// same samples as one call would take (the screening bounds a line's score with the pedicle's
/// part of its cortex clearance before it marches to the far cortex). Samples that the grid's
/// Lipschitz bound keeps at or above the running minimum (or the cap) cannot change the result
/// and are not taken.
#[derive(Clone, Copy, Debug, PartialEq)]
struct RunningMin {
    m: Real,
    skip: usize,
    t: Real,
    far: bool,
}

impl RunningMin {
    fn from(t0: Real) -> Self {
        RunningMin {
            m: Real::INFINITY,
            skip: 0,
            t: t0,
            far: true,
        }
    }

    /// Take the samples up to `t1`; `min(cap, smallest sample so far)`.
    fn to(&mut self, line: &GridLine<'_>, t1: Real, cap: Real) -> Real {
        self.up_to_while(line, t1, cap, |_| true)
            .expect("never stopped")
    }

    /// [`RunningMin::to`], but `None` as soon as the smallest sample so far fails `ok` (which
    /// must hold of a larger value whenever it holds of a smaller one: the minimum only falls,
    /// so a line it fails for is sure to fail at the end too).
    fn up_to_while(
        &mut self,
        line: &GridLine<'_>,
        t1: Real,
        cap: Real,
        ok: impl Fn(Real) -> bool,
    ) -> Option<Real> {
        while self.t <= t1 {
            if self.skip > 0 {
                self.skip -= 1;
                self.t += GRID_SAMPLE_STEP_MM;
                continue;
            }
            // A keep-out's block above the minimum (or the cap) is passed over whole (looked
            // at only where the last sample was well above them: a block near them seldom is).
            if self.far {
                let passed =
                    line.samples_in_block_above(self.t, GRID_SAMPLE_STEP_MM, self.m.min(cap));
                if passed > 0 {
                    self.skip = passed - 1;
                    self.t += GRID_SAMPLE_STEP_MM;
                    continue;
                }
            }
            let s = line.at(self.t);
            let before = self.m;
            self.m = self.m.min(s);
            if self.m < before && !ok(self.m) {
                return None;
            }
            self.skip = samples_above(s, self.m.min(cap));
            self.far = self.skip >= FAR_SAMPLES;
            self.t += GRID_SAMPLE_STEP_MM;
        }
        Some(self.m.min(cap))
    }
}

/// What a side's search aims for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SearchMode {
    /// Bilateral transpedicular: the tip at [`TIP_DEPTH_FRACTION`] of the body's depth along
    /// the line, medial angles over [`MEDIAL_RANGE_DEG`].
    Bilateral,
    /// Unipedicular: the line is aimed across (through the midline point of its third
    /// parameter, [`UNIPEDICULAR_MIDLINE_DEPTH_RANGE`]) and the tip
    /// lies `midline_behind_tip_mm` beyond the point where the axis crosses the mid-sagittal
    /// plane (x = 0 in the vertebra frame): half the shortest balloon for kyphoplasty (that
    /// balloon is then centred on the midline), 0 for vertebroplasty (the tip on the midline).
    /// The tip must lie in the anterior third of the body.
    Unipedicular { midline_behind_tip_mm: Real },
}

impl SearchMode {
    /// The range and grid step of a line's third parameter: the medial angle (degrees) for
    /// bilateral; for unipedicular the vertebra-frame y where the axis crosses the midline
    /// (mm), from [`UNIPEDICULAR_MIDLINE_DEPTH_RANGE`] of the body's depth (the tip's own
    /// window is checked on each line). Parameterised by where it meets the midline, the lines
    /// that reach their target fill a box of the grid, not a thin band across it, so the
    /// coarse grid samples them.
    fn third_parameter(self, frame: &crate::frame::VertebraFrame) -> ((Real, Real), Real) {
        match self {
            SearchMode::Bilateral => (MEDIAL_RANGE_DEG, GRID_STEP_DEG),
            SearchMode::Unipedicular { .. } => {
                let (d0, d1) = UNIPEDICULAR_MIDLINE_DEPTH_RANGE;
                let y = |d: Real| frame.posterior_wall_y_mm - d * frame.body_depth_mm;
                ((y(d1), y(d0)), GRID_STEP_MM)
            }
        }
    }

    /// Whether an exactly measured, safe line meets the mode's target: for unipedicular, the
    /// point `midline_behind_tip_mm` behind the tip within [`MIDLINE_TOLERANCE_MM`] of the
    /// midline, and the tip in the anterior third.
    pub fn accepts(self, ctx: &SideContext<'_>, m: &Measurement) -> bool {
        match self {
            SearchMode::Bilateral => true,
            SearchMode::Unipedicular {
                midline_behind_tip_mm,
            } => {
                let p = m.tip_lps - m.direction_lps.into_inner() * midline_behind_tip_mm;
                let x = (ctx.vertebra.frame.lps_to_vertebra * p).x;
                x.abs() <= MIDLINE_TOLERANCE_MM && m.tip_depth_fraction >= ANTERIOR_THIRD_FRACTION
            }
        }
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

/// A screened line with its approximate figures; points and directions in the vertebra frame,
/// `t` in mm along `dir_vertebra` from `q_vertebra`.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// (lateral offset x, superior offset z) of q in the reference plane, medial, cranial.
    params: [Real; 4],
    q_vertebra: Point,
    dir_vertebra: Vector,
    t_entry: Real,
    t_tip: Real,
    /// Approximate clearance of the cannula surface to the cortex, mm.
    cortex: Real,
    /// Cosine of the incidence at the bone entry (the screening's estimate).
    cos_incidence: Real,
    score: Real,
}

impl Candidate {
    /// The line as the exact measurement takes it, in LPS: a point behind the bone entry, and
    /// the tip.
    fn endpoints_lps(&self, vertebra_to_lps: &Pose) -> (Point, Point) {
        let (q, dir) = (self.q_vertebra, self.dir_vertebra);
        (
            vertebra_to_lps * (q + dir * (self.t_entry - FROM_BEHIND_ENTRY_MM)),
            vertebra_to_lps * (q + dir * self.t_tip),
        )
    }
}

/// What screening a line of one side needs, in the vertebra frame.
#[derive(Clone)]
struct Screen<'a> {
    ctx: &'a SideContext<'a>,
    /// Steepest incidence at the bone entry a screened line may have, degrees (the request's
    /// limit, or the relaxed coarse one).
    max_incidence_deg: Real,
    bone_grid: GridSampler<'a>,
    vertebra_to_grid: Pose,
    /// Vertebra-frame y of the plane of `q`.
    y_ref: Real,
    sign: Real,
    radius: Real,
    canal_half_width: Real,
    mode: SearchMode,
    /// The largest balloon the instrument makes (longest length, largest diameter), ml: the
    /// balloon term's bound before a line's room is measured.
    balloon_max_ml: Real,
    /// Whether the score's balloon term counts (off in `search_side_with`'s fallback, and for
    /// a unipedicular line, whose term is 0).
    balloon_term: bool,
    /// Whether a line is screened only as far as its cortex clearance (the infeasible
    /// diagnosis's widest corridor, `diagnose_infeasible`); its `score` is then NaN, and the
    /// threshold of [`Screen::screened`] is one on the cortex clearance: a line whose clearance
    /// is sure to fall below it is dropped, its march stopped there.
    cortex_only: bool,
    /// Whether the keep-out marches stop early (capped at the cortex's slack, stopped at the
    /// threshold); off only in the tests, as the slow path they compare with.
    prune: bool,
    /// Whether the side's pedicle is roomy ([`roomy_pedicle`]). A rule of speed only, the
    /// lines and their figures are the same either way: where it is, the balloon term is taken
    /// before the centring term (the centring is near its cap and drops few lines, the balloon
    /// many); in a tight pedicle the centring first (it drops many lines before their balloon).
    roomy: bool,
    /// Where the lines' geometry is kept for a later pass on the same lines
    /// ([`LineGeometries`]), if anywhere.
    geometries: Option<&'a LineGeometries>,
}

impl<'a> Screen<'a> {
    fn new(ctx: &'a SideContext<'a>, mode: SearchMode) -> Self {
        let f = &ctx.vertebra.frame;
        let vertebra_to_grid = f.vertebra_to_grid();
        Screen {
            ctx,
            max_incidence_deg: ctx.safety.max_entry_incidence_deg,
            bone_grid: GridSampler::bone(&ctx.vertebra.bone_sdf, vertebra_to_grid),
            vertebra_to_grid,
            y_ref: f.posterior_wall_y_mm + REFERENCE_PLANE_BEHIND_WALL_MM,
            sign: ctx.side.sign(),
            radius: ctx.instrument.cannula_radius_mm(),
            canal_half_width: f.canal_half_width_mm[ctx.side],
            mode,
            balloon_max_ml: criteria::capsule_volume_ml(
                ctx.instrument
                    .balloon_lengths_mm
                    .iter()
                    .copied()
                    .fold(0.0, Real::max),
                ctx.instrument.balloon_max_diameter_mm,
            ),
            // A unipedicular line's balloon is centred on the midline, where the balloon term is
            // 0 on every line (`criteria::balloon_room_ml`): the term is off, so its bounds do
            // not wait for the room to be measured, and there is no fallback pass without it.
            balloon_term: mode == SearchMode::Bilateral,
            cortex_only: false,
            prune: true,
            roomy: roomy_pedicle(ctx),
            geometries: None,
        }
    }
}

impl Screen<'_> {
    /// `q` of the line with lateral offset `x` and superior offset `z`.
    fn q_vertebra(&self, x: Real, z: Real) -> Point {
        Point::new(self.sign * x, self.y_ref, z)
    }

    /// The medial and cranial angles of a line's parameters (for unipedicular, the medial angle
    /// that takes the line from `q` to its midline point).
    fn angles_deg(&self, params: &[Real; 4]) -> (Real, Real) {
        match self.mode {
            SearchMode::Bilateral => (params[2], params[3]),
            SearchMode::Unipedicular { .. } => {
                let (across, forward) = (params[0], self.y_ref - params[2]);
                (across.atan2(forward).to_degrees(), params[3])
            }
        }
    }

    fn direction_vertebra(&self, medial_deg: Real, cranial_deg: Real) -> Vector {
        let tm = medial_deg.to_radians().tan();
        let tc = cranial_deg.to_radians().tan();
        Vector::new(-self.sign * tm, -1.0, tc).normalize()
    }

    /// The terms of the score that need no grid (alignment with the pedicle's centres,
    /// convergence, tip depth) of the line through `q` along `dir`.
    fn fixed_terms(&self, q_vertebra: &Point, dir_vertebra: &Vector, medial: Real) -> Real {
        criteria::score(
            0.0,
            0.0,
            0.0,
            criteria::axis_offset_mm(
                &self.ctx.vertebra.pedicle_centroids[self.ctx.side],
                q_vertebra,
                dir_vertebra,
            ),
            medial,
            TIP_DEPTH_FRACTION,
        )
    }

    /// Screen one line. `None` when it is not a usable line, or when its score is sure to be
    /// below `threshold` (upper bounds of the score are checked as its terms come in, the
    /// cheapest first), so such a line could never be chosen.
    fn candidate(&self, params: [Real; 4], threshold: Real) -> Option<Candidate> {
        self.screened(params, threshold).ok()
    }

    /// [`Screen::candidate`], saying why a line gives none.
    fn screened(&self, params: [Real; 4], threshold: Real) -> Result<Candidate, Dropped> {
        let Some(geometries) = self.geometries else {
            return self.screened_knowing(params, threshold, &mut LineGeometry::default());
        };
        let key = params.map(Real::to_bits);
        let before = geometries.get(&key);
        let mut known = before;
        let got = self.screened_knowing(params, threshold, &mut known);
        if known != before {
            geometries.put(key, known);
        }
        got
    }

    /// [`Screen::screened`], taking the line's geometry from `known` where it is there, and
    /// adding to it what is measured.
    fn screened_knowing(
        &self,
        params: [Real; 4],
        threshold: Real,
        known: &mut LineGeometry,
    ) -> Result<Candidate, Dropped> {
        // With `cortex_only` the threshold is the cortex clearance's and no score bound applies.
        let (threshold, cortex_floor) = if self.cortex_only {
            (Real::NEG_INFINITY, threshold)
        } else {
            (threshold, Real::NEG_INFINITY)
        };
        // The cortex marches, stopped for `cortex_only` where the clearance falls below its floor.
        let march = |cortex_min: &mut RunningMin, bone: &GridLine<'_>, t1: Real| {
            if self.cortex_only {
                cortex_min
                    .up_to_while(bone, t1, Real::INFINITY, |m| {
                        m - self.radius >= cortex_floor
                    })
                    .ok_or(Dropped::BelowThreshold)
            } else {
                Ok(cortex_min.to(bone, t1, Real::INFINITY))
            }
        };
        let [x, z, _, _] = params;
        let (medial, cranial) = self.angles_deg(&params);
        let v = self.ctx.vertebra;
        let f = &v.frame;
        let safety = self.ctx.safety;
        let q = self.q_vertebra(x, z);
        let dir = self.direction_vertebra(medial, cranial);
        // Score terms that need no grid: the score is at most the slack reserve plus the
        // largest centring term plus these.
        let fixed_terms = self.fixed_terms(&q, &dir, medial);
        // Until the line's balloon is measured, its term is at most the largest balloon the
        // instrument makes.
        let bound = |worst_at_most: Real, balloon_at_most: Real, centring_at_most: Real| {
            worst_at_most.min(SLACK_RESERVE_MM)
                + BALLOON_WEIGHT_PER_ML
                    * if self.balloon_term {
                        balloon_at_most
                    } else {
                        0.0
                    }
                + CENTRING_WEIGHT * centring_at_most
                + fixed_terms
                + SCORE_BOUND_TOLERANCE
        };
        if bound(Real::INFINITY, self.balloon_max_ml, CENTRING_CAP_MM) < threshold {
            return Err(Dropped::BelowThreshold);
        }
        // The line in the grid frame: samples at `t` mm from q.
        let bone = self.bone_grid.line(&q, &dir);
        let (t_entry, cos_incidence) = match known.entry {
            Some(e) => e.ok_or(Dropped::Unusable)?,
            None => {
                let e = self.entry(&q, &dir, &bone);
                known.entry = Some(e);
                e.ok_or(Dropped::Unusable)?
            }
        };
        // The incidence at the entry needs nothing further along the line: checked before the
        // rest of the line is sampled.
        if cos_incidence < self.max_incidence_deg.to_radians().cos() {
            return Err(Dropped::Unusable);
        }
        // The cortex margin applies from the end of the docking zone (`t_start`) to the tip
        // (`t_tip + cortex_start(t_entry - t_tip, zone)`). The surface's drop under the
        // footprint is the exact measurement's; the screening allows a fixed one
        // ([`DOCKING_DROP_SCREEN_MM`]).
        let zone = docking_zone_mm(
            self.ctx.instrument,
            safety,
            cos_incidence,
            DOCKING_DROP_SCREEN_MM,
        );
        let t_start = t_entry + zone;
        // The cortex clearance through the pedicle, up to the posterior wall (`t_wall`), bounds
        // the clearance to the tip from above: most lines are dropped here, before the
        // centring term and the march to the far cortex are taken.
        let t_wall = (f.posterior_wall_y_mm - q.y) / dir.y;
        // (Marched in full, not `cortex_only`, it is the same on every pass: kept.)
        let (mut cortex_min, pedicle_min) = match known.pedicle {
            Some(p) if !self.cortex_only => p,
            _ => {
                let mut cortex_min = RunningMin::from(t_start);
                let m = march(&mut cortex_min, &bone, t_wall)?;
                if !self.cortex_only {
                    known.pedicle = Some((cortex_min, m));
                }
                (cortex_min, m)
            }
        };
        let pedicle_cortex = pedicle_min - self.radius;
        if bound(
            pedicle_cortex - safety.cortex_margin_mm,
            self.balloon_max_ml,
            CENTRING_CAP_MM,
        ) < threshold
        {
            return Err(Dropped::BelowThreshold);
        }
        // The centring term: the pedicle's part of the line, up to the posterior wall (before
        // the march to the far cortex, where the pedicle is tight: [`Screen::roomy`]).
        let centring = || match pedicle_span(f, &q, &dir, t_entry, t_wall) {
            Some((a, b)) => centring_mm(b - a, self.radius, safety.cortex_margin_mm, |s| {
                bone.at(a + (b - a) * s)
            }),
            None => 0.0,
        };
        let early_centring = if self.roomy || self.cortex_only {
            None
        } else {
            let c = known.centring.unwrap_or_else(centring);
            known.centring = Some(c);
            if bound(
                pedicle_cortex - safety.cortex_margin_mm,
                self.balloon_max_ml,
                c,
            ) < threshold
            {
                return Err(Dropped::BelowThreshold);
            }
            Some(c)
        };
        let centring_at_most = early_centring.unwrap_or(CENTRING_CAP_MM);
        let known_far = known.far.filter(|_| !self.cortex_only);
        if let Some(Err(())) = known_far {
            return Err(Dropped::Unusable);
        }
        let t_exit = match known_far {
            Some(Ok((t_exit, _, _))) => t_exit,
            _ => match first_outside(&bone, GRID_SAMPLE_STEP_MM, MARCH_FORWARD_MM) {
                Some(t) => t,
                None => {
                    known.far = Some(Err(()));
                    return Err(Dropped::Unusable);
                }
            },
        };
        if t_wall >= t_exit {
            known.far = Some(Err(()));
            return Err(Dropped::Unusable);
        }
        let t_tip = match self.mode {
            SearchMode::Bilateral => t_wall + TIP_DEPTH_FRACTION * (t_exit - t_wall),
            SearchMode::Unipedicular {
                midline_behind_tip_mm,
            } => {
                // Aimed across: the axis must reach x = 0 going forward.
                let t = -q.x / dir.x + midline_behind_tip_mm;
                let depth = (t - t_wall) / (t_exit - t_wall);
                if dir.x * self.sign >= -1e-9
                    || !(ANTERIOR_THIRD_FRACTION..=UNIPEDICULAR_MAX_TIP_DEPTH_FRACTION)
                        .contains(&depth)
                {
                    known.far = Some(Err(()));
                    return Err(Dropped::Unusable);
                }
                t
            }
        };
        // The rest of the cortex clearance, to the tip (all of it at the tip when the docking
        // zone reaches past it, as `cortex_start` has it).
        let cortex = match known_far {
            Some(Ok((_, _, cortex))) => cortex,
            _ => {
                let cortex = if t_start < t_tip {
                    march(&mut cortex_min, &bone, t_tip)?
                } else {
                    bone.at(t_tip)
                }
                .min(bone.at(t_tip))
                    - self.radius;
                if !self.cortex_only {
                    known.far = Some(Ok((t_exit, t_tip, cortex)));
                }
                cortex
            }
        };
        if self.cortex_only {
            if cortex < cortex_floor {
                return Err(Dropped::BelowThreshold);
            }
            return Ok(Candidate {
                params,
                q_vertebra: q,
                dir_vertebra: dir,
                t_entry,
                t_tip,
                cortex,
                cos_incidence,
                score: Real::NAN,
            });
        }
        if bound(
            cortex - safety.cortex_margin_mm,
            self.balloon_max_ml,
            centring_at_most,
        ) < threshold
        {
            return Err(Dropped::BelowThreshold);
        }
        // The balloon term: the grid's room behind the tip, bounded first from one sample.
        let tip = q + dir * t_tip;
        // The bone's grid along the axis backwards from the tip, taken into the grid's frame
        // once.
        let behind_tip = self.bone_grid.line(&tip, &-dir);
        if self.balloon_term {
            let at_most = criteria::balloon_room_bound_ml(
                &self.ctx.instrument.balloon_lengths_mm,
                self.ctx.instrument.balloon_max_diameter_mm,
                safety.cortex_margin_mm,
                |s| behind_tip.at(s),
            );
            if bound(cortex - safety.cortex_margin_mm, at_most, centring_at_most) < threshold {
                return Err(Dropped::BelowThreshold);
            }
        }
        // Without the balloon term (the fallback pass, a unipedicular line) the room counts
        // nowhere: not measured.
        let balloon = if self.balloon_term {
            criteria::balloon_room_ml(
                &self.ctx.instrument.balloon_lengths_mm,
                self.ctx.instrument.balloon_max_diameter_mm,
                safety.cortex_margin_mm,
                |s| behind_tip.at(s),
                |s| f.posterior_wall_y_mm - (tip - dir * s).y,
                |s| self.sign * (tip - dir * s).x,
            )
        } else {
            0.0
        };
        if bound(cortex - safety.cortex_margin_mm, balloon, centring_at_most) < threshold {
            return Err(Dropped::BelowThreshold);
        }
        let centring = match early_centring {
            Some(c) => c,
            None => {
                let c = known.centring.unwrap_or_else(centring);
                known.centring = Some(c);
                if bound(cortex - safety.cortex_margin_mm, balloon, c) < threshold {
                    return Err(Dropped::BelowThreshold);
                }
                c
            }
        };
        // Keep-outs along the cannula near the vertebra. Their distance counts in the score
        // only below its cap (the slack reserve): samples that cannot go below it are skipped.
        // Nor can samples above the cortex's slack (the worst slack is at most that), with a
        // micrometre to spare for round-off: a keep-out whose samples stay above it leaves the
        // worst slack, and so the score, as its exact minimum would. And the march stops as
        // soon as the keep-out's minimum so far takes the score's bound below the threshold
        // (its minimum only falls: the line could not be kept).
        let cortex_slack = cortex - safety.cortex_margin_mm;
        let keep = |grid: &crate::voxel::KeepOutGrid, margin: Real| {
            let cap = self.radius + margin + SLACK_RESERVE_MM + 1.0;
            let line = GridSampler::keep_out(grid, self.vertebra_to_grid).line(&q, &dir);
            let mut from = RunningMin::from(t_entry - KEEP_OUT_SCREEN_BEHIND_ENTRY_MM);
            if !self.prune {
                return Some(from.up_to_while(&line, t_tip, cap, |_| true)? - self.radius);
            }
            let cap = cap.min(cortex_slack + margin + self.radius + 1e-6);
            from.up_to_while(&line, t_tip, cap, |m| {
                bound(
                    cortex_slack.min(m - self.radius - margin),
                    balloon,
                    centring,
                ) >= threshold
            })
            .map(|m| m - self.radius)
        };
        let canal =
            keep(&v.canal_distance, safety.canal_margin_mm).ok_or(Dropped::BelowThreshold)?;
        let root =
            keep(&v.root_distance, safety.nerve_root_margin_mm).ok_or(Dropped::BelowThreshold)?;
        let forbidden = match &v.forbidden_distance {
            Some(g) => Some(keep(g, safety.canal_margin_mm).ok_or(Dropped::BelowThreshold)?),
            None => None,
        };
        let worst = criteria::worst_slack_mm(safety, cortex, canal, root, forbidden);
        if bound(worst, balloon, centring) < threshold {
            return Err(Dropped::BelowThreshold);
        }
        let score = criteria::score(
            worst,
            if self.balloon_term { balloon } else { 0.0 },
            centring,
            criteria::axis_offset_mm(&v.pedicle_centroids[self.ctx.side], &q, &dir),
            medial,
            TIP_DEPTH_FRACTION,
        );
        Ok(Candidate {
            params,
            q_vertebra: q,
            dir_vertebra: dir,
            t_entry,
            t_tip,
            cortex,
            cos_incidence,
            score,
        })
    }

    /// A line's bone entry (the distance from `q` along `dir`, the cosine of its incidence) if
    /// it has a usable one: `q` in the bone, its entry within [`MARCH_BACK_MM`], behind the
    /// body and lateral of the canal (other lines never score).
    fn entry(&self, q: &Point, dir: &Vector, bone: &GridLine<'_>) -> Option<(Real, Real)> {
        if bone.at(0.0) <= 0.0 {
            return None;
        }
        // March back to the entry: the first sample outside the bone, then the zero crossing
        // interpolated between it and the sample before.
        let t_entry = {
            let t = first_outside(bone, -GRID_SAMPLE_STEP_MM, MARCH_BACK_MM)?;
            let (s, sp) = (bone.at(t), bone.at(t + GRID_SAMPLE_STEP_MM));
            let frac = sp / (sp - s).max(1e-9);
            t + GRID_SAMPLE_STEP_MM - frac * GRID_SAMPLE_STEP_MM
        };
        let f = &self.ctx.vertebra.frame;
        let entry = q + dir * t_entry;
        let entry_ok = entry.y >= f.posterior_wall_y_mm + MIN_ENTRY_BEHIND_WALL_MM
            && entry.x * self.sign >= self.canal_half_width;
        entry_ok.then(|| (t_entry, entry_incidence_cos(&self.bone_grid, &entry, dir)))
    }

    /// Pattern search around a seed on the approximate score, its lines screened through
    /// `screened` (shared by the seeds refined together: their searches often cross).
    fn refine(&self, seed: Candidate, screened: &ScreenedLines) -> Candidate {
        let mut best = seed;
        let mut steps = [0.5, 0.5, 2.0, 2.0];
        // Points already tried (bit patterns): a point tried before scored no better than
        // the best at the time, which only rises, so it can never be taken now.
        let key = |p: &[Real; 4]| p.map(Real::to_bits);
        let mut tried = FixedHashSet::default();
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
                        let ((m0, m1), _) = self.mode.third_parameter(&self.ctx.vertebra.frame);
                        p[2] = p[2].clamp(m0, m1);
                        p[3] = p[3].clamp(CRANIAL_RANGE_DEG.0, CRANIAL_RANGE_DEG.1);
                        if !tried.insert(key(&p)) {
                            continue;
                        }
                        if let Some(c) = screened.candidate(self, p, best.score + 1e-9) {
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

/// What a line's screening measured that does not depend on the score: its bone entry, the
/// cortex march through the pedicle (the march's state where it stopped, to go on from), its
/// centring, and its far cortex, tip and cortex clearance, each once measured
/// ([`Screen::screened_knowing`]). `Err` where the line was found unusable there.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct LineGeometry {
    entry: Option<Option<(Real, Real)>>,
    pedicle: Option<(RunningMin, Real)>,
    centring: Option<Real>,
    far: Option<Result<(Real, Real, Real), ()>>,
}

/// The [`LineGeometry`] of the lines of one side and mode, by the bits of their parameters:
/// where the first pass with the balloon term finds no safe line, the fallback pass without
/// it (`search_side_with`) screens mostly the same lines again, whose geometry is the same
/// (only the score, and the keep-out marches it stops, differ). Kept only where that pass is
/// likely (a tight pedicle, [`roomy_pedicle`]), a rule of speed only: a line found here is
/// the same line screened afresh, bit for bit.
#[derive(Default)]
struct LineGeometries(std::sync::Mutex<FixedHashMap<[u64; 4], LineGeometry>>);

impl LineGeometries {
    fn get(&self, key: &[u64; 4]) -> LineGeometry {
        let known = self.0.lock().expect("not poisoned");
        known.get(key).copied().unwrap_or_default()
    }

    fn put(&self, key: [u64; 4], geometry: LineGeometry) {
        self.0.lock().expect("not poisoned").insert(key, geometry);
    }
}

/// What screening a line gave, by the bits of its parameters: the refinement's pattern searches
/// from several seeds on one [`Screen`] often try the same lines, and a line's screening is a
/// function of the line and the threshold alone.
#[derive(Default)]
struct ScreenedLines(std::sync::Mutex<FixedHashMap<[u64; 4], Screened>>);

/// A line's screening, as [`ScreenedLines`] keeps it.
#[derive(Clone, Copy)]
enum Screened {
    /// Kept, with this candidate (the same under any threshold that keeps it).
    Kept(Candidate),
    /// Dropped under this threshold ([`Dropped::BelowThreshold`]): dropped under any higher
    /// one too (the score's bounds do not depend on the threshold).
    Below(Real),
    /// [`Dropped::Unusable`].
    Unusable,
}

impl ScreenedLines {
    /// `screen.candidate(params, threshold)` as the caller uses it, screened only when no line
    /// screened before decides it: a line kept before is returned as it was, even where
    /// `threshold` would drop it now (its score is then below `threshold`, so a caller that
    /// compares the score with the threshold, as the pattern search does, decides the same).
    fn candidate(
        &self,
        screen: &Screen<'_>,
        params: [Real; 4],
        threshold: Real,
    ) -> Option<Candidate> {
        let key = params.map(Real::to_bits);
        let known = self.0.lock().expect("not poisoned").get(&key).copied();
        match known {
            Some(Screened::Kept(c)) => return Some(c),
            Some(Screened::Below(t)) if t <= threshold => return None,
            Some(Screened::Unusable) => return None,
            _ => {}
        }
        let got = screen.screened(params, threshold);
        let keep = match got {
            Ok(c) => Screened::Kept(c),
            Err(Dropped::BelowThreshold) => Screened::Below(threshold),
            Err(Dropped::Unusable) => Screened::Unusable,
        };
        self.0.lock().expect("not poisoned").insert(key, keep);
        got.ok()
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

/// Why a line gave no candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dropped {
    /// Not usable under any threshold (no bone entry behind the body, too steep, not reaching
    /// the body, ...).
    Unusable,
    /// Its score is sure to fall below the threshold.
    BelowThreshold,
}

/// Lines screened so far, and the score threshold of the verification queue.
struct Screening {
    /// Lines within the request's incidence limit.
    screened: Vec<(Candidate, LineIndex)>,
    /// Lines over the request's incidence limit that a relaxed [`Screen`] let through (the
    /// coarse screening's), each scoring at least the threshold of its time.
    steeper: Vec<(Candidate, LineIndex)>,
    /// How many of the best lines must come out right: the `keep`-th best score of `screened`
    /// so far is the threshold.
    keep: usize,
    /// The `keep`-th best score of `screened` so far.
    threshold: Real,
    /// Lines dropped for the threshold while `keep` is under the whole queue ([`MAX_EXACT`]):
    /// a larger `keep` screens them again ([`Screening::keep_more`]). None are recorded once
    /// `keep` is the whole queue (no larger one is ever asked for).
    dropped: Vec<LineIndex>,
}

impl Screening {
    fn new(keep: usize) -> Self {
        Screening {
            screened: Vec::new(),
            steeper: Vec::new(),
            keep,
            threshold: Real::NEG_INFINITY,
            dropped: Vec::new(),
        }
    }

    /// Raise `keep` to `keep` (not smaller than before) after a screening: the lines that may have
    /// been dropped under the higher threshold are screened again under the new one (with
    /// `screen`, the request's limit). The `keep` best are then the ones screening every line
    /// with the new `keep` from the start would give: a line among them scores at least the
    /// new threshold, so it either was kept or was dropped for the old one.
    fn keep_more(
        &mut self,
        screen: &Screen<'_>,
        keep: usize,
        line: &(dyn Fn(LineIndex) -> [Real; 4] + Sync),
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<(), PlanError> {
        debug_assert!(keep >= self.keep && keep <= MAX_EXACT);
        if keep == self.keep {
            return Ok(());
        }
        self.keep = keep;
        self.threshold = Real::NEG_INFINITY;
        self.update_threshold();
        let again = std::mem::take(&mut self.dropped);
        self.screen(screen, &again, line, cancelled)?;
        self.sort();
        Ok(())
    }

    /// The threshold from the lines kept so far.
    fn update_threshold(&mut self) {
        if self.screened.len() >= self.keep {
            let mut scores: Vec<Real> = self.screened.iter().map(|c| c.0.score).collect();
            let (_, kth, _) = scores.select_nth_unstable_by(self.keep - 1, |a, b| b.total_cmp(a));
            self.threshold = *kth;
        }
    }

    /// Screen `lines` in fixed chunks: once `keep` lines are scored, a line whose score bound
    /// falls below the `keep`-th best so far cannot be among the `keep` best and is dropped.
    /// The chunks do not depend on the thread count, so neither does the result; and the top
    /// `keep` lines are the ones a full screening would give, in whatever order the lines come.
    /// Lines best aligned with the pedicle come first, so the threshold rises early.
    ///
    /// A `screen` whose incidence limit is relaxed lets steeper lines through; they go to
    /// `steeper` and leave the threshold alone, so `screened` is what the request's limit
    /// gives. The threshold, taken from lines within the limit, is at most the one their
    /// superset would give, so `screened` and `steeper` together hold every line the relaxed
    /// limit alone would put in its top `keep`: one pass gives both screenings.
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
                let q = screen.q_vertebra(p[0], p[1]);
                let (medial, cranial) = screen.angles_deg(&p);
                (
                    screen.fixed_terms(&q, &screen.direction_vertebra(medial, cranial), medial),
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
            let got: Vec<(Result<Candidate, Dropped>, LineIndex)> = chunk
                .par_iter()
                .map(|(_, p, i)| (screen.screened(*p, threshold), *i))
                .collect();
            let limit_cos = screen.ctx.safety.max_entry_incidence_deg.to_radians().cos();
            for (c, i) in got {
                let c = match c {
                    Ok(c) => c,
                    Err(Dropped::BelowThreshold) => {
                        if self.keep < MAX_EXACT {
                            self.dropped.push(i);
                        }
                        continue;
                    }
                    Err(Dropped::Unusable) => continue,
                };
                if c.cos_incidence < limit_cos {
                    self.steeper.push((c, i));
                } else {
                    self.screened.push((c, i));
                }
            }
            self.update_threshold();
        }
        Ok(())
    }

    fn sort(&mut self) {
        self.screened.sort_by(|a, b| order(&a.0, &b.0));
    }

    /// The [`SEEDS`] best lines (once sorted): what step 4 refines.
    fn seeds(&self) -> Vec<Candidate> {
        self.screened.iter().take(SEEDS).map(|&(c, _)| c).collect()
    }
}

/// Search the best safe bilateral transpedicular trajectory of one side.
pub fn search_side(
    ctx: &SideContext<'_>,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<SideOutcome, PlanError> {
    search_side_with(ctx, SearchMode::Bilateral, cancelled, Screens::CoarseToFine)
}

/// Search the best safe trajectory of one side for `mode`.
pub fn search_side_mode(
    ctx: &SideContext<'_>,
    mode: SearchMode,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<SideOutcome, PlanError> {
    search_side_with(ctx, mode, cancelled, Screens::CoarseToFine)
}

/// An infeasible unipedicular outcome leads with [`ReasonCode::MidlineNotReached`].
fn midline_reason(screen: &Screen<'_>, outcome: SideOutcome) -> SideOutcome {
    let SearchMode::Unipedicular {
        midline_behind_tip_mm,
    } = screen.mode
    else {
        return outcome;
    };
    match outcome {
        SideOutcome::Infeasible {
            mut reasons,
            alternatives,
        } => {
            let what = if midline_behind_tip_mm > 0.0 {
                "the balloon's centre"
            } else {
                "the tip"
            };
            reasons.insert(
                0,
                Reason {
                    code: ReasonCode::MidlineNotReached,
                    message: format!(
                        "no safe line through the {} pedicle puts {what} within {MIDLINE_TOLERANCE_MM} mm of the mid-sagittal plane with the tip in the anterior third of the body",
                        screen.ctx.side
                    ),
                    value_mm: None,
                    limit_mm: Some(MIDLINE_TOLERANCE_MM),
                    value_deg: None,
                    limit_deg: None,
                },
            );
            SideOutcome::Infeasible {
                reasons,
                alternatives,
            }
        }
        feasible => feasible,
    }
}

/// Which lines of the grid are screened.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Screens {
    /// Every [`COARSE_FACTOR`]-th line in each parameter, then the neighbours of the best (the
    /// planner).
    CoarseToFine,
    /// Every line of the grid (the slow oracle of the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Exhaustive,
}

/// The steps of the module documentation, in order.
fn search_side_with(
    ctx: &SideContext<'_>,
    mode: SearchMode,
    cancelled: &(dyn Fn() -> bool + Sync),
    screens: Screens,
) -> Result<SideOutcome, PlanError> {
    let geometries = LineGeometries::default();
    let mut screen = Screen::new(ctx, mode);
    if screen.balloon_term && !screen.roomy {
        screen.geometries = Some(&geometries);
    }
    let grid = LineGrid::new(&screen);
    let Some(verified) = screen_and_verify(&screen, &grid, screens, &Judged::default(), cancelled)?
    else {
        return Ok(midline_reason(
            &screen,
            infeasible_no_corridor(ctx, grid.qs.is_empty()),
        ));
    };
    // The fallback: where the lines with the largest balloons all fail the exact measurement
    // (a pedicle just wide enough, whose best-scoring lines graze its walls), the screening's
    // threshold may have dropped every safe line. The search runs again with the balloon term
    // off (slack and centring first, as before issue 13), so a side is never called infeasible
    // for the objective's sake.
    let verified = match verified {
        Verified::Unsafe(lines) if screen.balloon_term => {
            let plain = Screen {
                balloon_term: false,
                ..screen.clone()
            };
            // The first pass's lines are unsafe for this pass too: not judged again.
            let judged = Judged::of(&lines);
            match screen_and_verify(&plain, &grid, screens, &judged, cancelled)? {
                Some(Verified::Safe(m)) => Verified::Safe(m),
                _ => Verified::Unsafe(lines),
            }
        }
        safe => safe,
    };
    match verified {
        Verified::Safe(m) => Ok(SideOutcome::Feasible(m)),
        Verified::Unsafe(lines) => {
            if cancelled() {
                return Err(PlanError::Cancelled);
            }
            let best = best_unsafe(ctx, &lines);
            Ok(midline_reason(
                &screen,
                diagnose_infeasible(&screen, &grid, &best),
            ))
        }
    }
}

/// Steps 2-5 on `screen`: `None` when no line of the grid is usable.
///
/// The verification takes the refined lines first, and most sides have a safe one among them:
/// so the screening first keeps only what that first batch needs (its threshold the
/// [`SEEDS`]-th best score, which drops more lines than the [`MAX_EXACT`]-th), and screens the
/// lines it may have dropped again for the whole queue only when the first batch has no safe
/// line ([`Screening::keep_more`]). The [`SEEDS`] best lines, and so the refined ones, are the
/// same under either threshold, and so is the queue: the result is the one screening for the
/// whole queue at once gives, bit for bit.
fn screen_and_verify(
    screen: &Screen<'_>,
    grid: &LineGrid,
    screens: Screens,
    judged: &Judged,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Verified>, PlanError> {
    // Where the pedicle is tight, the first batch seldom has a safe line: the whole queue is
    // screened at once there (the same result, without screening the dropped lines twice).
    let keep = if screen.roomy { SEEDS } else { MAX_EXACT };
    screen_and_verify_keeping(screen, grid, screens, keep, judged, cancelled)
}

/// [`screen_and_verify`], the first screening keeping the `keep` best lines.
fn screen_and_verify_keeping(
    screen: &Screen<'_>,
    grid: &LineGrid,
    screens: Screens,
    keep: usize,
    judged: &Judged,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Option<Verified>, PlanError> {
    let mut screening = screen_keeping(screen, grid, screens, keep, cancelled)?;
    if screening.screened.is_empty() {
        return Ok(None);
    }
    let refined = refine_best(screen, &screening.seeds());
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    // The refined lines of the first pass are judged as they come; the fallback's, once the
    // first pass has found none safe, deepest first.
    let deep_first = !judged.is_empty();
    if let Some(m) = verify_batch(screen.ctx, screen.mode, &refined, judged, deep_first) {
        return Ok(Some(Verified::Safe(Box::new(m))));
    }
    screening.keep_more(screen, MAX_EXACT, &|l| grid.line(l), cancelled)?;
    let screened: Vec<Candidate> = screening.screened.into_iter().map(|(c, _)| c).collect();
    verify(
        screen.ctx,
        screen.mode,
        &refined,
        &screened,
        judged,
        cancelled,
    )
    .map(Some)
}

/// Steps 2-3, keeping the `keep` best lines (at least [`SEEDS`]).
fn screen_keeping(
    screen: &Screen<'_>,
    grid: &LineGrid,
    screens: Screens,
    keep: usize,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Screening, PlanError> {
    // The coarse screening must give its FINE_AROUND best right (step 3 screens around them).
    let mut screening = Screening::new(keep.max(FINE_AROUND));
    let coarse = screen_coarse(screen, grid, screens, &mut screening, cancelled)?;
    screening.keep = keep;
    screen_fine(screen, grid, &coarse, &mut screening, cancelled)?;
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    Ok(screening)
}

/// Whether the side's pedicle leaves at least [`ROOMY_PEDICLE_SPARE_MM`] of its measured outer
/// width beyond the cannula and its two cortex margins.
fn roomy_pedicle(ctx: &SideContext<'_>) -> bool {
    let needed = 2.0 * (ctx.instrument.cannula_radius_mm() + ctx.safety.cortex_margin_mm);
    ctx.vertebra.pedicles[ctx.side]
        .as_ref()
        .is_ok_and(|p| p.width_mm - needed >= ROOMY_PEDICLE_SPARE_MM)
}

/// The slow oracle of the procedure's objective (tests and benchmarks): every line of the
/// search's full grid ([`GRID_STEP_MM`], [`GRID_STEP_DEG`]) that the screening finds usable
/// (bone entry behind the body and lateral of the canal, within the incidence limit, reaching
/// the body), measured exactly; the safe ones that meet the mode's target, in grid order. No
/// score decides which lines are measured, so each can be given its best balloon.
pub fn exhaustive_safe_lines(ctx: &SideContext<'_>, mode: SearchMode) -> Vec<Measurement> {
    let screen = Screen::new(ctx, mode);
    let grid = LineGrid::new(&screen);
    let vertebra_to_lps = ctx.vertebra.frame.vertebra_to_lps();
    grid.all()
        .par_iter()
        .filter_map(|&i| screen.candidate(grid.line(i), Real::NEG_INFINITY))
        .filter_map(|c| {
            let (from_lps, tip_lps) = c.endpoints_lps(&vertebra_to_lps);
            let m = measure(ctx, &from_lps, &tip_lps);
            (m.violations.is_empty() && mode.accepts(ctx, &m)).then_some(m)
        })
        .collect()
}

/// The grid of lines: `q` in the reference plane every [`GRID_STEP_MM`] where the bone is deep
/// enough, directions every [`GRID_STEP_DEG`] over the angle ranges. The values are accumulated
/// as in the original loops, so each line of the grid has the same bits whichever step screens
/// it.
struct LineGrid {
    /// `q` positions: (x, z) values and their grid indices.
    qs: Vec<(Real, Real, usize, usize)>,
    /// Index into `qs` of the `q` with grid indices (ix, iz).
    q_at: std::collections::BTreeMap<(usize, usize), usize>,
    medials: Vec<Real>,
    cranials: Vec<Real>,
}

impl LineGrid {
    fn new(screen: &Screen<'_>) -> Self {
        let f = &screen.ctx.vertebra.frame;
        let hw = screen.canal_half_width;
        let (pz0, pz1) = f.pedicle_z_range_mm[screen.ctx.side];
        let min_depth = Q_MIN_DEPTH_FRACTION * (screen.radius + screen.ctx.safety.cortex_margin_mm);
        let mut qs: Vec<(Real, Real, usize, usize)> = Vec::new();
        let mut x = hw - Q_MEDIAL_OF_CANAL_EDGE_MM;
        let mut ix = 0;
        while x <= hw + Q_LATERAL_OF_CANAL_EDGE_MM {
            let mut z = pz0;
            let mut iz = 0;
            while z <= pz1 {
                if screen.bone_grid.at(&screen.q_vertebra(x, z)) >= min_depth {
                    qs.push((x, z, ix, iz));
                }
                z += GRID_STEP_MM;
                iz += 1;
            }
            x += GRID_STEP_MM;
            ix += 1;
        }
        let q_at = qs
            .iter()
            .enumerate()
            .map(|(i, q)| ((q.2, q.3), i))
            .collect();
        LineGrid {
            qs,
            q_at,
            medials: {
                let (range, step) = screen.mode.third_parameter(f);
                steps(range, step)
            },
            cranials: steps(CRANIAL_RANGE_DEG, GRID_STEP_DEG),
        }
    }

    /// The parameters of a line: (x, z) of q, medial, cranial.
    fn line(&self, (iq, im, ic): LineIndex) -> [Real; 4] {
        [
            self.qs[iq].0,
            self.qs[iq].1,
            self.medials[im],
            self.cranials[ic],
        ]
    }

    /// Every line, in index order.
    fn all(&self) -> Vec<LineIndex> {
        let mut all = Vec::with_capacity(self.qs.len() * self.medials.len() * self.cranials.len());
        for iq in 0..self.qs.len() {
            for im in 0..self.medials.len() {
                for ic in 0..self.cranials.len() {
                    all.push((iq, im, ic));
                }
            }
        }
        all
    }

    /// Whether a line is on the coarse grid (every [`COARSE_FACTOR`]-th value of each
    /// parameter).
    fn is_coarse(&self, (iq, im, ic): LineIndex) -> bool {
        let (_, _, ix, iz) = self.qs[iq];
        ix.is_multiple_of(COARSE_FACTOR)
            && iz.is_multiple_of(COARSE_FACTOR)
            && im.is_multiple_of(COARSE_FACTOR)
            && ic.is_multiple_of(COARSE_FACTOR)
    }

    /// The grid's 3^4 neighbourhood of a line (itself included), in a fixed order.
    fn neighbours(&self, (iq, im, ic): LineIndex) -> Vec<LineIndex> {
        let mut out = Vec::new();
        let (_, _, ix, iz) = self.qs[iq];
        for dx in -1i64..=1 {
            for dz in -1i64..=1 {
                let (nx, nz) = (ix as i64 + dx, iz as i64 + dz);
                if nx < 0 || nz < 0 {
                    continue;
                }
                let Some(&nq) = self.q_at.get(&(nx as usize, nz as usize)) else {
                    continue;
                };
                for dm in -1i64..=1 {
                    for dc in -1i64..=1 {
                        let (m, c) = (im as i64 + dm, ic as i64 + dc);
                        if m < 0
                            || c < 0
                            || m >= self.medials.len() as i64
                            || c >= self.cranials.len() as i64
                        {
                            continue;
                        }
                        out.push((nq, m as usize, c as usize));
                    }
                }
            }
        }
        out
    }
}

/// Step 2: screen every [`COARSE_FACTOR`]-th line (every line for [`Screens::Exhaustive`]).
/// Returns the coarse lines and, for the coarse-to-fine search, the best of them under the
/// relaxed incidence limit ([`COARSE_INCIDENCE_SLACK_DEG`]), whose neighbourhoods step 3 screens
/// too.
fn screen_coarse(
    screen: &Screen<'_>,
    grid: &LineGrid,
    screens: Screens,
    screening: &mut Screening,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(Vec<LineIndex>, Vec<LineIndex>), PlanError> {
    let coarse: Vec<LineIndex> = grid
        .all()
        .into_iter()
        .filter(|&l| screens == Screens::Exhaustive || grid.is_coarse(l))
        .collect();
    if screens == Screens::Exhaustive {
        screening.screen(screen, &coarse, &|l| grid.line(l), cancelled)?;
        screening.sort();
        return Ok((coarse, Vec::new()));
    }
    // One pass under the relaxed limit gives both screenings (see [`Screening::screen`]).
    let relaxed = Screen {
        max_incidence_deg: (screen.max_incidence_deg + COARSE_INCIDENCE_SLACK_DEG).min(89.0),
        ..screen.clone()
    };
    screening.screen(&relaxed, &coarse, &|l| grid.line(l), cancelled)?;
    let mut loose: Vec<(Candidate, LineIndex)> = screening
        .screened
        .iter()
        .chain(&screening.steeper)
        .copied()
        .collect();
    loose.sort_by(|a, b| order(&a.0, &b.0));
    let relaxed_best = loose.iter().take(FINE_AROUND).map(|&(_, l)| l).collect();
    screening.steeper = Vec::new();
    screening.sort();
    Ok((coarse, relaxed_best))
}

/// Step 3: screen the grid's neighbours of the [`FINE_AROUND`] best coarse lines (under the
/// request's limit and under the relaxed one); if no coarse line was usable (a narrow or odd
/// pedicle), every line not yet screened, so that "no line" is never claimed from a subset.
fn screen_fine(
    screen: &Screen<'_>,
    grid: &LineGrid,
    (coarse, relaxed_best): &(Vec<LineIndex>, Vec<LineIndex>),
    screening: &mut Screening,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(), PlanError> {
    let mut seen: std::collections::BTreeSet<LineIndex> = coarse.iter().copied().collect();
    let fine: Vec<LineIndex> = if screening.screened.is_empty() && relaxed_best.is_empty() {
        grid.all()
            .into_iter()
            .filter(|l| !seen.contains(l))
            .collect()
    } else {
        let strict_best = screening.screened.iter().take(FINE_AROUND).map(|&(_, l)| l);
        let mut fine = Vec::new();
        for best in strict_best.chain(relaxed_best.iter().copied()) {
            for l in grid.neighbours(best) {
                if seen.insert(l) {
                    fine.push(l);
                }
            }
        }
        fine
    };
    screening.screen(screen, &fine, &|l| grid.line(l), cancelled)?;
    screening.sort();
    if screening.screened.is_empty() {
        // The neighbourhoods of the relaxed best held no line under the true limit: every line.
        let rest: Vec<LineIndex> = grid
            .all()
            .into_iter()
            .filter(|l| !seen.contains(l))
            .collect();
        screening.screen(screen, &rest, &|l| grid.line(l), cancelled)?;
        screening.sort();
    }
    Ok(())
}

/// Step 4: the seeds (the [`SEEDS`] best screened lines, [`Screening::seeds`]), refined by
/// pattern search, best first.
fn refine_best(screen: &Screen<'_>, seeds: &[Candidate]) -> Vec<Candidate> {
    let lines = ScreenedLines::default();
    let mut refined: Vec<Candidate> = seeds
        .par_iter()
        .map(|c| screen.refine(*c, &lines))
        .collect();
    refined.sort_by(order);
    refined
}

/// What the exact verification found.
enum Verified {
    /// The best-scoring safe measurement of the first batch that had one.
    Safe(Box<Measurement>),
    /// No line measured was safe: the lines, in the order they were judged; the best-scoring
    /// one ([`best_unsafe`]) is measured only when it is needed (the diagnosis).
    Unsafe(Vec<Candidate>),
}

/// Step 5: judge the refined lines, then the screened ones in order (at most [`MAX_EXACT`]),
/// exactly, in batches of [`SEEDS`], until a batch has a safe one; that batch's safe lines are
/// measured in full and the best-scoring one is taken. The first batch, the refined lines, has
/// been judged already ([`screen_and_verify`]) and had none. Each line is first judged by
/// [`evaluate::verdict`] (the same violations as [`measure`], decided by walks that stop at
/// the margins' verdicts): only safe lines are measured in full here, so the result is the one
/// measuring every line would give.
fn verify(
    ctx: &SideContext<'_>,
    mode: SearchMode,
    refined: &[Candidate],
    screened: &[Candidate],
    judged: &Judged,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<Verified, PlanError> {
    let queue: Vec<Candidate> = refined
        .iter()
        .chain(screened.iter().skip(SEEDS))
        .take(MAX_EXACT)
        .copied()
        .collect();
    for batch in queue.chunks(SEEDS).skip(1) {
        if cancelled() {
            return Err(PlanError::Cancelled);
        }
        if let Some(m) = verify_batch(ctx, mode, batch, judged, true) {
            return Ok(Verified::Safe(Box::new(m)));
        }
    }
    if cancelled() {
        return Err(PlanError::Cancelled);
    }
    Ok(Verified::Unsafe(queue))
}

/// Lines of one side the verification has found unsafe, by the bits of their geometry. The
/// verdict depends on the line, the side and the search mode alone, not on the score that
/// put the line in the queue: the fallback's pass with the balloon term off
/// (`search_side_with`) does not judge again a line the first pass judged.
#[derive(Default)]
struct Judged(FixedHashSet<[u64; 8]>);

impl Judged {
    /// `lines`, all found unsafe.
    fn of(lines: &[Candidate]) -> Self {
        Judged(lines.iter().map(Self::key).collect())
    }

    fn key(c: &Candidate) -> [u64; 8] {
        let (q, d) = (c.q_vertebra, c.dir_vertebra);
        [q.x, q.y, q.z, d.x, d.y, d.z, c.t_entry, c.t_tip].map(Real::to_bits)
    }

    fn contains(&self, c: &Candidate) -> bool {
        !self.0.is_empty() && self.0.contains(&Self::key(c))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One batch of the verification: its safe lines measured in full, the best-scoring one (the
/// first of the highest score in the batch's order), or `None`. Lines in `judged` are known
/// to be unsafe. `deep_first`: where the batch's lines are likely unsafe (any batch after a
/// pass's first, whose refined lines are the best it has; every batch of the fallback pass),
/// each is judged first where a pedicle too narrow gives it up soonest
/// ([`evaluate::judge`]); the same lines are safe either way.
fn verify_batch(
    ctx: &SideContext<'_>,
    mode: SearchMode,
    batch: &[Candidate],
    judged: &Judged,
    deep_first: bool,
) -> Option<Measurement> {
    let vertebra_to_lps = ctx.vertebra.frame.vertebra_to_lps();
    // A line twice in the batch (the refined lines often converge to one) is judged once: its
    // verdict and measurement are the same, and the first of the best is taken.
    let mut seen = FixedHashSet::default();
    let batch: Vec<&Candidate> = batch
        .iter()
        .filter(|c| !judged.contains(c) && seen.insert(Judged::key(c)))
        .collect();
    let safe: Vec<Measurement> = batch
        .par_iter()
        .filter_map(|c| {
            let (from_lps, tip_lps) = c.endpoints_lps(&vertebra_to_lps);
            evaluate::judge(ctx, &from_lps, &tip_lps, deep_first)
                .filter(|v| mode.accepts(ctx, v))
                .map(|_| measure(ctx, &from_lps, &tip_lps))
        })
        .collect();
    let mut best_feasible: Option<Measurement> = None;
    for m in safe {
        debug_assert!(m.violations.is_empty() && mode.accepts(ctx, &m));
        let sc = m.score(ctx.safety);
        if best_feasible
            .as_ref()
            .is_none_or(|b| sc > b.score(ctx.safety))
        {
            best_feasible = Some(m);
        }
    }
    best_feasible
}

/// The best-scoring of lines that all failed the verification, measured in full: the first of
/// the highest score in their order (as `best_unsafe_by_measuring_each`, the tests' oracle,
/// for less work).
///
/// Branch and bound on exact bounds: each line's score ceiling ([`evaluate::score_ceiling`],
/// no exact distance) orders the lines; the [`UNSAFE_MEASURED_FIRST`] highest are measured in
/// full and the best of them sets a floor; a line whose ceiling is below the floor cannot reach
/// it, and each of the others is bounded again, each clearance walk stopped at the first
/// triangle near enough to keep the line's score below the floor ([`evaluate::score_below`]).
/// Only a line whose bound still reaches the floor is measured in full. Every bound is at least the line's score, so no line
/// that could be the best is dropped, and the choice among the lines measured is the one of
/// measuring every line. The floor comes from a fixed set of lines, so the result does not
/// depend on the thread count.
fn best_unsafe(ctx: &SideContext<'_>, lines: &[Candidate]) -> Measurement {
    let vertebra_to_lps = ctx.vertebra.frame.vertebra_to_lps();
    // A line given twice is bounded and measured once, at its first place (the first of the
    // best is taken, and its measurement is the same).
    let mut seen = FixedHashSet::default();
    let unique = |i: &usize| seen.insert(Judged::key(&lines[*i]));
    let unique: Vec<usize> = (0..lines.len()).filter(unique).collect();
    let ends: Vec<(Point, Point)> = lines
        .iter()
        .map(|c| c.endpoints_lps(&vertebra_to_lps))
        .collect();
    let mut ceilings = vec![Real::NEG_INFINITY; lines.len()];
    let unique_ceilings: Vec<Real> = unique
        .par_iter()
        .map(|&i| evaluate::score_ceiling(ctx, &ends[i].0, &ends[i].1))
        .collect();
    for (&i, c) in unique.iter().zip(unique_ceilings) {
        ceilings[i] = c;
    }
    let mut by_ceiling = unique;
    by_ceiling.sort_by(|&a, &b| ceilings[b].total_cmp(&ceilings[a]).then(a.cmp(&b)));
    let (first, rest) = by_ceiling.split_at(UNSAFE_MEASURED_FIRST.min(by_ceiling.len()));
    let mut measured: Vec<(usize, Measurement)> = first
        .par_iter()
        .map(|&i| (i, measure(ctx, &ends[i].0, &ends[i].1)))
        .collect();
    let floor = measured
        .iter()
        .map(|(_, m)| m.score(ctx.safety))
        .fold(Real::NEG_INFINITY, Real::max);
    measured.par_extend(rest.par_iter().filter_map(|&i| {
        if ceilings[i] < floor {
            return None;
        }
        // The slack at which this line's score would reach the floor: the ceiling is the
        // score with the slack at its cap. Any value is sound (it only sets where the walks
        // stop); this one stops them where the line is shown to stay below the floor.
        let slack_mm = floor - (ceilings[i] - SLACK_RESERVE_MM);
        let (from, tip) = &ends[i];
        (evaluate::score_below(ctx, from, tip, slack_mm) >= floor)
            .then(|| (i, measure(ctx, from, tip)))
    }));
    measured.sort_by_key(|&(i, _)| i);
    first_best(measured.into_iter().map(|(_, m)| m), ctx)
}

/// How many of an infeasible side's lines [`best_unsafe`] measures in full before it bounds the
/// rest: the floor is the best of their scores (two: one each for the two cores this runs on,
/// and the highest ceilings are usually among the best scores).
const UNSAFE_MEASURED_FIRST: usize = 2;

/// The first measurement of the highest score, in order.
fn first_best(measured: impl Iterator<Item = Measurement>, ctx: &SideContext<'_>) -> Measurement {
    let mut best_any: Option<Measurement> = None;
    for m in measured {
        let sc = m.score(ctx.safety);
        if best_any.as_ref().is_none_or(|b| sc > b.score(ctx.safety)) {
            best_any = Some(m);
        }
    }
    best_any.expect("at least one candidate was measured")
}

/// [`best_unsafe`] by measuring every line in full (the slow oracle of the tests).
#[cfg(test)]
fn best_unsafe_by_measuring_each(ctx: &SideContext<'_>, lines: &[Candidate]) -> Measurement {
    let vertebra_to_lps = ctx.vertebra.frame.vertebra_to_lps();
    first_best(
        lines.iter().map(|c| {
            let (from_lps, tip_lps) = c.endpoints_lps(&vertebra_to_lps);
            measure(ctx, &from_lps, &tip_lps)
        }),
        ctx,
    )
}

/// Step 6: the side is infeasible. Report the best measured line's violations, and the widest
/// bony corridor over every line of the grid (the screening dropped low scores).
fn diagnose_infeasible(screen: &Screen<'_>, grid: &LineGrid, best: &Measurement) -> SideOutcome {
    let ctx = screen.ctx;
    // Only the cortex clearance is compared: nothing after it in `Screen::candidate` drops a
    // line, so the same lines come out with the same clearance as in the search's screening.
    let screen = &Screen {
        cortex_only: true,
        ..screen.clone()
    };
    let bone_best = widest_line(screen, grid).expect("non-empty");
    let (from_lps, tip_lps) = bone_best.endpoints_lps(&ctx.vertebra.frame.vertebra_to_lps());
    let bone_m = measure(ctx, &from_lps, &tip_lps);
    let r = ctx.instrument.cannula_radius_mm();
    let corridor = 2.0 * (best.cortex_clearance_mm.max(bone_m.cortex_clearance_mm) + r);
    diagnose(ctx, best, corridor)
}

/// The order of [`widest_line`]: by the screening's cortex clearance, then by parameters (the
/// smaller first), so the widest line is one line whatever the order lines come in.
fn widest(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    a.cortex.total_cmp(&b.cortex).then_with(|| {
        b.params
            .partial_cmp(&a.params)
            .unwrap_or(std::cmp::Ordering::Equal)
    })
}

/// The line of the grid with the widest cortex clearance (by [`widest`]) whose entry is behind
/// the body and lateral of the canal, on a `cortex_only` screen: in fixed chunks, each
/// screened with the widest clearance of the chunks before as its floor (a line that falls
/// below it cannot be the widest; one equal to it still can, by the order). The chunks do not
/// depend on the thread count, and the line is the one screening every line to its end gives
/// (`widest_line_by_screening_each`, the tests' oracle).
fn widest_line(screen: &Screen<'_>, grid: &LineGrid) -> Option<Candidate> {
    debug_assert!(screen.cortex_only);
    let mut bone_best: Option<Candidate> = None;
    for chunk in grid.all().chunks(SCREEN_CHUNK) {
        let floor = bone_best.map_or(Real::NEG_INFINITY, |c| c.cortex);
        let found = chunk
            .par_iter()
            .filter_map(|i| screen.candidate(grid.line(*i), floor))
            .max_by(widest);
        bone_best = bone_best.into_iter().chain(found).max_by(widest);
    }
    bone_best
}

/// [`widest_line`] by screening every line to its end, with no floor (the slow oracle).
#[cfg(test)]
fn widest_line_by_screening_each(screen: &Screen<'_>, grid: &LineGrid) -> Option<Candidate> {
    grid.all()
        .iter()
        .filter_map(|i| screen.candidate(grid.line(*i), Real::NEG_INFINITY))
        .max_by(widest)
}

fn corridor_reason(ctx: &SideContext<'_>, corridor_mm: Real) -> Reason {
    let d = ctx.instrument.cannula_outer_diameter_mm;
    let m = ctx.safety.cortex_margin_mm;
    // The measured isthmus is what a surgeon checks first: name it with its width.
    let isthmus = match &ctx.vertebra.pedicles[ctx.side] {
        Ok(p) => format!(
            "; the {} pedicle's isthmus measures {:.1} mm wide x {:.1} mm high",
            ctx.side, p.width_mm, p.height_mm
        ),
        Err(_) => String::new(),
    };
    Reason {
        code: ReasonCode::PedicleCorridorTooNarrow,
        message: format!(
            "narrowest corridor {corridor_mm:.1} mm < cannula {d} mm + 2 x {m} mm margin{isthmus}"
        ),
        value_mm: Some(corridor_mm),
        limit_mm: Some(d + 2.0 * m),
        value_deg: None,
        limit_deg: None,
    }
}

fn infeasible_no_corridor(ctx: &SideContext<'_>, no_bone: bool) -> SideOutcome {
    let (d, m) = (
        ctx.instrument.cannula_outer_diameter_mm,
        ctx.safety.cortex_margin_mm,
    );
    let reason = match &ctx.vertebra.pedicles[ctx.side] {
        // The pedicle is there, measured: too thin to hold the cannula with its margins.
        Ok(p) if no_bone && p.width_mm.min(p.height_mm) < d + 2.0 * m => Reason {
            code: ReasonCode::PedicleCorridorTooNarrow,
            message: format!(
                "the {} pedicle's isthmus measures {:.1} mm wide x {:.1} mm high < cannula {d} mm + 2 x {m} mm margin",
                ctx.side, p.width_mm, p.height_mm
            ),
            value_mm: Some(p.width_mm.min(p.height_mm)),
            limit_mm: Some(d + 2.0 * m),
            value_deg: None,
            limit_deg: None,
        },
        _ if no_bone => Reason {
            code: ReasonCode::PedicleNotFound,
            message: format!(
                "no bone deeper than half the cannula radius plus margin in the {} pedicle region",
                ctx.side
            ),
            value_mm: None,
            limit_mm: None,
            value_deg: None,
            limit_deg: None,
        },
        _ => Reason {
            code: ReasonCode::PedicleNotFound,
            message: format!(
                "no straight line through the {} pedicle enters the bone behind the body and lateral of the canal",
                ctx.side
            ),
            value_mm: None,
            limit_mm: None,
            value_deg: None,
            limit_deg: None,
        },
    };
    SideOutcome::Infeasible {
        reasons: vec![reason],
        alternatives: vec![extrapedicular(ctx)],
    }
}

/// The extrapedicular alternative. At a thoracic level it names the meshes such a route needs
/// and the case lacks: the level's `rib` of this side and a `pleura` (never guessed from bone).
fn extrapedicular(ctx: &SideContext<'_>) -> Alternative {
    let level = ctx.vertebra.level;
    if level > Level::T12 {
        return Alternative {
            code: AlternativeCode::Extrapedicular,
            message: "an extrapedicular approach (lateral of the pedicle) may work: plan it by hand and check it with evaluate".into(),
        };
    }
    let mut missing = Vec::new();
    if !ctx.anatomy.has_rib(level, ctx.side) {
        missing.push(format!("the {level} {} `rib` mesh", ctx.side));
    }
    if !ctx.anatomy.has_pleura() {
        missing.push("a `pleura` mesh".to_string());
    }
    let message = if missing.is_empty() {
        "an extrapedicular approach (between rib head and pedicle, into the body) may work; the \
         case has the ribs and pleura meshes it needs: plan it by hand and check it with evaluate"
            .to_string()
    } else {
        format!(
            "an extrapedicular approach (between rib head and pedicle, into the body) needs the \
             ribs and pleura meshes; this case lacks {} (the pleura is never guessed from the bone)",
            missing.join(" and ")
        )
    };
    Alternative {
        code: AlternativeCode::Extrapedicular,
        message,
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
        alternatives.push(extrapedicular(ctx));
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
                value_deg: None,
                limit_deg: None,
            });
            continue;
        }
        if reasons.iter().any(|x: &Reason| x.code == code) {
            continue;
        }
        reasons.push(Reason { code, ..v.clone() });
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
    /// Returns the number of sides found feasible.
    fn compare_with_exhaustive(input: AnatomyInput, mode: SearchMode) -> usize {
        let mut feasible = 0;
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
                    route_rule: crate::evaluate::RouteRule::Transpedicular,
                };
                let fast = search_side_with(&ctx, mode, &never, Screens::CoarseToFine).unwrap();
                let slow = search_side_with(&ctx, mode, &never, Screens::Exhaustive).unwrap();
                match (fast, slow) {
                    (SideOutcome::Feasible(f), SideOutcome::Feasible(s)) => {
                        feasible += 1;
                        assert!(f.violations.is_empty());
                        let (fs, ss) = (f.score(&safety), s.score(&safety));
                        assert!(
                            fs >= ss - 1e-9,
                            "{name} {level} {side}: coarse to fine scores {fs}, every line {ss}: {:?} vs {:?}", (f.medial_angle_deg, f.cranial_angle_deg, f.tip_depth_fraction, f.bone_entry_lps), (s.medial_angle_deg, s.cranial_angle_deg, s.tip_depth_fraction, s.bone_entry_lps)
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
        feasible
    }

    /// The thoracic T8 of the built-in mean spine with its ribs and pleura (four large
    /// forbidden meshes, a narrow pedicle on one side) and the built-in L4, prepared.
    fn pruning_anatomies() -> Vec<PreparedAnatomy> {
        let options = crate::synth::SpineOptions {
            with_soft_tissue: false,
            with_ribs_and_pleura: true,
        };
        let t8 = crate::synth::spine_with(&[Level::T8], &crate::math::Pose::identity(), &options).0;
        let l4 = common::single_vertebra(
            "mean",
            Level::L4,
            crate::synth::vertebra(
                &crate::synth::VertebraParams::mean(Level::L4),
                &crate::math::Pose::identity(),
            )
            .mesh,
        );
        [t8, l4]
            .into_iter()
            .map(|i| PreparedAnatomy::prepare(i, &PrepareOptions::standard()).unwrap())
            .collect()
    }

    /// `body(what, screen)` for every side of [`pruning_anatomies`], both modes (bilateral,
    /// unipedicular), with and without the balloon term, under the contract's instrument and
    /// safety; `what` names the case for the assertions.
    fn each_screen(mut body: impl FnMut(&str, &Screen<'_>)) {
        let (instrument, safety) = (Instrument::contract_default(), Safety::contract_default());
        for anatomy in pruning_anatomies() {
            let level = anatomy.levels()[0];
            let vertebra = anatomy.vertebra(level).unwrap();
            for side in [Side::Left, Side::Right] {
                let ctx =
                    SideContext::transpedicular(&anatomy, vertebra, side, &instrument, &safety);
                for mode in [
                    SearchMode::Bilateral,
                    SearchMode::Unipedicular {
                        midline_behind_tip_mm: 5.0,
                    },
                ] {
                    for balloon_term in [true, false] {
                        let screen = Screen {
                            balloon_term,
                            ..Screen::new(&ctx, mode)
                        };
                        body(
                            &format!("{level} {side} {mode:?} balloon {balloon_term}"),
                            &screen,
                        );
                    }
                }
            }
        }
    }

    /// A screened line as bits (`None`: dropped).
    fn bits(c: Option<Candidate>) -> Option<Vec<u64>> {
        c.map(|c| {
            let mut v: Vec<u64> = c.params.iter().map(|x| x.to_bits()).collect();
            v.extend(
                [
                    c.t_entry,
                    c.t_tip,
                    c.cortex,
                    c.cos_incidence,
                    c.score,
                    c.q_vertebra.x,
                    c.dir_vertebra.y,
                ]
                .map(Real::to_bits),
            );
            v
        })
    }

    /// The screening's early stops (keep-out marches capped at the cortex's slack and stopped
    /// at the threshold; the diagnosis screening only to the cortex) skip only what cannot
    /// change a line: on every line of the grid, both modes, with and without the balloon
    /// term, at no threshold and at thresholds among the lines' scores, the pruned screening
    /// keeps and drops the same lines with the same figures, bit for bit, as every sample; and
    /// so does the other order of the centring and balloon terms (`Screen::roomy`).
    #[test]
    fn pruned_screening_matches_every_sample() {
        let (mut compared, mut kept, mut dropped) = (0usize, 0usize, 0usize);
        each_screen(|what, fast| {
            let slow = Screen {
                prune: false,
                ..fast.clone()
            };
            let cortex_only = Screen {
                cortex_only: true,
                ..fast.clone()
            };
            let other_order = Screen {
                roomy: !fast.roomy,
                ..fast.clone()
            };
            let grid = LineGrid::new(fast);
            let lines = grid.all();
            let mut scores: Vec<Real> = lines
                .iter()
                .filter_map(|&i| slow.candidate(grid.line(i), Real::NEG_INFINITY))
                .map(|c| c.score)
                .collect();
            scores.sort_by(|a, b| b.total_cmp(a));
            let mut thresholds = vec![Real::NEG_INFINITY];
            for k in [0, 3, 15, 63, 255] {
                if let Some(&s) = scores.get(k) {
                    thresholds.extend([s, s + 1e-9, s - 0.3]);
                }
            }
            for &i in &lines {
                let p = grid.line(i);
                let plain = slow.candidate(p, Real::NEG_INFINITY);
                let c = cortex_only.candidate(p, Real::NEG_INFINITY);
                assert_eq!(plain.is_some(), c.is_some(), "{what} {p:?}");
                if let (Some(a), Some(b)) = (plain, c) {
                    assert_eq!(
                        (a.cortex.to_bits(), a.t_entry.to_bits(), a.t_tip.to_bits()),
                        (b.cortex.to_bits(), b.t_entry.to_bits(), b.t_tip.to_bits()),
                        "{what} {p:?}"
                    );
                }
                for &th in &thresholds {
                    // A line dropped as unusable gives none under no threshold.
                    if matches!(fast.screened(p, th), Err(Dropped::Unusable)) {
                        assert!(plain.is_none(), "{what} {p:?} {th}");
                    }
                    let (a, b) = (fast.candidate(p, th), slow.candidate(p, th));
                    // The order of the terms (`Screen::roomy`) changes nothing.
                    assert_eq!(
                        bits(other_order.candidate(p, th)),
                        bits(b),
                        "{what} {p:?} {th} roomy {}",
                        other_order.roomy
                    );
                    compared += 1;
                    if b.is_some() {
                        kept += 1;
                    } else {
                        dropped += 1;
                    }
                    assert_eq!(bits(a), bits(b), "{what} {p:?} {th}");
                }
            }
        });
        assert!(
            kept > 1000 && dropped > 1000,
            "{compared}: {kept} kept, {dropped} dropped"
        );
    }

    /// The lazy verification queue ([`screen_and_verify`]): screening for the first batch,
    /// then again for the whole queue ([`Screening::keep_more`]), keeps the same best lines,
    /// bit for bit, as screening for the whole queue at once, and the search's outcome is the
    /// same. On every side of the tight T8 (whose first batch has no safe line, so the second
    /// screening is taken) and the roomy L4, both modes, with and without the balloon term.
    #[test]
    fn screening_for_the_first_batch_then_the_queue_equals_screening_for_the_queue() {
        let never = || false;
        // Sides where the second screening changed the queue: the lines it screened again
        // mattered.
        let mut mattered = 0usize;
        let outcome = |v: Option<Verified>| match v {
            None => "none".to_string(),
            Some(Verified::Safe(m)) => format!("safe {m:?}"),
            Some(Verified::Unsafe(lines)) => format!(
                "unsafe {:?}",
                lines.into_iter().map(|c| bits(Some(c))).collect::<Vec<_>>()
            ),
        };
        each_screen(|what, screen| {
            let grid = LineGrid::new(screen);
            let keeping =
                |keep| screen_keeping(screen, &grid, Screens::CoarseToFine, keep, &never).unwrap();
            let top = |s: &Screening, n: usize| -> Vec<_> {
                s.screened
                    .iter()
                    .take(n)
                    .map(|&(c, i)| (bits(Some(c)), i))
                    .collect()
            };
            let whole = keeping(MAX_EXACT);
            let mut lazy = keeping(SEEDS);
            assert_eq!(top(&lazy, SEEDS), top(&whole, SEEDS), "{what}");
            if top(&lazy, MAX_EXACT) != top(&whole, MAX_EXACT) {
                mattered += 1;
            }
            lazy.keep_more(screen, MAX_EXACT, &|l| grid.line(l), &never)
                .unwrap();
            assert_eq!(top(&lazy, MAX_EXACT), top(&whole, MAX_EXACT), "{what}");
            let verified = |keep| {
                screen_and_verify_keeping(
                    screen,
                    &grid,
                    Screens::CoarseToFine,
                    keep,
                    &Judged::default(),
                    &never,
                )
                .unwrap()
            };
            let (a, b) = (verified(SEEDS), verified(MAX_EXACT));
            assert_eq!(outcome(a), outcome(b), "{what}");
        });
        assert!(
            mattered >= 8,
            "the second screening changed {mattered} queues"
        );
    }

    /// The lines of a side's grid, every `step`-th, screened with no threshold (many of them
    /// unsafe), for the tests of the infeasible side's diagnosis.
    fn screened_lines(screen: &Screen<'_>, step: usize) -> Vec<Candidate> {
        let grid = LineGrid::new(screen);
        grid.all()
            .iter()
            .step_by(step)
            .filter_map(|&i| screen.candidate(grid.line(i), Real::NEG_INFINITY))
            .collect()
    }

    /// A measurement as bits: where the line is and its score.
    fn measurement_bits(m: &Measurement, safety: &Safety) -> Vec<u64> {
        let mut v: Vec<u64> = m.tip_lps.iter().map(|x| x.to_bits()).collect();
        v.extend(m.bone_entry_lps.iter().map(|x| x.to_bits()));
        v.extend([m.score(safety), m.cortex_clearance_mm].map(Real::to_bits));
        v
    }

    /// Each line of `set`, then its twin (the same axis, the tip 1 mm shallower), then the
    /// line again.
    fn with_twins(set: &[Candidate]) -> Vec<Candidate> {
        set.iter()
            .flat_map(|c| {
                let twin = Candidate {
                    t_tip: c.t_tip - 1.0,
                    ..*c
                };
                [*c, twin, *c]
            })
            .collect()
    }

    /// `verify_batch`, which judges a line given twice once, takes what measuring every line
    /// of the batch in full takes: the first of the best-scoring safe lines the mode accepts,
    /// bit for bit (batches of screened lines with their twins and repeats, `with_twins`, both
    /// ways of judging, on every side of the pruning anatomies in both modes).
    #[test]
    fn a_batch_judges_each_line_once_as_measuring_each_line() {
        let (mut safe, mut unsafe_) = (0, 0);
        each_screen(|what, screen| {
            if !screen.balloon_term {
                return; // the same lines
            }
            let ctx = screen.ctx;
            let to_lps = ctx.vertebra.frame.vertebra_to_lps();
            for set in screened_lines(screen, 11).chunks(3) {
                let batch = with_twins(set);
                let slow = batch
                    .iter()
                    .map(|c| {
                        let (from, tip) = c.endpoints_lps(&to_lps);
                        measure(ctx, &from, &tip)
                    })
                    .filter(|m| m.violations.is_empty() && screen.mode.accepts(ctx, m));
                let slow = slow.fold(None::<Measurement>, |best, m| match best {
                    Some(b) if m.score(ctx.safety) <= b.score(ctx.safety) => Some(b),
                    _ => Some(m),
                });
                for deep_first in [false, true] {
                    let fast =
                        verify_batch(ctx, screen.mode, &batch, &Judged::default(), deep_first);
                    assert_eq!(
                        fast.as_ref().map(|m| measurement_bits(m, ctx.safety)),
                        slow.as_ref().map(|m| measurement_bits(m, ctx.safety)),
                        "{what}"
                    );
                }
                if slow.is_some() {
                    safe += 1;
                } else {
                    unsafe_ += 1;
                }
            }
        });
        assert!(
            safe > 20 && unsafe_ > 20,
            "{safe} safe, {unsafe_} unsafe batches"
        );
    }

    /// `best_unsafe`'s branch and bound (score ceilings, then clearance walks stopped at the
    /// floor) picks the line measuring every line in full picks, bit for bit: on sets of up to
    /// a verification queue's length of screened lines, in the screening's order and reversed
    /// (ties go to the first), on every side of the pruning anatomies in both modes. And the
    /// bounds it prunes with hold: `score_ceiling` and `score_below` (at several slacks) are
    /// never below the measured score, and `score_below` is tighter than the ceiling on many
    /// lines (the pruning is not vacuous).
    #[test]
    fn best_unsafe_matches_measuring_each_line() {
        let (mut sets, mut adversarial, mut tighter, mut lines_checked) = (0, 0, 0, 0);
        let mut given_up = 0;
        each_screen(|what, screen| {
            if !screen.balloon_term {
                return; // the same lines (the balloon term only orders them)
            }
            let ctx = screen.ctx;
            let lines = screened_lines(screen, 7);
            let to_lps = ctx.vertebra.frame.vertebra_to_lps();
            // (line, ceiling, score) of every third line.
            let mut scored = Vec::new();
            for (k, c) in lines.iter().enumerate().step_by(3) {
                let (from, tip) = c.endpoints_lps(&to_lps);
                let score = measure(ctx, &from, &tip).score(ctx.safety);
                let ceiling = evaluate::score_ceiling(ctx, &from, &tip);
                assert!(
                    ceiling >= score,
                    "{what}: ceiling {ceiling} < score {score}"
                );
                for slack_mm in [-3.0, -1.0, -0.2, 0.0, 0.5, 1.0, Real::INFINITY] {
                    let below = evaluate::score_below(ctx, &from, &tip, slack_mm);
                    // A bound, or minus infinity where the score is under the floor asked about.
                    let floor = ceiling - criteria::SLACK_RESERVE_MM + slack_mm;
                    assert!(
                        below >= score || (below == Real::NEG_INFINITY && score < floor),
                        "{what} line {k}: bound {below} < {score}, floor {floor}"
                    );
                    tighter += usize::from(below < ceiling);
                    given_up += usize::from(below == Real::NEG_INFINITY);
                }
                lines_checked += 1;
                scored.push((*c, ceiling, score));
            }
            let mut check = |set: &[Candidate]| {
                let fast = best_unsafe(ctx, set);
                let slow = best_unsafe_by_measuring_each(ctx, set);
                assert_eq!(
                    measurement_bits(&fast, ctx.safety),
                    measurement_bits(&slow, ctx.safety),
                    "{what}: {} lines",
                    set.len()
                );
                sets += 1;
            };
            // Whole queues and small sets, in the screening's order and reversed (ties go to
            // the first).
            for set in lines.chunks(MAX_EXACT).chain(lines.chunks(5)) {
                let mut reversed = set.to_vec();
                reversed.reverse();
                check(set);
                check(&reversed);
            }
            // Lines given twice (measured once) beside their twins with a shallower tip (other
            // lines, to be measured apart).
            for set in lines.chunks(4) {
                check(&with_twins(set));
            }
            // Sets built against the bound: each line with the lines of higher ceilings but
            // lower scores that come nearest to its score, measured first, so that the best
            // line has to survive both bounds to be found.
            for &(best, ceiling, score) in &scored {
                let mut decoys: Vec<&(Candidate, Real, Real)> = scored
                    .iter()
                    .filter(|d| d.1 > ceiling && d.2 < score)
                    .collect();
                if decoys.len() < UNSAFE_MEASURED_FIRST {
                    continue;
                }
                decoys.sort_by(|a, b| b.2.total_cmp(&a.2));
                let mut set: Vec<Candidate> = decoys.iter().take(4).map(|d| d.0).collect();
                set.push(best);
                check(&set);
                adversarial += 1;
            }
        });
        assert!(
            sets > 400 && adversarial > 100,
            "{sets} sets, {adversarial} adversarial"
        );
        assert!(
            tighter > lines_checked && given_up > 100,
            "score_below tighter than the ceiling {tighter} times on {lines_checked} lines, given up {given_up}"
        );
    }

    /// The balloon term is 0 on every unipedicular line (its tip at or beyond the midline, where
    /// `criteria::balloon_room_ml` leaves no room): screened with the term and without, every
    /// line of the grid of every side of the pruning anatomies scores the same, bit for bit, and
    /// the exact measurement's room is 0 too. So the unipedicular search leaves the term off
    /// (`Screen::new`) and has no fallback pass without it.
    #[test]
    fn unipedicular_lines_have_no_balloon_term() {
        let mut lines = 0;
        each_screen(|what, screen| {
            if screen.mode == SearchMode::Bilateral || screen.balloon_term {
                return;
            }
            assert!(!Screen::new(screen.ctx, screen.mode).balloon_term, "{what}");
            let with = Screen {
                balloon_term: true,
                ..screen.clone()
            };
            let grid = LineGrid::new(screen);
            let to_lps = screen.ctx.vertebra.frame.vertebra_to_lps();
            for (k, &i) in grid.all().iter().enumerate() {
                let (a, b) = (
                    screen.candidate(grid.line(i), Real::NEG_INFINITY),
                    with.candidate(grid.line(i), Real::NEG_INFINITY),
                );
                assert_eq!(bits(a), bits(b), "{what}");
                if let (Some(c), 0) = (a, k % 25) {
                    let (from, tip) = c.endpoints_lps(&to_lps);
                    let room = measure(screen.ctx, &from, &tip).balloon_room_ml;
                    assert_eq!(room, 0.0, "{what}");
                }
                lines += usize::from(a.is_some());
            }
        });
        assert!(lines > 500, "{lines} unipedicular lines");
    }

    /// The seeds refined together, sharing what their lines screened to (`ScreenedLines`), end
    /// where each refined alone ends, bit for bit, on every side of the pruning anatomies, both
    /// modes, with and without the balloon term. And the shared screening decides as screening
    /// again does: lines screened under rising and falling thresholds, in the order the
    /// pattern search compares them (a score above the threshold), give the same lines.
    #[test]
    fn refining_seeds_together_matches_refining_each_alone() {
        let never = || false;
        let (mut refined, mut queries) = (0usize, 0usize);
        each_screen(|what, screen| {
            let grid = LineGrid::new(screen);
            let screening =
                screen_keeping(screen, &grid, Screens::CoarseToFine, MAX_EXACT, &never).unwrap();
            let seeds = screening.seeds();
            let together = refine_best(screen, &seeds);
            let mut alone: Vec<Candidate> = seeds
                .iter()
                .map(|c| screen.refine(*c, &ScreenedLines::default()))
                .collect();
            alone.sort_by(order);
            let all_bits = |v: &[Candidate]| v.iter().map(|c| bits(Some(*c))).collect::<Vec<_>>();
            assert_eq!(all_bits(&together), all_bits(&alone), "{what}");
            refined += together.len();
            // Thresholds among the kept lines' scores, each line asked several times.
            let shared = ScreenedLines::default();
            let scores: Vec<Real> = screening.screened.iter().map(|(c, _)| c.score).collect();
            for (k, &(c, _)) in screening.screened.iter().enumerate().take(40) {
                for j in 0..4 {
                    let t = scores[(k * 7 + j * 13) % scores.len()] + [1e-9, -0.3, 0.2, 0.0][j];
                    let p = c.params.map(|x| x + 0.25 * (j % 2) as Real);
                    let fast = shared.candidate(screen, p, t).filter(|c| c.score > t);
                    let slow = screen.candidate(p, t).filter(|c| c.score > t);
                    assert_eq!(bits(fast), bits(slow), "{what}: line {k}, threshold {t}");
                    queries += 1;
                }
            }
        });
        assert!(
            refined >= 100 && queries > 1000,
            "{refined} refined, {queries} queries"
        );
    }

    /// A line's geometry kept from earlier screenings ([`LineGeometries`]) gives the screening
    /// a line afresh gives, bit for bit: on every side and mode of the pruning anatomies, each
    /// line screened in turn by the pass with the balloon term, the fallback without it, the
    /// diagnosis (cortex only) and the relaxed coarse incidence limit, under thresholds that
    /// stop it at every stage, all sharing one memo, against the same screen without it.
    #[test]
    fn kept_line_geometry_screens_as_afresh() {
        let (mut lines, mut reused) = (0usize, 0usize);
        each_screen(|what, fresh| {
            if !fresh.balloon_term {
                return;
            }
            let geometries = LineGeometries::default();
            let kept = Screen {
                geometries: Some(&geometries),
                ..fresh.clone()
            };
            let grid = LineGrid::new(fresh);
            let all = grid.all();
            // Every score the lines reach, to stop them at each stage of their screening.
            let scores: Vec<Real> = all
                .iter()
                .step_by(3)
                .filter_map(|&i| fresh.candidate(grid.line(i), Real::NEG_INFINITY))
                .map(|c| c.score)
                .collect();
            assert!(!scores.is_empty(), "{what}");
            fn passes<'a>(s: &Screen<'a>) -> [Screen<'a>; 4] {
                let s = s.clone();
                [
                    s.clone(),
                    Screen {
                        balloon_term: false,
                        ..s.clone()
                    },
                    Screen {
                        cortex_only: true,
                        ..s.clone()
                    },
                    Screen {
                        max_incidence_deg: s.max_incidence_deg + COARSE_INCIDENCE_SLACK_DEG,
                        ..s
                    },
                ]
            }
            let (slow, fast) = (passes(fresh), passes(&kept));
            for (k, &i) in all.iter().enumerate().step_by(3) {
                let p = grid.line(i);
                for round in 0..6 {
                    let pass = (k + round) % 4;
                    let t = match pass {
                        // The cortex floor of the diagnosis, mm.
                        2 => [-1.0, 0.2, 0.8, 1.5][(k / 3 + round) % 4],
                        _ => scores[(k * 7 + round * 13) % scores.len()] - 0.1 * round as Real,
                    };
                    let before = geometries.get(&p.map(Real::to_bits));
                    reused += usize::from(before != LineGeometry::default());
                    let a = slow[pass].screened(p, t);
                    let b = fast[pass].screened(p, t);
                    assert_eq!(
                        a.map(|c| bits(Some(c))),
                        b.map(|c| bits(Some(c))),
                        "{what}: line {k}, pass {pass}, threshold {t}"
                    );
                    lines += 1;
                }
            }
        });
        assert!(
            lines > 10_000 && reused > 5_000,
            "{lines} screened, {reused} reused"
        );
    }

    /// The diagnosis's widest line, screened in chunks with the widest clearance so far as a
    /// floor, is the one screening every line to its end gives, bit for bit, on every side of
    /// the pruning anatomies in both modes.
    #[test]
    fn widest_line_matches_screening_each_line() {
        let mut found = 0;
        each_screen(|what, screen| {
            if !screen.balloon_term {
                return; // the cortex clearance does not depend on it
            }
            let screen = Screen {
                cortex_only: true,
                ..screen.clone()
            };
            let grid = LineGrid::new(&screen);
            let fast = widest_line(&screen, &grid);
            let slow = widest_line_by_screening_each(&screen, &grid);
            assert_eq!(bits(fast), bits(slow), "{what}");
            found += usize::from(fast.is_some());
        });
        assert!(found >= 6, "{found} sides with a line");
    }

    /// `evaluate::verdict` (margins decided by walks that stop at the verdict) finds the
    /// violations `measure` finds, code for code, on the screened lines of both routes (each
    /// side of the T8 with ribs and pleura and of the L4, transpedicular and, at T8,
    /// extrapedicular; lines moved sideways so that many of them are unsafe).
    #[test]
    fn the_verdict_finds_what_the_measurement_finds() {
        let (instrument, safety) = (Instrument::contract_default(), Safety::contract_default());
        let (mut safe, mut unsafe_) = (0usize, 0usize);
        for anatomy in pruning_anatomies() {
            let level = anatomy.levels()[0];
            let vertebra = anatomy.vertebra(level).unwrap();
            for side in [Side::Left, Side::Right] {
                let base = SideContext {
                    anatomy: &anatomy,
                    vertebra,
                    keep_outs: anatomy.keep_outs(level),
                    side,
                    instrument: &instrument,
                    safety: &safety,
                    route_rule: crate::evaluate::RouteRule::Transpedicular,
                };
                let extra = crate::extrapedicular::context(&base);
                let screen = Screen::new(&base, SearchMode::Bilateral);
                let grid = LineGrid::new(&screen);
                let to_lps = vertebra.frame.vertebra_to_lps();
                let lines: Vec<Candidate> = grid
                    .all()
                    .iter()
                    .step_by(5)
                    .filter_map(|&i| screen.candidate(grid.line(i), Real::NEG_INFINITY))
                    .collect();
                for (k, c) in lines.iter().enumerate() {
                    let (from, tip) = c.endpoints_lps(&to_lps);
                    let shift =
                        to_lps.rotation * Vector::new(0.7 * ((k % 7) as Real - 3.0), 0.0, 0.0);
                    for ctx in [&base, &extra] {
                        if ctx.route_rule == crate::evaluate::RouteRule::Extrapedicular
                            && level > Level::T12
                        {
                            continue;
                        }
                        for (a, b) in [(from, tip), (from + shift, tip + shift)] {
                            let m = measure(ctx, &a, &b);
                            let (ok, v) = evaluate::verdict(ctx, &a, &b);
                            // The judge: the verdict's measurement where that finds the line
                            // safe, nothing where it does not.
                            for deep_first in [false, true] {
                                let judged = evaluate::judge(ctx, &a, &b, deep_first);
                                assert_eq!(judged.is_some(), ok, "{level} {side} {a:?} {b:?}");
                                if let Some(j) = &judged {
                                    assert_eq!(format!("{j:?}"), format!("{v:?}"));
                                }
                            }
                            let codes = |m: &Measurement| {
                                m.violations.iter().map(|r| r.code).collect::<Vec<_>>()
                            };
                            assert_eq!(codes(&v), codes(&m), "{level} {side} {a:?} {b:?}");
                            assert_eq!(ok, m.violations.is_empty());
                            assert_eq!(
                                (v.tip_depth_fraction.to_bits(), v.tip_lps, v.direction_lps),
                                (m.tip_depth_fraction.to_bits(), m.tip_lps, m.direction_lps)
                            );
                            if ok {
                                safe += 1;
                            } else {
                                unsafe_ += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(safe > 50 && unsafe_ > 500, "{safe} safe, {unsafe_} unsafe");
    }

    /// The coarse-to-fine screening against the slow, obvious search (every line of the grid)
    /// on the built-in L1-L5 (posed as in a CT) and a vertebra too narrow for the cannula.
    #[test]
    fn coarse_to_fine_matches_the_exhaustive_grid_on_synthetic_vertebrae() {
        compare_with_exhaustive(crate::synth::demo_anatomy(), SearchMode::Bilateral);
        let mut params = crate::synth::VertebraParams::mean(Level::L3);
        params.pedicle_width_mm = 4.4;
        let v = crate::synth::vertebra(&params, &crate::math::Pose::identity());
        compare_with_exhaustive(
            common::single_vertebra("narrow", Level::L3, v.mesh),
            SearchMode::Bilateral,
        );
    }

    /// The unipedicular mode's coarse-to-fine screening against every line of its grid, for
    /// kyphoplasty (the shortest default balloon centred on the midline) and vertebroplasty
    /// (the tip on the midline), on a mean L3 and L4 (the mean L1 and L2 pedicles, 8.3-8.6 mm
    /// wide and converging 7-10 degrees, cannot take a 3.4 mm cannula aimed that far across).
    #[test]
    fn unipedicular_coarse_to_fine_matches_the_exhaustive_grid() {
        for level in [Level::L3, Level::L4] {
            let params = crate::synth::VertebraParams::mean(level);
            let v = crate::synth::vertebra(&params, &crate::math::Pose::identity());
            for behind in [5.0, 0.0] {
                let feasible = compare_with_exhaustive(
                    common::single_vertebra("mean", level, v.mesh.clone()),
                    SearchMode::Unipedicular {
                        midline_behind_tip_mm: behind,
                    },
                );
                assert_eq!(feasible, 2, "{level}: both sides of a mean vertebra");
            }
        }
    }

    /// The same on the real meshes of `../shared/anatomy` (ignored without them, a failure
    /// under CI=true).
    #[test]
    #[cfg_attr(
        not(shared_anatomy),
        ignore = "needs ../shared/anatomy next to the repository"
    )]
    fn coarse_to_fine_matches_the_exhaustive_grid_on_real_vertebrae() {
        let Some(dir) = common::shared_anatomy() else {
            return;
        };
        for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
            compare_with_exhaustive(common::load_set(&dir, set), SearchMode::Bilateral);
        }
    }
}
