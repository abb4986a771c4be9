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

use crate::anatomy::{Level, PerSide, Side};
use crate::error::InputError;
use crate::math::{Point, Pose, Real, Rotation3, Vector};
use crate::mesh::TriMesh;
use crate::polygon;
use crate::voxel::{self, Grid};

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
    /// Convex outline of the vertebral foramen (the hole in the bone) in the vertebra's axial
    /// plane (x, y), counter-clockwise.
    pub canal_outline_xy_mm: Vec<[Real; 2]>,
    /// Superior extent (vertebra-frame z) of the slices in which the bony ring is closed.
    pub canal_z_range_mm: (Real, Real),
    /// Vertebra-frame y of the back of the vertebral canal (where the pedicles meet the
    /// laminae): the cortex margin applies in front of this plane.
    pub canal_back_y_mm: Real,
    /// Lateral half-width of the canal on each side: largest x (left) and largest -x (right) of
    /// the outline.
    pub canal_half_width_mm: PerSide<Real>,
    /// Inferior and superior extent (vertebra-frame z) of each pedicle.
    pub pedicle_z_range_mm: PerSide<(Real, Real)>,
    /// Number of closed-ring slices the foramen was found in.
    pub foramen_slices: usize,
}

impl VertebraFrame {
    pub fn vertebra_to_lps(&self) -> Pose {
        self.lps_to_vertebra.inverse()
    }
    /// `p_grid = vertebra_to_grid * p_vertebra`: from the vertebra frame to the analysis grids'.
    pub fn vertebra_to_grid(&self) -> Pose {
        self.lps_to_grid * self.vertebra_to_lps()
    }
    /// Unit vectors of the frame in LPS: (anterior, left, superior).
    pub fn axes_lps(&self) -> (Vector, Vector, Vector) {
        let r = self.lps_to_vertebra.rotation.inverse();
        (
            r * Vector::new(0.0, -1.0, 0.0),
            r * Vector::x(),
            r * Vector::z(),
        )
    }
}

/// Occupancy grid plus the frame found from it.
pub struct FrameAnalysis {
    pub frame: VertebraFrame,
    /// Approximate signed distance to the bone surface (positive inside), grid frame.
    pub sdf: Grid<f32>,
}

/// Estimate the frame of the vertebra `mesh` (LPS, closed, outward wound).
///
/// Two passes: the first slices along the axis of largest inertia, finds the foramen and the
/// body; the second slices along the body's own shortest axis (the body is a short cylinder,
/// free of the processes that tilt the whole bone's inertia) and measures everything.
pub fn estimate(level: Level, mesh: &TriMesh) -> Result<FrameAnalysis, InputError> {
    let props = mesh.solid_properties();
    let eig = nalgebra::SymmetricEigen::new(props.inertia_mm5);
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| eig.eigenvalues[a].total_cmp(&eig.eigenvalues[b]));
    let sup: Vector = eig.eigenvectors.column(order[2]).into_owned();
    let e1: Vector = eig.eigenvectors.column(order[0]).into_owned();
    let first = analyse(level, mesh, &grid_frame(&props.centroid, &sup, &e1), false)?;
    // Slice again along the normal of the endplates found by the first pass.
    let grid_to_lps_rot = first.lps_to_grid.rotation.inverse();
    let sup2 = grid_to_lps_rot * first.endplate_superior_grid;
    let ant2 = grid_to_lps_rot * first.anterior_grid;
    let second = analyse(
        level,
        mesh,
        &grid_frame(&props.centroid, &sup2, &ant2),
        true,
    )?;
    Ok(second.analysis)
}

/// Grid frame with z along `superior` (sign towards the head) and x along `hint` made
/// orthogonal, origin at `center`.
fn grid_frame(center: &Point, superior: &Vector, hint: &Vector) -> Pose {
    let mut sup = superior.normalize();
    if sup.z < 0.0 {
        sup = -sup;
    }
    let e1 = (hint - sup * sup.dot(hint)).normalize();
    let e2 = sup.cross(&e1);
    let rot = Rotation3::from_matrix_unchecked(nalgebra::Matrix3::from_rows(&[
        e1.transpose(),
        e2.transpose(),
        sup.transpose(),
    ]));
    Pose::from_parts(
        nalgebra::Translation3::from(-(rot * center.coords)),
        nalgebra::UnitQuaternion::from_rotation_matrix(&rot),
    )
}

