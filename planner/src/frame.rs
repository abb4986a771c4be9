//! Each vertebra's own anatomical frame, estimated from its mesh alone: patients lie rotated and
//! spines are lordotic and scoliotic, so the scanner axes mean little.
//!
//! 1. The principal axis of largest inertia of the solid is the superior axis (a vertebra is
//!    wider and deeper than it is tall); its sign is taken towards the patient's head.
//! 2. The solid is voxelised in that principal frame; in every axial slice, the empty cells not
//!    reachable from the slice border are holes. The vertebral foramen is the largest hole,
//!    taken over the slices where the bony ring is closed.
//! 3. Anterior points from the foramen to the vertebral body (the bone in front of the
//!    foramen); left = posterior x superior.
//!
//! The vertebra frame: origin at the body centre, +x patient left, +y posterior, +z superior
//! (LPS-like), so at an unrotated patient it differs from LPS by a translation only.

use crate::error::InputError;
use crate::math::{Point, Pose, Real, Rotation3, Vector};
use crate::mesh::TriMesh;
use crate::voxel::{self, Grid};
use crate::anatomy::Level;

/// Grid spacing used to analyse a vertebra, millimetres.
pub const ANALYSIS_SPACING_MM: Real = 1.0;

/// The estimated frame and the landmarks found on the way.
#[derive(Clone, Debug)]
pub struct VertebraFrame {
    /// `p_vertebra = lps_to_vertebra * p_lps`.
    pub lps_to_vertebra: Pose,
    /// `p_grid = lps_to_grid * p_lps`: the frame of the analysis grids (principal axes).
    pub lps_to_grid: Pose,
    pub body_depth_mm: Real,
    pub body_width_mm: Real,
    pub body_height_mm: Real,
    /// Vertebra-frame y (posterior coordinate) of the posterior wall of the body at the midline
    /// (the anterior edge of the foramen).
    pub posterior_wall_y_mm: Real,
    /// Vertebra-frame y of the anterior surface of the body.
    pub anterior_wall_y_mm: Real,
    /// Convex outline of the vertebral foramen in the vertebra's axial plane (x, y), widened by
    /// half a cell: conservative.
    pub canal_outline_xy_mm: Vec<[Real; 2]>,
    /// Superior extent (vertebra-frame z) of the slices in which the bony ring is closed.
    pub canal_z_range_mm: (Real, Real),
    /// Lateral half-width of the canal on each side: largest x and largest -x of the outline.
    pub canal_half_width_mm: [Real; 2],
    /// Inferior and superior extent (vertebra-frame z) of each pedicle [left, right].
    pub pedicle_z_range_mm: [(Real, Real); 2],
    /// Number of closed-ring slices the foramen was found in.
    pub foramen_slices: usize,
}

impl VertebraFrame {
    pub fn vertebra_to_lps(&self) -> Pose {
        self.lps_to_vertebra.inverse()
    }
    /// Unit vectors of the frame in LPS: (anterior, left, superior).
    pub fn axes_lps(&self) -> (Vector, Vector, Vector) {
        let r = self.lps_to_vertebra.rotation.inverse();
        (r * Vector::new(0.0, -1.0, 0.0), r * Vector::x(), r * Vector::z())
    }
}

/// Occupancy grid plus the frame found from it.
pub struct FrameAnalysis {
    pub frame: VertebraFrame,
    /// Solid occupancy in the grid frame.
    pub inside: Grid<bool>,
}

