//! What makes a trajectory safe and good, in one place: the clinical rules (where the entry, the
//! tip and the cortex margin apply), the weights and the score, and the measures on the
//! approximate distance grids that both the search's screening ([`crate::search`]) and the exact
//! measurement ([`crate::evaluate`](mod@crate::evaluate)) take. Each number says its unit and where it comes from;
//! the safety margins themselves are the request's ([`Safety`], sources in the README).

use crate::anatomy::Side;
use crate::frame::VertebraFrame;
use crate::math::{self, Point, Pose, Real, Vector};
use crate::request::{Instrument, Safety};
use crate::voxel::{Grid, KeepOutGrid, BLOCK_CELLS};

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

/// The bone entry must lie at least this far behind the posterior wall of the body, mm: a
/// transpedicular entry is on the posterior elements, so the cannula crosses the whole pedicle.
pub const MIN_ENTRY_BEHIND_WALL_MM: Real = 5.0;

/// Where the search puts the tip along the body chord on the axis (posterior wall 0, anterior
/// cortex 1): 75 % of the body depth, inside the anterior third where the balloon reduces the
/// fracture (README, "Defaults").
pub const TIP_DEPTH_FRACTION: Real = 0.75;

/// Tip depth in the body (fraction from the posterior wall) at or beyond which the tip is in
/// the anterior third; a tip short of it is a soft goal missed.
pub const ANTERIOR_THIRD_FRACTION: Real = 2.0 / 3.0;

/// How far behind the bone entry, along the axis, the cortex margin is waived while the cannula
/// docks, mm. The plane model of the entry: the cannula axis meets the bone surface at
/// `incidence` from its normal, so a point of the axis `s` past the entry lies `s cos(incidence)`
/// under the tangent plane, and the cylinder around it keeps the cortex margin only once
/// `s cos(incidence) >= radius + margin`. Where the surface is convex it falls away from that
/// plane by `drop_mm` within the cannula's footprint, and the cylinder needs that much more
/// depth. The waiver is exactly `(r + m + drop) / cos(incidence)`: what the geometry of the
/// cannula's actual incidence on the actual surface requires, and no further. `cos_incidence`
/// is clamped to the cosine of 89 degrees (the request's limit is below it).
pub fn docking_zone_mm(
    instrument: &Instrument,
    safety: &Safety,
    cos_incidence: Real,
    drop_mm: Real,
) -> Real {
    let cos_floor = 89.0_f64.to_radians().cos();
    (instrument.cannula_radius_mm() + safety.cortex_margin_mm + drop_mm)
        / cos_incidence.max(cos_floor)
}

/// The radius around the bone entry over which [`docking_zone_mm`]'s surface drop is measured,
/// mm: the footprint of the cylinder grown by the margin, stretched by the incidence.
pub fn docking_footprint_mm(instrument: &Instrument, safety: &Safety, cos_incidence: Real) -> Real {
    docking_zone_mm(instrument, safety, cos_incidence, 0.0)
}

/// Where along the axis (distance from the tip, negative behind it) the cortex margin starts to
/// apply: the end of the docking zone past the bone entry ([`docking_zone_mm`]), never past the
/// tip. From there to the tip the cylinder must keep the margin inside the bone; the canal and
/// root margins apply along the whole cannula. `t_entry` is the entry's distance from the tip.
pub fn cortex_start(t_entry: Real, docking_mm: Real) -> Real {
    (t_entry + docking_mm).min(0.0)
}

/// The part of a path inside the pedicle: between the plane of the back of the canal and the
/// posterior wall of the body, clipped to `[t0, t1]` (distances along `dir_vertebra` from
/// `origin_vertebra`). `None` when the path does not cross that slab.
pub fn pedicle_span(
    frame: &VertebraFrame,
    origin_vertebra: &Point,
    dir_vertebra: &Vector,
    t0: Real,
    t1: Real,
) -> Option<(Real, Real)> {
    if dir_vertebra.y > -1e-9 {
        return None;
    }
    let t_back = (frame.canal_back_y_mm - origin_vertebra.y) / dir_vertebra.y;
    let t_wall = (frame.posterior_wall_y_mm - origin_vertebra.y) / dir_vertebra.y;
    let a = t_back.max(t0);
    let b = t_wall.min(t1);
    (b > a).then_some((a, b))
}

