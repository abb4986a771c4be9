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
/// Each pass (`analyse`) voxelises the bone and takes these steps: `find_foramen`,
/// `find_body`, `posterior_wall_y`, `body_extent`, `canal_outline`, `pedicle_z_ranges`,
/// `endplate_normal`.
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

/// The analysis grids reach this many cells past the mesh, so that the slice border is outside
/// the bone and every hole is closed by bone, not by the grid's edge.
pub const GRID_PADDING_CELLS: Real = 3.0;
/// Holes of an axial slice smaller than this are ignored, mm^2 (pores, vascular channels and
/// meshing noise; the smallest lumbar canal is several times larger).
pub const MIN_HOLE_AREA_MM2: Real = 20.0;
/// A hole continues the chain of the previous slice's hole when they share at least
/// 1/`CHAIN_OVERLAP_DIVISOR` of the smaller one's cells (the canal shifts little from slice
/// to slice).
pub const CHAIN_OVERLAP_DIVISOR: usize = 3;
/// The foramen's largest cross-section must be at least this, mm^2, or there is no foramen.
pub const MIN_FORAMEN_AREA_MM2: Real = 20.0;
/// Cells count as the body when at least this far in front of the front of the foramen, mm (one
/// cell, so the posterior wall's own cells do not pull the body centre back).
pub const BODY_IN_FRONT_OF_FORAMEN_MM: Real = 1.0;
/// Fewer body cells than this (1 mm^3 each) is no vertebral body.
pub const MIN_BODY_CELLS: usize = 100;
/// The body's extent counts cells at least this far in front of the posterior wall, mm.
pub const BODY_IN_FRONT_OF_WALL_MM: Real = 1.0;
/// The body's height is measured over the column within this distance of the body centre in x
/// and y, mm (the centre of the endplates, away from the raised rims).
pub const BODY_HEIGHT_COLUMN_HALF_WIDTH_MM: Real = 3.0;
/// The pedicles are looked for in the slab from this far behind the posterior wall ...
pub const PEDICLE_SLAB_FROM_WALL_MM: Real = 1.0;
/// ... to this far behind it, mm: the pedicle's root, before the transverse process and the
/// articular pillar widen the bone.
pub const PEDICLE_SLAB_TO_WALL_MM: Real = 6.0;
/// Pedicle bone is looked for from this far medial of the canal's edge ...
pub const PEDICLE_MEDIAL_OF_CANAL_EDGE_MM: Real = 1.0;
/// ... to this far lateral of it, mm (the widest lumbar pedicle, L5's, is ~18 mm wide, its
/// root narrower).
pub const PEDICLE_LATERAL_OF_CANAL_EDGE_MM: Real = 12.0;
/// ... and within this far above and below the closed bony ring, mm.
pub const PEDICLE_BEYOND_CANAL_Z_MM: Real = 10.0;

/// One pass of the analysis in the grid frame `lps_to_grid`, in named steps. `full_sdf`:
/// compute the signed distance outside the bone too (the first pass only needs the deepest
/// bone).
fn analyse(
    level: Level,
    mesh: &TriMesh,
    lps_to_grid: &Pose,
    full_sdf: bool,
) -> Result<Pass, InputError> {
    let fail = |reason: String| InputError::UnrecognisedVertebra { level, reason };
    let lps_to_grid = *lps_to_grid;
    let h = ANALYSIS_SPACING_MM;
    let (origin, dims) = voxel::grid_around(mesh, &lps_to_grid, h, GRID_PADDING_CELLS * h);
    let inside = voxel::voxelize(mesh, &lps_to_grid, origin, h, dims);
    let foramen = find_foramen(&inside, origin).map_err(fail)?;
    let sdf = if full_sdf {
        voxel::signed_distance(&inside)
    } else {
        voxel::inside_distance(&inside)
    };
    let body = find_body(&inside, &sdf, &foramen).map_err(fail)?;
    let grid_to_vertebra = body.grid_to_vertebra();
    let lps_to_vertebra = grid_to_vertebra * lps_to_grid;
    let posterior_wall_y = posterior_wall_y(&foramen, &grid_to_vertebra, h);
    let extent = body_extent(&inside, &grid_to_vertebra, posterior_wall_y);
    let canal = canal_outline(&inside, &foramen, &grid_to_vertebra, origin);
    let pedicle_z =
        pedicle_z_ranges(&inside, &grid_to_vertebra, posterior_wall_y, &canal).map_err(fail)?;
    let endplate_superior_grid = endplate_normal(
        &inside,
        &body.center_grid,
        &body.anterior_grid,
        extent.width_mm,
    )
    .ok_or_else(|| fail("the endplates of the vertebral body could not be found".into()))?;
    Ok(Pass {
        lps_to_grid,
        endplate_superior_grid,
        anterior_grid: Vector::new(body.anterior_grid.x, body.anterior_grid.y, 0.0),
        analysis: FrameAnalysis {
            frame: VertebraFrame {
                lps_to_vertebra,
                lps_to_grid,
                body_depth_mm: posterior_wall_y - extent.anterior_wall_y_mm,
                body_width_mm: extent.width_mm,
                body_height_mm: extent.height_mm,
                posterior_wall_y_mm: posterior_wall_y,
                anterior_wall_y_mm: extent.anterior_wall_y_mm,
                canal_back_y_mm: canal
                    .outline_xy_mm
                    .iter()
                    .map(|p| p[1])
                    .fold(Real::NEG_INFINITY, Real::max),
                canal_outline_xy_mm: canal.outline_xy_mm,
                canal_z_range_mm: canal.z_range_mm,
                canal_half_width_mm: canal.half_width_mm,
                pedicle_z_range_mm: pedicle_z,
                foramen_slices: foramen.slices.len(),
            },
            sdf,
        },
    })
}

