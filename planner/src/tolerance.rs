//! Tolerance to navigation error: how far a verified trajectory (cannula and balloon) can be
//! displaced rigidly before a hard margin fails, certified from the exact clearance profile, and
//! the probability of a margin violation under a stated error model, from deterministic
//! low-discrepancy samples each re-measured exactly.
//!
//! **The perturbation.** A rigid motion of the instrument: a translation `delta` (any
//! direction) and a rotation by `theta` about the bone entry `e` (any axis):
//! `p' = e + R(theta) (p - e) + delta`. A point of the axis at distance `t` from the bone entry
//! moves by at most `|delta| + |t| theta` (theta in radians; the chord `2 |t| sin(theta / 2)`
//! is shorter than the arc).
//!
//! **The margins ("every hard margin").** Each is a distance from a piece of an axis
//! segment, less a radius and a margin ([`Span`]):
//! - the cannula (radius r) to the bone surface, from the end of the planned docking zone to
//!   the tip, by the cortex margin (`evaluate::measure`'s cortex clearance);
//! - the cannula to every keep-out (canal, roots, forbidden), along the whole cannula from the
//!   skin (or one working length behind the tip) to the tip, by its margin;
//! - the inflated balloon (radius D/2) to the bone surface and to the posterior wall of the body
//!   by the cortex margin, and to every keep-out by its margin (`balloon::options`).
//!
//! The cannula and the balloon are capsules around axis segments, so their distance to a
//! structure is the axis segment's distance less the radius, and a distance is 1-Lipschitz in
//! the axis points' positions: if a piece `[a, b]` of a span has exact slack `s` (its segment's
//! exact distance less radius and margin) and `s >= |delta| + max(|a|, |b|) theta`, no point of
//! the piece can come within the margin. The isthmus rule of the route (the cannula crosses the
//! isthmus inside its bony outline by the cortex margin) is covered by the cortex span: the
//! outline is cut from the bone surface, so the in-plane distance from the crossing to the
//! outline is at least the axis point's 3D distance to the surface.
//!
//! **The route rules are not margins.** The entry incidence limit, the docking zone (where
//! the cortex margin is waived while the cannula docks), the bone entry behind the body and
//! lateral of the canal, the working length and the skin are rules about where and how the
//! cannula enters, re-decided on the perturbed line by `measure`; the certificate does not
//! cover them (a rotation of 1 degree changes the incidence by up to 1 degree, which the
//! surgeon sees on the navigation screen as the trocar docks). The sampled probability counts
//! the breaches `measure` reports on the perturbed line ([`is_margin_violation`]), the route
//! rules apart.
//!
//! **The extrapedicular route** ([`RouteRule::Extrapedicular`]): the bone entry is where the
//! cannula docks on the rib (or at the costotransverse junction), and the cortex span starts
//! at the end of the docking zone where it enters the body after the rib-pedicle gap
//! (`Measurement::cortex_from_mm`); on the rib and in the gap the route's own rule applies
//! (docking, one gap of bounded length, the cannula outside the isthmus's lateral wall), a
//! route rule like the transpedicular docking zone. The keep-out spans (canal, roots, pleura,
//! other ribs) run along the whole cannula as for any route.
//!
//! **Certified numbers.** [`Certificate::translation_mm`]: the exact smallest slack over every
//! span (pure translation, no rotation). [`Certificate::rotation_deg`]: the largest rotation
//! about the bone entry with no translation, the larger of two certified bounds:
//! - the per-point floor ([`Certificate::rotation_floor_deg`]) `min over pieces of
//!   s / max(|a|, |b|)`, refined best-first down to pieces of [`MIN_PIECE_MM`] (or 1 % of their
//!   lever) where it is smallest (each piece's bound is valid at any size). A half of a
//!   piece that comes as near the piece's nearest triangle has the piece's slack exactly (no
//!   nearer than the whole, and that triangle is as near), and the other half waits with the
//!   whole's slack (a lower bound) until it is the smallest: the same pieces are split and the
//!   same bound returned as when every half is walked, for about 40 % of the halves' walks (`Slack`,
//!   `Profile::refine_spans`; `evaluate` 10.2 M -> 6.6 M instructions). It assumes every
//!   axis point may move straight at the nearest surface, which a rotation does not do: the
//!   point at `t` stays on the sphere of radius `|t|` about the entry, moving across the axis;
//!   so the floor is loose where the nearest surface lies ahead of the axis (the anterior
//!   cortex ahead of the tip, a wall the axis meets at a shallow angle).
//! - the cone search (`Profile::cone_rotation`). A rotation about the entry by at most
//!   `theta` (any axis) moves the axis to a direction `w` within the cone of half-angle
//!   `theta` about the planned direction `u` (a twist about `u` itself moves nothing: the
//!   instruments are round), and the point at `t` to `e + t w`. The cone is cut into cells
//!   by colatitude `f` (angle to `u`) and azimuth `p`; a cell `[f0, f1] x [p0, p1]` lies within
//!   the angle `rho = (f1 - f0) / 2 + sin(f1) (p1 - p0) / 2` of its centre direction `c`
//!   (half the meridian, then half the arc of the circle of colatitude `f <= f1` of radius
//!   `sin f`; the geodesic is no longer). For `w` in the cell, `|t w - t c| = 2 |t| sin(angle /
//!   2) <= |t| rho` (chord <= arc), so a piece `[a, b]` keeps its margin for every direction of
//!   the cell if the piece turned to `c` has slack at least `max(|a|, |b|) rho` (the same
//!   1-Lipschitz argument). That is one early-stopping test per piece and cell
//!   (`segment_within`); for the posterior wall plane the test is exact over the cell's cap
//!   (the largest vertebra-frame y of `e + t w` over directions within `rho` of `c`). Cells are
//!   taken by increasing `f0` in rings from the floor outwards (8 azimuth sectors, each ring
//!   1.5 times farther out; the most refined cell first among equal `f0`); a failing cell is split (its piece in
//!   two where that halves the lever of one half or while the piece is long against its
//!   displacement bound `max(|a|, |b|) rho`, else the cell in two along its longer side) until
//!   its radius is [`CONE_CELL_FRACTION`] of `f0`; the first cell that still fails there
//!   (or the work cap) ends the search at its `f0`: every direction closer to `u` lies in a
//!   cell that passed (or within the floor), so `theta = f0` is certified. Inside the bone
//!   (outside a keep-out) is not asked per cell: the certified directions form a connected set
//!   containing `u`, along which no piece point comes within `radius + margin > 0` of a
//!   surface, so none crosses one, and on `u` the spans are inside (outside), as the
//!   translation certificate (`>= 0`) checks.
//!
//! The cannula's spans and the balloon's are two groups (the cannula's is also reported alone);
//! the whole rotation is the smaller group's. The cone search runs for the balloon's group;
//! the cannula's keeps its per-point floor (its search budget is 0): its search cost `evaluate`
//! (the cannula alone) twice its instructions, and on a planned kyphoplasty side the balloon
//! limits the rotation (BENCHMARKS.md, stop 23). The machinery takes any budget. [`Profile::covers`] certifies a
//! combined translation and rotation with the per-point bound (`s >= |delta| + lever theta` for
//! every piece), as does the sampled probability's shortcut: the cone search certifies
//! rotations alone.

