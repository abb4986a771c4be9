//! Balloon placement: per side, a balloon length from the request's sizes and an inflated
//! diameter up to the maximum, on the cannula axis with its distal end at the tip, so that the
//! inflated balloon (a capsule) stays inside the vertebral body by the cortex margin (the
//! posterior wall and the endplates above all) and clear of every keep-out; then the left and
//! right balloons are kept apart.

use crate::criteria::floor_diameter_step;
pub use crate::criteria::{
    capsule_volume_ml, BALLOON_GAP_MM, DIAMETER_STEP_MM, MIN_BALLOON_DIAMETER_MM,
};
use crate::evaluate::{Measurement, SideContext};
use crate::math::{segment_segment_distance, Point, Real, Vector};

/// How far beyond the distance that could still narrow a balloon a keep-out's walk looks, mm:
/// round-off of halving and adding a margin, never a rule.
const CAP_SPARE_MM: Real = 1e-6;

/// Where the balloon's distal end may sit ([`crate::criteria::BALLOON_DISTAL_OFFSETS_MM`]).
pub const DISTAL_OFFSETS_MM: [Real; 5] = crate::criteria::BALLOON_DISTAL_OFFSETS_MM;

/// A fitted balloon, LPS.
#[derive(Clone, Debug, PartialEq)]
pub struct BalloonFit {
    /// Proximal and distal ends of the balloon's axis segment.
    pub proximal: Point,
    pub distal: Point,
    pub axis: Vector,
    pub length_mm: Real,
    pub diameter_mm: Real,
    pub volume_ml: Real,
    /// Largest diameter the anatomy allows for this length (before the left-right check).
    pub room_diameter_mm: Real,
    pub cortex_clearance_mm: Real,
    pub posterior_wall_clearance_mm: Real,
}

impl BalloonFit {
    pub fn center(&self) -> Point {
        nalgebra::center(&self.proximal, &self.distal)
    }
    fn set_diameter(&mut self, d: Real) {
        self.cortex_clearance_mm += (self.diameter_mm - d) * 0.5;
        self.posterior_wall_clearance_mm += (self.diameter_mm - d) * 0.5;
        self.diameter_mm = d;
        self.volume_ml = capsule_volume_ml(self.length_mm, d);
    }
}

/// Every placement of a balloon on a verified trajectory (each length of the request at each
/// distal offset) that inflates to at least [`MIN_BALLOON_DIAMETER_MM`], at the largest diameter
/// the anatomy allows.
pub fn options(ctx: &SideContext<'_>, m: &Measurement) -> Vec<BalloonFit> {
    placements(ctx, m)
        .into_iter()
        .filter(|b| b.diameter_mm >= MIN_BALLOON_DIAMETER_MM)
        .collect()
}

/// Every placement of a balloon on a verified trajectory whose ends lie in the bone (each
/// length of the request at each distal offset), at the largest diameter the anatomy allows in
/// [`DIAMETER_STEP_MM`] steps, however small (zero or negative: no room at all); [`options`]
/// keeps those that inflate to [`MIN_BALLOON_DIAMETER_MM`].
fn placements(ctx: &SideContext<'_>, m: &Measurement) -> Vec<BalloonFit> {
    placements_walking(ctx, m, true)
}