/// The empty cells of one axial slice (`k`) that the slice border cannot reach, and the chain
/// of such holes through the slices that it belongs to.
struct SliceHole {
    k: usize,
    cells: Vec<(usize, usize)>,
    chain: usize,
}

/// The vertebral foramen, grid frame.
struct Foramen {
    /// Its hole in each slice where the bony ring is closed, in slice order.
    slices: Vec<SliceHole>,
    /// Every (i, j) cell in any of its slices, sorted, deduplicated.
    cells: Vec<(usize, usize)>,
    /// Those cells' (x, y) in the grid frame.
    points_grid: Vec<[Real; 2]>,
    /// Their centroid.
    center_grid: [Real; 2],
    /// First and last slice.
    k_range: (usize, usize),
}

/// Step 1: holes of every axial slice, chained across slices where they overlap. The vertebral
/// foramen is the chain of largest volume: a tube through many slices, where a concave endplate
/// makes a cup that is closed in a slice or two only.
fn find_foramen(inside: &Grid<bool>, origin: Point) -> Result<Foramen, String> {
    let h = inside.spacing_mm;
    let nz = inside.dims[2];
    let mut holes: Vec<SliceHole> = Vec::new();
    let mut chains: Vec<Real> = Vec::new(); // volume per chain, mm^3
    let mut prev_start = 0;
    for k in 0..nz {
        let this_start = holes.len();
        for cells in slice_holes(inside, k, (MIN_HOLE_AREA_MM2 / (h * h)).ceil() as usize) {
            // The previous slice's hole with the largest overlap continues its chain.
            let mut best_link: Option<(usize, usize)> = None;
            for prev in &holes[prev_start..this_start] {
                let o = overlap(&prev.cells, &cells);
                if o * CHAIN_OVERLAP_DIVISOR >= cells.len().min(prev.cells.len())
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
            "no vertebral foramen found: no axial slice has a closed ring of bone".to_string()
        })?;
    let slices: Vec<SliceHole> = holes
        .into_iter()
        .filter(|s| s.chain == best_chain)
        .collect();
    let best_area_mm2 = slices.iter().map(|s| s.cells.len()).max().unwrap_or(0) as Real * h * h;
    if best_area_mm2 < MIN_FORAMEN_AREA_MM2 {
        return Err(format!(
            "no vertebral foramen found: the largest enclosed hole is {best_area_mm2:.0} mm^2"
        ));
    }
    let mut cells: Vec<(usize, usize)> = slices
        .iter()
        .flat_map(|s| s.cells.iter().copied())
        .collect();
    cells.sort_unstable();
    cells.dedup();
    let points_grid: Vec<[Real; 2]> = cells
        .iter()
        .map(|&(i, j)| [origin.x + i as Real * h, origin.y + j as Real * h])
        .collect();
    let n = points_grid.len() as Real;
    let center_grid = [
        points_grid.iter().map(|p| p[0]).sum::<Real>() / n,
        points_grid.iter().map(|p| p[1]).sum::<Real>() / n,
    ];
    let k_lo = slices.iter().map(|s| s.k).min().unwrap_or(0);
    let k_hi = slices.iter().map(|s| s.k).max().unwrap_or(0);
    Ok(Foramen {
        slices,
        cells,
        points_grid,
        center_grid,
        k_range: (k_lo, k_hi),
    })
}

/// The vertebral body, grid frame.
struct Body {
    /// Unit direction from the foramen to the body in the axial plane.
    anterior_grid: nalgebra::Vector2<Real>,
    /// Centroid of the body's cells.
    center_grid: Point,
}

impl Body {
    /// The vertebra frame in the grid frame: origin at the body centre, +y posterior (away from
    /// the body), +z the grid's superior axis, +x = y cross z (left).
    fn grid_to_vertebra(&self) -> Pose {
        let ant = self.anterior_grid;
        let posterior_g = Vector::new(-ant.x, -ant.y, 0.0);
        let superior_g = Vector::z();
        let left_g = posterior_g.cross(&superior_g);
        let grid_rot_to_vertebra =
            Rotation3::from_matrix_unchecked(nalgebra::Matrix3::from_rows(&[
                left_g.transpose(),
                posterior_g.transpose(),
                superior_g.transpose(),
            ]));
        let grid_to_vertebra_rot =
            nalgebra::UnitQuaternion::from_rotation_matrix(&grid_rot_to_vertebra);
        Pose::from_parts(
            nalgebra::Translation3::from(-(grid_to_vertebra_rot * self.center_grid.coords)),
            grid_to_vertebra_rot,
        )
    }
}

/// Step 2: anterior points from the foramen towards the thickest bone, which is deep in the
/// vertebral body (its inscribed radius is twice that of any posterior element); the body is
/// then the bone in front of the foramen, and anterior is refined (twice) towards its centroid.
fn find_body(inside: &Grid<bool>, sdf: &Grid<f32>, foramen: &Foramen) -> Result<Body, String> {
    let [nx, ny, nz] = inside.dims;
    let fc = foramen.center_grid;
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
        return Err("the thickest bone sits in the foramen: cannot tell anterior".into());
    }
    ant = ant.normalize();
    let mut body_c = Point::origin();
    let mut body_cells: Vec<Point> = Vec::new();
    for _ in 0..2 {
        let front = foramen
            .points_grid
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
                    if (p.x - fc[0]) * ant.x + (p.y - fc[1]) * ant.y
                        > front + BODY_IN_FRONT_OF_FORAMEN_MM
                    {
                        body_cells.push(p);
                    }
                }
            }
        }
        if body_cells.len() < MIN_BODY_CELLS {
            return Err("no vertebral body found in front of the foramen".into());
        }
        let sum = body_cells.iter().fold(Vector::zeros(), |a, p| a + p.coords);
        body_c = Point::from(sum / body_cells.len() as Real);
        let d = nalgebra::Vector2::new(body_c.x - fc[0], body_c.y - fc[1]);
        ant = d.normalize();
    }
    Ok(Body {
        anterior_grid: ant,
        center_grid: body_c,
    })
}