/// Medial and cranial angles (degrees) of a direction given in the vertebra frame: medial =
/// atan2(-side_sign * d_x, -d_y), cranial = atan2(d_z, -d_y) (ARCHITECTURE.md, "Coordinate
/// frames").
pub fn angles_deg(side: Side, dir_vertebra: &Vector) -> (Real, Real) {
    let forward = -dir_vertebra.y;
    let medial = (-side.sign() * dir_vertebra.x).atan2(forward).to_degrees();
    let cranial = dir_vertebra.z.atan2(forward).to_degrees();
    (medial, cranial)
}

/// The extrapedicular route (mid and upper thoracic levels; clinical.md, "The procedure": the
/// path runs lateral to the pedicle, between rib head and pedicle, into the body). Its rule in
/// [`crate::evaluate::measure`]: the cannula docks on the rib (head-neck), or on the vertebra
/// within this distance of the rib (the costotransverse junction), mm. The synthetic joint
/// space is 1.5 mm (`synth::RIB_JOINT_GAP_MM`); 3 mm takes a docking point on the transverse
/// process right beside the rib as the junction, and no farther.
pub const COSTOTRANSVERSE_JUNCTION_MM: Real = 3.0;

/// The extrapedicular rule: the one stretch of the path outside bone between docking and tip
/// that is allowed, where the cannula leaves the rib and enters the vertebra (the costovertebral
/// joint and the soft tissue between rib head and pedicle), is at most this long along the
/// axis, mm. Model value: a 1-2 mm joint space crossed obliquely at up to about 70 degrees
/// (1.5 / cos 70 = 4.4 mm) plus the paravertebral soft tissue in the angle between rib head and
/// pedicle; a longer gap means the cannula runs unguided through soft tissue beside the pleura.
pub const MAX_RIB_PEDICLE_GAP_MM: Real = 8.0;

/// The extrapedicular rule: at the isthmus plane the cannula's surface stays at least this far
/// outside the isthmus's bony outline on its lateral side, mm (0: the cylinder may touch the
/// lateral wall but not cut into it; a cannula that cuts into the pedicle is neither through it
/// nor beside it).
pub const EXTRAPEDICULAR_ISTHMUS_CLEARANCE_MM: Real = 0.0;

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

// ---------------------------------------------------------------------------------------------
// The score
// ---------------------------------------------------------------------------------------------

/// The worst slack counts in the score up to this reserve, mm: beyond it, a trajectory is
/// comfortably safe and alignment with the pedicle decides.
pub const SLACK_RESERVE_MM: Real = 1.0;
/// Each sample of the centring term counts at most this much slack, mm (a wide pedicle's
/// middle is not better than a few millimetres of bone all round).
pub const CENTRING_CAP_MM: Real = 6.0;
/// Weight of the centring term (mean slack in the pedicle, mm) in the score, per mm.
pub const CENTRING_WEIGHT: Real = 0.5;
/// Penalty per millimetre of mean distance between the path and the centres of the pedicle's
/// cross-sections (the anatomical pedicle axis).
pub const ALIGNMENT_WEIGHT_PER_MM: Real = 0.2;
/// Weight of convergence towards the midline, per degree of medial angle.
pub const CONVERGENCE_WEIGHT_PER_DEG: Real = 0.005;
/// Convergence counts up to this medial angle, degrees (the lumbar pedicles converge by at most
/// about 30 degrees, L5).
pub const CONVERGENCE_CAP_DEG: Real = 30.0;
/// Penalty per unit of tip depth fraction short of the anterior third.
pub const SHALLOW_TIP_WEIGHT: Real = 2.0;
/// Weight of the balloon term ([`balloon_room_ml`]: the largest balloon the line leaves room
/// for), per ml. The procedure's objective is the cavity: the cement a level takes follows the
/// balloons (planning::CEMENT_INTERDIGITATION_FRACTION), and volumes under 4.5 ml relieved pain
/// less often (SWISSspine, `../shared/reference/clinical.md`). At 2 per ml, a millilitre of
/// balloon is worth twice the whole slack reserve ([`SLACK_RESERVE_MM`], 1 mm) and 1.5 ml
/// outweighs the pedicle's centring (at most [`CENTRING_WEIGHT`] x [`CENTRING_CAP_MM`] = 3): among safe lines
/// the one whose balloon is largest wins, and a line that hugs a wall of the pedicle while its
/// balloon has room beats a central line whose balloon cannot inflate. A required navigation
/// error makes tolerance a hard rule instead ([`crate::tolerance`]).
pub const BALLOON_WEIGHT_PER_ML: Real = 2.0;

