//! The pedicle of each side, measured from the mesh: its isthmus (the narrowest cross-section of
//! the bony bridge between the vertebral body and the posterior arch), the isthmus centre,
//! outline, width, height and area, and the pedicle axis. This is what a surgeon reads off the
//! CT first, and what the transpedicular route is checked against.
//!
//! Measured exactly: every section is cut from the bone surface with exact f64 line crossings
//! ([`ClearanceMesh::line_crossings`]), one line per row of the section; the distance grids only
//! seed the first guess of the axis (the centres of the coronal slices of the pedicle, from
//! preparation).
//!
//! How: a line is fitted through the coronal slice centres; planes perpendicular to it are swept
//! from the posterior wall of the body to the back of the canal; in each plane the connected bone
//! section around the axis is cut row by row. A section that runs into the window's edge has
//! merged with the body or the arch and is no isthmus. The plane of least area is the isthmus;
//! it is cut again at a finer row spacing for its outline and numbers, and the axis is re-fitted
//! through the centres of all bounded sections.

use crate::anatomy::Side;
use crate::clearance::ClearanceMesh;
use crate::frame::VertebraFrame;
use crate::math::{Point, Real, UnitVector, Vector};

/// How far the sweep reaches from the posterior wall of the body towards the back of the canal
/// (fraction): the pedicle spans that depth and its isthmus lies about midway; behind this the
/// planes cut into the articular pillar and the pars, whose thin plates can have a smaller
/// section than the pedicle without being it.
pub const SWEEP_FRACTION: Real = 0.75;
/// Distance between the section planes of the sweep, along the first-guess axis (mm).
pub const SWEEP_STEP_MM: Real = 0.5;
/// Row spacing of the sections cut during the sweep (mm): fine enough to rank areas.
pub const SWEEP_ROW_MM: Real = 0.5;
/// Row spacing of the isthmus section itself (mm): the outline's resolution across rows (along
/// a row, the boundary is exact).
pub const ISTHMUS_ROW_MM: Real = 0.2;
/// Half-size of the square window a section is cut in (mm). A pedicle section is at most about
/// 20 x 25 mm (L5 outer width up to ~21.6 mm, `clinical.md`); a section reaching the window's
/// edge has merged with the body or the arch.
pub const SECTION_HALF_WINDOW_MM: Real = 25.0;
/// The tilts (deg) tried, coarse to fine, when the isthmus plane is turned about its centre to
/// the orientation of least area: the narrowest section of a tube is perpendicular to its axis,
/// so the normal of that plane is the pedicle axis.
pub const TILT_STEPS_DEG: [Real; 5] = [8.0, 4.0, 2.0, 1.0, 0.5];
/// The largest tilt (deg) of the isthmus plane's normal from the first-guess axis: the coronal
/// slice centres give the axis to within a few degrees; a turn beyond this cuts another
/// structure (lamina, articular pillar), not the pedicle.
pub const MAX_TILT_DEG: Real = 20.0;
/// How far a section's centre may lie from the first-guess axis (mm); a section centred further
/// away is another structure that the seed reached (the pedicle of a wide L5 is ~20 mm across,
/// its centre within a few mm of its coronal slice centres).
pub const MAX_CENTER_OFF_AXIS_MM: Real = 5.0;
/// How far from the first-guess axis the seed of a section may lie (mm): the coronal slice
/// centres come from a 1 mm distance grid, so the axis can sit off the bone by a voxel or so in
/// a thin pedicle.
pub const SEED_SEARCH_MM: Real = 3.0;

