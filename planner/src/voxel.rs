//! Regular grids over a vertebra: solid occupancy by scanline rasterisation, Euclidean distance
//! transforms, and trilinear lookups. Grids are approximate (about one cell): the search screens
//! candidates with them, and every answer is then verified with exact f64 queries
//! ([`crate::clearance`]).

use crate::math::{Point, Pose, Real};
use crate::mesh::TriMesh;

/// A scalar field on a regular grid in its own frame ("grid frame"): cell `(i, j, k)` has its
/// centre at `origin + spacing_mm * (i, j, k)`.
#[derive(Clone, Debug)]
pub struct Grid<T> {
    pub origin: Point,
    pub spacing_mm: Real,
    pub dims: [usize; 3],
    pub data: Vec<T>,
}

impl<T: Copy> Grid<T> {
    pub fn filled(origin: Point, spacing_mm: Real, dims: [usize; 3], value: T) -> Self {
        Grid {
            origin,
            spacing_mm,
            dims,
            data: vec![value; dims[0] * dims[1] * dims[2]],
        }
    }

    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        (k * self.dims[1] + j) * self.dims[0] + i
    }

    #[inline]
    pub fn get(&self, i: usize, j: usize, k: usize) -> T {
        self.data[self.index(i, j, k)]
    }

    /// Centre of cell `(i, j, k)` in the grid frame.
    pub fn cell_center(&self, i: usize, j: usize, k: usize) -> Point {
        self.origin + nalgebra::Vector3::new(i as Real, j as Real, k as Real) * self.spacing_mm
    }

    pub fn memory_bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<T>()
    }
}

impl Grid<f32> {
    /// `p` (grid frame) in cells from the origin, and the cell it lies in, as [`Grid::sample`]
    /// reads it; `None` below the grid's low faces (beyond the high ones the index is past
    /// `dims`: the caller checks).
    #[inline(always)]
    pub fn cell_of(&self, p: &Point) -> Option<(nalgebra::Vector3<Real>, [usize; 3])> {
        let u = (p - self.origin) / self.spacing_mm;
        if u.x < 0.0 || u.y < 0.0 || u.z < 0.0 {
            return None;
        }
        // Non-negative: truncation is the floor (much cheaper than a libm call), and through
        // u32 (saturating, as every `as` cast) it is cheaper than a direct f64 -> usize cast.
        // A huge or NaN coordinate saturates and fails the caller's bounds check (NaN gives 0
        // and a NaN sample, as before).
        Some((
            u,
            [
                u.x as u32 as usize,
                u.y as u32 as usize,
                u.z as u32 as usize,
            ],
        ))
    }

    /// Trilinear interpolation at `p` (grid frame); `outside` beyond the grid.
    ///
    /// Always inlined: the screening's marches call it once a sample, and as a call it spilled
    /// the caller's floating-point registers (all caller-saved) and passed `p` through memory:
    /// the built-in L5's plan took 37 ms on one thread with the call, 28 ms without it (same
    /// instructions but for the call, same plans bit for bit; BENCHMARKS.md, stop 27).
    #[inline(always)]
    pub fn sample(&self, p: &Point, outside: f32) -> f32 {
        let Some((u, [i, j, k])) = self.cell_of(p) else {
            return outside;
        };
        let (fx, fy, fz) = (i as Real, j as Real, k as Real);
        if i + 1 >= self.dims[0] || j + 1 >= self.dims[1] || k + 1 >= self.dims[2] {
            return outside;
        }
        let (tx, ty, tz) = ((u.x - fx) as f32, (u.y - fy) as f32, (u.z - fz) as f32);
        let ny = self.dims[0];
        let nz = self.dims[0] * self.dims[1];
        let b = self.index(i, j, k);
        // The eight corners as four x-pairs, from one slice of the data (in range whenever the
        // data hold `dims`): the rows at y = j and j + 1 of the planes z = k and k + 1.
        let Some((near_z, far_z)) = self
            .data
            .get(b..b + nz + ny + 2)
            .and_then(|cell| cell.split_at_checked(nz))
        else {
            return outside;
        };
        let (Some(&[d000, d100]), Some(&[d010, d110]), Some(&[d001, d101]), Some(&[d011, d111])) = (
            near_z.get(..2),
            near_z.get(ny..ny + 2),
            far_z.get(..2),
            far_z.get(ny..ny + 2),
        ) else {
            return outside;
        };
        let c00 = d000 * (1.0 - tx) + d100 * tx;
        let c10 = d010 * (1.0 - tx) + d110 * tx;
        let c01 = d001 * (1.0 - tx) + d101 * tx;
        let c11 = d011 * (1.0 - tx) + d111 * tx;
        let c0 = c00 * (1.0 - ty) + c10 * ty;
        let c1 = c01 * (1.0 - ty) + c11 * ty;
        c0 * (1.0 - tz) + c1 * tz
    }
}