/// Smallest slack over the margins, mm (negative when a margin is violated): cortex, canal and
/// root clearances less their margins, and a forbidden structure's less the canal margin.
pub fn worst_slack_mm(
    safety: &Safety,
    cortex_clearance_mm: Real,
    canal_clearance_mm: Real,
    root_clearance_mm: Real,
    forbidden_clearance_mm: Option<Real>,
) -> Real {
    let mut w = (cortex_clearance_mm - safety.cortex_margin_mm)
        .min(canal_clearance_mm - safety.canal_margin_mm)
        .min(root_clearance_mm - safety.nerve_root_margin_mm);
    if let Some(f) = forbidden_clearance_mm {
        w = w.min(f - safety.canal_margin_mm);
    }
    w
}

/// The score of the search and of evaluation (one formula for both), higher is better. Its
/// named terms:
/// - **safety reserve**: the worst slack over the margins, up to [`SLACK_RESERVE_MM`];
/// - **balloon**: the largest balloon the line leaves room for ([`balloon_room_ml`], weight
///   [`BALLOON_WEIGHT_PER_ML`]); it rewards lines whose balloon sits centred between the
///   endplates and clear of the posterior wall, since the room is the distance to them;
/// - **centring**: mean slack to the bone inside the pedicle ([`centring_mm`],
///   [`CENTRING_WEIGHT`]);
/// - **alignment**: distance from the pedicle's centres ([`axis_offset_mm`],
///   [`ALIGNMENT_WEIGHT_PER_MM`]);
/// - **convergence** towards the midline ([`CONVERGENCE_WEIGHT_PER_DEG`]) and a tip in the
///   anterior third ([`SHALLOW_TIP_WEIGHT`]).
///
/// Left and right balance is the pair's ([`crate::balloon::best_pair`]: the smaller balloon
/// first, then the total).
pub fn score(
    worst_slack_mm: Real,
    balloon_room_ml: Real,
    centring_mm: Real,
    axis_offset_mm: Real,
    medial_angle_deg: Real,
    tip_depth_fraction: Real,
) -> Real {
    let convergence = CONVERGENCE_WEIGHT_PER_DEG * medial_angle_deg.clamp(0.0, CONVERGENCE_CAP_DEG);
    let tip = if tip_depth_fraction >= ANTERIOR_THIRD_FRACTION {
        0.0
    } else {
        -SHALLOW_TIP_WEIGHT * (ANTERIOR_THIRD_FRACTION - tip_depth_fraction)
    };
    worst_slack_mm.min(SLACK_RESERVE_MM)
        + BALLOON_WEIGHT_PER_ML * balloon_room_ml
        + CENTRING_WEIGHT * centring_mm
        - ALIGNMENT_WEIGHT_PER_MM * axis_offset_mm
        + convergence
        + tip
}