/// One pedicle, measured. Vertebra frame (`+x` left, `+y` posterior, `+z` superior, origin the
/// body centre); the isthmus plane's own 2-D coordinates are `(u, v)`: `u` along
/// `width_dir_vertebra` (lateral), `v` along `height_dir_vertebra` (superior).
#[derive(Clone, Debug, PartialEq)]
pub struct Pedicle {
    pub side: Side,
    /// Area centroid of the isthmus section.
    pub isthmus_center_vertebra_mm: Point,
    /// The pedicle axis: unit direction through the isthmus centre, pointing anteriorly (into
    /// the body); also the normal of the isthmus plane.
    pub axis_vertebra: UnitVector,
    /// In-plane unit direction of the width: perpendicular to the axis, pointing laterally.
    pub width_dir_vertebra: UnitVector,
    /// In-plane unit direction of the height: perpendicular to the axis, pointing superiorly.
    pub height_dir_vertebra: UnitVector,
    /// Outer (cortical) transverse width: the widest extent of the section along `u`.
    pub width_mm: Real,
    /// Outer (cortical) height: the extent of the section along `v`.
    pub height_mm: Real,
    /// Area of the isthmus section.
    pub area_mm2: Real,
    /// Outline of the section, `(u, v)` around the isthmus centre: per row its lateral-most and
    /// medial-most bone, as one closed polygon (lateral ends upwards, then medial ends down).
    pub outline_uv_mm: Vec<[Real; 2]>,
}

impl Pedicle {
    /// `p` (vertebra frame) in the isthmus plane's `(u, v)` and its signed distance along the
    /// axis (positive anterior of the isthmus).
    pub fn isthmus_coordinates(&self, p_vertebra: &Point) -> ([Real; 2], Real) {
        let d = p_vertebra - self.isthmus_center_vertebra_mm;
        (
            [
                d.dot(&self.width_dir_vertebra),
                d.dot(&self.height_dir_vertebra),
            ],
            d.dot(&self.axis_vertebra),
        )
    }
}

/// Why a pedicle could not be measured.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PedicleFault {
    /// Fewer than two coronal slices of the pedicle were found.
    #[error("fewer than two coronal slices of the pedicle were found")]
    NoSlices,
    /// No plane of the sweep cut a bounded bone section around the axis.
    #[error("no section across the pedicle axis is bounded: the bone around it never narrows to a pedicle")]
    NoBoundedSection,
}

/// One cut: the inside intervals `(u0, u1)` of each row of a plane, and the connected section
/// around the seed.
struct Section {
    /// Area centroid, `(u, v)`.
    centroid_uv: [Real; 2],
    area_mm2: Real,
    /// Per row of the section (ascending `v`): `(v, u_min, u_max)` of the connected bone.
    rows: Vec<(Real, Real, Real)>,
}

/// A section plane: centre on the axis, normal along it, in-plane `u` (lateral), `v`.
#[derive(Clone, Copy)]
struct Plane {
    center_vertebra: Point,
    normal: UnitVector,
    u: UnitVector,
    v: UnitVector,
}

impl Plane {
    fn new(center_vertebra: Point, axis: UnitVector, side: Side) -> Plane {
        // v: the superior axis made perpendicular to the normal; u completes the frame and
        // points laterally on this side.
        let v = UnitVector::new_normalize(Vector::z() - axis.into_inner() * axis.z);
        let mut u = v.cross(&axis);
        if u.x * side.sign() < 0.0 {
            u = -u;
        }
        Plane {
            center_vertebra,
            normal: axis,
            u: UnitVector::new_normalize(u),
            v,
        }
    }

    fn at(&self, u: Real, v: Real) -> Point {
        self.center_vertebra + self.u.into_inner() * u + self.v.into_inner() * v
    }
}

/// The inside intervals of the line `plane.at(0, v) + t * u`, within the window.
fn row_intervals(
    bone: &ClearanceMesh,
    frame: &VertebraFrame,
    plane: &Plane,
    v: Real,
) -> Vec<(Real, Real)> {
    let to_lps = frame.vertebra_to_lps();
    let origin_lps = to_lps * plane.at(0.0, v);
    let dir_lps = UnitVector::new_normalize(to_lps * plane.u.into_inner());
    let t = bone.line_crossings(&origin_lps, &dir_lps);
    // A closed surface: the crossings pair up as (enter, leave).
    t.chunks_exact(2)
        .map(|c| (c[0], c[1]))
        .filter(|&(a, b)| b > -SECTION_HALF_WINDOW_MM - 1.0 && a < SECTION_HALF_WINDOW_MM + 1.0)
        .collect()
}