/// [`placements`]; with `capped`, each keep-out's distance walked only below what could still
/// narrow the balloon (the diameter so far, or the instrument's maximum), the same diameters
/// for less work (the tests compare with `capped` off).
fn placements_walking(ctx: &SideContext<'_>, m: &Measurement, capped: bool) -> Vec<BalloonFit> {
    let safety = ctx.safety;
    let max_mm = ctx.instrument.balloon_max_diameter_mm;
    let v = ctx.vertebra;
    let f = &v.frame;
    let u = m.direction_lps.into_inner();
    let mut out = Vec::new();
    let mut lengths = ctx.instrument.balloon_lengths_mm.clone();
    lengths.sort_by(|a, b| a.total_cmp(b));
    lengths.dedup();
    for (&len, &offset) in lengths
        .iter()
        .flat_map(|l| DISTAL_OFFSETS_MM.iter().map(move |o| (l, o)))
    {
        let distal = m.tip_lps + u * offset;
        let proximal = distal - u * len;
        if !v.bone.contains_point(&proximal) || !v.bone.contains_point(&distal) {
            continue;
        }
        // A required navigation error widens every margin by what the balloon's farthest point
        // from the bone entry may move ([`crate::tolerance`]: translation + lever x rotation).
        let extra = safety.navigation_error().map_or(0.0, |(mm, deg)| {
            mm + (distal - m.bone_entry_lps).dot(&u).abs() * deg.to_radians()
        });
        // Room to the bone surface.
        let bone = v.bone.distance_to_segment(&proximal, &distal);
        // Room to the posterior wall, measured in the vertebra frame.
        let py = (f.lps_to_vertebra * proximal)
            .y
            .max((f.lps_to_vertebra * distal).y);
        let wall = f.posterior_wall_y_mm - py;
        let mut room = 2.0 * (bone - safety.cortex_margin_mm - extra);
        room = room.min(2.0 * (wall - safety.cortex_margin_mm - extra));
        for k in &ctx.keep_outs {
            let margin = match k.kind {
                crate::keepout::KeepOutKind::Canal | crate::keepout::KeepOutKind::Forbidden => {
                    safety.canal_margin_mm
                }
                crate::keepout::KeepOutKind::NerveRoot(_) => safety.nerve_root_margin_mm,
            };
            // A distance at or beyond `cap` leaves `room.min(max_mm)` as it is.
            let cap = if capped {
                0.5 * room.min(max_mm) + margin + extra + CAP_SPARE_MM
            } else {
                Real::INFINITY
            };
            let d = k.distance_to_segment_below(&proximal, &distal, cap);
            if d < cap {
                room = room.min(2.0 * (d - margin - extra));
            }
        }
        let d = floor_diameter_step(room.min(max_mm));
        out.push(BalloonFit {
            proximal,
            distal,
            axis: u,
            length_mm: len,
            diameter_mm: d,
            volume_ml: capsule_volume_ml(len, d),
            room_diameter_mm: d,
            cortex_clearance_mm: bone - d * 0.5,
            posterior_wall_clearance_mm: wall - d * 0.5,
        });
    }
    out
}

/// The options of a bilateral side kept to the side's own half of the body: each balloon's
/// diameter reduced so that the inflated capsule keeps half of [`BALLOON_GAP_MM`] from the
/// mid-sagittal plane (x = 0 in the vertebra frame), those that still reach
/// [`MIN_BALLOON_DIAMETER_MM`]. Bilateral balloons converge towards the midline without
/// crossing it (the procedure's objective, [`crate::criteria::balloon_room_ml`]); any two
/// balloons so kept, one per side, keep the gap between them.
pub fn keep_to_own_half(ctx: &SideContext<'_>, options: Vec<BalloonFit>) -> Vec<BalloonFit> {
    options
        .into_iter()
        .map(|b| in_own_half(ctx, b))
        .filter(|b| b.diameter_mm >= MIN_BALLOON_DIAMETER_MM)
        .collect()
}

/// The room, as a diameter (mm), that the mid-sagittal plane leaves a bilateral side's balloon
/// axis `proximal-distal`: twice its distance to the plane less half of [`BALLOON_GAP_MM`].
fn midline_room_mm(ctx: &SideContext<'_>, proximal: &Point, distal: &Point) -> Real {
    let f = &ctx.vertebra.frame;
    let sign = ctx.side.sign();
    let x = (sign * (f.lps_to_vertebra * proximal).x).min(sign * (f.lps_to_vertebra * distal).x);
    2.0 * (x - 0.5 * BALLOON_GAP_MM)
}

/// `b` with its diameter reduced to keep to the side's own half ([`keep_to_own_half`]),
/// however small.
fn in_own_half(ctx: &SideContext<'_>, mut b: BalloonFit) -> BalloonFit {
    let d = floor_diameter_step(b.room_diameter_mm.min(midline_room_mm(
        ctx,
        &b.proximal,
        &b.distal,
    )));
    b.set_diameter(d);
    b.room_diameter_mm = d;
    b
}

/// The largest-volume option (the first of equals).
pub fn best_single(options: &[BalloonFit]) -> Option<BalloonFit> {
    let mut best: Option<&BalloonFit> = None;
    for o in options {
        if best.is_none_or(|b| o.volume_ml > b.volume_ml) {
            best = Some(o);
        }
    }
    best.cloned()
}