use rayon::prelude::*;

use crate::balloon::BalloonFit;
use crate::error::PlanError;
use crate::evaluate::{margin_codes, measure, Measurement, RouteRule, SideContext};
use crate::keepout::{KeepOut, KeepOutKind};
use crate::math::{Point, Pose, Real, Rotation3, Translation3, Vector};
use crate::plan::{NavigationTolerance, Reason, ReasonCode};
use crate::request::Safety;
use crate::search::{search_side_mode, SearchMode, SideOutcome};

/// Standard deviation of the translation error of the navigation error model, mm: the RMS of
/// the 3D translation (each axis `sigma / sqrt(3)`). 1 mm: spine navigation registration errs
/// by 0.74 mm (automatic intraoperative CT) to 1.10-1.50 mm (point pairs)
/// (doi 10.1097/BRS.0000000000002704); surface registration on the lamina 0.96 mm RMS
/// (PMC3476741); `../shared/reference/clinical.md`, "Navigation and execution error".
pub const NAVIGATION_SIGMA_MM: Real = 1.0;
/// Standard deviation of the rotation error of the model, degrees: the RMS of the rotation
/// angle about the bone entry (rotation vector isotropic, each component `sigma / sqrt(3)`).
/// 1 degree: surface registration on the lamina 0.91 degrees RMS (PMC3476741; clinical.md).
pub const NAVIGATION_SIGMA_DEG: Real = 1.0;
/// How many perturbations the violation probability is estimated from (a fixed Halton
/// sequence, the same for every trajectory): the probability is a multiple of 1/16. Each is an
/// exact measurement (~45 us), so this is most of what the tolerance costs (BENCHMARKS.md).
pub const VIOLATION_SAMPLES: usize = 16;
/// The certificate's pieces are refined where the bound is smallest down to this length, mm,
/// or to [`MIN_PIECE_LEVER_FRACTION`] of their distance from the bone entry, whichever is
/// longer: a piece's bound `s / lever` is then within that fraction of its points' worst.
pub const MIN_PIECE_MM: Real = 0.25;
/// See [`MIN_PIECE_MM`]: 1 %.
pub const MIN_PIECE_LEVER_FRACTION: Real = 0.01;
/// At most this many pieces are measured per refinement (a cap on the work; the bound is valid
/// whenever it stops).
const MAX_PIECES: usize = 200;
/// The cone search (module documentation) refines a cell that fails until its angular
/// radius is this fraction of its smallest colatitude; it stops there (the certified rotation
/// is then within about this fraction of what the cell's test can prove).
pub const CONE_CELL_FRACTION: Real = 0.05;
/// The cone search splits a failing piece rather than its cell while the piece is longer than
/// this many times its points' displacement bound `max(|a|, |b|) rho` (a wall along the
/// cannula is as near along the whole piece: halving the piece would not help there).
const CONE_PIECE_PER_DISPLACEMENT: Real = 16.0;
/// The cone search's largest rotation, degrees (a cap, not a limit of the anatomy: no
/// navigation error is this large, and the cells' radius bound needs colatitudes under 90).
pub const MAX_CONE_DEG: Real = 45.0;
/// The cone search's rings of cells: the first from the per-point floor to this many times
/// it, each next one this many times farther out.
const CONE_RING_RATIO: Real = 1.5;
/// Azimuth sectors of each ring of the cone search before refinement.
const CONE_SECTORS: usize = 8;
/// At most this many cell tests for the balloon's spans in the cone search (a cap on the work;
/// the bound is valid whenever it stops).
const MAX_CONE_TESTS: usize = 400;
/// At most this many for the cannula's spans: none, so the cannula's rotation is its
/// per-point floor. `evaluate` certifies the cannula alone within a 1 ms budget, which 100
/// tests doubled (20.4 M against 9.8 M instructions, BENCHMARKS.md, stop 23), and on a planned
/// kyphoplasty side the balloon limits the rotation.
const MAX_CONE_TESTS_CANNULA: usize = 0;

/// What a span keeps its margin from.
#[derive(Clone, Copy)]
enum Target<'a> {
    /// The bone surface (the span must stay inside the bone).
    Bone,
    /// The posterior wall plane of the body (vertebra-frame y), the balloon only.
    PosteriorWall,
    KeepOut(&'a KeepOut),
}

/// A part of an axis (distances `t0..t1` along the cannula axis from the bone entry, positive
/// towards the tip) around which a capsule of `radius_mm` keeps `margin_mm` from a target.
#[derive(Clone, Copy)]
pub struct Span<'a> {
    target: Target<'a>,
    t0: Real,
    t1: Real,
    radius_mm: Real,
    margin_mm: Real,
    /// What the span is, for the report ("cannula to cortex", "balloon to canal", ...).
    pub what: &'static str,
}

/// The spans of a verified trajectory and its balloon, with the geometry to measure them.
pub struct Profile<'a> {
    ctx: &'a SideContext<'a>,
    entry_lps: Point,
    dir_lps: Vector,
    pub spans: Vec<Span<'a>>,
    /// How many of `spans` (the first ones) are the cannula's; the balloon's follow.
    cannula_spans: usize,
}

/// Exact slacks of the pieces measured so far, by (span index, bits of `a`, bits of `b`): a
/// piece is measured once however often the certificates of one profile ask for it.
type Measured = crate::math::FixedHashMap<(usize, u64, u64), Slack>;

/// A piece's exact slack, mm, and, where it was measured to a mesh at a positive distance, a
/// triangle at that distance (its corners, and the distance itself). Half of the piece that
/// comes as near that triangle has the piece's slack: at least it (a part of a segment is no
/// nearer than the whole) and at most it (that triangle is as near) — found with one triangle
/// distance instead of a walk ([`Profile::refine_spans`]).
#[derive(Clone, Copy)]
struct Slack {
    slack_mm: Real,
    witness: Option<([Point; 3], Real)>,
    /// Given the whole's slack through the witness, not walked (for the tests' count).
    #[cfg_attr(not(test), allow(dead_code))]
    inherited: bool,
}

/// How much nearer than the whole piece's distance, mm, a half may come to the piece's nearest
/// triangle and still be given the piece's slack (floating-point rounding of the two triangle
/// distances; the half's exact slack is then within this of the piece's, and never below it).
const WITNESS_TOLERANCE_MM: Real = 1e-9;

fn keep_out_margin(safety: &Safety, k: &KeepOut) -> Real {
    match k.kind {
        KeepOutKind::Canal | KeepOutKind::Forbidden => safety.canal_margin_mm,
        KeepOutKind::NerveRoot(_) => safety.nerve_root_margin_mm,
    }
}

