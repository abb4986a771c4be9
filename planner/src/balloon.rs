//! Balloon placement: per side, a balloon length from the request's sizes and an inflated
//! diameter up to the maximum, on the cannula axis with its distal end at the tip, so that the
//! inflated balloon (a capsule) stays inside the vertebral body by the cortex margin (the
//! posterior wall and the endplates above all) and clear of every keep-out; then the left and
//! right balloons are kept apart.

use crate::evaluate::{Measurement, SideContext};
use crate::math::{segment_segment_distance, Point, Real, Vector};

/// Smallest inflated diameter worth planning (the uninflated profile is ~3.2 mm), mm.
pub const MIN_BALLOON_DIAMETER_MM: Real = 5.0;
/// Diameters are planned in steps of this size, mm.
pub const DIAMETER_STEP_MM: Real = 0.5;
/// Where the balloon's distal end may sit relative to the cannula tip, along the axis, mm
/// (positive: beyond the tip, in the channel drilled ahead of the cannula). Tried in this order;
/// a later one wins only with a strictly larger volume.
pub const DISTAL_OFFSETS_MM: [Real; 5] = [0.0, 2.5, -2.5, 5.0, -5.0];
/// Gap kept between the left and right inflated balloons, mm.
pub const BALLOON_GAP_MM: Real = 1.0;

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

/// Volume of a capsule: cylinder of `length_mm` plus a sphere, in millilitres.
pub fn capsule_volume_ml(length_mm: Real, diameter_mm: Real) -> Real {
    let r = diameter_mm * 0.5;
    (std::f64::consts::PI * r * r * length_mm + 4.0 / 3.0 * std::f64::consts::PI * r * r * r)
        / 1000.0
}

/// Fit the largest-volume balloon for a verified trajectory, or `None` when no size fits.
pub fn fit(ctx: &SideContext<'_>, m: &Measurement) -> Option<BalloonFit> {
    let safety = ctx.safety;
    let v = ctx.vertebra;
    let f = &v.frame;
    let u = m.direction.into_inner();
    let mut best: Option<BalloonFit> = None;
    let mut lengths = ctx.instrument.balloon_lengths_mm.clone();
    lengths.sort_by(|a, b| a.total_cmp(b));
    lengths.dedup();
    for (&len, &offset) in lengths
        .iter()
        .flat_map(|l| DISTAL_OFFSETS_MM.iter().map(move |o| (l, o)))
    {
        let distal = m.tip + u * offset;
        let proximal = distal - u * len;
        // Room to the bone surface.
        let bone = v.bone.distance_to_segment(&proximal, &distal);
        if !v.bone.contains_point(&proximal) {
            continue;
        }
        // Room to the posterior wall, measured in the vertebra frame.
        let py = (f.lps_to_vertebra * proximal)
            .y
            .max((f.lps_to_vertebra * distal).y);
        let wall = f.posterior_wall_y_mm - py;
        let mut room = 2.0 * (bone - safety.cortex_margin_mm);
        room = room.min(2.0 * (wall - safety.cortex_margin_mm));
        for k in &ctx.keep_outs {
            let margin = match k.kind {
                crate::keepout::KeepOutKind::Canal | crate::keepout::KeepOutKind::Forbidden => {
                    safety.canal_margin_mm
                }
                crate::keepout::KeepOutKind::NerveRoot(_) => safety.nerve_root_margin_mm,
            };
            room = room.min(2.0 * (k.distance_to_segment(&proximal, &distal) - margin));
        }
        let d = (room.min(ctx.instrument.balloon_max_diameter_mm) / DIAMETER_STEP_MM).floor()
            * DIAMETER_STEP_MM;
        if d < MIN_BALLOON_DIAMETER_MM {
            continue;
        }
        let fit = BalloonFit {
            proximal,
            distal,
            axis: u,
            length_mm: len,
            diameter_mm: d,
            volume_ml: capsule_volume_ml(len, d),
            room_diameter_mm: d,
            cortex_clearance_mm: bone - d * 0.5,
            posterior_wall_clearance_mm: wall - d * 0.5,
        };
        if best.as_ref().is_none_or(|b| fit.volume_ml > b.volume_ml) {
            best = Some(fit);
        }
    }
    best
}

/// Shrink the larger of two overlapping balloons step by step until they keep the gap.
/// Returns false when one of them would fall below the smallest useful diameter.
pub fn separate(left: &mut BalloonFit, right: &mut BalloonFit) -> bool {
    loop {
        let d =
            segment_segment_distance(&left.proximal, &left.distal, &right.proximal, &right.distal);
        if d >= 0.5 * (left.diameter_mm + right.diameter_mm) + BALLOON_GAP_MM {
            return true;
        }
        let target = if left.diameter_mm >= right.diameter_mm {
            &mut *left
        } else {
            &mut *right
        };
        let next = target.diameter_mm - DIAMETER_STEP_MM;
        if next < MIN_BALLOON_DIAMETER_MM {
            return false;
        }
        target.set_diameter(next);
    }
}

/// The gap between two inflated balloons, mm (negative: they overlap).
pub fn gap_mm(a: &BalloonFit, b: &BalloonFit) -> Real {
    segment_segment_distance(&a.proximal, &a.distal, &b.proximal, &b.distal)
        - 0.5 * (a.diameter_mm + b.diameter_mm)
}