/// The pair of placements, one per side, that keep [`BALLOON_GAP_MM`] between the inflated
/// balloons, chosen for the largest smaller balloon first (bilateral balloons should lift the
/// endplate evenly, not one big and one token balloon), then the largest total volume;
/// diameters may be reduced below each option's room for that. `None` when no pair keeps the gap
/// at the smallest diameter.
pub fn best_pair(left: &[BalloonFit], right: &[BalloonFit]) -> Option<(BalloonFit, BalloonFit)> {
    // (smaller volume, total volume, left, right)
    let mut best: Option<(Real, Real, BalloonFit, BalloonFit)> = None;
    for l in left {
        for r in right {
            let s = segment_segment_distance(&l.proximal, &l.distal, &r.proximal, &r.distal);
            let budget = 2.0 * (s - BALLOON_GAP_MM);
            let mut dl = l.room_diameter_mm;
            while dl >= MIN_BALLOON_DIAMETER_MM - 1e-9 {
                let dr = floor_diameter_step(r.room_diameter_mm.min(budget - dl));
                if dr >= MIN_BALLOON_DIAMETER_MM {
                    let (vl, vr) = (
                        capsule_volume_ml(l.length_mm, dl),
                        capsule_volume_ml(r.length_mm, dr),
                    );
                    let (smaller, total) = (vl.min(vr), vl + vr);
                    let better = best.as_ref().is_none_or(|b| {
                        smaller > b.0 + 1e-12 || (smaller > b.0 - 1e-12 && total > b.1 + 1e-12)
                    });
                    if better {
                        let mut a = l.clone();
                        a.set_diameter(dl);
                        let mut b = r.clone();
                        b.set_diameter(dr);
                        best = Some((smaller, total, a, b));
                    }
                }
                dl -= DIAMETER_STEP_MM;
            }
        }
    }
    best.map(|(_, _, a, b)| (a, b))
}

/// The gap between two inflated balloons, mm (negative: they overlap).
pub fn gap_mm(a: &BalloonFit, b: &BalloonFit) -> Real {
    segment_segment_distance(&a.proximal, &a.distal, &b.proximal, &b.distal)
        - 0.5 * (a.diameter_mm + b.diameter_mm)
}

/// Which wall of the vertebral body is nearest a balloon's axis, by the direction from the
/// axis to the nearest point of the bone surface in the vertebra frame (its largest component:
/// z endplates, x lateral walls, y anterior or posterior cortex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoneWall {
    UpperEndplate,
    LowerEndplate,
    LateralWall,
    AnteriorCortex,
    PosteriorCortex,
}

/// What bounds a balloon's diameter: the smallest of the rooms [`options`],
/// [`keep_to_own_half`] and [`best_pair`] take it from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonBound {
    /// The instrument's largest inflated diameter (`balloon_max_diameter_mm`).
    InstrumentMaximum,
    /// The bone surface nearest the balloon's axis, by the cortex margin.
    Bone(BoneWall),
    /// The posterior wall plane of the body (the vertebra frame's), by the cortex margin.
    PosteriorWall,
    /// A keep-out (canal, nerve root, forbidden structure), by its margin.
    KeepOut,
    /// The mid-sagittal plane: a bilateral side's balloon keeps half of [`BALLOON_GAP_MM`]
    /// from it.
    Midline,
    /// The other side's balloon: the pair's diameters were shared out below this one's room
    /// ([`best_pair`]).
    OtherBalloon,
}

/// A balloon's diameter explained by a measured limit ([`limit`]). Lengths in mm.
#[derive(Clone, Debug, PartialEq)]
pub struct BalloonLimit {
    pub length_mm: Real,
    pub diameter_mm: Real,
    pub volume_ml: Real,
    /// What bounds the diameter.
    pub bound: BalloonBound,
    /// The room the bound leaves, as a diameter before the [`DIAMETER_STEP_MM`] steps:
    /// `2 x (distance_mm - margin_mm)` for bone, wall, keep-out and midline bounds.
    pub room_diameter_mm: Real,
    /// Distance from the balloon's axis segment to what bounds it (for the bone, the nearest
    /// surface point; for the midline, the plane less nothing); `None` for the instrument's
    /// maximum and the other balloon.
    pub distance_mm: Option<Real>,
    /// The margin kept from it (cortex, canal or root margin, half the balloons' gap, plus a
    /// required navigation error's share), mm.
    pub margin_mm: Real,
    /// Height of the body through the balloon's centre: the distance between the endplates
    /// along the vertebra frame's z axis, measured on the bone surface.
    pub body_height_mm: Real,
}