fn keep_out_what(k: &KeepOut, balloon: bool) -> &'static str {
    match (k.kind, balloon) {
        (KeepOutKind::Canal, false) => "cannula to canal",
        (KeepOutKind::NerveRoot(_), false) => "cannula to nerve root",
        (KeepOutKind::Forbidden, false) => "cannula to forbidden structure",
        (KeepOutKind::Canal, true) => "balloon to canal",
        (KeepOutKind::NerveRoot(_), true) => "balloon to nerve root",
        (KeepOutKind::Forbidden, true) => "balloon to forbidden structure",
    }
}

impl<'a> Profile<'a> {
    /// The spans of the measured trajectory `m` (and its balloon) on `ctx`'s side.
    pub fn new(ctx: &'a SideContext<'a>, m: &Measurement, balloon: Option<&BalloonFit>) -> Self {
        let safety = ctx.safety;
        let e = m.bone_entry_lps;
        let u = m.direction_lps.into_inner();
        let along = |p: &Point| (p - e).dot(&u);
        let r = ctx.instrument.cannula_radius_mm();
        let t_tip = along(&m.tip_lps);
        let tail_lps = match m.skin_entry_lps {
            Some(s) => s,
            None => m.tip_lps - u * ctx.instrument.cannula_working_length_mm,
        };
        let mut spans = vec![Span {
            target: Target::Bone,
            t0: m.cortex_from_mm.min(t_tip),
            t1: t_tip,
            radius_mm: r,
            margin_mm: safety.cortex_margin_mm,
            what: "cannula to cortex",
        }];
        for k in &ctx.keep_outs {
            spans.push(Span {
                target: Target::KeepOut(k),
                t0: along(&tail_lps),
                t1: t_tip,
                radius_mm: r,
                margin_mm: keep_out_margin(safety, k),
                what: keep_out_what(k, false),
            });
        }
        let cannula_spans = spans.len();
        if let Some(b) = balloon {
            let (t0, t1) = (along(&b.proximal), along(&b.distal));
            let radius_mm = b.diameter_mm * 0.5;
            for (target, what) in [
                (Target::Bone, "balloon to cortex"),
                (Target::PosteriorWall, "balloon to posterior wall"),
            ] {
                spans.push(Span {
                    target,
                    t0,
                    t1,
                    radius_mm,
                    margin_mm: safety.cortex_margin_mm,
                    what,
                });
            }
            for k in &ctx.keep_outs {
                spans.push(Span {
                    target: Target::KeepOut(k),
                    t0,
                    t1,
                    radius_mm,
                    margin_mm: keep_out_margin(safety, k),
                    what: keep_out_what(k, true),
                });
            }
        }
        Profile {
            ctx,
            entry_lps: e,
            dir_lps: u,
            spans,
            cannula_spans,
        }
    }

    /// Exact slack of the piece `[a, b]` of span `s`, mm: the piece's segment's exact distance
    /// to the target less radius and margin (negative: the margin is violated there).
    pub fn slack_mm(&self, s: &Span<'_>, a: Real, b: Real) -> Real {
        self.slack_witness(s, a, b).slack_mm
    }

    /// [`Profile::slack_mm`] with the nearest triangle where the distance is a positive
    /// distance to a mesh (the piece inside the bone, outside a keep-out).
    fn slack_witness(&self, s: &Span<'_>, a: Real, b: Real) -> Slack {
        let pa = self.entry_lps + self.dir_lps * a;
        let pb = self.entry_lps + self.dir_lps * b;
        let v = self.ctx.vertebra;
        let (d, witness) = match s.target {
            Target::Bone => {
                if !v.bone.contains_point(&pa) {
                    (-v.bone.distance_to_point(&pa), None)
                } else {
                    v.bone.distance_to_segment_witness(&pa, &pb)
                }
            }
            Target::PosteriorWall => {
                let f = &v.frame;
                let y = (f.lps_to_vertebra * pa).y.max((f.lps_to_vertebra * pb).y);
                (f.posterior_wall_y_mm - y, None)
            }
            Target::KeepOut(k) => k.distance_to_segment_witness(&pa, &pb),
        };
        Slack {
            slack_mm: d - s.radius_mm - s.margin_mm,
            witness: witness.filter(|_| d > 0.0).map(|t| (t, d)),
            inherited: false,
        }
    }

    /// The slack of the half `[a, b]` of a piece whose slack is `whole` when it is known
    /// without a walk: measured before (`memo`), or the whole's when the half comes as near
    /// the whole's nearest triangle ([`Slack`]). `None`: only a walk can tell (the whole's slack
    /// is a lower bound meanwhile).
    fn half_slack(
        &self,
        memo: &mut Measured,
        i: usize,
        a: Real,
        b: Real,
        whole: Slack,
    ) -> Option<Slack> {
        let key = (i, a.to_bits(), b.to_bits());
        if let Some(known) = memo.get(&key) {
            return Some(*known);
        }
        let (tri, d) = whole.witness?;
        let pa = self.entry_lps + self.dir_lps * a;
        let pb = self.entry_lps + self.dir_lps * b;
        let near = crate::clearance::segment_triangle_distance(&pa, &pb, &tri);
        (near <= d + WITNESS_TOLERANCE_MM).then(|| {
            let inherited = Slack {
                inherited: true,
                ..whole
            };
            memo.insert(key, inherited);
            inherited
        })
    }

    /// The smallest of `bound(slack, lever)` over every piece of every span, refined best-first
    /// (`lever` = the piece's largest distance from the bone entry, mm). `bound` must not
    /// increase when a piece's slack decreases or its lever grows, so each piece's value is a
    /// lower bound over its points. Returns the bound and the span that limits it.
    fn refine(&self, bound: impl Fn(Real, Real) -> Real) -> (Real, &'static str) {
        self.refine_spans(self.spans.len(), &mut Measured::default(), bound)
    }

    /// [`Profile::slack_mm`] of the piece `[a, b]` of span `i`, measured once per `memo`.
    fn slack_memo(&self, memo: &mut Measured, i: usize, a: Real, b: Real) -> Slack {
        *memo
            .entry((i, a.to_bits(), b.to_bits()))
            .or_insert_with(|| self.slack_witness(&self.spans[i], a, b))
    }