/// Mean distance from the line through `origin_vertebra` along unit `dir_vertebra` to
/// `centroids_vertebra` (the pedicle's cross-section centres), mm; 0 without centroids.
pub fn axis_offset_mm(
    centroids_vertebra: &[Point],
    origin_vertebra: &Point,
    dir_vertebra: &Vector,
) -> Real {
    if centroids_vertebra.is_empty() {
        return 0.0;
    }
    centroids_vertebra
        .iter()
        .map(|c| {
            let w = c - origin_vertebra;
            (w - dir_vertebra * w.dot(dir_vertebra)).norm()
        })
        .sum::<Real>()
        / centroids_vertebra.len() as Real
}

// ---------------------------------------------------------------------------------------------
// Measures on the approximate grids
// ---------------------------------------------------------------------------------------------

/// Spacing of the samples the grid measures take along a path, mm (half the 1 mm analysis
/// grid spacing, so no cell is stepped over).
pub const GRID_SAMPLE_STEP_MM: Real = 0.5;

/// Bound on the slope of a trilinearly interpolated distance grid, mm per mm: neighbouring
/// cells differ by at most one spacing, so each component of the gradient is at most 1.
pub const GRID_LIPSCHITZ: Real = 1.732_050_808;
/// Round-off allowance of a grid sample, mm.
pub const SAMPLE_TOLERANCE_MM: Real = 1e-3;

/// How many of the next samples along a line (every [`GRID_SAMPLE_STEP_MM`]) are sure to stay
/// above `floor` after a sample of value `s` (none for non-finite values).
#[inline]
pub(crate) fn samples_above(s: Real, floor: Real) -> usize {
    // A product with the constant reciprocal: no division in the chain from one sample to the
    // next (a count one larger where the quotient rounds across an integer is still sound: the
    // skipped sample stays above `floor` by the tolerance, less an ulp).
    const SAMPLES_PER_MM_OF_ROOM: Real = 1.0 / (GRID_LIPSCHITZ * GRID_SAMPLE_STEP_MM);
    let room = s - floor - SAMPLE_TOLERANCE_MM;
    if room.is_finite() && room > 0.0 {
        (room * SAMPLES_PER_MM_OF_ROOM) as usize
    } else {
        0
    }
}

/// What the bone's signed distance grid reads outside the grid: well outside the bone, mm (the
/// grid reaches 3 cells past the mesh, so a point beyond it is at least that far out).
pub const BONE_OUTSIDE_GRID_MM: f32 = -10.0;

/// What a keep-out's distance grid reads outside the grid: no keep-out near, mm.
pub const KEEP_OUT_OUTSIDE_GRID_MM: f32 = f32::INFINITY;

/// The one sampling kernel of the grid measures: a distance grid (grid frame) read at points
/// of the vertebra frame, with its outside value (and, for a keep-out, its block bounds).
#[derive(Clone, Copy)]
pub struct GridSampler<'a> {
    grid: &'a Grid<f32>,
    outside: f32,
    vertebra_to_grid: Pose,
    blocks: Option<&'a KeepOutGrid>,
}

impl<'a> GridSampler<'a> {
    /// The bone's signed distance grid (positive inside), reading [`BONE_OUTSIDE_GRID_MM`]
    /// outside.
    pub fn bone(grid: &'a Grid<f32>, vertebra_to_grid: Pose) -> Self {
        GridSampler {
            grid,
            outside: BONE_OUTSIDE_GRID_MM,
            vertebra_to_grid,
            blocks: None,
        }
    }

    /// A keep-out's distance grid, reading [`KEEP_OUT_OUTSIDE_GRID_MM`] outside.
    pub fn keep_out(grid: &'a KeepOutGrid, vertebra_to_grid: Pose) -> Self {
        GridSampler {
            grid: &grid.values,
            outside: KEEP_OUT_OUTSIDE_GRID_MM,
            vertebra_to_grid,
            blocks: Some(grid),
        }
    }