/// Estimate the frame of the vertebra `mesh` (LPS, closed, outward wound).
pub fn estimate(level: Level, mesh: &TriMesh) -> Result<FrameAnalysis, InputError> {
    let fail = |reason: String| InputError::UnrecognisedVertebra { level, reason };
    let props = mesh.solid_properties();
    let eig = nalgebra::SymmetricEigen::new(props.inertia_mm5);
    // Largest moment of inertia: the superior axis.
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]));
    let mut sup: Vector = eig.eigenvectors.column(order[2]).into_owned();
    if sup.z < 0.0 {
        sup = -sup;
    }
    let mut e1: Vector = eig.eigenvectors.column(order[0]).into_owned();
    e1 = (e1 - sup * sup.dot(&e1)).normalize();
    let e2 = sup.cross(&e1);
    // Grid frame: x = e1, y = e2, z = superior; origin at the centroid.
    let rot = Rotation3::from_matrix_unchecked(nalgebra::Matrix3::from_rows(&[
        e1.transpose(),
        e2.transpose(),
        sup.transpose(),
    ]));
    let lps_to_grid = Pose::from_parts(
        nalgebra::Translation3::from(-(rot * props.centroid.coords)),
        nalgebra::UnitQuaternion::from_rotation_matrix(&rot),
    );
    let h = ANALYSIS_SPACING_MM;
    let (origin, dims) = voxel::grid_around(mesh, &lps_to_grid, h, 3.0 * h);
    let inside = voxel::voxelize(mesh, &lps_to_grid, origin, h, dims);

    // Holes of every axial slice.
    let [nx, ny, nz] = dims;
    struct SliceHole {
        k: usize,
        cells: Vec<(usize, usize)>,
        centroid: [Real; 2],
    }
    let mut holes: Vec<SliceHole> = Vec::new();
    for k in 0..nz {
        if let Some(cells) = largest_hole(&inside, k) {
            let n = cells.len() as Real;
            let cx = cells.iter().map(|c| c.0 as Real).sum::<Real>() / n;
            let cy = cells.iter().map(|c| c.1 as Real).sum::<Real>() / n;
            holes.push(SliceHole {
                k,
                cells,
                centroid: [origin.x + cx * h, origin.y + cy * h],
            });
        }
    }
    let best = holes
        .iter()
        .max_by(|a, b| a.cells.len().cmp(&b.cells.len()).then(b.k.cmp(&a.k)))
        .ok_or_else(|| {
            fail("no vertebral foramen found: no axial slice has a closed ring of bone".into())
        })?;
    let best_area_mm2 = best.cells.len() as Real * h * h;
    if best_area_mm2 < 20.0 {
        return Err(fail(format!(
            "no vertebral foramen found: the largest enclosed hole is {best_area_mm2:.0} mm^2"
        )));
    }
    let best_c = best.centroid;
    let foramen: Vec<&SliceHole> = holes
        .iter()
        .filter(|s| {
            s.cells.len() as Real >= 0.3 * best.cells.len() as Real
                && ((s.centroid[0] - best_c[0]).powi(2) + (s.centroid[1] - best_c[1]).powi(2))
                    .sqrt()
                    < 12.0
        })
        .collect();
    // Foramen cells (x, y) in the grid frame, deduplicated.
    let mut fcells: Vec<(usize, usize)> = foramen.iter().flat_map(|s| s.cells.iter().copied()).collect();
    fcells.sort_unstable();
    fcells.dedup();
    let fpts: Vec<[Real; 2]> = fcells
        .iter()
        .map(|&(i, j)| [origin.x + i as Real * h, origin.y + j as Real * h])
        .collect();
    let n = fpts.len() as Real;
    let fc = [
        fpts.iter().map(|p| p[0]).sum::<Real>() / n,
        fpts.iter().map(|p| p[1]).sum::<Real>() / n,
    ];
    let k_lo = foramen.iter().map(|s| s.k).min().unwrap_or(0);
    let k_hi = foramen.iter().map(|s| s.k).max().unwrap_or(0);

    // Anterior: from the foramen towards the mass (the body dominates), then towards the body.
    let mut ant = nalgebra::Vector2::new(-fc[0], -fc[1]);
    if ant.norm() < 1e-6 {
        return Err(fail("the foramen sits at the centre of mass: cannot tell anterior".into()));
    }
    ant = ant.normalize();
    let mut body_c = Point::origin();
    for _ in 0..2 {
        let front = fpts
            .iter()
            .map(|p| (p[0] - fc[0]) * ant.x + (p[1] - fc[1]) * ant.y)
            .fold(Real::NEG_INFINITY, Real::max);
        let mut sum = Vector::zeros();
        let mut count = 0usize;
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    if !inside.get(i, j, k) {
                        continue;
                    }
                    let p = inside.cell_center(i, j, k);
                    if (p.x - fc[0]) * ant.x + (p.y - fc[1]) * ant.y > front + 1.0 {
                        sum += p.coords;
                        count += 1;
                    }
                }
            }
        }
        if count < 100 {
            return Err(fail("no vertebral body found in front of the foramen".into()));
        }
        body_c = Point::from(sum / count as Real);
        let d = nalgebra::Vector2::new(body_c.x - fc[0], body_c.y - fc[1]);
        ant = d.normalize();
    }
    // Vertebra frame axes in the grid frame.
    let posterior_g = Vector::new(-ant.x, -ant.y, 0.0);
    let superior_g = Vector::z();
    let left_g = posterior_g.cross(&superior_g);
    let grid_rot_to_vertebra = Rotation3::from_matrix_unchecked(nalgebra::Matrix3::from_rows(&[
        left_g.transpose(),
        posterior_g.transpose(),
        superior_g.transpose(),
    ]));
    let grid_to_vertebra_rot = nalgebra::UnitQuaternion::from_rotation_matrix(&grid_rot_to_vertebra);
    // Origin: body centre (centroid of the body cells).
    let grid_to_vertebra = Pose::from_parts(
        nalgebra::Translation3::from(-(grid_to_vertebra_rot * body_c.coords)),
        grid_to_vertebra_rot,
    );
    let lps_to_vertebra = grid_to_vertebra * lps_to_grid;

    // Measurements in the vertebra frame.
    let to_v = |p: Point| grid_to_vertebra * p;
    let front_y = fpts
        .iter()
        .map(|p| to_v(Point::new(p[0], p[1], 0.0)).y)
        .fold(Real::INFINITY, Real::min);
    let posterior_wall_y = front_y - 0.5 * h;
    let (mut xmin, mut xmax, mut ymin) = (Real::INFINITY, Real::NEG_INFINITY, Real::INFINITY);
    let (mut zmin, mut zmax) = (Real::INFINITY, Real::NEG_INFINITY);
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                if !inside.get(i, j, k) {
                    continue;
                }
                let p = to_v(inside.cell_center(i, j, k));
                if p.y < posterior_wall_y - 1.0 {
                    xmin = xmin.min(p.x);
                    xmax = xmax.max(p.x);
                    ymin = ymin.min(p.y);
                    if p.x.abs() < 3.0 && (p.y - 0.0).abs() < 3.0 {
                        zmin = zmin.min(p.z);
                        zmax = zmax.max(p.z);
                    }
                }
            }
        }
    }
    let anterior_wall_y = ymin - 0.5 * h;
    let body_height = if zmax > zmin { zmax - zmin + h } else { 0.0 };

    // Canal outline: convex hull of the foramen cells, widened by half a cell.
    let vpts: Vec<[Real; 2]> = fpts
        .iter()
        .map(|p| {
            let q = to_v(Point::new(p[0], p[1], 0.0));
            [q.x, q.y]
        })
        .collect();
    let hull = convex_hull(&vpts);
    let hull = widen(&hull, 0.5 * h);
    let canal_half_width = [
        hull.iter().map(|p| p[0]).fold(Real::NEG_INFINITY, Real::max),
        hull.iter().map(|p| -p[0]).fold(Real::NEG_INFINITY, Real::max),
    ];
    let z_of = |k: usize| to_v(inside.cell_center(0, 0, k)).z;
    let canal_z = (z_of(k_lo) - 0.5 * h, z_of(k_hi) + 0.5 * h);

    // Pedicles: the bone just behind the posterior wall, lateral of the canal.
    let mut pedicle_z = [(Real::INFINITY, Real::NEG_INFINITY); 2];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                if !inside.get(i, j, k) {
                    continue;
                }
                let p = to_v(inside.cell_center(i, j, k));
                if p.y < posterior_wall_y + 1.0 || p.y > posterior_wall_y + 6.0 {
                    continue;
                }
                if p.z < canal_z.0 - 10.0 || p.z > canal_z.1 + 10.0 {
                    continue;
                }
                for (s, sign) in [(0usize, 1.0), (1, -1.0)] {
                    let lat = p.x * sign;
                    if lat > canal_half_width[s] - 1.0 && lat < canal_half_width[s] + 12.0 {
                        pedicle_z[s].0 = pedicle_z[s].0.min(p.z - 0.5 * h);
                        pedicle_z[s].1 = pedicle_z[s].1.max(p.z + 0.5 * h);
                    }
                }
            }
        }
    }
    for (s, name) in [(0, "left"), (1, "right")] {
        if !pedicle_z[s].0.is_finite() {
            return Err(fail(format!("no {name} pedicle found behind the vertebral body")));
        }
    }

    Ok(FrameAnalysis {
        frame: VertebraFrame {
            lps_to_vertebra,
            lps_to_grid,
            body_depth_mm: posterior_wall_y - anterior_wall_y,
            body_width_mm: xmax - xmin + h,
            body_height_mm: body_height,
            posterior_wall_y_mm: posterior_wall_y,
            anterior_wall_y_mm: anterior_wall_y,
            canal_outline_xy_mm: hull,
            canal_z_range_mm: canal_z,
            canal_half_width_mm: canal_half_width,
            pedicle_z_range_mm: pedicle_z,
            foramen_slices: foramen.len(),
        },
        inside,
    })
}