    /// [`Profile::refine`] over the first `n` spans, the pieces' slacks through `memo`.
    fn refine_spans(
        &self,
        n: usize,
        memo: &mut Measured,
        bound: impl Fn(Real, Real) -> Real,
    ) -> (Real, &'static str) {
        let value = |slack: &Slack, a: Real, b: Real| bound(slack.slack_mm, a.abs().max(b.abs()));
        // A piece: (value, span index, a, b, slack, walked). A half whose slack is not known
        // without a walk waits with its whole's slack (a lower bound, so a value no larger than
        // its own: `bound` is monotone) and is walked only when it is the smallest. A piece is
        // split, or returned, only when walked and the smallest, so exactly when it would be if
        // every half were walked at once: the same pieces and the same result, fewer walks.
        let mut pieces: Vec<(Real, usize, Real, Real, Slack, bool)> = self.spans[..n]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let slack = self.slack_memo(memo, i, s.t0, s.t1);
                (value(&slack, s.t0, s.t1), i, s.t0, s.t1, slack, true)
            })
            .collect();
        let mut measured = pieces.len();
        loop {
            // The smallest value; ties to the first (deterministic).
            let Some(k) = (0..pieces.len()).min_by(|&i, &j| pieces[i].0.total_cmp(&pieces[j].0))
            else {
                return (Real::INFINITY, "nothing");
            };
            let (v, i, a, b, whole, walked) = pieces[k];
            if !walked {
                let slack = self.slack_memo(memo, i, a, b);
                pieces[k] = (value(&slack, a, b), i, a, b, slack, true);
                continue;
            }
            let small = MIN_PIECE_MM.max(MIN_PIECE_LEVER_FRACTION * a.abs().max(b.abs()));
            if b - a <= small || measured >= MAX_PIECES || v == Real::INFINITY {
                return (v, self.spans[i].what);
            }
            let m = 0.5 * (a + b);
            let waiting = Slack {
                witness: None,
                ..whole
            };
            let mut half = |a: Real, b: Real| {
                let known = self.half_slack(memo, i, a, b, whole);
                let slack = known.unwrap_or(waiting);
                (value(&slack, a, b), i, a, b, slack, known.is_some())
            };
            pieces[k] = half(a, m);
            pieces.push(half(m, b));
            measured += 2;
        }
    }

    /// The certified tolerances: pure translation and pure rotation about the bone entry.
    pub fn certificate(&self) -> Certificate {
        self.certificate_of(self.spans.len(), &mut Measured::default())
            .0
    }

    /// The certificates of the whole profile (cannula and balloon) and of the cannula alone
    /// (its spans are the profile's first ones): the same as [`Profile::certificate`] of a
    /// profile with the balloon and of one without, but each piece measured once.
    pub fn certificates(&self) -> (Certificate, Certificate) {
        self.certificate_of(self.spans.len(), &mut Measured::default())
    }

    /// The certificates of the first `n` spans and of the cannula's spans among them. The
    /// rotation of a group of spans (the cannula's, the balloon's) is the larger of its
    /// per-point floor ([`Profile::refine_spans`]) and its cone search
    /// ([`Profile::cone_rotation`]); the first `n` spans' is the smaller of the two groups'.
    fn certificate_of(&self, n: usize, memo: &mut Measured) -> (Certificate, Certificate) {
        let k = self.cannula_spans.min(n);
        let translation = |memo: &mut Measured, n: usize| {
            self.spans[..n]
                .iter()
                .enumerate()
                .map(|(i, s)| (self.slack_memo(memo, i, s.t0, s.t1).slack_mm, s.what))
                .fold((Real::INFINITY, "nothing"), |best, x| {
                    if x.0 < best.0 {
                        x
                    } else {
                        best
                    }
                })
        };
        let floor = |memo: &mut Measured, n: usize| {
            self.refine_spans(n, memo, |slack, lever| {
                if lever <= 1e-9 {
                    if slack >= 0.0 {
                        Real::INFINITY
                    } else {
                        0.0
                    }
                } else {
                    slack / lever
                }
            })
        };
        let make = |(t, t_what): (Real, &'static str), (floor, r): (Real, (Real, &'static str))| {
            let (rotation_rad, r_what) = if t < 0.0 { (0.0, t_what) } else { r };
            Certificate {
                translation_mm: t.max(0.0),
                rotation_deg: rotation_rad.max(0.0).to_degrees(),
                translation_limited_by: t_what,
                rotation_limited_by: r_what,
                rotation_floor_deg: if t < 0.0 {
                    0.0
                } else {
                    floor.max(0.0).to_degrees()
                },
            }
        };
        // The larger of a floor and a cone search's result, with what limits it.
        let best = |(f, f_what): (Real, &'static str), (c, c_what): (Real, &'static str)| {
            if c > f {
                (c, c_what)
            } else {
                (f, f_what)
            }
        };
        let t_can = translation(memo, k);
        let floor_can = floor(memo, k);
        let r_can = if t_can.0 < 0.0 || floor_can.0 == Real::INFINITY {
            floor_can
        } else {
            best(
                floor_can,
                self.cone_rotation(0..k, floor_can.0, Real::INFINITY),
            )
        };
        let cannula = make(t_can, (floor_can.0, r_can));
        if n == k {
            return (cannula, cannula);
        }
        let t_all = translation(memo, n);
        let floor_all = floor(memo, n);
        let r_all = if t_all.0 < 0.0 || floor_all.0 == Real::INFINITY {
            floor_all
        } else {
            let r_balloon = best(floor_all, self.cone_rotation(k..n, floor_all.0, r_can.0));
            if r_balloon.0 < r_can.0 {
                r_balloon
            } else {
                r_can
            }
        };
        (make(t_all, (floor_all.0, r_all)), cannula)
    }

    /// Whether the piece `a..b` of span `i` keeps its margin on the axis turned about the bone
    /// entry to every direction within the angle `rho = need_mm / max(|a|, |b|)` of the unit
    /// direction `dir`: for a mesh, the piece turned to `dir` keeps `need_mm` of slack (its
    /// points are then at most `need_mm` away), by a walk that stops at the verdict
    /// ([`crate::clearance::ClearanceMesh::segment_within`]); for the posterior wall plane,
    /// exactly over the cap. Whether the piece is inside the bone (outside a keep-out) is not
    /// asked: the cone search's cells cover a connected set of directions from the planned
    /// one, on which it is (module documentation).
    fn piece_clear(&self, i: usize, a: Real, b: Real, dir: &Vector, need_mm: Real) -> bool {
        let s = &self.spans[i];
        let lever = a.abs().max(b.abs());
        let pa = self.entry_lps + dir * a;
        let pb = self.entry_lps + dir * b;
        let (r, m) = (s.radius_mm, s.margin_mm);
        let v = self.ctx.vertebra;
        match s.target {
            Target::Bone => !v.bone.segment_within(&pa, &pb, |d| d - r - m < need_mm),
            Target::PosteriorWall => {
                // Exact over the cell's cap of directions (angle `rho` about `dir`): the
                // vertebra-frame y of `e + t w` is `y(e) + t (g . w)` with `g` the frame's y
                // axis in LPS, whose extremes over the cap are `cos(max(0, angle(dir, g) -
                // rho))` (largest) and `cos(min(pi, angle(dir, g) + rho))` (smallest); y is
                // affine along the piece, so its largest is at an end.
                let f = &v.frame;
                let g = f.lps_to_vertebra.rotation.inverse() * Vector::y();
                let angle = dir.dot(&g).clamp(-1.0, 1.0).acos();
                let rho = if lever > 0.0 { need_mm / lever } else { 0.0 };
                let (hi, lo) = (
                    (angle - rho).max(0.0).cos(),
                    (angle + rho).min(std::f64::consts::PI).cos(),
                );
                let y_e = (f.lps_to_vertebra * self.entry_lps).y;
                let y_at = |t: Real| y_e + t * if t >= 0.0 { hi } else { lo };
                f.posterior_wall_y_mm - y_at(a).max(y_at(b)) - r - m >= 0.0
            }
            Target::KeepOut(k) => !k
                .clearance
                .segment_within(&pa, &pb, |d| d - r - m < need_mm),
        }
    }

    /// The cone search (module documentation) over the spans `spans`: the largest colatitude
    /// `theta` (radians, at most [`MAX_CONE_DEG`]) such that every cell of directions within
    /// `theta` of the planned one, with every piece of every span, passed its test; cells
    /// within `floor` (a rotation already certified for these spans) are not tested. Cells are
    /// taken by increasing colatitude; a failing cell is split (its piece, or the cell along its
    /// longer side) down to [`CONE_CELL_FRACTION`], where the search stops. It stops too at `stop_at` (a
    /// rotation beyond which the caller needs nothing) and after `MAX_CONE_TESTS_CANNULA` tests
    /// of the cannula's spans, `MAX_CONE_TESTS` of the balloon's.
    /// Returns `theta` and the span whose cell stopped the search.
    fn cone_rotation(
        &self,
        spans: std::ops::Range<usize>,
        floor: Real,
        stop_at: Real,
    ) -> (Real, &'static str) {
        let cap = MAX_CONE_DEG.to_radians();
        let u = self.dir_lps;
        let helper = if u.x.abs() < 0.9 {
            Vector::x()
        } else {
            Vector::y()
        };
        let x = u.cross(&helper).normalize();
        let y = u.cross(&x);
        let dir = |f: Real, p: Real| u * f.cos() + (x * p.cos() + y * p.sin()) * f.sin();
        // Rings from the floor outwards (within the floor every direction is certified).
        if floor <= 0.0 || floor >= cap {
            return (floor.max(0.0).min(cap), "nothing");
        }
        let ring_start = |k: usize| -> Real { (floor * CONE_RING_RATIO.powi(k as i32)).min(cap) };
        let mut heap = std::collections::BinaryHeap::new();
        let mut created = 0usize;
        let mut push = |heap: &mut std::collections::BinaryHeap<Queued>, c: ConeCell| {
            if c.f1 > floor {
                heap.push(Queued(
                    c.f0.to_bits(),
                    c.radius().to_bits(),
                    c.span,
                    created,
                    c,
                ));
                created += 1;
            }
        };
        let mut ring = 0;
        let mut tests = 0;
        let budget = if spans.start == 0 {
            MAX_CONE_TESTS_CANNULA
        } else {
            MAX_CONE_TESTS
        };
        loop {
            // Every ring that starts before the front cell (children never start before their
            // parent), so cells are taken by increasing colatitude.
            while ring_start(ring) < cap
                && heap
                    .peek()
                    .is_none_or(|q: &Queued| ring_start(ring) <= q.4.f0)
            {
                let (f0, f1) = (ring_start(ring), ring_start(ring + 1));
                for sector in 0..CONE_SECTORS {
                    let step = std::f64::consts::TAU / CONE_SECTORS as Real;
                    for span in spans.clone() {
                        let s = &self.spans[span];
                        push(
                            &mut heap,
                            ConeCell {
                                f0,
                                f1,
                                p0: step * sector as Real,
                                p1: step * (sector + 1) as Real,
                                span,
                                a: s.t0,
                                b: s.t1,
                            },
                        );
                    }
                }
                ring += 1;
            }
            let Some(Queued(_, _, _, _, c)) = heap.pop() else {
                return (cap, "nothing within the searched cone");
            };
            let what = self.spans[c.span].what;
            if c.f0 >= stop_at || tests >= budget {
                return (c.f0, what);
            }
            tests += 1;
            let rho = c.radius();
            let lever = c.a.abs().max(c.b.abs());
            let centre = dir(0.5 * (c.f0 + c.f1), 0.5 * (c.p0 + c.p1));
            if self.piece_clear(c.span, c.a, c.b, &centre, lever * rho) {
                continue;
            }
            // A piece is split where that lowers the lever of half of it (a piece reaching towards
            // the entry) or where it is long against its points' displacement; else the cell.
            let long = c.b - c.a > MIN_PIECE_MM.max(CONE_PIECE_PER_DISPLACEMENT * lever * rho);
            let towards_entry = c.b - c.a > MIN_PIECE_MM && c.a.abs().min(c.b.abs()) <= 0.5 * lever;
            if long || towards_entry {
                let m = 0.5 * (c.a + c.b);
                push(&mut heap, ConeCell { b: m, ..c });
                push(&mut heap, ConeCell { a: m, ..c });
            } else if rho > CONE_CELL_FRACTION * c.f0.max(floor).max(1e-4) {
                if c.f1.sin() * (c.p1 - c.p0) > c.f1 - c.f0 {
                    let m = 0.5 * (c.p0 + c.p1);
                    push(&mut heap, ConeCell { p1: m, ..c });
                    push(&mut heap, ConeCell { p0: m, ..c });
                } else {
                    let m = 0.5 * (c.f0 + c.f1);
                    push(&mut heap, ConeCell { f1: m, ..c });
                    push(&mut heap, ConeCell { f0: m, ..c });
                }
            } else {
                return (c.f0, what);
            }
        }
    }

    /// Whether every rigid motion of at most `translation_mm` and `rotation_deg` about the bone
    /// entry, together, is certified to keep every margin; with the certified reserve left at
    /// the worst place, mm.
    pub fn covers(&self, translation_mm: Real, rotation_deg: Real) -> (bool, Real) {
        let theta = rotation_deg.to_radians();
        let (reserve, _) = self.refine(|slack, lever| slack - translation_mm - lever * theta);
        (reserve >= 0.0, reserve)
    }
}