struct Pass {
    analysis: FrameAnalysis,
    lps_to_grid: Pose,
    /// Anterior direction, grid frame.
    anterior_grid: Vector,
    /// Mean normal of the two endplates, grid frame.
    endplate_superior_grid: Vector,
}

/// One pass of the analysis in the grid frame `lps_to_grid`. `full_sdf`: compute the signed
/// distance outside the bone too (the first pass only needs the deepest bone).
fn analyse(
    level: Level,
    mesh: &TriMesh,
    lps_to_grid: &Pose,
    full_sdf: bool,
) -> Result<Pass, InputError> {
    let fail = |reason: String| InputError::UnrecognisedVertebra { level, reason };
    let lps_to_grid = *lps_to_grid;
    let h = ANALYSIS_SPACING_MM;
    let (origin, dims) = voxel::grid_around(mesh, &lps_to_grid, h, 3.0 * h);
    let inside = voxel::voxelize(mesh, &lps_to_grid, origin, h, dims);

    // Holes of every axial slice, chained across slices where they overlap. The vertebral
    // foramen is the chain of largest volume: a tube through many slices, where a concave
    // endplate makes a cup that is closed in a slice or two only.
    let [nx, ny, nz] = dims;
    struct SliceHole {
        k: usize,
        cells: Vec<(usize, usize)>,
        chain: usize,
    }
    let mut holes: Vec<SliceHole> = Vec::new();
    let mut chains: Vec<Real> = Vec::new(); // volume per chain, mm^3
    let mut prev_start = 0;
    for k in 0..nz {
        let this_start = holes.len();
        for cells in slice_holes(&inside, k, (20.0 / (h * h)).ceil() as usize) {
            // The previous slice's hole with the largest overlap continues its chain.
            let mut best_link: Option<(usize, usize)> = None;
            for prev in &holes[prev_start..this_start] {
                let o = overlap(&prev.cells, &cells);
                if o * 3 >= cells.len().min(prev.cells.len())
                    && best_link.is_none_or(|(bo, _)| o > bo)
                {
                    best_link = Some((o, prev.chain));
                }
            }
            let chain = match best_link {
                Some((_, c)) => c,
                None => {
                    chains.push(0.0);
                    chains.len() - 1
                }
            };
            chains[chain] += cells.len() as Real * h * h * h;
            holes.push(SliceHole { k, cells, chain });
        }
        prev_start = this_start;
    }
    let best_chain = (0..chains.len())
        .max_by(|&a, &b| chains[a].total_cmp(&chains[b]).then(b.cmp(&a)))
        .ok_or_else(|| {
            fail("no vertebral foramen found: no axial slice has a closed ring of bone".into())
        })?;
    let foramen: Vec<&SliceHole> = holes.iter().filter(|s| s.chain == best_chain).collect();
    let best_area_mm2 = foramen.iter().map(|s| s.cells.len()).max().unwrap_or(0) as Real * h * h;
    if best_area_mm2 < 20.0 {
        return Err(fail(format!(
            "no vertebral foramen found: the largest enclosed hole is {best_area_mm2:.0} mm^2"
        )));
    }
    // Foramen cells (x, y) in the grid frame, deduplicated.
    let mut fcells: Vec<(usize, usize)> = foramen
        .iter()
        .flat_map(|s| s.cells.iter().copied())
        .collect();
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

    // Anterior: from the foramen towards the thickest bone, which is deep in the vertebral body
    // (its inscribed radius is twice that of any posterior element).
    let sdf = if full_sdf {
        voxel::signed_distance(&inside)
    } else {
        voxel::inside_distance(&inside)
    };
    let mut deepest = (f32::NEG_INFINITY, 0usize);
    for (idx, &d) in sdf.data.iter().enumerate() {
        if d > deepest.0 {
            deepest = (d, idx);
        }
    }
    let (di, dj) = (deepest.1 % nx, (deepest.1 / nx) % ny);
    let deep = inside.cell_center(di, dj, 0);
    let mut ant = nalgebra::Vector2::new(deep.x - fc[0], deep.y - fc[1]);
    if ant.norm() < 1e-6 {
        return Err(fail(
            "the thickest bone sits in the foramen: cannot tell anterior".into(),
        ));
    }
    ant = ant.normalize();
    let mut body_c = Point::origin();
    let mut body_cells: Vec<Point> = Vec::new();
    for _ in 0..2 {
        let front = fpts
            .iter()
            .map(|p| (p[0] - fc[0]) * ant.x + (p[1] - fc[1]) * ant.y)
            .fold(Real::NEG_INFINITY, Real::max);
        body_cells.clear();
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    if !inside.get(i, j, k) {
                        continue;
                    }
                    let p = inside.cell_center(i, j, k);
                    if (p.x - fc[0]) * ant.x + (p.y - fc[1]) * ant.y > front + 1.0 {
                        body_cells.push(p);
                    }
                }
            }
        }
        if body_cells.len() < 100 {
            return Err(fail(
                "no vertebral body found in front of the foramen".into(),
            ));
        }
        let sum = body_cells.iter().fold(Vector::zeros(), |a, p| a + p.coords);
        body_c = Point::from(sum / body_cells.len() as Real);
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
    let grid_to_vertebra_rot =
        nalgebra::UnitQuaternion::from_rotation_matrix(&grid_rot_to_vertebra);
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

    // Canal outline: the cells open in every slice of the central half of the closed ring (the
    // canal must pass its narrowest section; above and below, the hole widens into the
    // intervertebral foramina where the roots leave), as a convex hull widened by half a cell.
    let quarter = (k_hi - k_lo) / 4;
    let (c_lo, c_hi) = (k_lo + quarter, k_hi - quarter);
    let mut core: Option<Vec<(usize, usize)>> = None;
    for s in foramen.iter().filter(|s| s.k >= c_lo && s.k <= c_hi) {
        core = Some(match core {
            None => s.cells.clone(),
            Some(c) => c
                .into_iter()
                .filter(|x| s.cells.binary_search(x).is_ok())
                .collect(),
        });
    }
    let core = core.filter(|c| c.len() >= 3).unwrap_or(fcells.clone());
    let vpts: Vec<[Real; 2]> = core
        .iter()
        .map(|&(i, j)| {
            let q = to_v(Point::new(
                origin.x + i as Real * h,
                origin.y + j as Real * h,
                0.0,
            ));
            [q.x, q.y]
        })
        .collect();
    let hull = polygon::convex_hull(&vpts);
    let hull = polygon::offset_convex(&hull, 0.5 * h);
    let canal_half_width = PerSide::from_fn(|side| {
        hull.iter()
            .map(|p| side.sign() * p[0])
            .fold(Real::NEG_INFINITY, Real::max)
    });
    let z_of = |k: usize| to_v(inside.cell_center(0, 0, k)).z;
    let canal_z = (z_of(k_lo) - 0.5 * h, z_of(k_hi) + 0.5 * h);

    // Pedicles: the bone just behind the posterior wall, lateral of the canal.
    let mut pedicle_z = PerSide::from_fn(|_| (Real::INFINITY, Real::NEG_INFINITY));
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
                for side in Side::BOTH {
                    let lat = p.x * side.sign();
                    let (z_lo, z_hi) = &mut pedicle_z[side];
                    if lat > canal_half_width[side] - 1.0 && lat < canal_half_width[side] + 12.0 {
                        *z_lo = z_lo.min(p.z - 0.5 * h);
                        *z_hi = z_hi.max(p.z + 0.5 * h);
                    }
                }
            }
        }
    }
    for (side, (z_lo, _)) in pedicle_z.with_sides() {
        if !z_lo.is_finite() {
            return Err(fail(format!(
                "no {side} pedicle found behind the vertebral body"
            )));
        }
    }

    let endplate_superior_grid = endplate_normal(&inside, &body_c, &ant, xmax - xmin + h)
        .ok_or_else(|| fail("the endplates of the vertebral body could not be found".into()))?;
    Ok(Pass {
        lps_to_grid,
        endplate_superior_grid,
        anterior_grid: Vector::new(ant.x, ant.y, 0.0),
        analysis: FrameAnalysis {
            frame: VertebraFrame {
                lps_to_vertebra,
                lps_to_grid,
                body_depth_mm: posterior_wall_y - anterior_wall_y,
                body_width_mm: xmax - xmin + h,
                body_height_mm: body_height,
                posterior_wall_y_mm: posterior_wall_y,
                anterior_wall_y_mm: anterior_wall_y,
                canal_outline_xy_mm: hull.clone(),
                canal_z_range_mm: canal_z,
                canal_half_width_mm: canal_half_width,
                canal_back_y_mm: hull
                    .iter()
                    .map(|p| p[1])
                    .fold(Real::NEG_INFINITY, Real::max),
                pedicle_z_range_mm: pedicle_z,
                foramen_slices: foramen.len(),
            },
            sdf,
        },
    })
}