/// Cut `plane` row by row (spacing `row_mm`) and keep the bone connected to the seed near the
/// plane's centre; `None` if there is no bone near the centre or the section reaches the
/// window's edge (it has merged with the body or the arch).
fn cut(
    bone: &ClearanceMesh,
    frame: &VertebraFrame,
    plane: &Plane,
    row_mm: Real,
) -> Option<Section> {
    let half_rows = (SECTION_HALF_WINDOW_MM / row_mm).round() as i64;
    let mut rows: Vec<Option<Vec<(Real, Real)>>> = vec![None; (2 * half_rows + 1) as usize];
    let intervals = |k: i64, rows: &mut Vec<Option<Vec<(Real, Real)>>>| -> Vec<(Real, Real)> {
        let slot = &mut rows[(k + half_rows) as usize];
        slot.get_or_insert_with(|| row_intervals(bone, frame, plane, k as Real * row_mm))
            .clone()
    };
    // Seed: the interval nearest the centre among the rows within the seed distance.
    let seed_rows = (SEED_SEARCH_MM / row_mm).round() as i64;
    let mut seed: Option<(Real, i64, (Real, Real))> = None;
    for k in (-seed_rows..=seed_rows).filter(|k| k.abs() < half_rows) {
        for iv in intervals(k, &mut rows) {
            let du = if iv.0 > 0.0 {
                iv.0
            } else if iv.1 < 0.0 {
                -iv.1
            } else {
                0.0
            };
            let dist = du.hypot(k as Real * row_mm);
            if dist <= SEED_SEARCH_MM && seed.is_none_or(|s| dist < s.0) {
                seed = Some((dist, k, iv));
            }
        }
    }
    let (_, k0, iv0) = seed?;
    // Grow row by row, up and down, through overlapping intervals.
    let mut kept: Vec<(i64, Vec<(Real, Real)>)> = vec![(k0, vec![iv0])];
    for dir in [1i64, -1] {
        let mut prev = vec![iv0];
        let mut k = k0;
        loop {
            k += dir;
            if k.abs() > half_rows {
                return None;
            }
            let next: Vec<(Real, Real)> = intervals(k, &mut rows)
                .into_iter()
                .filter(|a| prev.iter().any(|b| a.0 < b.1 && b.0 < a.1))
                .collect();
            if next.is_empty() {
                break;
            }
            if k.abs() == half_rows {
                return None;
            }
            kept.push((k, next.clone()));
            prev = next;
        }
    }
    kept.sort_by_key(|(k, _)| *k);
    let mut area = 0.0;
    let (mut su, mut sv) = (0.0, 0.0);
    let mut out_rows = Vec::with_capacity(kept.len());
    for (k, ivs) in &kept {
        let v = *k as Real * row_mm;
        let (mut lo, mut hi) = (Real::INFINITY, Real::NEG_INFINITY);
        for &(a, b) in ivs {
            if a < -SECTION_HALF_WINDOW_MM || b > SECTION_HALF_WINDOW_MM {
                return None;
            }
            let len = (b - a) * row_mm;
            area += len;
            su += 0.5 * (a + b) * len;
            sv += v * len;
            lo = lo.min(a);
            hi = hi.max(b);
        }
        out_rows.push((v, lo, hi));
    }
    let centroid_uv = [su / area, sv / area];
    if area <= 0.0 || centroid_uv[0].hypot(centroid_uv[1]) > MAX_CENTER_OFF_AXIS_MM {
        return None;
    }
    Some(Section {
        centroid_uv,
        area_mm2: area,
        rows: out_rows,
    })
}

/// Turn the plane through `center` about it (pattern search over two tilts, [`TILT_STEPS_DEG`],
/// at most [`MAX_TILT_DEG`] from the first guess) to the orientation whose bounded section has
/// the least area; its normal.
fn least_area_axis(
    bone: &ClearanceMesh,
    frame: &VertebraFrame,
    center: Point,
    first_guess: UnitVector,
    side: Side,
) -> UnitVector {
    let area = |n: UnitVector| {
        cut(bone, frame, &Plane::new(center, n, side), ISTHMUS_ROW_MM)
            .map_or(Real::INFINITY, |s| s.area_mm2)
    };
    let mut best = (area(first_guess), first_guess);
    for step in TILT_STEPS_DEG {
        loop {
            let here = Plane::new(center, best.1, side);
            let mut improved = false;
            for (du, dv) in [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0)] {
                let t = step.to_radians().tan();
                let n = UnitVector::new_normalize(
                    here.normal.into_inner()
                        + here.u.into_inner() * (du * t)
                        + here.v.into_inner() * (dv * t),
                );
                if n.angle(&first_guess).to_degrees() > MAX_TILT_DEG {
                    continue;
                }
                let a = area(n);
                if a < best.0 {
                    best = (a, n);
                    improved = true;
                }
            }
            if !improved {
                break;
            }
        }
    }
    best.1
}