/// One cell of the cone search ([`Profile::cone_rotation`]): rotated axis directions of
/// colatitude `f0..f1` about the planned direction and azimuth `p0..p1` (radians), and the
/// piece `a..b` (mm from the bone entry) of span `span`.
#[derive(Clone, Copy)]
struct ConeCell {
    f0: Real,
    f1: Real,
    p0: Real,
    p1: Real,
    span: usize,
    a: Real,
    b: Real,
}

impl ConeCell {
    /// An upper bound of the angle between the cell's centre direction and any of its
    /// directions, radians: along the meridian at most half the colatitude range, along the
    /// circle of colatitude `f` (radius `sin f`, `f <= f1 <= 90` degrees) at most
    /// `sin f1` times half the azimuth range, and the geodesic is no longer than that path.
    fn radius(&self) -> Real {
        0.5 * (self.f1 - self.f0) + self.f1.sin() * 0.5 * (self.p1 - self.p0)
    }
}

/// The heap order of [`ConeCell`]s: by the cell's smallest colatitude, then its radius (the
/// most refined first: a cell that cannot pass reaches the smallest size soon), then span, then
/// the order of creation (deterministic).
struct Queued(u64, u64, usize, usize, ConeCell);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` pops the largest, the search wants the smallest colatitude.
        (other.0, other.1, other.2, other.3).cmp(&(self.0, self.1, self.2, self.3))
    }
}

/// The certified tolerances of one trajectory (with its balloon).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Certificate {
    /// Largest translation in any direction (no rotation) that keeps every margin, mm.
    pub translation_mm: Real,
    /// Largest rotation about the bone entry, any axis (no translation), degrees.
    pub rotation_deg: Real,
    pub translation_limited_by: &'static str,
    pub rotation_limited_by: &'static str,
    /// The per-point rotation bound, degrees (`min over pieces of slack / lever`, at most
    /// `rotation_deg`): every piece of every span has at least `lever x` this much slack, so a
    /// translation and a rotation whose shares of `translation_mm` and of this sum to at most 1
    /// keep every margin ([`violation_probability`]). The cone search's `rotation_deg` does not
    /// combine so.
    pub rotation_floor_deg: Real,
}

/// The rigid motion `p' = e + R(rotation) (p - e) + translation`, LPS (`rotation_lps` a
/// rotation vector, radians).
pub fn perturbation(entry_lps: &Point, translation_lps: &Vector, rotation_lps: &Vector) -> Pose {
    let rot = Rotation3::new(*rotation_lps);
    let to_entry = Translation3::from(entry_lps.coords);
    Translation3::from(translation_lps + entry_lps.coords)
        * Pose::from_parts(Translation3::identity(), rot.into())
        * to_entry.inverse()
}