/// Cells per side of a block of [`KeepOutGrid`]'s lower bounds: 8 mm on the 1 mm analysis grid,
/// past most of a keep-out's surroundings in one step where the Lipschitz bound of the
/// samples needs several (it is sure of a sample's neighbour only `1 / sqrt 3` as far as the
/// sample is above what matters).
pub const BLOCK_CELLS: usize = 8;

/// A keep-out's distance grid with a lower bound of its trilinear samples over each block of
/// [`BLOCK_CELLS`]^3 cells: the smallest of the nodes those cells interpolate (a sample is a
/// convex combination of its cell's eight corners). A march looking for where the distance
/// falls below a floor passes over a whole block whose bound is above it
/// ([`crate::criteria::GridLine`]).
#[derive(Clone, Debug)]
pub struct KeepOutGrid {
    pub values: Grid<f32>,
    /// The bounds, one node per block (`spacing_mm` a block's side).
    block_min: Grid<f32>,
}

impl KeepOutGrid {
    pub fn new(values: Grid<f32>) -> Self {
        let d = values.dims;
        let cells = |n: usize| n.saturating_sub(1).div_ceil(BLOCK_CELLS).max(1);
        // (An empty grid has no blocks: every sample reads its outside value.)
        let block_dims = if d.contains(&0) {
            [0; 3]
        } else {
            [cells(d[0]), cells(d[1]), cells(d[2])]
        };
        // The nodes of a block's cells along an axis: its own and the first of the next block.
        let nodes = |b: usize, n: usize| b * BLOCK_CELLS..=((b + 1) * BLOCK_CELLS).min(n - 1);
        let mut block_min = Grid::filled(
            values.origin,
            values.spacing_mm * BLOCK_CELLS as Real,
            block_dims,
            f32::INFINITY,
        );
        for bk in 0..block_dims[2] {
            for bj in 0..block_dims[1] {
                for bi in 0..block_dims[0] {
                    let xs = nodes(bi, d[0]);
                    let mut least = f32::INFINITY;
                    for k in nodes(bk, d[2]) {
                        for j in nodes(bj, d[1]) {
                            let row =
                                values.index(*xs.start(), j, k)..=values.index(*xs.end(), j, k);
                            // `v < m` passes over a NaN node: a sample that reads it reads NaN,
                            // which is below nothing.
                            least = values.data[row]
                                .iter()
                                .fold(least, |m, &v| if v < m { v } else { m });
                        }
                    }
                    let b = block_min.index(bi, bj, bk);
                    block_min.data[b] = least;
                }
            }
        }
        KeepOutGrid { values, block_min }
    }

    /// A lower bound of every sample in the block of cell `(i, j, k)` (`None` past the blocks).
    #[inline]
    pub fn block_bound(&self, i: usize, j: usize, k: usize) -> Option<f32> {
        let (bi, bj, bk) = (i / BLOCK_CELLS, j / BLOCK_CELLS, k / BLOCK_CELLS);
        let [nx, ny, nz] = self.block_min.dims;
        if bi >= nx || bj >= ny || bk >= nz {
            return None;
        }
        Some(self.block_min.get(bi, bj, bk))
    }

    pub fn memory_bytes(&self) -> usize {
        self.values.memory_bytes() + self.block_min.memory_bytes()
    }
}

/// Grid geometry covering `mesh` (mapped by `mesh_to_grid`) with `pad_mm` around it.
pub fn grid_around(
    mesh: &TriMesh,
    mesh_to_grid: &Pose,
    spacing_mm: Real,
    pad_mm: Real,
) -> (Point, [usize; 3]) {
    let mut min = Point::new(Real::INFINITY, Real::INFINITY, Real::INFINITY);
    let mut max = Point::new(Real::NEG_INFINITY, Real::NEG_INFINITY, Real::NEG_INFINITY);
    for p in &mesh.vertices_mm {
        let q = mesh_to_grid * p;
        min = min.inf(&q);
        max = max.sup(&q);
    }
    let origin = min - nalgebra::Vector3::repeat(pad_mm);
    let ext = (max - min) + nalgebra::Vector3::repeat(2.0 * pad_mm);
    let dims = [
        (ext.x / spacing_mm).ceil() as usize + 1,
        (ext.y / spacing_mm).ceil() as usize + 1,
        (ext.z / spacing_mm).ceil() as usize + 1,
    ];
    (origin, dims)
}