/// Step 3: vertebra-frame y of the posterior wall at the midline: the front of the foramen,
/// less half a cell.
fn posterior_wall_y(foramen: &Foramen, grid_to_vertebra: &Pose, h: Real) -> Real {
    let front_y = foramen
        .points_grid
        .iter()
        .map(|p| (grid_to_vertebra * Point::new(p[0], p[1], 0.0)).y)
        .fold(Real::INFINITY, Real::min);
    front_y - 0.5 * h
}

/// The body's extent in the vertebra frame.
struct BodyExtent {
    width_mm: Real,
    height_mm: Real,
    anterior_wall_y_mm: Real,
}

/// Step 4: the body's width (x), anterior wall (y) and height (z, over the central column),
/// from the cells in front of the posterior wall.
fn body_extent(inside: &Grid<bool>, grid_to_vertebra: &Pose, posterior_wall_y: Real) -> BodyExtent {
    let [nx, ny, nz] = inside.dims;
    let h = inside.spacing_mm;
    let (mut xmin, mut xmax, mut ymin) = (Real::INFINITY, Real::NEG_INFINITY, Real::INFINITY);
    let (mut zmin, mut zmax) = (Real::INFINITY, Real::NEG_INFINITY);
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                if !inside.get(i, j, k) {
                    continue;
                }
                let p = grid_to_vertebra * inside.cell_center(i, j, k);
                if p.y < posterior_wall_y - BODY_IN_FRONT_OF_WALL_MM {
                    xmin = xmin.min(p.x);
                    xmax = xmax.max(p.x);
                    ymin = ymin.min(p.y);
                    if p.x.abs() < BODY_HEIGHT_COLUMN_HALF_WIDTH_MM
                        && (p.y - 0.0).abs() < BODY_HEIGHT_COLUMN_HALF_WIDTH_MM
                    {
                        zmin = zmin.min(p.z);
                        zmax = zmax.max(p.z);
                    }
                }
            }
        }
    }
    BodyExtent {
        width_mm: xmax - xmin + h,
        height_mm: if zmax > zmin { zmax - zmin + h } else { 0.0 },
        anterior_wall_y_mm: ymin - 0.5 * h,
    }
}

/// The vertebral canal, vertebra frame.
struct Canal {
    outline_xy_mm: Vec<[Real; 2]>,
    z_range_mm: (Real, Real),
    half_width_mm: PerSide<Real>,
}