/// Whether a reason of `measure` is a margin the certificate is about (a breach), as opposed
/// to a route rule (incidence, entry side and depth, working length, skin) or a soft goal.
pub fn is_margin_violation(code: ReasonCode) -> bool {
    matches!(
        code,
        ReasonCode::CortexMarginViolated
            | ReasonCode::CanalMarginViolated
            | ReasonCode::NerveRootMarginViolated
            | ReasonCode::ForbiddenMarginViolated
            | ReasonCode::NotThroughPedicle
            | ReasonCode::LeavesBone
            | ReasonCode::TipOutsideBody
    )
}

/// The first hard margin the trajectory `m` (and its balloon), moved by `motion_lps`, violates
/// by exact re-measurement: the cannula's cortex margin from the end of the planned docking
/// zone (moved) to the tip, its other margins by [`measure`] (its margin codes,
/// [`is_margin_violation`]), the balloon by the margins of `balloon::options` (both ends in the
/// bone, capsule to bone surface and posterior wall by the cortex margin, to each keep-out by
/// its margin). `None`: every margin holds.
pub fn margin_violation(
    ctx: &SideContext<'_>,
    m: &Measurement,
    balloon: Option<&BalloonFit>,
    motion_lps: &Pose,
) -> Option<(ReasonCode, &'static str)> {
    // The balloon first: a few distance queries, and on most sides the margin that fails first.
    if let Some(b) = balloon {
        if let Some(v) = balloon_violation(ctx, b, motion_lps) {
            return Some(v);
        }
    }
    let tip = motion_lps * m.tip_lps;
    let from = motion_lps * (m.tip_lps - m.direction_lps.into_inner() * 100.0);
    // The cannula's cortex margin is judged where the certificate speaks of it: from the end
    // of the planned docking zone, moved with the cannula, to the tip. `measure` re-decides
    // the docking zone on the moved line (incidence and surface drop under the new footprint,
    // which jump between the mesh's facets): a route rule the certificate does not cover
    // (module documentation), so its own cortex verdict is not counted.
    let u = m.direction_lps.into_inner();
    let t_tip = (m.tip_lps - m.bone_entry_lps).dot(&u);
    let start = motion_lps * (m.bone_entry_lps + u * m.cortex_from_mm.min(t_tip));
    let bone = &ctx.vertebra.bone;
    let r = ctx.instrument.cannula_radius_mm();
    let margin = ctx.safety.cortex_margin_mm;
    // `cortex < margin` with `cortex` the clearance less the radius, as `measure` has it; the
    // segment's verdict by a walk that stops at it (`ClearanceMesh::segment_within`).
    let breached = if bone.contains_point(&tip) {
        bone.segment_within(&start, &tip, |d| d - r < margin)
    } else {
        -bone.distance_to_point(&tip) - r < margin
    };
    if breached {
        return Some((ReasonCode::CortexMarginViolated, "cannula"));
    }
    // `measure`'s other margin codes, in its order, without what it decides under the docking
    // zone and the incidence (`evaluate::margin_codes`), nor an extrapedicular path's own rule.
    margin_codes(ctx, &from, &tip)
        .into_iter()
        .find(|&code| {
            is_margin_violation(code)
                && code != ReasonCode::CortexMarginViolated
                && !(ctx.route_rule == RouteRule::Extrapedicular
                    && is_extrapedicular_path_rule(code))
        })
        .map(|code| (code, "cannula"))
}

/// Whether `code`, on a line measured under [`RouteRule::Extrapedicular`], is a verdict of its
/// path rule rather than a margin: where the cannula docks (on the rib, or the vertebra at the
/// costotransverse junction, within the working length; `NOT_THROUGH_PEDICLE`) and the one gap
/// from the rib into the vertebra it may cross (`LEAVES_BONE`). Like the transpedicular docking
/// zone these are route rules the certificate does not cover (module documentation); the
/// margins of the route (the body's cortex after the gap, the tip in the body, every keep-out
/// with the pleura) it does.
fn is_extrapedicular_path_rule(code: ReasonCode) -> bool {
    matches!(code, ReasonCode::LeavesBone | ReasonCode::NotThroughPedicle)
}

/// The balloon's margins (`balloon::options`) after `motion_lps`, the first one violated.
fn balloon_violation(
    ctx: &SideContext<'_>,
    b: &BalloonFit,
    motion_lps: &Pose,
) -> Option<(ReasonCode, &'static str)> {
    let (p, d) = (motion_lps * b.proximal, motion_lps * b.distal);
    let v = ctx.vertebra;
    let safety = ctx.safety;
    let radius = b.diameter_mm * 0.5;
    if !v.bone.contains_point(&p)
        || !v.bone.contains_point(&d)
        || v.bone
            .segment_within(&p, &d, |x| x - radius < safety.cortex_margin_mm)
    {
        return Some((ReasonCode::CortexMarginViolated, "balloon"));
    }
    let f = &v.frame;
    let y = (f.lps_to_vertebra * p).y.max((f.lps_to_vertebra * d).y);
    if f.posterior_wall_y_mm - y - radius < safety.cortex_margin_mm {
        return Some((
            ReasonCode::CortexMarginViolated,
            "balloon at the posterior wall",
        ));
    }
    for k in &ctx.keep_outs {
        let margin = keep_out_margin(safety, k);
        if k.segment_within(&p, &d, |x| x - radius < margin) {
            let code = match k.kind {
                KeepOutKind::Canal => ReasonCode::CanalMarginViolated,
                KeepOutKind::NerveRoot(_) => ReasonCode::NerveRootMarginViolated,
                KeepOutKind::Forbidden => ReasonCode::ForbiddenMarginViolated,
            };
            return Some((code, "balloon"));
        }
    }
    None
}