/// Which cells of the grid lie inside the closed, outward-wound `mesh`: every triangle is
/// rasterised onto the grid's z-columns and the winding number is swept along each column.
pub fn voxelize(
    mesh: &TriMesh,
    mesh_to_grid: &Pose,
    origin: Point,
    spacing_mm: Real,
    dims: [usize; 3],
) -> Grid<bool> {
    // Column lines sit a tiny irrational offset off the cell centres so that no line passes
    // exactly through a mesh vertex or edge.
    const OFF_X: Real = 1.234_567_9e-6;
    const OFF_Y: Real = 2.718_281_8e-6;
    let h = spacing_mm;
    let to_index = |p: &Point| -> [Real; 3] {
        let q = mesh_to_grid * p;
        let u = (q - origin) / h;
        [u.x, u.y, u.z]
    };
    let verts: Vec<[Real; 3]> = mesh.vertices_mm.iter().map(to_index).collect();
    // (column, z in index units, +1 entering / -1 leaving)
    let mut crossings: Vec<(usize, Real, i32)> = Vec::new();
    for tri in &mesh.triangles {
        let a = verts[tri[0] as usize];
        let b = verts[tri[1] as usize];
        let c = verts[tri[2] as usize];
        // Signed double area in the xy projection: its sign is the sign of the normal's z.
        let area = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1]);
        if area == 0.0 {
            continue;
        }
        let i0 = (a[0].min(b[0]).min(c[0]) - OFF_X).ceil().max(0.0) as usize;
        let i1 = (a[0].max(b[0]).max(c[0]) - OFF_X).floor();
        let j0 = (a[1].min(b[1]).min(c[1]) - OFF_Y).ceil().max(0.0) as usize;
        let j1 = (a[1].max(b[1]).max(c[1]) - OFF_Y).floor();
        if i1 < 0.0 || j1 < 0.0 {
            continue;
        }
        let i1 = (i1 as usize).min(dims[0] - 1);
        let j1 = (j1 as usize).min(dims[1] - 1);
        for j in j0..=j1 {
            let y = j as Real + OFF_Y;
            for i in i0..=i1 {
                let x = i as Real + OFF_X;
                // Barycentric coordinates of (x, y) in the projected triangle.
                let w0 = (b[0] - x) * (c[1] - y) - (c[0] - x) * (b[1] - y);
                let w1 = (c[0] - x) * (a[1] - y) - (a[0] - x) * (c[1] - y);
                let w2 = (a[0] - x) * (b[1] - y) - (b[0] - x) * (a[1] - y);
                let inside = if area > 0.0 {
                    w0 >= 0.0 && w1 >= 0.0 && w2 >= 0.0
                } else {
                    w0 <= 0.0 && w1 <= 0.0 && w2 <= 0.0
                };
                if !inside {
                    continue;
                }
                let z = (w0 * a[2] + w1 * b[2] + w2 * c[2]) / area;
                // Normal z < 0 (area < 0): a ray going +z enters the solid here.
                let dir = if area < 0.0 { 1 } else { -1 };
                crossings.push((j * dims[0] + i, z, dir));
            }
        }
    }
    crossings.sort_by(|p, q| p.0.cmp(&q.0).then(p.1.total_cmp(&q.1)));
    let mut grid = Grid::filled(origin, spacing_mm, dims, false);
    let plane = dims[0] * dims[1];
    let mut s = 0;
    while s < crossings.len() {
        let col = crossings[s].0;
        let mut e = s;
        while e < crossings.len() && crossings[e].0 == col {
            e += 1;
        }
        let mut winding = 0;
        let mut idx = s;
        for k in 0..dims[2] {
            let z = k as Real;
            while idx < e && crossings[idx].1 < z {
                winding += crossings[idx].2;
                idx += 1;
            }
            if winding > 0 {
                grid.data[k * plane + col] = true;
            }
        }
        s = e;
    }
    grid
}

/// Exact Euclidean distance transform (Felzenszwalb & Huttenlocher): for every cell, the
/// distance in millimetres to the nearest cell where `seed` is true (infinite if none).
pub fn distance_to_seeds(seed: &Grid<bool>) -> Grid<f32> {
    let d = squared_distance_cells(seed.dims, |idx| seed.data[idx]);
    let h = seed.spacing_mm;
    Grid {
        origin: seed.origin,
        spacing_mm: h,
        dims: seed.dims,
        data: d.into_iter().map(|q| cells_to_mm(q, h)).collect(),
    }
}

/// Squared cell distances are integers, exact in f32 up to 2^24; no seed leaves [`FAR`].
const FAR: f32 = 1e20;

#[inline]
fn cells_to_mm(q: f32, h: Real) -> f32 {
    if q >= FAR {
        f32::INFINITY
    } else {
        ((q as f64).sqrt() * h) as f32
    }
}