/// The largest set of empty cells of slice `k` not reachable from the slice border
/// (4-connected), if any.
fn largest_hole(inside: &Grid<bool>, k: usize) -> Option<Vec<(usize, usize)>> {
    let [nx, ny, _] = inside.dims;
    let mut label = vec![0u32; nx * ny]; // 0 unvisited, 1 outside, >=2 hole id
    let mut stack = Vec::new();
    let empty = |i: usize, j: usize| !inside.get(i, j, k);
    for i in 0..nx {
        for j in [0, ny - 1] {
            if empty(i, j) && label[j * nx + i] == 0 {
                label[j * nx + i] = 1;
                stack.push((i, j));
            }
        }
    }
    for j in 0..ny {
        for i in [0, nx - 1] {
            if empty(i, j) && label[j * nx + i] == 0 {
                label[j * nx + i] = 1;
                stack.push((i, j));
            }
        }
    }
    flood(&mut label, &mut stack, nx, ny, 1, &empty);
    let mut best: Option<Vec<(usize, usize)>> = None;
    let mut next = 2;
    for j in 0..ny {
        for i in 0..nx {
            if empty(i, j) && label[j * nx + i] == 0 {
                label[j * nx + i] = next;
                stack.push((i, j));
                let cells = flood(&mut label, &mut stack, nx, ny, next, &empty);
                if best.as_ref().is_none_or(|b| cells.len() > b.len()) {
                    best = Some(cells);
                }
                next += 1;
            }
        }
    }
    best
}