impl BalloonLimit {
    /// What bounds the diameter, in words.
    pub fn what(&self) -> &'static str {
        match self.bound {
            BalloonBound::InstrumentMaximum => "the instrument's largest diameter",
            BalloonBound::Bone(BoneWall::UpperEndplate) => "the upper endplate",
            BalloonBound::Bone(BoneWall::LowerEndplate) => "the lower endplate",
            BalloonBound::Bone(BoneWall::LateralWall) => "the lateral wall",
            BalloonBound::Bone(BoneWall::AnteriorCortex) => "the anterior cortex",
            BalloonBound::Bone(BoneWall::PosteriorCortex) => "the posterior cortex",
            BalloonBound::PosteriorWall => "the posterior wall plane",
            BalloonBound::KeepOut => "a keep-out",
            BalloonBound::Midline => "the midline (each side's balloon keeps to its own half)",
            BalloonBound::OtherBalloon => "the other side's balloon",
        }
    }

    /// The measurement behind [`BalloonLimit::what`]: the distance and margin, and the body
    /// height through the balloon's centre.
    pub fn measured(&self) -> String {
        let mut out = String::new();
        if let Some(d) = self.distance_mm {
            out += &format!(
                "{d:.1} mm from its axis less {:.1} mm margin leaves {:.1} mm of diameter; ",
                self.margin_mm, self.room_diameter_mm
            );
        }
        out + &format!(
            "body height through its centre {:.1} mm",
            self.body_height_mm
        )
    }
}

impl std::fmt::Display for BalloonLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} mm x {} mm balloon ({:.2} ml) limited by {} ({})",
            self.length_mm,
            self.diameter_mm,
            self.volume_ml,
            self.what(),
            self.measured()
        )
    }
}

/// What limits the balloon `b` fitted on side `ctx` to the trajectory entering the bone at
/// `bone_entry_lps` (`bilateral`: kept to its own half of the body, as a bilateral side's is): the room each rule of [`options`] and
/// [`keep_to_own_half`] leaves, measured again, the smallest named; the other balloon when
/// the diameter lies a step or more below all of them. The nearest bone point is the first
/// triangle at the bone's distance ([`crate::clearance::ClearanceMesh::first_nearest_to_segment`]:
/// the one a scan of every triangle takes); a keep-out is walked only as near as could bound
/// the balloon (an infeasible side's diagnosis takes this for its widest balloon).
pub fn limit(
    ctx: &SideContext<'_>,
    bone_entry_lps: &Point,
    b: &BalloonFit,
    bilateral: bool,
) -> BalloonLimit {
    limit_walking(ctx, bone_entry_lps, b, bilateral, true)
}