/// Step 5: the canal outline: the cells open in every slice of the central half of the closed
/// ring (the canal must pass its narrowest section; above and below, the hole widens into the
/// intervertebral foramina where the roots leave), as a convex hull widened by half a cell.
fn canal_outline(
    inside: &Grid<bool>,
    foramen: &Foramen,
    grid_to_vertebra: &Pose,
    origin: Point,
) -> Canal {
    let h = inside.spacing_mm;
    let (k_lo, k_hi) = foramen.k_range;
    let quarter = (k_hi - k_lo) / 4;
    let (c_lo, c_hi) = (k_lo + quarter, k_hi - quarter);
    let mut core: Option<Vec<(usize, usize)>> = None;
    for s in foramen.slices.iter().filter(|s| s.k >= c_lo && s.k <= c_hi) {
        core = Some(match core {
            None => s.cells.clone(),
            Some(c) => c
                .into_iter()
                .filter(|x| s.cells.binary_search(x).is_ok())
                .collect(),
        });
    }
    let core = core
        .filter(|c| c.len() >= 3)
        .unwrap_or(foramen.cells.clone());
    let vpts: Vec<[Real; 2]> = core
        .iter()
        .map(|&(i, j)| {
            let q = grid_to_vertebra
                * Point::new(origin.x + i as Real * h, origin.y + j as Real * h, 0.0);
            [q.x, q.y]
        })
        .collect();
    let hull = polygon::convex_hull(&vpts);
    let hull = polygon::offset_convex(&hull, 0.5 * h);
    let half_width_mm = PerSide::from_fn(|side| {
        hull.iter()
            .map(|p| side.sign() * p[0])
            .fold(Real::NEG_INFINITY, Real::max)
    });
    let z_of = |k: usize| (grid_to_vertebra * inside.cell_center(0, 0, k)).z;
    Canal {
        outline_xy_mm: hull,
        z_range_mm: (z_of(k_lo) - 0.5 * h, z_of(k_hi) + 0.5 * h),
        half_width_mm,
    }
}

/// Step 6: each pedicle's inferior and superior extent (vertebra-frame z): the bone just behind
/// the posterior wall, lateral of the canal, near the closed ring.
fn pedicle_z_ranges(
    inside: &Grid<bool>,
    grid_to_vertebra: &Pose,
    posterior_wall_y: Real,
    canal: &Canal,
) -> Result<PerSide<(Real, Real)>, String> {
    let [nx, ny, nz] = inside.dims;
    let h = inside.spacing_mm;
    let mut pedicle_z = PerSide::from_fn(|_| (Real::INFINITY, Real::NEG_INFINITY));
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                if !inside.get(i, j, k) {
                    continue;
                }
                let p = grid_to_vertebra * inside.cell_center(i, j, k);
                if p.y < posterior_wall_y + PEDICLE_SLAB_FROM_WALL_MM
                    || p.y > posterior_wall_y + PEDICLE_SLAB_TO_WALL_MM
                {
                    continue;
                }
                if p.z < canal.z_range_mm.0 - PEDICLE_BEYOND_CANAL_Z_MM
                    || p.z > canal.z_range_mm.1 + PEDICLE_BEYOND_CANAL_Z_MM
                {
                    continue;
                }
                for side in Side::BOTH {
                    let lat = p.x * side.sign();
                    let edge = canal.half_width_mm[side];
                    let (z_lo, z_hi) = &mut pedicle_z[side];
                    if lat > edge - PEDICLE_MEDIAL_OF_CANAL_EDGE_MM
                        && lat < edge + PEDICLE_LATERAL_OF_CANAL_EDGE_MM
                    {
                        *z_lo = z_lo.min(p.z - 0.5 * h);
                        *z_hi = z_hi.max(p.z + 0.5 * h);
                    }
                }
            }
        }
    }
    for (side, (z_lo, _)) in pedicle_z.with_sides() {
        if !z_lo.is_finite() {
            return Err(format!("no {side} pedicle found behind the vertebral body"));
        }
    }
    Ok(pedicle_z)
}

/// The endplates are fitted over the body's central columns: within this fraction of the
/// body's width of its centre, laterally ...
pub const ENDPLATE_COLUMN_WIDTH_FRACTION: Real = 0.25;
/// ... and within this far of it antero-posteriorly, mm (clear of the raised ring apophysis at
/// the endplates' rims).
pub const ENDPLATE_COLUMN_HALF_DEPTH_MM: Real = 8.0;
/// An endplate plane is fitted to at least this many points.
pub const MIN_ENDPLATE_POINTS: usize = 10;

/// Step 7: fit planes to the superior and inferior endplates (the top and bottom of the solid over the
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
            if d.dot(&lat).abs() > ENDPLATE_COLUMN_WIDTH_FRACTION * body_width
                || d.dot(ant).abs() > ENDPLATE_COLUMN_HALF_DEPTH_MM
            {
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
    if points.len() < MIN_ENDPLATE_POINTS {
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
