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
    let safety = ctx.safety;
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
            room = room.min(2.0 * (k.distance_to_segment(&proximal, &distal) - margin - extra));
        }
        let d = floor_diameter_step(room.min(ctx.instrument.balloon_max_diameter_mm));
        if d < MIN_BALLOON_DIAMETER_MM {
            continue;
        }
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
    let f = &ctx.vertebra.frame;
    let sign = ctx.side.sign();
    options
        .into_iter()
        .filter_map(|mut b| {
            let x = (sign * (f.lps_to_vertebra * b.proximal).x)
                .min(sign * (f.lps_to_vertebra * b.distal).x);
            let d = floor_diameter_step(b.room_diameter_mm.min(2.0 * (x - 0.5 * BALLOON_GAP_MM)));
            if d < MIN_BALLOON_DIAMETER_MM {
                return None;
            }
            b.set_diameter(d);
            b.room_diameter_mm = d;
            Some(b)
        })
        .collect()
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