/// A line through `points` (vertebra frame) with `y` as the parameter (the pedicle runs
/// antero-posteriorly): least squares `x(y)`, `z(y)`; `None` for fewer than two distinct `y`.
fn fit_axis(points: &[Point]) -> Option<(Point, UnitVector)> {
    let n = points.len() as Real;
    if points.len() < 2 {
        return None;
    }
    let my = points.iter().map(|p| p.y).sum::<Real>() / n;
    let mx = points.iter().map(|p| p.x).sum::<Real>() / n;
    let mz = points.iter().map(|p| p.z).sum::<Real>() / n;
    let syy: Real = points.iter().map(|p| (p.y - my).powi(2)).sum();
    if syy <= 1e-9 {
        return None;
    }
    let bx = points.iter().map(|p| (p.y - my) * (p.x - mx)).sum::<Real>() / syy;
    let bz = points.iter().map(|p| (p.y - my) * (p.z - mz)).sum::<Real>() / syy;
    // dx/dy, dz/dy along +y; the axis points anteriorly (-y).
    let dir = UnitVector::new_normalize(-Vector::new(bx, 1.0, bz));
    Some((Point::new(mx, my, mz), dir))
}

/// Measure the pedicle of `side` from the bone surface (LPS), the vertebra's frame and the
/// centres of the pedicle's coronal slices (vertebra frame, from preparation).
pub fn measure(
    bone: &ClearanceMesh,
    frame: &VertebraFrame,
    coronal_centers_vertebra: &[Point],
    side: Side,
) -> Result<Pedicle, PedicleFault> {
    let (through, axis) = fit_axis(coronal_centers_vertebra).ok_or(PedicleFault::NoSlices)?;
    // Sweep from the posterior wall of the body to the back of the canal, along the axis.
    let y_start = frame.posterior_wall_y_mm;
    let y_end = y_start + SWEEP_FRACTION * (frame.canal_back_y_mm - y_start);
    let per_y = -axis.y; // > 0: the axis runs anteriorly
    let steps = ((y_end - y_start) / (SWEEP_STEP_MM * per_y))
        .floor()
        .max(0.0) as usize;
    let mut best: Option<(Real, Plane)> = None;
    for i in 0..=steps {
        let y = y_start + i as Real * SWEEP_STEP_MM * per_y;
        let center = through + axis.into_inner() * ((through.y - y) / per_y);
        let plane = Plane::new(center, axis, side);
        if let Some(s) = cut(bone, frame, &plane, SWEEP_ROW_MM) {
            if best.is_none_or(|b| s.area_mm2 < b.0) {
                best = Some((s.area_mm2, plane));
            }
        }
    }
    let (_, coarse) = best.ok_or(PedicleFault::NoBoundedSection)?;
    let first = cut(bone, frame, &coarse, SWEEP_ROW_MM).ok_or(PedicleFault::NoBoundedSection)?;
    let center = coarse.at(first.centroid_uv[0], first.centroid_uv[1]);
    let axis = least_area_axis(bone, frame, center, coarse.normal, side);
    let plane = Plane::new(center, axis, side);
    let s = cut(bone, frame, &plane, ISTHMUS_ROW_MM).ok_or(PedicleFault::NoBoundedSection)?;
    let center = plane.at(s.centroid_uv[0], s.centroid_uv[1]);
    let [cu, cv] = s.centroid_uv;
    let (u_min, u_max) = s
        .rows
        .iter()
        .fold((Real::INFINITY, Real::NEG_INFINITY), |r, row| {
            (r.0.min(row.1), r.1.max(row.2))
        });
    let width_mm = u_max - u_min;
    let height_mm = s.rows.len() as Real * ISTHMUS_ROW_MM;
    let mut outline_uv_mm: Vec<[Real; 2]> =
        s.rows.iter().map(|&(v, _, hi)| [hi - cu, v - cv]).collect();
    outline_uv_mm.extend(s.rows.iter().rev().map(|&(v, lo, _)| [lo - cu, v - cv]));
    Ok(Pedicle {
        side,
        isthmus_center_vertebra_mm: center,
        axis_vertebra: plane.normal,
        width_dir_vertebra: plane.u,
        height_dir_vertebra: plane.v,
        width_mm,
        height_mm,
        area_mm2: s.area_mm2,
        outline_uv_mm,
    })
}