fn flood(
    label: &mut [u32],
    stack: &mut Vec<(usize, usize)>,
    nx: usize,
    ny: usize,
    id: u32,
    empty: &dyn Fn(usize, usize) -> bool,
) -> Vec<(usize, usize)> {
    let mut cells = Vec::new();
    while let Some((i, j)) = stack.pop() {
        cells.push((i, j));
        let mut visit = |a: usize, b: usize| {
            if empty(a, b) && label[b * nx + a] == 0 {
                label[b * nx + a] = id;
                stack.push((a, b));
            }
        };
        if i > 0 {
            visit(i - 1, j);
        }
        if i + 1 < nx {
            visit(i + 1, j);
        }
        if j > 0 {
            visit(i, j - 1);
        }
        if j + 1 < ny {
            visit(i, j + 1);
        }
    }
    cells.sort_unstable();
    cells
}

/// Convex hull, counter-clockwise (Andrew's monotone chain).
pub fn convex_hull(points: &[[Real; 2]]) -> Vec<[Real; 2]> {
    let mut p: Vec<[Real; 2]> = points.to_vec();
    p.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    p.dedup();
    if p.len() < 3 {
        return p;
    }
    let cross = |o: [Real; 2], a: [Real; 2], b: [Real; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut lower: Vec<[Real; 2]> = Vec::new();
    for &q in &p {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], q) <= 0.0 {
            lower.pop();
        }
        lower.push(q);
    }
    let mut upper: Vec<[Real; 2]> = Vec::new();
    for &q in p.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], q) <= 0.0 {
            upper.pop();
        }
        upper.push(q);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

/// Push every vertex of a convex CCW polygon outwards by `d` (offset of the polygon's edges,
/// approximated at the vertices by the bisector).
fn widen(poly: &[[Real; 2]], d: Real) -> Vec<[Real; 2]> {
    if poly.len() < 3 {
        return poly.to_vec();
    }
    let n = poly.len();
    let cx = poly.iter().map(|p| p[0]).sum::<Real>() / n as Real;
    let cy = poly.iter().map(|p| p[1]).sum::<Real>() / n as Real;
    poly.iter()
        .map(|p| {
            let (dx, dy) = (p[0] - cx, p[1] - cy);
            let l = (dx * dx + dy * dy).sqrt().max(1e-9);
            // Moving a vertex radially by d*sqrt(2) keeps every edge at least d further out
            // for the angles of a convex polygon sampled on a grid.
            [p[0] + dx / l * d * std::f64::consts::SQRT_2, p[1] + dy / l * d * std::f64::consts::SQRT_2]
        })
        .collect()
}