/// The `i`-th point (from 1) of the Halton sequence in base `base`, in (0, 1).
fn halton(mut i: usize, base: usize) -> Real {
    let mut f = 1.0;
    let mut r = 0.0;
    while i > 0 {
        f /= base as Real;
        r += f * (i % base) as Real;
        i /= base;
    }
    r
}

/// The `i`-th (from 0) perturbation of the error model with RMS `sigma_mm` and `sigma_deg`:
/// Halton points in bases 2..13 (one per dimension, skipping index 0), turned Gaussian by
/// Box-Muller. Returns (translation, rotation vector in radians), LPS.
pub fn model_sample(i: usize, sigma_mm: Real, sigma_deg: Real) -> (Vector, Vector) {
    let idx = i + 1;
    let gauss = |b1: usize, b2: usize| {
        let (u1, u2) = (halton(idx, b1), halton(idx, b2));
        let rad = (-2.0 * u1.max(1e-12).ln()).sqrt();
        let phi = std::f64::consts::TAU * u2;
        (rad * phi.cos(), rad * phi.sin())
    };
    let (a, b) = gauss(2, 3);
    let (c, d) = gauss(5, 7);
    let (e, f) = gauss(11, 13);
    let per_axis = 1.0 / 3.0_f64.sqrt();
    let t = Vector::new(a, b, c) * (sigma_mm * per_axis);
    let w = Vector::new(d, e, f) * (sigma_deg.to_radians() * per_axis);
    (t, w)
}

/// The fraction of [`VIOLATION_SAMPLES`] perturbations of the error model under which a margin
/// fails ([`margin_violation`]). A sample whose translation and rotation the certificate covers
/// (`|t| / translation_mm + |w| / rotation_floor_deg <= 1`) keeps every margin by proof and is not
/// re-measured; every other sample is re-measured exactly. Samples are measured in parallel and
/// counted in order: the same number on any thread count.
pub fn violation_probability(
    profile: &Profile<'_>,
    cert: &Certificate,
    m: &Measurement,
    balloon: Option<&BalloonFit>,
    sigma_mm: Real,
    sigma_deg: Real,
) -> Real {
    let violated: Vec<bool> = (0..VIOLATION_SAMPLES)
        .into_par_iter()
        .map(|i| {
            let (t, w) = model_sample(i, sigma_mm, sigma_deg);
            let (tn, wn) = (t.norm(), w.norm().to_degrees());
            // A sample the certificate covers keeps every margin by proof: every piece's slack
            // is at least the translation tolerance and at least lever x the rotation one, so
            // at least any convex combination of the two.
            let share = |x: Real, tol: Real| if x == 0.0 { 0.0 } else { x / tol };
            if share(tn, cert.translation_mm) + share(wn, cert.rotation_floor_deg) <= 1.0 {
                return false;
            }
            let motion = perturbation(&m.bone_entry_lps, &t, &w);
            margin_violation(profile.ctx, m, balloon, &motion).is_some()
        })
        .collect();
    violated.iter().filter(|&&v| v).count() as Real / VIOLATION_SAMPLES as Real
}

/// The tolerance of a verified trajectory (and its balloon) as the plan reports it.
pub fn navigation_tolerance(
    ctx: &SideContext<'_>,
    m: &Measurement,
    balloon: Option<&BalloonFit>,
) -> NavigationTolerance {
    let profile = Profile::new(ctx, m, balloon);
    // The cannula's spans are the profile's first ones: the same as
    // `Profile::new(ctx, m, None).certificate()`, its pieces measured once for both.
    let (cert, cannula) = profile.certificates();
    let probability = if !m.violations.iter().any(|v| is_margin_violation(v.code)) {
        violation_probability(
            &profile,
            &cert,
            m,
            balloon,
            NAVIGATION_SIGMA_MM,
            NAVIGATION_SIGMA_DEG,
        )
    } else {
        1.0
    };
    NavigationTolerance {
        translation_mm: cert.translation_mm,
        rotation_deg: cert.rotation_deg,
        translation_limited_by: cert.translation_limited_by.to_string(),
        rotation_limited_by: cert.rotation_limited_by.to_string(),
        violation_probability: probability,
        cannula_translation_mm: cannula.translation_mm,
        cannula_rotation_deg: cannula.rotation_deg,
        sigma_mm: NAVIGATION_SIGMA_MM,
        sigma_deg: NAVIGATION_SIGMA_DEG,
        samples: VIOLATION_SAMPLES as u32,
    }
}

/// How many searches with widened margins [`search_side_required`] tries after the plain one.
pub const REQUIRED_SEARCH_ATTEMPTS: usize = 2;