/// Squared distance, in cells, from every cell to the nearest cell where `seed(index)` is true:
/// three separable passes of the 1D transform (x, y, z), each parallel over its lines. Squared
/// distances are integers, so the result does not depend on the order of the passes or on the
/// thread count.
fn squared_distance_cells(dims: [usize; 3], seed: impl Fn(usize) -> bool + Sync) -> Vec<f32> {
    use rayon::prelude::*;
    let [nx, ny, nz] = dims;
    let plane = nx * ny;
    let mut d: Vec<f32> = vec![0.0; plane * nz];
    // Along x, rows of a plane at a time.
    d.par_chunks_mut(plane)
        .enumerate()
        .for_each_init(Dt1d::default, |dt, (k, slab)| {
            for (j, row) in slab.chunks_mut(nx).enumerate() {
                let base = (k * ny + j) * nx;
                for (i, x) in row.iter_mut().enumerate() {
                    *x = if seed(base + i) { 0.0 } else { FAR };
                }
                dt.run_in_place(row);
            }
        });
    // Along y, within each plane.
    d.par_chunks_mut(plane)
        .for_each_init(Dt1d::default, |dt, slab| {
            for i in 0..nx {
                dt.run_strided(slab, i, nx, ny);
            }
        });
    // Along z: the columns of a row j (cells (k, j, i) for every k and i) are gathered, one task
    // per row, transformed, and written back in order.
    if nz > 1 {
        let rows: Vec<Vec<f32>> = (0..ny)
            .into_par_iter()
            .map_init(Dt1d::default, |dt, j| {
                let mut columns: Vec<f32> = (0..nx)
                    .flat_map(|i| (0..nz).map(move |k| (k, i)))
                    .map(|(k, i)| d[k * plane + j * nx + i])
                    .collect();
                for column in columns.chunks_mut(nz) {
                    dt.run_in_place(column);
                }
                columns
            })
            .collect();
        for (j, columns) in rows.iter().enumerate() {
            for (i, column) in columns.chunks(nz).enumerate() {
                for (k, &value) in column.iter().enumerate() {
                    d[k * plane + j * nx + i] = value;
                }
            }
        }
    }
    d
}

/// A line the 1D transform leaves as it is: every cell a seed (0), or no seed at all.
#[inline]
fn settled(mut line: impl Iterator<Item = f32>) -> bool {
    match line.next() {
        Some(first) if first == 0.0 || first >= FAR => line.all(|x| x == first),
        _ => true,
    }
}

/// Buffers of the 1D squared distance transform (lower envelope of parabolas).
#[derive(Default)]
struct Dt1d {
    f: Vec<f64>,
    v: Vec<usize>,
    z: Vec<f64>,
}

impl Dt1d {
    fn run_in_place(&mut self, line: &mut [f32]) {
        if settled(line.iter().copied()) {
            return;
        }
        self.f.clear();
        self.f.extend(line.iter().map(|&x| x as f64));
        self.envelope(|q, val| line[q] = val);
    }

    /// The line of `n` cells `data[first + m * stride]`.
    fn run_strided(&mut self, data: &mut [f32], first: usize, stride: usize, n: usize) {
        if settled((0..n).map(|m| data[first + m * stride])) {
            return;
        }
        self.f.clear();
        self.f
            .extend((0..n).map(|m| data[first + m * stride] as f64));
        self.envelope(|q, val| data[first + q * stride] = val);
    }

    /// Felzenszwalb-Huttenlocher on `self.f` (values >= [`FAR`] are "no seed"); `out(q, value)`.
    fn envelope(&mut self, mut out: impl FnMut(usize, f32)) {
        let f = &self.f;
        let n = f.len();
        let far = FAR as f64;
        let Some(first) = f.iter().position(|&x| x < far) else {
            (0..n).for_each(|q| out(q, FAR));
            return;
        };
        let (v, z) = (&mut self.v, &mut self.z);
        v.clear();
        v.resize(n, 0);
        z.clear();
        z.resize(n + 1, 0.0);
        let mut k = 0usize;
        v[0] = first;
        z[0] = f64::NEG_INFINITY;
        z[1] = f64::INFINITY;
        for q in first + 1..n {
            if f[q] >= far {
                continue;
            }
            loop {
                let p = v[k];
                let s = ((f[q] + (q * q) as f64) - (f[p] + (p * p) as f64))
                    / (2.0 * q as f64 - 2.0 * p as f64);
                if s <= z[k] && k > 0 {
                    k -= 1;
                    continue;
                }
                if s <= z[k] {
                    // k == 0 and the new parabola dominates from -inf.
                    v[0] = q;
                    z[0] = f64::NEG_INFINITY;
                    z[1] = f64::INFINITY;
                    break;
                }
                k += 1;
                v[k] = q;
                z[k] = s;
                z[k + 1] = f64::INFINITY;
                break;
            }
        }
        let mut k = 0;
        for q in 0..n {
            while z[k + 1] < q as f64 {
                k += 1;
            }
            let p = v[k];
            let dq = q as f64 - p as f64;
            out(q, (dq * dq + f[p]) as f32);
        }
    }
}