    pub fn spacing_mm(&self) -> Real {
        self.grid.spacing_mm
    }

    /// The grid's value at `p_vertebra`, mm.
    #[inline]
    pub fn at(&self, p_vertebra: &Point) -> Real {
        self.grid
            .sample(&(self.vertebra_to_grid * p_vertebra), self.outside) as Real
    }

    /// The line through `origin_vertebra` along `dir_vertebra`, taken into the grid frame once,
    /// for many samples along it.
    pub fn line(&self, origin_vertebra: &Point, dir_vertebra: &Vector) -> GridLine<'a> {
        GridLine {
            grid: self.grid,
            outside: self.outside,
            origin_grid: self.vertebra_to_grid * origin_vertebra,
            dir_grid: self.vertebra_to_grid.rotation * dir_vertebra,
            blocks: self.blocks,
        }
    }
}

/// A line in a distance grid's own frame: [`GridLine::at`] reads the grid at `t` mm along it.
#[derive(Clone, Copy)]
pub struct GridLine<'a> {
    grid: &'a Grid<f32>,
    outside: f32,
    origin_grid: Point,
    dir_grid: Vector,
    blocks: Option<&'a KeepOutGrid>,
}

impl GridLine<'_> {
    #[inline]
    pub fn at(&self, t: Real) -> Real {
        self.grid
            .sample(&(self.origin_grid + self.dir_grid * t), self.outside) as Real
    }

    /// How many of the samples at `t`, `t + step`, `t + 2 step`, ... (`step` > 0) are sure to
    /// read at least `floor`: those that lie in the block of the sample at `t` when the
    /// block's lower bound ([`KeepOutGrid`]) is above `floor` by [`SAMPLE_TOLERANCE_MM`] (the
    /// interpolation's f32 round-off). 0 for a grid without block bounds, or where the sample
    /// at `t` lies outside the blocks.
    #[inline]
    pub fn samples_in_block_above(&self, t: Real, step: Real, floor: Real) -> usize {
        let Some(blocks) = self.blocks else {
            return 0;
        };
        let h = self.grid.spacing_mm;
        // The sample's own cell, as `Grid::sample` finds it.
        let Some((u, cell)) = self.grid.cell_of(&(self.origin_grid + self.dir_grid * t)) else {
            return 0;
        };
        let Some(bound) = blocks.block_bound(cell[0], cell[1], cell[2]) else {
            return 0;
        };
        // (A NaN floor or bound is not above.)
        let above = bound as Real - SAMPLE_TOLERANCE_MM >= floor;
        if !above {
            return 0;
        }
        // How far along the line (mm) it stays in the block, a micrometre short for round-off
        // (the samples' `t` are sums of steps).
        let mut stay = Real::INFINITY;
        for a in 0..3 {
            let rate = self.dir_grid[a] / h;
            let block = (cell[a] / BLOCK_CELLS) as Real * BLOCK_CELLS as Real;
            let face = if rate > 0.0 {
                block + BLOCK_CELLS as Real
            } else {
                block
            };
            if rate != 0.0 {
                stay = stay.min((face - u[a]) / rate);
            }
        }
        let stay = stay - 1e-3;
        if stay >= 0.0 {
            1 + (stay / step) as usize
        } else {
            1
        }
    }
}

/// Cosine of the incidence of the axis `dir_vertebra` at the bone entry `entry_vertebra`, from
/// the gradient of the bone's distance grid one millimetre inside (central differences over
/// one grid spacing).
pub fn entry_incidence_cos(
    bone: &GridSampler<'_>,
    entry_vertebra: &Point,
    dir_vertebra: &Vector,
) -> Real {
    let p = entry_vertebra + dir_vertebra;
    let h = bone.spacing_mm();
    let mut g = Vector::zeros();
    for axis in 0..3 {
        let mut e = Vector::zeros();
        e[axis] = h;
        g[axis] = bone.at(&(p + e)) - bone.at(&(p - e));
    }
    let n = g.norm();
    if n < 1e-9 {
        return 1.0;
    }
    (g / n).dot(dir_vertebra).clamp(-1.0, 1.0)
}