/// [`search_side_mode`], with the request's navigation error as a requirement
/// ([`Safety::navigation_error`]): the side is feasible only with a line whose certified
/// tolerance (cannula) covers the error, translation and rotation together ([`Profile::covers`]);
/// otherwise infeasible with [`ReasonCode::ErrorToleranceTooLow`] and the best certified
/// tolerance among the safe lines measured. Without a requirement, exactly [`search_side_mode`].
///
/// The plain search runs first; if its line does not cover the error, the search runs again
/// with every margin widened by `error_mm + lever x error_rad` (lever: the last line's distance
/// from the bone entry to the tip), up to [`REQUIRED_SEARCH_ATTEMPTS`] times, and each line it
/// returns is re-measured with the request's margins and certified.
pub fn search_side_required(
    ctx: &SideContext<'_>,
    mode: SearchMode,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<SideOutcome, PlanError> {
    let outcome = search_side_mode(ctx, mode, cancelled)?;
    let Some((need_mm, need_deg)) = ctx.safety.navigation_error() else {
        return Ok(outcome);
    };
    let SideOutcome::Feasible(first) = &outcome else {
        return Ok(outcome);
    };
    let profile = Profile::new(ctx, first, None);
    if profile.covers(need_mm, need_deg).0 {
        return Ok(outcome);
    }
    let mut best = profile.certificate();
    let mut lever = (first.tip_lps - first.bone_entry_lps).norm();
    let mut widen = 1.0;
    for _ in 0..REQUIRED_SEARCH_ATTEMPTS {
        let extra = widen * (need_mm + lever * need_deg.to_radians());
        let safety = Safety {
            cortex_margin_mm: ctx.safety.cortex_margin_mm + extra,
            canal_margin_mm: ctx.safety.canal_margin_mm + extra,
            nerve_root_margin_mm: ctx.safety.nerve_root_margin_mm + extra,
            navigation_error_mm: None,
            navigation_error_deg: None,
            ..ctx.safety.clone()
        };
        let wide = SideContext {
            anatomy: ctx.anatomy,
            vertebra: ctx.vertebra,
            keep_outs: ctx.keep_outs.clone(),
            side: ctx.side,
            instrument: ctx.instrument,
            safety: &safety,
            route_rule: ctx.route_rule,
        };
        let SideOutcome::Feasible(found) = search_side_mode(&wide, mode, cancelled)? else {
            break;
        };
        // Judged again with the request's own margins.
        let from = found.tip_lps - found.direction_lps.into_inner() * 100.0;
        let m = measure(ctx, &from, &found.tip_lps);
        if !m.violations.is_empty() || !mode.accepts(ctx, &m) {
            break;
        }
        let profile = Profile::new(ctx, &m, None);
        if profile.covers(need_mm, need_deg).0 {
            return Ok(SideOutcome::Feasible(Box::new(m)));
        }
        let cert = profile.certificate();
        if cert.translation_mm > best.translation_mm {
            best = cert;
        }
        lever = (m.tip_lps - m.bone_entry_lps).norm();
        widen *= 1.25;
    }
    Ok(SideOutcome::Infeasible {
        reasons: vec![too_low(need_mm, need_deg, &best)],
        alternatives: vec![],
    })
}

/// The reason of a side whose best tolerance does not cover the required navigation error.
pub fn too_low(need_mm: Real, need_deg: Real, best: &Certificate) -> Reason {
    Reason {
        code: ReasonCode::ErrorToleranceTooLow,
        message: format!(
            "no safe line tolerates the required navigation error of {need_mm} mm and {need_deg} degrees together: the best certified tolerance found is {:.2} mm (limited by {}) or {:.2} degrees about the bone entry (limited by {})",
            best.translation_mm, best.translation_limited_by, best.rotation_deg, best.rotation_limited_by
        ),
        value_mm: Some(best.translation_mm),
        limit_mm: Some(need_mm),
        value_deg: Some(best.rotation_deg),
        limit_deg: Some(need_deg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anatomy::Side;
    use crate::prepare::{PrepareOptions, PreparedAnatomy};
    use crate::request::Instrument;

    /// The refinement as first written, the slow oracle: every half walked when its piece is
    /// split.
    fn refine_walking_every_half(
        profile: &Profile<'_>,
        n: usize,
        bound: impl Fn(Real, Real) -> Real,
    ) -> (Real, &'static str) {
        let value = |i: usize, a: Real, b: Real| {
            bound(
                profile.slack_mm(&profile.spans[i], a, b),
                a.abs().max(b.abs()),
            )
        };
        let mut pieces: Vec<(Real, usize, Real, Real)> = profile.spans[..n]
            .iter()
            .enumerate()
            .map(|(i, s)| (value(i, s.t0, s.t1), i, s.t0, s.t1))
            .collect();
        let mut measured = pieces.len();
        loop {
            let Some(k) = (0..pieces.len()).min_by(|&i, &j| pieces[i].0.total_cmp(&pieces[j].0))
            else {
                return (Real::INFINITY, "nothing");
            };
            let (v, i, a, b) = pieces[k];
            let small = MIN_PIECE_MM.max(MIN_PIECE_LEVER_FRACTION * a.abs().max(b.abs()));
            if b - a <= small || measured >= MAX_PIECES || v == Real::INFINITY {
                return (v, profile.spans[i].what);
            }
            let m = 0.5 * (a + b);
            pieces[k] = (value(i, a, m), i, a, m);
            pieces.push((value(i, m, b), i, m, b));
            measured += 2;
        }
    }

    /// The refinement's fast path against the slow one: its result equals the result of the
    /// refinement that walks every half; every piece's slack the certificates
    /// used, whether walked or inherited from its whole through the nearest triangle, equals
    /// a fresh exact walk of that piece (within the inheritance's rounding tolerance, and
    /// never above it by more than rounding), on every side of the built-in L1-L5 with its
    /// balloon; and the inheritance is taken on most of the halves.
    #[test]
    fn refinement_equals_walking_every_half_and_inherited_slacks_are_exact() {
        let anatomy =
            PreparedAnatomy::prepare(crate::synth::demo_anatomy(), &PrepareOptions::standard())
                .expect("demo anatomy");
        let (instrument, safety) = (Instrument::contract_default(), Safety::contract_default());
        let never = || false;
        let (mut halves, mut inherited, mut sides) = (0, 0, 0);
        for level in anatomy.levels() {
            let vertebra = anatomy.vertebra(level).expect("level");
            for side in [Side::Left, Side::Right] {
                let ctx =
                    SideContext::transpedicular(&anatomy, vertebra, side, &instrument, &safety);
                let Ok(SideOutcome::Feasible(m)) =
                    search_side_mode(&ctx, SearchMode::Bilateral, &never)
                else {
                    continue;
                };
                sides += 1;
                let balloon = crate::balloon::best_single(&crate::balloon::options(&ctx, &m));
                let profile = Profile::new(&ctx, &m, balloon.as_ref());
                // The floor and a combined motion's reserve (`Profile::covers`), of the
                // cannula's spans and of all: the same piece and a value within the inherited
                // slacks' rounding as the refinement that walks every half.
                let bounds: [&dyn Fn(Real, Real) -> Real; 2] = [
                    &|slack, lever| {
                        if lever <= 1e-9 {
                            Real::INFINITY
                        } else {
                            slack / lever
                        }
                    },
                    &|slack, lever| slack - 0.5 - lever * 0.01,
                ];
                for n in [profile.cannula_spans, profile.spans.len()] {
                    for bound in bounds {
                        let fast = profile.refine_spans(n, &mut Measured::default(), bound);
                        let slow = refine_walking_every_half(&profile, n, bound);
                        assert_eq!(fast.1, slow.1, "{level} {side}: limited by");
                        assert!(
                            (fast.0 - slow.0).abs() <= 1e-8 * (1.0 + slow.0.abs()),
                            "{level} {side}: refined {} against every half walked {}",
                            fast.0,
                            slow.0
                        );
                    }
                }
                let mut memo = Measured::default();
                let _ = profile.certificate_of(profile.spans.len(), &mut memo);
                for (&(i, a, b), got) in &memo {
                    let (a, b) = (Real::from_bits(a), Real::from_bits(b));
                    let s = &profile.spans[i];
                    let exact = profile.slack_witness(s, a, b).slack_mm;
                    if a != s.t0 || b != s.t1 {
                        halves += 1;
                        inherited += usize::from(got.inherited);
                    }
                    assert!(
                        (got.slack_mm - exact).abs() <= 1e-8,
                        "{level} {side} {}: piece {a}..{b}: {} against an exact walk's {exact}",
                        s.what,
                        got.slack_mm
                    );
                }
            }
        }
        assert!(sides >= 8, "only {sides} feasible sides");
        // Of two halves at most one lies wholly off the nearest triangle's side: about half
        // of them are inherited where the refinement descends to the nearest point.
        eprintln!("{inherited} of {halves} halves inherited their whole's slack");
        assert!(
            inherited * 3 >= halves,
            "{inherited} of {halves} halves inherited: the fast path barely ran"
        );
    }
}