/// Approximate signed distance to the surface of the solid `inside` (positive inside), mm.
pub fn signed_distance(inside: &Grid<bool>) -> Grid<f32> {
    let to_out = squared_distance_cells(inside.dims, |idx| !inside.data[idx]);
    let to_in = squared_distance_cells(inside.dims, |idx| inside.data[idx]);
    let h = inside.spacing_mm;
    let half = (h * 0.5) as f32;
    let data = inside
        .data
        .iter()
        .zip(to_out.iter().zip(&to_in))
        .map(|(&ins, (&qout, &qin))| {
            if ins {
                cells_to_mm(qout, h) - half
            } else {
                -(cells_to_mm(qin, h) - half)
            }
        })
        .collect();
    Grid {
        origin: inside.origin,
        spacing_mm: inside.spacing_mm,
        dims: inside.dims,
        data,
    }
}

/// Distance inside the solid `inside` to its surface, mm, as in [`signed_distance`] for the
/// inside cells, and `-half a cell` everywhere outside: half the work when only the inside
/// matters (the deepest bone).
pub fn inside_distance(inside: &Grid<bool>) -> Grid<f32> {
    let to_out = squared_distance_cells(inside.dims, |idx| !inside.data[idx]);
    let h = inside.spacing_mm;
    let half = (h * 0.5) as f32;
    Grid {
        origin: inside.origin,
        spacing_mm: h,
        dims: inside.dims,
        data: inside
            .data
            .iter()
            .zip(&to_out)
            .map(|(&ins, &q)| if ins { cells_to_mm(q, h) - half } else { -half })
            .collect(),
    }
}

/// Approximate unsigned distance to the surface of `mesh` on the grid: triangles are sampled
/// densely, the cells holding samples seed a distance transform.
pub fn unsigned_surface_distance(
    mesh: &TriMesh,
    mesh_to_grid: &Pose,
    like: &Grid<f32>,
) -> Grid<f32> {
    unsigned_surface_distance_many(&[mesh], mesh_to_grid, like)
}

/// [`unsigned_surface_distance`] to the nearest of several meshes (the minimum of their
/// distances), with one distance transform seeded by all of them.
pub fn unsigned_surface_distance_many(
    meshes: &[&TriMesh],
    mesh_to_grid: &Pose,
    like: &Grid<f32>,
) -> Grid<f32> {
    let h = like.spacing_mm;
    let (seeds, any) = surface_seeds(meshes, mesh_to_grid, like);
    let q = squared_distance_cells(like.dims, |idx| seeds[idx]);
    let half = (0.5 * h) as f32;
    Grid {
        origin: like.origin,
        spacing_mm: h,
        dims: like.dims,
        data: q
            .into_iter()
            .map(|q| {
                let d = cells_to_mm(q, h);
                if any {
                    (d - half).max(0.0)
                } else {
                    d
                }
            })
            .collect(),
    }
}