/// The centring measure: the mean slack to the bone surface (distance minus cannula radius
/// minus cortex margin, each sample capped at [`CENTRING_CAP_MM`]) over a span of
/// `span_length_mm` sampled evenly every [`GRID_SAMPLE_STEP_MM`] or less, ends included.
/// `bone_at(f)` is the bone's grid distance at fraction `f` (0 to 1) of the span.
pub fn centring_mm(
    span_length_mm: Real,
    radius_mm: Real,
    margin_mm: Real,
    bone_at: impl Fn(Real) -> Real,
) -> Real {
    let n = ((span_length_mm / GRID_SAMPLE_STEP_MM).ceil() as usize).max(1);
    let mut sum = 0.0;
    for i in 0..=n {
        let d = bone_at(i as Real / n as Real);
        sum += (d - radius_mm - margin_mm).min(CENTRING_CAP_MM);
    }
    sum / (n + 1) as Real
}

/// The balloon measure of a line: the volume (ml) of the largest capsule of the request's
/// lengths whose axis ends at one of [`BALLOON_DISTAL_OFFSETS_MM`] from the tip and runs back
/// along the line, inflated (in
/// [`DIAMETER_STEP_MM`] steps, at most `max_diameter_mm`) as far as the bone's
/// distance grid and the posterior wall allow by `margin_mm` (0 when no length inflates to
/// [`MIN_BALLOON_DIAMETER_MM`]). An estimate on the approximate grid that
/// both the screening and the exact measurement take, like [`centring_mm`]: the balloon
/// planned is fitted exactly afterwards ([`crate::balloon::options`]).
///
/// `bone_behind_tip(s)` is the bone's grid distance `s` mm behind the tip,
/// `wall_behind_tip(s)` the distance from that point to the posterior wall plane (positive in
/// front of it) and `midline_behind_tip(s)` its distance from the mid-sagittal plane on the
/// side's own half (negative across it), mm. The balloon keeps half of
/// [`BALLOON_GAP_MM`] from the mid-sagittal plane (`s` negative: beyond the tip): bilateral balloons converge towards the
/// midline without crossing it, and any left balloon kept so and any right one keep the gap
/// between them, so each side's term is its share of the pair. (A unipedicular line, whose
/// balloon is centred on the midline, scores 0 here: its target rule decides it.) The samples are taken every [`GRID_SAMPLE_STEP_MM`] from the tip back to
/// the longest length behind the nearest offset, the farthest offset ahead of it.
pub fn balloon_room_ml(
    lengths_mm: &[Real],
    max_diameter_mm: Real,
    margin_mm: Real,
    bone_behind_tip: impl Fn(Real) -> Real,
    wall_behind_tip: impl Fn(Real) -> Real,
    midline_behind_tip: impl Fn(Real) -> Real,
) -> Real {
    // Samples every GRID_SAMPLE_STEP_MM from the farthest distal offset back to the longest
    // balloon behind the nearest one: `s` = `s_lo + k * step`.
    let step = GRID_SAMPLE_STEP_MM;
    let longest = lengths_mm.iter().copied().fold(0.0, Real::max);
    let s_lo = -BALLOON_DISTAL_OFFSETS_MM
        .iter()
        .copied()
        .fold(0.0, Real::max);
    let s_hi = longest
        - BALLOON_DISTAL_OFFSETS_MM
            .iter()
            .copied()
            .fold(0.0, Real::min);
    let n = ((s_hi - s_lo) / step).ceil() as usize;
    // The samples, taken only when a capsule needs them (NaN: not yet), on the stack for the
    // usual lengths. Each capsule's volume is the same function of the same samples as over
    // every sample; what is skipped below cannot change the largest.
    let mut on_stack = [Real::NAN; 128];
    let mut on_heap = Vec::new();
    let bone: &mut [Real] = if n < on_stack.len() {
        &mut on_stack[..=n]
    } else {
        on_heap.resize(n + 1, Real::NAN);
        &mut on_heap
    };
    // A capsule's axis from `-offset` (distal) to `len - offset` behind the tip; its room by the
    // posterior wall and the midline (no grid), of which its room is at most.
    let ends = |offset: Real, len: Real| (-offset, len - offset);
    let room_without_bone = |a: Real, b: Real| {
        (wall_behind_tip(b) - margin_mm)
            .min(midline_behind_tip(a).min(midline_behind_tip(b)) - 0.5 * BALLOON_GAP_MM)
    };
    // The volume of a capsule of `len` whose radius is at most `r`: an upper bound of its
    // volume (the diameter step, the cap and the volume all grow with `r`).
    let volume_at_most = |len: Real, r: Real| {
        let d = floor_diameter_step((2.0 * r).min(max_diameter_mm));
        if d >= MIN_BALLOON_DIAMETER_MM {
            capsule_volume_ml(len, d)
        } else {
            0.0
        }
    };
    let capsules = BALLOON_DISTAL_OFFSETS_MM
        .iter()
        .flat_map(|&offset| lengths_mm.iter().map(move |&len| (offset, len)));
    let bound_ml = |(offset, len): (Real, Real)| {
        let (a, b) = ends(offset, len);
        volume_at_most(len, room_without_bone(a, b))
    };
    // The capsule with the largest bound first, so that the bound of most others is at most
    // the best volume found and they are skipped (the largest volume is the same in any order).
    let first = capsules
        .clone()
        .fold(None, |acc: Option<((Real, Real), Real)>, c| {
            let v = bound_ml(c);
            match acc {
                Some((_, best)) if best >= v => acc,
                _ => Some((c, v)),
            }
        })
        .map(|(c, _)| c);
    // A sample at or above this leaves the diameter at the instrument's largest, whatever its
    // exact value: `2 (near - margin) >= max_diameter_mm`.
    let cap = 0.5 * max_diameter_mm + margin_mm;
    let mut best: Real = 0.0;
    for (offset, len) in first.into_iter().chain(capsules) {
        if bound_ml((offset, len)) <= best {
            continue;
        }
        // The samples within the capsule's axis, and its ends.
        let (a, b) = ends(offset, len);
        let k0 = math::floor((a - s_lo) / step).max(0.0) as usize;
        let k1 = (((b - s_lo) / step).ceil() as usize).min(n);
        let mut near = Real::INFINITY;
        let mut beaten = false;
        let mut skip = 0usize;
        for (k, sample) in bone.iter_mut().enumerate().take(k1 + 1).skip(k0) {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if sample.is_nan() {
                *sample = bone_behind_tip(s_lo + k as Real * step);
            }
            near = near.min(*sample);
            // The capsule's radius is at most `near - margin` from here on.
            if volume_at_most(len, near - margin_mm) <= best {
                beaten = true;
                break;
            }
            // Samples the grid's Lipschitz bound keeps at or above `near`, or above the room
            // of the widest balloon (`cap`), cannot change the diameter below: not taken.
            skip = samples_above(*sample, near.min(cap));
        }
        if beaten {
            continue;
        }
        let r = (near - margin_mm)
            .min(wall_behind_tip(b) - margin_mm)
            .min(midline_behind_tip(a).min(midline_behind_tip(b)) - 0.5 * BALLOON_GAP_MM);
        let d = floor_diameter_step((2.0 * r).min(max_diameter_mm));
        if d >= MIN_BALLOON_DIAMETER_MM {
            best = best.max(capsule_volume_ml(len, d));
        }
    }
    best
}