/// [`limit`]; with `capped`, a keep-out's distance walked only below the smallest room so far
/// (the tests compare with `capped` off).
fn limit_walking(
    ctx: &SideContext<'_>,
    bone_entry_lps: &Point,
    b: &BalloonFit,
    bilateral: bool,
    capped: bool,
) -> BalloonLimit {
    let safety = ctx.safety;
    let v = ctx.vertebra;
    let f = &v.frame;
    let (p, q) = (b.proximal, b.distal);
    // A required navigation error's share of every margin, as in [`options`].
    let extra = safety.navigation_error().map_or(0.0, |(mm, deg)| {
        mm + (q - bone_entry_lps).dot(&b.axis).abs() * deg.to_radians()
    });
    // (bound, room as a diameter, distance, margin), mm.
    let (bone_mm, wall) = nearest_bone_wall(v, &p, &q);
    let margin = safety.cortex_margin_mm + extra;
    let mut rooms: Vec<(BalloonBound, Real, Option<Real>, Real)> = vec![(
        BalloonBound::InstrumentMaximum,
        ctx.instrument.balloon_max_diameter_mm,
        None,
        0.0,
    )];
    rooms.push((
        BalloonBound::Bone(wall),
        2.0 * (bone_mm - margin),
        Some(bone_mm),
        margin,
    ));
    let py = (f.lps_to_vertebra * p).y.max((f.lps_to_vertebra * q).y);
    let wall_mm = f.posterior_wall_y_mm - py;
    rooms.push((
        BalloonBound::PosteriorWall,
        2.0 * (wall_mm - margin),
        Some(wall_mm),
        margin,
    ));
    for k in &ctx.keep_outs {
        let m = match k.kind {
            crate::keepout::KeepOutKind::Canal | crate::keepout::KeepOutKind::Forbidden => {
                safety.canal_margin_mm
            }
            crate::keepout::KeepOutKind::NerveRoot(_) => safety.nerve_root_margin_mm,
        } + extra;
        // A keep-out no nearer than the smallest room so far cannot bound the balloon (the
        // first smallest room is named): its distance is walked only below that.
        let smallest = rooms.iter().map(|r| r.1).fold(Real::INFINITY, Real::min);
        let cap = if capped {
            0.5 * smallest + m + CAP_SPARE_MM
        } else {
            Real::INFINITY
        };
        let d = k.distance_to_segment_below(&p, &q, cap);
        if d.is_finite() {
            rooms.push((BalloonBound::KeepOut, 2.0 * (d - m), Some(d), m));
        }
    }
    if bilateral {
        let room = midline_room_mm(ctx, &p, &q);
        let gap = 0.5 * BALLOON_GAP_MM;
        rooms.push((BalloonBound::Midline, room, Some(0.5 * room + gap), gap));
    }
    let (mut bound, room, mut distance_mm, mut margin_mm) = rooms
        .into_iter()
        .fold(
            None,
            |best: Option<(BalloonBound, Real, Option<Real>, Real)>, r| match best {
                Some(b) if b.1 <= r.1 => Some(b),
                _ => Some(r),
            },
        )
        .expect("the instrument's maximum is always a room");
    let mut room_diameter_mm = room;
    if b.diameter_mm + DIAMETER_STEP_MM <= floor_diameter_step(room) + 1e-9 {
        bound = BalloonBound::OtherBalloon;
        room_diameter_mm = b.diameter_mm;
        distance_mm = None;
        margin_mm = 0.5 * BALLOON_GAP_MM;
    }
    BalloonLimit {
        length_mm: b.length_mm,
        diameter_mm: b.diameter_mm,
        volume_ml: b.volume_ml,
        bound,
        room_diameter_mm,
        distance_mm,
        margin_mm,
        body_height_mm: body_height_through_mm(v, &b.center()),
    }
}

/// The distance from the segment `p-q` to the bone surface and the wall its nearest point lies
/// on ([`BoneWall`]), from the first triangle at that distance
/// ([`crate::clearance::ClearanceMesh::first_nearest_to_segment`]).
fn nearest_bone_wall(
    v: &crate::prepare::PreparedVertebra,
    p: &Point,
    q: &Point,
) -> (Real, BoneWall) {
    use crate::clearance::closest_point_on_triangle;
    let (best, best_i) = v
        .bone
        .first_nearest_to_segment(p, q)
        .unwrap_or((Real::INFINITY, 0));
    let tri = v.mesh.triangle(best_i);
    // The distance from a point moving along the segment to the (convex) triangle is convex in
    // the segment's parameter: a golden-section search finds the nearest pair.
    let at = |t: Real| {
        let s = p + (q - p) * t;
        let c = closest_point_on_triangle(&s, &tri);
        ((s - c).norm(), s, c)
    };
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..60 {
        let a = lo + (hi - lo) * 0.382;
        let b = lo + (hi - lo) * 0.618;
        if at(a).0 <= at(b).0 {
            hi = b;
        } else {
            lo = a;
        }
    }
    let (_, s, c) = at(0.5 * (lo + hi));
    let d = v.frame.lps_to_vertebra.rotation * (c - s);
    let wall = if d.z.abs() >= d.x.abs() && d.z.abs() >= d.y.abs() {
        if d.z > 0.0 {
            BoneWall::UpperEndplate
        } else {
            BoneWall::LowerEndplate
        }
    } else if d.x.abs() >= d.y.abs() {
        BoneWall::LateralWall
    } else if d.y < 0.0 {
        BoneWall::AnteriorCortex
    } else {
        BoneWall::PosteriorCortex
    };
    (best, wall)
}