/// `x.round()` (half away from zero) by truncation through `i64`: the same value for every
/// `x` whose `as usize` matters here (|x| < 2^63; NaN gives 0 as `NaN as usize` does), without
/// the software `round` call that x86-64's baseline instruction set makes of it (a third of the
/// sampling's time).
fn round(x: Real) -> Real {
    let t = (x as i64) as Real;
    let f = x - t;
    if f >= 0.5 {
        t + 1.0
    } else if f <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// The cells of `like`'s grid that hold a sample of the meshes' triangles (samples every half
/// cell along the longest edge), and whether there is any.
fn surface_seeds(meshes: &[&TriMesh], mesh_to_grid: &Pose, like: &Grid<f32>) -> (Vec<bool>, bool) {
    let h = like.spacing_mm;
    let [nx, ny, nz] = like.dims;
    let mut seeds = vec![false; nx * ny * nz];
    let mut any = false;
    for mesh in meshes {
        for t in 0..mesh.triangles.len() {
            let [a, b, c] = mesh.triangle(t);
            let (a, b, c) = (mesh_to_grid * a, mesh_to_grid * b, mesh_to_grid * c);
            // A triangle more than a cell outside the grid on some axis seeds no cell (its
            // samples round to indices out of range): skipped unsampled (e.g. the parts of a
            // canal that runs past this vertebra). The margin covers the rounding of samples.
            let (qa, qb, qc) = (
                (a - like.origin) / h,
                (b - like.origin) / h,
                (c - like.origin) / h,
            );
            if (0..3).any(|q| {
                let lo = qa[q].min(qb[q]).min(qc[q]);
                let hi = qa[q].max(qb[q]).max(qc[q]);
                hi < -1.5 || lo > like.dims[q] as Real + 0.5
            }) {
                continue;
            }
            let longest = (b - a).norm().max((c - b).norm()).max((a - c).norm());
            let n = ((longest / (0.5 * h)).ceil() as usize).max(1);
            for s in 0..=n {
                for t2 in 0..=(n - s) {
                    let (u, v) = (s as Real / n as Real, t2 as Real / n as Real);
                    let p = a + (b - a) * u + (c - a) * v;
                    let q = (p - like.origin) / h;
                    let (i, j, k) = (round(q.x), round(q.y), round(q.z));
                    if i < 0.0 || j < 0.0 || k < 0.0 {
                        continue;
                    }
                    let (i, j, k) = (i as usize, j as usize, k as usize);
                    if i < nx && j < ny && k < nz {
                        seeds[(k * ny + j) * nx + i] = true;
                        any = true;
                    }
                }
            }
        }
    }
    (seeds, any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::{Rotation3, Translation3, Vector};

    /// The seeding before triangles outside the grid were skipped: every triangle sampled.
    fn reference_seeds(mesh: &TriMesh, mesh_to_grid: &Pose, like: &Grid<f32>) -> (Vec<bool>, bool) {
        let h = like.spacing_mm;
        let [nx, ny, nz] = like.dims;
        let mut seeds = vec![false; nx * ny * nz];
        let mut any = false;
        for t in 0..mesh.triangles.len() {
            let [a, b, c] = mesh.triangle(t).map(|p| mesh_to_grid * p);
            let longest = (b - a).norm().max((c - b).norm()).max((a - c).norm());
            let n = ((longest / (0.5 * h)).ceil() as usize).max(1);
            for s in 0..=n {
                for t2 in 0..=(n - s) {
                    let (u, v) = (s as Real / n as Real, t2 as Real / n as Real);
                    let q = (a + (b - a) * u + (c - a) * v - like.origin) / h;
                    let (i, j, k) = (q.x.round(), q.y.round(), q.z.round());
                    if i < 0.0 || j < 0.0 || k < 0.0 {
                        continue;
                    }
                    let (i, j, k) = (i as usize, j as usize, k as usize);
                    if i < nx && j < ny && k < nz {
                        seeds[(k * ny + j) * nx + i] = true;
                        any = true;
                    }
                }
            }
        }
        (seeds, any)
    }

    /// Trilinear interpolation as written first: the eight corners indexed one by one, the
    /// cell found by `floor`, `outside` where the cell leaves the grid.
    fn reference_sample(g: &Grid<f32>, p: &Point, outside: f32) -> f32 {
        let u = (p - g.origin) / g.spacing_mm;
        let (fx, fy, fz) = (u.x.floor(), u.y.floor(), u.z.floor());
        if u.x.is_nan() || u.y.is_nan() || u.z.is_nan() {
            return f32::NAN;
        }
        if fx < 0.0 || fy < 0.0 || fz < 0.0 {
            return outside;
        }
        let last = |axis: usize| (g.dims[axis] - 1) as Real;
        if fx >= last(0) || fy >= last(1) || fz >= last(2) {
            return outside;
        }
        let (i, j, k) = (fx as usize, fy as usize, fz as usize);
        let (tx, ty, tz) = ((u.x - fx) as f32, (u.y - fy) as f32, (u.z - fz) as f32);
        let d = |a: usize, b: usize, c: usize| g.data[g.index(i + a, j + b, k + c)];
        let c00 = d(0, 0, 0) * (1.0 - tx) + d(1, 0, 0) * tx;
        let c10 = d(0, 1, 0) * (1.0 - tx) + d(1, 1, 0) * tx;
        let c01 = d(0, 0, 1) * (1.0 - tx) + d(1, 0, 1) * tx;
        let c11 = d(0, 1, 1) * (1.0 - tx) + d(1, 1, 1) * tx;
        let c0 = c00 * (1.0 - ty) + c10 * ty;
        let c1 = c01 * (1.0 - ty) + c11 * ty;
        c0 * (1.0 - tz) + c1 * tz
    }

    /// A grid of distances (some huge, as far from any keep-out) whose dimensions are no
    /// multiple of the block, from splitmix64 of each node's index.
    fn random_keep_out_grid(dims: [usize; 3], seed: u64) -> Grid<f32> {
        let mut g = Grid::filled(Point::new(-3.0, 2.0, 10.5), 0.75, dims, 0.0f32);
        for (n, v) in g.data.iter_mut().enumerate() {
            // splitmix64 of the node's index.
            let mut z = seed.wrapping_add((n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let r = (z ^ (z >> 31)) as Real / u64::MAX as Real;
            *v = if r < 0.02 { 1e20 } else { (r * 30.0) as f32 };
        }
        g
    }

    /// Each block's bound is the smallest corner of the cells in it (the oracle: every cell's
    /// eight corners looked at), so no sample in the block reads below it; past the last
    /// block there is none.
    #[test]
    fn a_keep_out_block_bound_is_the_least_corner_of_its_cells() {
        let dims = [19, 13, 10];
        let grid = KeepOutGrid::new(random_keep_out_grid(dims, 0x9e37_79b9_7f4a_7c15));
        let g = &grid.values;
        let mut blocks = std::collections::HashMap::new();
        for k in 0..dims[2] - 1 {
            for j in 0..dims[1] - 1 {
                for i in 0..dims[0] - 1 {
                    let corners =
                        (0..8).map(|c| g.get(i + (c & 1), j + (c >> 1 & 1), k + (c >> 2)));
                    let least = corners.fold(f32::INFINITY, f32::min);
                    let b = (i / BLOCK_CELLS, j / BLOCK_CELLS, k / BLOCK_CELLS);
                    let m = blocks.entry(b).or_insert(f32::INFINITY);
                    *m = m.min(least);
                    // Every sample of the cell (its corners, centre and a point inside).
                    for f in [0.0, 0.5, 0.999, 0.25] {
                        let p = g.cell_center(i, j, k) + Vector::new(f, 1.0 - f, f) * 0.75 * 0.999;
                        let bound = grid.block_bound(i, j, k).unwrap();
                        assert!(g.sample(&p, f32::INFINITY) >= bound - 1e-5);
                    }
                }
            }
        }
        for (&(bi, bj, bk), &m) in &blocks {
            let c = (bi * BLOCK_CELLS, bj * BLOCK_CELLS, bk * BLOCK_CELLS);
            assert_eq!(
                grid.block_bound(c.0, c.1, c.2),
                Some(m),
                "block {bi} {bj} {bk}"
            );
        }
        let last = (dims[0] - 2) / BLOCK_CELLS;
        assert_eq!(grid.block_bound((last + 1) * BLOCK_CELLS, 0, 0), None);
    }

    /// A march along a keep-out's line passes over a block only where every sample it passes
    /// (at the steps the march takes) reads at least the floor, and it does pass over many:
    /// lines in every direction through the distances to three balls, posed obliquely, at
    /// floors every 0.25 mm (so that many blocks are just above one; fails with the block's
    /// far face taken a cell too far, or without the round-off margin).
    #[test]
    fn a_march_passes_over_blocks_only_above_the_floor() {
        use crate::criteria::{GridSampler, GRID_SAMPLE_STEP_MM};
        // Distances to three balls of 2 mm inside the grid (a keep-out's grid, near and far).
        let mut values = Grid::filled(Point::new(-3.0, 2.0, 10.5), 0.75, [41, 37, 33], 0.0f32);
        let balls = [
            Point::new(5.0, 12.0, 18.0),
            Point::new(15.0, 20.0, 25.0),
            Point::new(20.0, 8.0, 14.0),
        ];
        for k in 0..33 {
            for j in 0..37 {
                for i in 0..41 {
                    let p = values.cell_center(i, j, k);
                    let d = balls
                        .iter()
                        .map(|c| (p - c).norm() - 2.0)
                        .fold(Real::INFINITY, Real::min);
                    let n = values.index(i, j, k);
                    values.data[n] = d.max(0.0) as f32;
                }
            }
        }
        let grid = KeepOutGrid::new(values);
        let pose = Pose::from_parts(
            nalgebra::Translation3::new(4.0, 12.0, 18.0),
            nalgebra::UnitQuaternion::from_euler_angles(0.3, -0.2, 0.7),
        );
        let sampler = GridSampler::keep_out(&grid, pose);
        let (mut passed, mut lines) = (0usize, 0usize);
        for a in 0..12 {
            for b in 0..6 {
                let (theta, phi) = (a as Real * 0.52, b as Real * 0.5 + 0.05);
                let dir = Vector::new(phi.sin() * theta.cos(), phi.sin() * theta.sin(), phi.cos());
                let origin = Point::new(-5.0 + a as Real, -8.0 + 2.0 * b as Real, -6.0);
                let line = sampler.line(&origin, &dir);
                for floor in (1..40).map(|i| Real::from(i) * 0.25) {
                    let mut t = -20.0;
                    while t < 40.0 {
                        let n = line.samples_in_block_above(t, GRID_SAMPLE_STEP_MM, floor);
                        if n == 0 {
                            t += GRID_SAMPLE_STEP_MM;
                            continue;
                        }
                        for _ in 0..n {
                            let s = line.at(t);
                            assert!(s >= floor, "sample {s} at {t} passed over above {floor}");
                            t += GRID_SAMPLE_STEP_MM;
                            passed += 1;
                        }
                    }
                }
                lines += 1;
            }
        }
        assert!(
            passed > 20 * lines,
            "{passed} samples passed over on {lines} lines"
        );
    }

    /// [`Grid::sample`] (its cell from one slice of the data) reads, bit for bit, what the
    /// corner-by-corner interpolation reads: inside, on cell faces and grid faces, beyond every
    /// face, at huge and NaN coordinates; and a grid point reads its own value.
    #[test]
    fn sample_matches_the_corner_by_corner_interpolation() {
        let dims = [7, 5, 4];
        let mut g = Grid::filled(Point::new(-3.0, 2.0, 10.5), 0.75, dims, 0.0f32);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as Real / (1u64 << 53) as Real
        };
        for v in g.data.iter_mut() {
            *v = (next() * 20.0 - 10.0) as f32;
        }
        let outside = -10.0f32;
        let extent = [6.0 * 0.75, 4.0 * 0.75, 3.0 * 0.75];
        let mut points = Vec::new();
        for _ in 0..20_000 {
            // From a cell beyond the low faces to one beyond the high faces.
            let f = |e: Real, r: Real| -1.5 + r * (e + 3.0);
            points.push(
                g.origin
                    + Vector::new(
                        f(extent[0], next()),
                        f(extent[1], next()),
                        f(extent[2], next()),
                    ),
            );
        }
        for (i, j, k) in [(0, 0, 0), (6, 4, 3), (3, 2, 1), (5, 4, 2)] {
            let p = g.origin + Vector::new(i as Real, j as Real, k as Real) * 0.75;
            points.push(p);
            if i + 1 < dims[0] && j + 1 < dims[1] && k + 1 < dims[2] {
                assert_eq!(g.sample(&p, outside), g.data[g.index(i, j, k)]);
            }
        }
        points.push(Point::new(Real::NAN, 3.0, 11.0));
        points.push(Point::new(1e300, 3.0, 11.0));
        points.push(Point::new(-1e300, 3.0, 11.0));
        let mut inside = 0;
        for p in &points {
            let (fast, slow) = (g.sample(p, outside), reference_sample(&g, p, outside));
            assert!(
                fast.to_bits() == slow.to_bits() || (fast.is_nan() && slow.is_nan()),
                "at {p:?}: {fast} vs {slow}"
            );
            inside += usize::from(fast != outside);
        }
        assert!(
            inside > 2_000 && inside < points.len() - 2_000,
            "{inside} inside"
        );
    }

    #[test]
    fn skipping_triangles_outside_the_grid_seeds_the_same_cells() {
        // A long tube (a canal through several vertebrae) across a small grid, turned, and
        // shifted so that it lies partly in, partly beside, and (last) wholly past the grid.
        let rings: Vec<Vec<Point>> = (0..40)
            .map(|r| {
                crate::mesher::ring(
                    Vector::new(0.3 * r as Real, 0.0, 4.0 * r as Real - 60.0),
                    Vector::x(),
                    Vector::y(),
                    7.0,
                    5.0,
                    24,
                )
            })
            .collect();
        let tube = crate::mesher::tube_through_rings(&rings);
        let like = Grid::filled(Point::new(-12.0, -9.0, -15.0), 0.7, [31, 27, 40], 0f32);
        for (shift, turn) in [(0.0, 0.0), (11.5, 0.3), (-13.2, -0.5), (40.0, 0.1)] {
            let pose = Pose::from_parts(
                Translation3::new(shift, 0.4 * shift, 0.0),
                Rotation3::from_euler_angles(turn, 0.2 * turn, -turn).into(),
            );
            let fast = surface_seeds(&[&tube], &pose, &like);
            let slow = reference_seeds(&tube, &pose, &like);
            assert_eq!(fast, slow, "shift {shift} turn {turn}");
            assert_eq!(fast.1, shift != 40.0, "shift {shift}: cells seeded");
        }
    }

    #[test]
    fn round_by_truncation_equals_f64_round_where_the_index_is_taken() {
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -1.5,
            0.49999999999999994,
            -0.49999999999999994,
            4503599627370495.5,
            4503599627370497.0,
            9.0e15,
            -9.0e15,
            1.0e18,
        ];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            values.push((u - 0.3) * 600.0);
            values.push(((x >> 20) % 1000) as f64 * 0.5 - 250.0);
            values.push(
                f64::from_bits(0x3FE0_0000_0000_0000 + (x % 8))
                    * if x.is_multiple_of(2) { 1.0 } else { -1.0 },
            );
        }
        for v in values {
            let (fast, slow) = (round(v), v.round());
            assert!(fast == slow, "{v}: {fast} vs {slow}");
            assert_eq!(fast < 0.0, slow < 0.0, "{v}");
            assert_eq!(fast as usize, slow as usize, "{v}");
        }
        assert_eq!(round(f64::NAN) as usize, f64::NAN.round() as usize);
    }
}