/// An upper bound of [`balloon_room_ml`] from one sample of the bone's grid: when the shortest
/// length spans the distal offsets, every capsule the measure tries contains the axis point as
/// far behind the tip as the farthest offset lies beyond it, one of its samples; the room is at
/// most that sample less the margin, and the volume at most the longest balloon's at that
/// room. Otherwise the largest balloon the instrument makes.
pub fn balloon_room_bound_ml(
    lengths_mm: &[Real],
    max_diameter_mm: Real,
    margin_mm: Real,
    bone_behind_tip: impl Fn(Real) -> Real,
) -> Real {
    let longest = lengths_mm.iter().copied().fold(0.0, Real::max);
    let shortest = lengths_mm.iter().copied().fold(Real::INFINITY, Real::min);
    let far = BALLOON_DISTAL_OFFSETS_MM
        .iter()
        .copied()
        .fold(0.0, Real::max);
    let near = BALLOON_DISTAL_OFFSETS_MM
        .iter()
        .copied()
        .fold(0.0, Real::min);
    // The sample index of `far` in [`balloon_room_ml`]'s lattice (`s_lo = -far`), and its `s`
    // computed as there, so it is the same sample.
    let k = (2.0 * far / GRID_SAMPLE_STEP_MM).round();
    let s = -far + k * GRID_SAMPLE_STEP_MM;
    if shortest < far - near || s != far {
        return capsule_volume_ml(longest, max_diameter_mm);
    }
    let d = floor_diameter_step((2.0 * (bone_behind_tip(s) - margin_mm)).min(max_diameter_mm));
    if d >= MIN_BALLOON_DIAMETER_MM {
        capsule_volume_ml(longest, d)
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Balloons
// ---------------------------------------------------------------------------------------------

/// Smallest inflated diameter worth planning (the uninflated profile is ~3.2 mm), mm.
pub const MIN_BALLOON_DIAMETER_MM: Real = 5.0;
/// Diameters are planned in steps of this size, mm.
pub const DIAMETER_STEP_MM: Real = 0.5;
/// Smallest cannula outer diameter that carries a balloon catheter, mm: kyphoplasty is done
/// through 10- to 11-gauge working cannulas, outer diameter roughly 2.9-3.4 mm, and the
/// uninflated balloon's profile is about 3.2 mm (`../shared/reference/clinical.md`,
/// "Instruments" and "Targets"); a 13 G needle (2.41 mm) is a vertebroplasty needle. A smaller
/// cannula, the request's own or one of its alternatives, is therefore not taken for a balloon
/// (`ReasonCode::CannulaTooSmallForBalloon`).
pub const MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM: Real = 2.9;

/// Cement per level under which pain was relieved less often, ml (SWISSspine registry,
/// PMC3804705, `../shared/reference/clinical.md`): a kyphoplasty level planned under it is explained by what
/// limits its balloons (`planning::balloon_limits`).
pub const LOW_CEMENT_ML: Real = 4.5;

/// Gap kept between the left and right inflated balloons, mm.
pub const BALLOON_GAP_MM: Real = 1.0;
/// Where the balloon's distal end may sit relative to the cannula tip, along the axis, mm
/// (positive: beyond the tip, in the channel drilled ahead of the cannula). Tried in this order;
/// a later one wins only with a strictly larger volume.
pub const BALLOON_DISTAL_OFFSETS_MM: [Real; 5] = [0.0, 2.5, -2.5, 5.0, -5.0];

/// `d` rounded down to a multiple of [`DIAMETER_STEP_MM`], mm.
pub fn floor_diameter_step(d: Real) -> Real {
    math::floor(d / DIAMETER_STEP_MM + 1e-9) * DIAMETER_STEP_MM
}

/// Volume of a capsule: cylinder of `length_mm` plus a sphere, in millilitres.
pub fn capsule_volume_ml(length_mm: Real, diameter_mm: Real) -> Real {
    let r = diameter_mm * 0.5;
    (std::f64::consts::PI * r * r * length_mm + 4.0 / 3.0 * std::f64::consts::PI * r * r * r)
        / 1000.0
}