/// The height of the body through `c` (LPS): the distance between the first bone surface
/// crossings above and below it along the vertebra frame's z axis, mm (infinite when a ray
/// leaves no crossing).
pub fn body_height_through_mm(v: &crate::prepare::PreparedVertebra, c: &Point) -> Real {
    let to_lps = v.frame.vertebra_to_lps();
    let ray = |z: Real| -> Real {
        let d = crate::math::UnitVector::new_normalize(to_lps.rotation * Vector::new(0.0, 0.0, z));
        v.bone
            .line_crossings(c, &d)
            .into_iter()
            .find(|&t| t > 0.0)
            .unwrap_or(Real::INFINITY)
    };
    ray(1.0) + ray(-1.0)
}

/// The balloon with the most room on a verified trajectory (`bilateral`: kept to the side's
/// own half), whatever its diameter, and its limit: why no balloon of [`options`] inflates to
/// [`MIN_BALLOON_DIAMETER_MM`] there. `None` when no balloon of the request's lengths has
/// both ends in the bone along the line.
pub fn widest(ctx: &SideContext<'_>, m: &Measurement, bilateral: bool) -> Option<BalloonLimit> {
    let mut all = placements(ctx, m);
    if bilateral {
        all = all.into_iter().map(|b| in_own_half(ctx, b)).collect();
    }
    let mut best: Option<&BalloonFit> = None;
    for b in &all {
        if best.is_none_or(|x| b.room_diameter_mm > x.room_diameter_mm) {
            best = Some(b);
        }
    }
    best.map(|b| limit(ctx, &m.bone_entry_lps, b, bilateral))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anatomy::{Level, Side};
    use crate::math::Pose;
    use crate::request::{Instrument, Safety};
    use crate::search::{exhaustive_safe_lines, SearchMode};
    use crate::synth::{self, SpineOptions};
    use crate::{PrepareOptions, PreparedAnatomy};

    /// The balloon placements and their limits with each keep-out's walk capped at what could
    /// still narrow the balloon are the ones measuring every keep-out in full gives, bit for
    /// bit: on every safe line of the full grid of a thoracic level with ribs and pleura (whose
    /// keep-outs crowd the body) and of a lumbar one, with and without a required navigation
    /// error (which widens every margin).
    #[test]
    fn capped_keep_out_walks_place_and_limit_balloons_as_full_walks() {
        let options = SpineOptions {
            with_soft_tissue: false,
            with_ribs_and_pleura: true,
        };
        let instrument = Instrument::contract_default();
        let (mut placed, mut keep_out_bound) = (0usize, 0usize);
        for level in [Level::T8, Level::L4] {
            let input = synth::spine_with(&[level], &Pose::identity(), &options).0;
            let anatomy = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
            let vertebra = anatomy.vertebra(level).unwrap();
            for safety in [
                Safety::contract_default(),
                Safety {
                    navigation_error_mm: Some(1.0),
                    navigation_error_deg: Some(1.0),
                    ..Safety::contract_default()
                },
            ] {
                for side in Side::BOTH {
                    let ctx =
                        SideContext::transpedicular(&anatomy, vertebra, side, &instrument, &safety);
                    for m in exhaustive_safe_lines(&ctx, SearchMode::Bilateral)
                        .iter()
                        .step_by(7)
                    {
                        let capped = placements_walking(&ctx, m, true);
                        let full = placements_walking(&ctx, m, false);
                        assert_eq!(format!("{capped:?}"), format!("{full:?}"), "{level} {side}");
                        for b in &full {
                            for bilateral in [false, true] {
                                let fast =
                                    limit_walking(&ctx, &m.bone_entry_lps, b, bilateral, true);
                                let slow =
                                    limit_walking(&ctx, &m.bone_entry_lps, b, bilateral, false);
                                assert_eq!(
                                    format!("{fast:?}"),
                                    format!("{slow:?}"),
                                    "{level} {side}"
                                );
                                keep_out_bound += usize::from(slow.bound == BalloonBound::KeepOut);
                            }
                        }
                        placed += full.len();
                    }
                }
            }
        }
        assert!(
            placed > 1000 && keep_out_bound > 10,
            "{placed} placed, {keep_out_bound} bound by a keep-out"
        );
    }
}