/// Fit planes to the superior and inferior endplates (the top and bottom of the solid over the
/// central body columns) and return the mean of their upward normals, grid frame.
fn endplate_normal(
    inside: &Grid<bool>,
    body_c: &Point,
    ant: &nalgebra::Vector2<Real>,
    body_width: Real,
) -> Option<Vector> {
    let [nx, ny, nz] = inside.dims;
    let h = inside.spacing_mm;
    let lat = nalgebra::Vector2::new(-ant.y, ant.x);
    let kc = ((body_c.z - inside.origin.z) / h).round();
    if kc < 0.0 || kc as usize >= nz {
        return None;
    }
    let kc = kc as usize;
    let mut top = Vec::new();
    let mut bottom = Vec::new();
    for j in 0..ny {
        for i in 0..nx {
            let p = inside.cell_center(i, j, kc);
            let d = nalgebra::Vector2::new(p.x - body_c.x, p.y - body_c.y);
            if d.dot(&lat).abs() > 0.25 * body_width || d.dot(ant).abs() > 8.0 {
                continue;
            }
            if !inside.get(i, j, kc) {
                continue;
            }
            let mut k = kc;
            while k + 1 < nz && inside.get(i, j, k + 1) {
                k += 1;
            }
            top.push(Point::new(
                p.x,
                p.y,
                inside.cell_center(i, j, k).z + 0.5 * h,
            ));
            let mut k = kc;
            while k > 0 && inside.get(i, j, k - 1) {
                k -= 1;
            }
            bottom.push(Point::new(
                p.x,
                p.y,
                inside.cell_center(i, j, k).z - 0.5 * h,
            ));
        }
    }
    let n_top = fit_plane_normal(&top)?;
    let n_bottom = fit_plane_normal(&bottom)?;
    Some((n_top + n_bottom).normalize())
}