/// How a cannula crosses the isthmus (see [`Pedicle::crossing`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IsthmusCrossing {
    /// Where the cannula axis crosses the isthmus plane, `(u, v)` around the isthmus centre.
    pub crossing_uv_mm: [Real; 2],
    /// The crossing point lies inside the bony outline.
    pub inside: bool,
    /// Distance from the cannula's surface to the nearest point of the outline (negative where
    /// the cylinder reaches over it): the margin the cylinder keeps inside the isthmus.
    pub clearance_mm: Real,
    /// Signed distance of the bone entry along the axis from the isthmus plane: negative when
    /// the entry lies behind the isthmus, as the transpedicular route needs.
    pub entry_along_axis_mm: Real,
}

impl Pedicle {
    /// The isthmus outline as a closed polygon in the vertebra frame.
    pub fn outline_vertebra_mm(&self) -> Vec<Point> {
        self.outline_uv_mm
            .iter()
            .map(|[u, v]| {
                self.isthmus_center_vertebra_mm
                    + self.width_dir_vertebra.into_inner() * *u
                    + self.height_dir_vertebra.into_inner() * *v
            })
            .collect()
    }

    /// How the cannula of `radius_mm` around the segment `entry -> tip` (vertebra frame) crosses
    /// the isthmus, or `None` if the segment does not reach the isthmus plane.
    ///
    /// Exact against the outline polygon: the set of plane points closer than `radius + c` to
    /// the axis is the ellipse the cylinder of that radius cuts from the plane, so the cylinder's
    /// section lies inside the outline by `c` exactly when the crossing point is inside and no
    /// outline edge comes closer than `radius + c` to the axis (segment-segment distance in 3-D).
    pub fn crossing(
        &self,
        entry_vertebra: &Point,
        tip_vertebra: &Point,
        radius_mm: Real,
    ) -> Option<IsthmusCrossing> {
        let (_, entry_along) = self.isthmus_coordinates(entry_vertebra);
        let (_, tip_along) = self.isthmus_coordinates(tip_vertebra);
        if entry_along.signum() == tip_along.signum() || entry_along == tip_along {
            return None;
        }
        let s = entry_along / (entry_along - tip_along);
        let q = entry_vertebra + (tip_vertebra - entry_vertebra) * s;
        let (q_uv, _) = self.isthmus_coordinates(&q);
        // The infinite axis line, as a segment far longer than any vertebra.
        let dir = (tip_vertebra - entry_vertebra).normalize();
        let (far_back, far_front) = (entry_vertebra - dir * 1e3, tip_vertebra + dir * 1e3);
        let outline = self.outline_vertebra_mm();
        let n = outline.len();
        let axis_distance = (0..n)
            .map(|i| {
                crate::math::segment_segment_distance(
                    &outline[i],
                    &outline[(i + 1) % n],
                    &far_back,
                    &far_front,
                )
            })
            .fold(Real::INFINITY, Real::min);
        let inside = point_in_polygon(&q_uv, &self.outline_uv_mm);
        Some(IsthmusCrossing {
            crossing_uv_mm: q_uv,
            inside,
            clearance_mm: if inside {
                axis_distance - radius_mm
            } else {
                -(axis_distance + radius_mm)
            },
            entry_along_axis_mm: entry_along,
        })
    }
}

/// Even-odd point-in-polygon test in 2-D.
fn point_in_polygon(p: &[Real; 2], polygon: &[[Real; 2]]) -> bool {
    let n = polygon.len();
    let mut inside = false;
    for i in 0..n {
        let (a, b) = (polygon[i], polygon[(i + 1) % n]);
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = a[0] + (p[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
            if p[0] < x {
                inside = !inside;
            }
        }
    }
    inside
}