/// Least-squares plane z = a x + b y + c; its upward unit normal.
fn fit_plane_normal(points: &[Point]) -> Option<Vector> {
    if points.len() < 10 {
        return None;
    }
    let n = points.len() as Real;
    let (mx, my, mz) = points.iter().fold((0.0, 0.0, 0.0), |a, p| {
        (a.0 + p.x / n, a.1 + p.y / n, a.2 + p.z / n)
    });
    let (mut sxx, mut sxy, mut syy, mut sxz, mut syz) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for p in points {
        let (x, y, z) = (p.x - mx, p.y - my, p.z - mz);
        sxx += x * x;
        sxy += x * y;
        syy += y * y;
        sxz += x * z;
        syz += y * z;
    }
    let det = sxx * syy - sxy * sxy;
    if det.abs() < 1e-9 {
        return None;
    }
    let a = (sxz * syy - syz * sxy) / det;
    let b = (syz * sxx - sxz * sxy) / det;
    Some(Vector::new(-a, -b, 1.0).normalize())
}

/// Every set of at least `min_cells` empty cells of slice `k` not reachable from the slice
/// border (4-connected), each sorted.
fn slice_holes(inside: &Grid<bool>, k: usize, min_cells: usize) -> Vec<Vec<(usize, usize)>> {
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
    flood(&mut label, &mut stack, nx, ny, 1, &empty, false);
    let mut out = Vec::new();
    let mut next = 2;
    for j in 0..ny {
        for i in 0..nx {
            if empty(i, j) && label[j * nx + i] == 0 {
                label[j * nx + i] = next;
                stack.push((i, j));
                let cells = flood(&mut label, &mut stack, nx, ny, next, &empty, true);
                if cells.len() >= min_cells {
                    out.push(cells);
                }
                next += 1;
            }
        }
    }
    out
}

/// Number of cells two sorted cell lists share.
fn overlap(a: &[(usize, usize)], b: &[(usize, usize)]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn flood(
    label: &mut [u32],
    stack: &mut Vec<(usize, usize)>,
    nx: usize,
    ny: usize,
    id: u32,
    empty: &impl Fn(usize, usize) -> bool,
    collect: bool,
) -> Vec<(usize, usize)> {
    let mut cells = Vec::new();
    while let Some((i, j)) = stack.pop() {
        if collect {
            cells.push((i, j));
        }
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
