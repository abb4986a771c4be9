//! The collision module: the only file that knows parry3d. Exact f64 clearance queries against a
//! triangle mesh, walking parry's BVH, and the brute-force oracle they are tested against.
//!
//! Parry is used only for its bounding volume hierarchy ([`parry3d_f64::partitioning::Bvh`],
//! built over the triangles' f64 AABBs). Every distance, crossing and containment decision is
//! made here with exact f64 primitives ([`point_triangle_distance`],
//! [`segment_triangle_distance`], [`line_triangle_crossing`]) shared by the BVH walks and by the
//! brute-force oracle in [`brute`]. Parry's own mesh queries treat a mesh as a hollow surface
//! and its capsule-vs-mesh distance is ~20x slower than the walk below.

use parry3d_f64::bounding_volume::Aabb as ParryAabb;
use parry3d_f64::math::Vector as PVec;
use parry3d_f64::partitioning::{Bvh, BvhBuildStrategy, BvhNode, TraversalAction};

use crate::math::{segment_segment_distance, Point, UnitVector, Vector};
use crate::mesh::TriMesh;
use crate::validate::is_closed_manifold;

/// Two line crossings closer than this (in the line's parameter, mm for a unit direction) are
/// one crossing (a shared edge or vertex hit by several triangles).
pub const CROSSING_MERGE_MM: f64 = 1e-9;

/// A crossing whose smallest barycentric coordinate is below this hits (almost) an edge: the
/// containment test then votes over several ray directions.
pub const EDGE_MARGIN: f64 = 1e-9;

/// Barycentric slack accepted by [`line_triangle_crossing`], so that a line through a shared edge
/// is caught by at least one of its triangles despite round-off (duplicates are merged).
const BARY_SLACK: f64 = 1e-12;

/// Fixed, non-axis-aligned ray directions for containment (irrational components, so that rays
/// from grid-like points do not run along mesh edges).
const RAY_DIRS: [[f64; 3]; 3] = [
    [
        0.577_215_664_901_532_9,
        0.414_213_562_373_095_1,
        0.707_106_781_186_547_5,
    ],
    [
        -0.302_775_637_731_994_6,
        0.732_050_807_568_877_2,
        0.236_067_977_499_789_7,
    ],
    [
        0.645_751_311_064_590_6,
        -0.271_828_182_845_904_5,
        -0.541_196_100_146_197,
    ],
];

fn ray_dir(i: usize) -> Vector {
    let [x, y, z] = RAY_DIRS[i];
    Vector::new(x, y, z).normalize()
}

// ---------------------------------------------------------------------------------------------
// Exact primitives (f64), shared by the BVH walks and the brute-force oracle.
// ---------------------------------------------------------------------------------------------

/// Closest point to `p` on the triangle `tri` (Ericson, Real-Time Collision Detection, 5.1.5).
pub fn closest_point_on_triangle(p: &Point, tri: &[Point; 3]) -> Point {
    let [a, b, c] = tri;
    let ab = b - a;
    let ac = c - a;
    let ap = p - a;
    let d1 = ab.dot(&ap);
    let d2 = ac.dot(&ap);
    if d1 <= 0.0 && d2 <= 0.0 {
        return *a;
    }
    let bp = p - b;
    let d3 = ab.dot(&bp);
    let d4 = ac.dot(&bp);
    if d3 >= 0.0 && d4 <= d3 {
        return *b;
    }
    let vc = d1 * d4 - d3 * d2;
    if vc <= 0.0 && d1 >= 0.0 && d3 <= 0.0 {
        let v = d1 / (d1 - d3);
        return a + ab * v;
    }
    let cp = p - c;
    let d5 = ab.dot(&cp);
    let d6 = ac.dot(&cp);
    if d6 >= 0.0 && d5 <= d6 {
        return *c;
    }
    let vb = d5 * d2 - d1 * d6;
    if vb <= 0.0 && d2 >= 0.0 && d6 <= 0.0 {
        let w = d2 / (d2 - d6);
        return a + ac * w;
    }
    let va = d3 * d6 - d5 * d4;
    if va <= 0.0 && (d4 - d3) >= 0.0 && (d5 - d6) >= 0.0 {
        let w = (d4 - d3) / ((d4 - d3) + (d5 - d6));
        return b + (c - b) * w;
    }
    let denom = 1.0 / (va + vb + vc);
    let v = vb * denom;
    let w = vc * denom;
    a + ab * v + ac * w
}

/// Exact distance from `p` to the triangle `tri`, millimetres.
pub fn point_triangle_distance(p: &Point, tri: &[Point; 3]) -> f64 {
    (p - closest_point_on_triangle(p, tri)).norm()
}

/// Does the segment `a-b` pass through the triangle `tri` (transversally)? Segments lying in the
/// triangle's plane are reported by the edge distances of [`segment_triangle_distance`] instead.
pub fn segment_crosses_triangle(a: &Point, b: &Point, tri: &[Point; 3]) -> bool {
    let [v0, v1, v2] = tri;
    let n = (v1 - v0).cross(&(v2 - v0));
    let da = n.dot(&(a - v0));
    let db = n.dot(&(b - v0));
    if (da > 0.0 && db > 0.0) || (da < 0.0 && db < 0.0) || da == db {
        return false;
    }
    let p = a + (b - a) * (da / (da - db));
    n.dot(&(v1 - v0).cross(&(p - v0))) >= 0.0
        && n.dot(&(v2 - v1).cross(&(p - v1))) >= 0.0
        && n.dot(&(v0 - v2).cross(&(p - v2))) >= 0.0
}

/// Exact distance from the segment `a-b` to the triangle `tri` (0 if it crosses it).
///
/// The minimum over the segment and the triangle is reached where they meet, at an endpoint of
/// the segment (point-triangle), or on an edge of the triangle (segment-segment).
pub fn segment_triangle_distance(a: &Point, b: &Point, tri: &[Point; 3]) -> f64 {
    if segment_crosses_triangle(a, b, tri) {
        return 0.0;
    }
    let [v0, v1, v2] = tri;
    point_triangle_distance(a, tri)
        .min(point_triangle_distance(b, tri))
        .min(segment_segment_distance(a, b, v0, v1))
        .min(segment_segment_distance(a, b, v1, v2))
        .min(segment_segment_distance(a, b, v2, v0))
}

/// Where the infinite line `origin + t * dir` crosses a triangle (Möller-Trumbore, f64).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LineCrossing {
    /// Line parameter of the crossing (millimetres when `dir` is a unit vector).
    pub t: f64,
    /// +1 if the line leaves through the triangle's front (outward) side, -1 if it enters.
    pub sign: i8,
    /// Smallest barycentric coordinate of the hit: near 0 means near an edge or vertex.
    pub edge_margin: f64,
}

/// The crossing of the infinite line `origin + t * dir` with triangle `tri`, if any. Lines
/// parallel to the triangle's plane never cross it.
pub fn line_triangle_crossing(
    origin: &Point,
    dir: &Vector,
    tri: &[Point; 3],
) -> Option<LineCrossing> {
    let [v0, v1, v2] = tri;
    let e1 = v1 - v0;
    let e2 = v2 - v0;
    let pvec = dir.cross(&e2);
    let det = e1.dot(&pvec);
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let inv = 1.0 / det;
    let s = origin - v0;
    let u = s.dot(&pvec) * inv;
    if !(-BARY_SLACK..=1.0 + BARY_SLACK).contains(&u) {
        return None;
    }
    let q = s.cross(&e1);
    let v = dir.dot(&q) * inv;
    if v < -BARY_SLACK || u + v > 1.0 + BARY_SLACK {
        return None;
    }
    let t = e2.dot(&q) * inv;
    // det = dir . (e1 x e2) ... up to sign: e1 . (dir x e2) = -dir . (e1 x e2).
    let sign = if det < 0.0 { 1 } else { -1 };
    Some(LineCrossing {
        t,
        sign,
        edge_margin: u.min(v).min(1.0 - u - v),
    })
}

/// Sort crossings by `t` and merge runs closer than [`CROSSING_MERGE_MM`] into one crossing
/// (net sign). A run whose signs cancel (the line only touches the surface at a ridge or
/// vertex) is dropped.
pub fn merge_crossings(hits: &mut [LineCrossing]) -> Vec<f64> {
    hits.sort_unstable_by(|a, b| a.t.total_cmp(&b.t));
    let mut out = Vec::with_capacity(hits.len());
    let mut i = 0;
    while i < hits.len() {
        let mut net = hits[i].sign as i32;
        let mut j = i + 1;
        while j < hits.len() && hits[j].t - hits[j - 1].t < CROSSING_MERGE_MM {
            net += hits[j].sign as i32;
            j += 1;
        }
        if net != 0 || j - i == 1 {
            out.push(hits[i].t);
        }
        i = j;
    }
    out
}

/// Exact distance from `p` to the box `[lo, hi]`.
pub fn point_aabb_distance(p: &[f64; 3], lo: &[f64; 3], hi: &[f64; 3]) -> f64 {
    let mut d2 = 0.0;
    for i in 0..3 {
        let d = (lo[i] - p[i]).max(p[i] - hi[i]).max(0.0);
        d2 += d * d;
    }
    d2.sqrt()
}

/// Exact distance from the segment `a + t d`, `t` in `[0, 1]`, to the box `[lo, hi]`.
///
/// The squared distance is convex and piecewise quadratic in `t`, with breakpoints where the
/// segment crosses a slab plane: minimise each piece in closed form, in order along the
/// segment, until a piece's minimum lies before its end (convexity: the distance only grows
/// after it). A segment that meets the box (its parameter interval within every slab is not
/// empty) is at distance 0 without the pieces. The slow, obvious version is the tests' oracle
/// (`segment_aabb_distance_every_piece` in `planner/tests/clearance_oracle.rs`).
pub fn segment_aabb_distance(a: &[f64; 3], d: &[f64; 3], lo: &[f64; 3], hi: &[f64; 3]) -> f64 {
    // The segment's parameters inside the box: the intersection of [0, 1] with each slab's.
    // The slab planes' crossings are also the pieces' breakpoints.
    let (mut t_in, mut t_out) = (0.0f64, 1.0f64);
    let mut ts = [0.0f64; 8];
    let mut n = 1;
    for i in 0..3 {
        if d[i] != 0.0 {
            let (u, v) = ((lo[i] - a[i]) / d[i], (hi[i] - a[i]) / d[i]);
            t_in = t_in.max(u.min(v));
            t_out = t_out.min(u.max(v));
            for t in [u, v] {
                if t > 0.0 && t < 1.0 {
                    ts[n] = t;
                    n += 1;
                }
            }
        } else if a[i] < lo[i] || a[i] > hi[i] {
            t_out = -1.0;
        }
    }
    if t_in <= t_out {
        return 0.0;
    }
    ts[n] = 1.0;
    n += 1;
    // Insertion sort of at most 8 values.
    for i in 1..n {
        let mut j = i;
        while j > 0 && ts[j - 1] > ts[j] {
            ts.swap(j - 1, j);
            j -= 1;
        }
    }
    let mut best = f64::INFINITY;
    for w in ts[..n].windows(2) {
        let (t, distance) = segment_aabb_piece_min(a, d, lo, hi, w[0], w[1]);
        best = best.min(distance);
        if best == 0.0 || t < w[1] {
            break;
        }
    }
    best
}

/// The closest point to the box `[lo, hi]` of the piece `t` in `[t0, t1]` of the segment
/// `a + t d`, where no slab plane is crossed inside the piece: `(t, distance)`. Within such a
/// piece each axis is below, inside or above its slab throughout (read at the midpoint), so the
/// squared distance is one quadratic in `t`, minimised in closed form and clamped to the piece.
#[inline]
pub fn segment_aabb_piece_min(
    a: &[f64; 3],
    d: &[f64; 3],
    lo: &[f64; 3],
    hi: &[f64; 3],
    t0: f64,
    t1: f64,
) -> (f64, f64) {
    let at = |t: f64| [a[0] + t * d[0], a[1] + t * d[1], a[2] + t * d[2]];
    let pm = at(0.5 * (t0 + t1));
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..3 {
        let c = if pm[i] < lo[i] {
            lo[i]
        } else if pm[i] > hi[i] {
            hi[i]
        } else {
            continue;
        };
        num += (c - a[i]) * d[i];
        den += d[i] * d[i];
    }
    let t = if den > 0.0 {
        (num / den).clamp(t0, t1)
    } else {
        t0
    };
    (t, point_aabb_distance(&at(t), lo, hi))
}

/// Does the line `o + t d` meet the box `[lo, hi]` (padded by `pad`) for some `t` in
/// `[t_min, t_max]`? `inv` holds `1 / d` per axis (infinite where `d` is 0).
fn line_hits_box(
    o: &[f64; 3],
    d: &[f64; 3],
    inv: &[f64; 3],
    lo: &[f64; 3],
    hi: &[f64; 3],
    t_min: f64,
    t_max: f64,
) -> bool {
    const PAD_MM: f64 = 1e-9;
    let (mut t0, mut t1) = (t_min, t_max);
    for i in 0..3 {
        let (l, h) = (lo[i] - PAD_MM, hi[i] + PAD_MM);
        if d[i] == 0.0 {
            if o[i] < l || o[i] > h {
                return false;
            }
            continue;
        }
        let (mut ta, mut tb) = ((l - o[i]) * inv[i], (h - o[i]) * inv[i]);
        if ta > tb {
            std::mem::swap(&mut ta, &mut tb);
        }
        t0 = t0.max(ta);
        t1 = t1.min(tb);
        if t0 > t1 {
            return false;
        }
    }
    true
}

/// Shrink a lower bound by a relative hair so that round-off never prunes the true minimum.
#[inline]
fn conservative(lb: f64) -> f64 {
    lb * (1.0 - 1e-12) - 1e-12
}

fn arr(p: &Point) -> [f64; 3] {
    [p.x, p.y, p.z]
}

fn varr(v: &Vector) -> [f64; 3] {
    [v.x, v.y, v.z]
}

fn pvec(p: &Point) -> PVec {
    PVec::new(p.x, p.y, p.z)
}

/// The distance between two boxes (0 where they overlap): a lower bound of the distance
/// between anything in one and anything in the other (a segment and its bounding box).
fn box_box_gap(lo: &[f64; 3], hi: &[f64; 3], other_lo: &[f64; 3], other_hi: &[f64; 3]) -> f64 {
    let mut g2 = 0.0;
    for i in 0..3 {
        let g = (lo[i] - other_hi[i]).max(other_lo[i] - hi[i]).max(0.0);
        g2 += g * g;
    }
    g2.sqrt()
}

fn node_box(node: &BvhNode) -> ([f64; 3], [f64; 3]) {
    let (lo, hi) = (node.mins(), node.maxs());
    ([lo.x, lo.y, lo.z], [hi.x, hi.y, hi.z])
}

/// [`ClearanceMesh::surface_drop_mm`] of one triangle: 0 unless it faces `dir` and comes within
/// `radius_mm` of `p`; then the deepest of its corners within the radius and its point nearest
/// `p`, under the plane through `p` with normal `normal`.
fn triangle_drop(
    tri: &[Point; 3],
    p: &Point,
    normal: &Vector,
    dir: &Vector,
    radius_mm: f64,
) -> f64 {
    let area_normal = (tri[1] - tri[0]).cross(&(tri[2] - tri[0]));
    if area_normal.dot(dir) >= 0.0 {
        return 0.0;
    }
    let nearest = closest_point_on_triangle(p, tri);
    if (nearest - p).norm() > radius_mm {
        return 0.0;
    }
    std::iter::once(nearest)
        .chain(tri.iter().copied().filter(|c| (c - p).norm() <= radius_mm))
        .map(|c| -(c - p).dot(normal))
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------------
// The prepared mesh.
// ---------------------------------------------------------------------------------------------

/// A mesh prepared for fast exact queries. Coordinates stay f64 millimetres.
pub struct ClearanceMesh {
    /// The corners of every triangle, in the input's triangle order (leaf data = index here).
    corners: Vec<[Point; 3]>,
    /// Parry's BVH over the triangles' AABBs.
    bvh: Bvh,
    /// Closed, 2-manifold, consistently and outward wound.
    closed: bool,
}

impl ClearanceMesh {
    /// Build the BVH. `mesh` must be validated (finite, indices in range, no degenerate
    /// triangles). Containment queries are available when the mesh is closed and outward wound.
    pub fn new(mesh: &TriMesh) -> Self {
        let corners: Vec<[Point; 3]> = (0..mesh.triangles.len())
            .map(|i| mesh.triangle(i))
            .collect();
        let aabbs: Vec<ParryAabb> = corners
            .iter()
            .map(|[a, b, c]| {
                let lo = a.inf(b).inf(c);
                let hi = a.sup(b).sup(c);
                ParryAabb::new(pvec(&lo), pvec(&hi))
            })
            .collect();
        let bvh = Bvh::from_leaves(BvhBuildStrategy::Binned, &aabbs);
        let closed = is_closed_manifold(mesh) && mesh.signed_volume_mm3() > 0.0;
        Self {
            corners,
            bvh,
            closed,
        }
    }

    /// The mesh is closed and outward wound: `contains_point` is meaningful.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Number of triangles.
    pub fn triangle_count(&self) -> usize {
        self.corners.len()
    }

    /// Exact distance from `p` to the surface (infinite for an empty mesh).
    pub fn distance_to_point(&self, p: &Point) -> f64 {
        let pa = arr(p);
        self.bvh
            .find_best(
                f64::INFINITY,
                |node, best| {
                    let (lo, hi) = node_box(node);
                    let lb = point_aabb_distance(&pa, &lo, &hi);
                    if lb >= best {
                        lb
                    } else {
                        conservative(lb)
                    }
                },
                |leaf, _| Some(point_triangle_distance(p, &self.corners[leaf as usize])),
            )
            .map_or(f64::INFINITY, |(_, d)| d)
    }

    /// Exact distance from the segment `a-b` to the surface (0 if it touches or crosses it).
    pub fn distance_to_segment(&self, a: &Point, b: &Point) -> f64 {
        self.distance_to_segment_below(a, b, f64::INFINITY)
    }

    /// [`ClearanceMesh::distance_to_segment`] where it is below `cap`, the same value; else
    /// infinity (the distance is at least `cap`). The walk prunes every box whose lower bound
    /// reaches `cap`: a minimum over several meshes takes each next mesh below the smallest
    /// distance so far, the same minimum for less work.
    pub fn distance_to_segment_below(&self, a: &Point, b: &Point, cap: f64) -> f64 {
        self.nearest_to_segment_below(a, b, cap).0
    }

    /// [`ClearanceMesh::distance_to_segment`] and the corners of a triangle at that distance
    /// (`None` for an empty mesh): the witness lets a caller that splits the segment know,
    /// from one triangle distance, which half keeps the same distance (see
    /// `tolerance::Profile::refine_spans`).
    pub fn distance_to_segment_witness(&self, a: &Point, b: &Point) -> (f64, Option<[Point; 3]>) {
        let (d, leaf) = self.nearest_to_segment_below(a, b, f64::INFINITY);
        (d, leaf.map(|i| self.corners[i as usize]))
    }

    /// [`ClearanceMesh::distance_to_segment`] and the first triangle (in the mesh's order) at
    /// that distance: the triangle a scan of every triangle in order, taking each strictly
    /// nearer one, ends with (`None` for an empty mesh). The walk finds the distance; a second
    /// walk, pruning every box farther than it, finds the triangles at it (several where the
    /// nearest point is an edge or corner they share).
    pub fn first_nearest_to_segment(&self, a: &Point, b: &Point) -> Option<(f64, usize)> {
        let (d, leaf) = self.nearest_to_segment_below(a, b, f64::INFINITY);
        let mut first = leaf?;
        let aa = arr(a);
        let dv = varr(&(b - a));
        self.bvh.traverse(|node| {
            let (lo, hi) = node_box(node);
            if conservative(segment_aabb_distance(&aa, &dv, &lo, &hi)) > d {
                return TraversalAction::Prune;
            }
            if let Some(leaf) = node.leaf_data() {
                if leaf < first
                    && segment_triangle_distance(a, b, &self.corners[leaf as usize]) == d
                {
                    first = leaf;
                }
            }
            TraversalAction::Continue
        });
        Some((d, first as usize))
    }

    /// The walk of [`ClearanceMesh::distance_to_segment_below`], with the nearest triangle.
    fn nearest_to_segment_below(&self, a: &Point, b: &Point, cap: f64) -> (f64, Option<u32>) {
        let aa = arr(a);
        let d = varr(&(b - a));
        let seg_lo = arr(&a.inf(b));
        let seg_hi = arr(&a.sup(b));
        self.bvh
            .find_best(
                cap,
                |node, best| {
                    if best <= 0.0 {
                        return f64::INFINITY;
                    }
                    let (lo, hi) = node_box(node);
                    // Cheap box-box bound first; exact segment-box distance only if it passes.
                    let gap = box_box_gap(&lo, &hi, &seg_lo, &seg_hi);
                    if conservative(gap) >= best {
                        return gap;
                    }
                    conservative(segment_aabb_distance(&aa, &d, &lo, &hi))
                },
                |leaf, _| {
                    Some(segment_triangle_distance(
                        a,
                        b,
                        &self.corners[leaf as usize],
                    ))
                },
            )
            .map_or((f64::INFINITY, None), |(leaf, d)| (d, Some(leaf)))
    }

    /// An upper bound on [`ClearanceMesh::distance_to_segment`] below `cap`, or infinity
    /// where the distance is at least `cap`: the distance of the first triangle the walk of
    /// [`ClearanceMesh::segment_within`] with `|d| d < cap` finds (the exact distance is at
    /// most that). A bound that only has to fall below `cap` costs much less than the minimum.
    pub fn distance_to_segment_at_most(&self, a: &Point, b: &Point, cap: f64) -> f64 {
        self.first_within(a, b, |d| d < cap)
            .unwrap_or(f64::INFINITY)
    }

    /// Whether some triangle's [`segment_triangle_distance`] to the segment `a-b` satisfies
    /// `within`, which must be monotone (true for a distance, true for every smaller one; e.g.
    /// `|d| d - radius < margin`). The same answer as `within(self.distance_to_segment(a, b))`,
    /// since the minimum satisfies a monotone test exactly when some triangle does; but the walk
    /// stops at the first triangle that satisfies it and prunes every box whose lower bound
    /// does not, which is much less work than the exact minimum when only a margin's verdict is
    /// needed (the tolerance's re-checks). Of two boxes it enters the nearer first (by the
    /// segment-box distance), so a walk that finds a triangle finds one early; a walk that
    /// finds none visits every box that passes, in any order.
    pub fn segment_within(&self, a: &Point, b: &Point, within: impl Fn(f64) -> bool) -> bool {
        self.first_within(a, b, within).is_some()
    }

    /// The walk of [`ClearanceMesh::segment_within`]: the distance of the first triangle found
    /// that satisfies `within`, or `None`.
    fn first_within(&self, a: &Point, b: &Point, within: impl Fn(f64) -> bool) -> Option<f64> {
        let aa = arr(a);
        let d = varr(&(b - a));
        let seg_lo = arr(&a.inf(b));
        let seg_hi = arr(&a.sup(b));
        let found = std::cell::Cell::new(None);
        // `find_best` as an ordered walk: a box's cost is its segment-box distance, or
        // `f64::MAX` (pruned) where that fails `within`; a triangle that satisfies `within`
        // costs -1, below every box's cost, which ends the walk.
        self.bvh.find_best(
            f64::INFINITY,
            |node, best| {
                if best < 0.0 {
                    return f64::MAX;
                }
                let (lo, hi) = node_box(node);
                if !within(conservative(box_box_gap(&lo, &hi, &seg_lo, &seg_hi))) {
                    return f64::MAX;
                }
                let box_distance = conservative(segment_aabb_distance(&aa, &d, &lo, &hi));
                if within(box_distance) {
                    box_distance
                } else {
                    f64::MAX
                }
            },
            |leaf, _| {
                let t = segment_triangle_distance(a, b, &self.corners[leaf as usize]);
                within(t).then(|| {
                    found.set(Some(t));
                    -1.0
                })
            },
        );
        found.get()
    }

    /// Is `p` inside the closed solid? (false for open meshes)
    ///
    /// Counts crossings of a ray along a fixed oblique direction; if a crossing is within
    /// [`EDGE_MARGIN`] of a triangle edge (or at the ray origin), the answer is the majority over
    /// three directions.
    pub fn contains_point(&self, p: &Point) -> bool {
        if !self.closed {
            return false;
        }
        let (inside, ambiguous) = self.ray_parity(p, &ray_dir(0));
        if !ambiguous {
            return inside;
        }
        let votes = usize::from(inside)
            + (1..3)
                .filter(|&i| self.ray_parity(p, &ray_dir(i)).0)
                .count();
        votes >= 2
    }

    /// Parity of the merged crossings of the ray `p + t dir`, `t > 0`, and whether any crossing
    /// was close to an edge or to `p` itself.
    fn ray_parity(&self, p: &Point, dir: &Vector) -> (bool, bool) {
        let mut hits = Vec::new();
        self.collect_crossings(p, dir, 0.0, f64::INFINITY, &mut hits);
        let ambiguous = hits
            .iter()
            .any(|h| h.edge_margin < EDGE_MARGIN || h.t.abs() < CROSSING_MERGE_MM);
        let n = merge_crossings(&mut hits)
            .into_iter()
            .filter(|&t| t > 0.0)
            .count();
        (n % 2 == 1, ambiguous)
    }

    /// Every crossing of `origin + t dir` with a triangle for `t` in `[t_min, t_max]` (padded),
    /// walking the BVH with a slab test.
    fn collect_crossings(
        &self,
        origin: &Point,
        dir: &Vector,
        t_min: f64,
        t_max: f64,
        hits: &mut Vec<LineCrossing>,
    ) {
        let o = arr(origin);
        let d = varr(dir);
        let inv = [1.0 / d[0], 1.0 / d[1], 1.0 / d[2]];
        let (t_lo, t_hi) = (t_min - 1e-6, t_max + 1e-6);
        self.bvh.traverse(|node| {
            let (lo, hi) = node_box(node);
            if !line_hits_box(&o, &d, &inv, &lo, &hi, t_lo, t_hi) {
                return TraversalAction::Prune;
            }
            if let Some(leaf) = node.leaf_data() {
                if let Some(h) = line_triangle_crossing(origin, dir, &self.corners[leaf as usize]) {
                    hits.push(h);
                }
            }
            TraversalAction::Continue
        });
    }

    /// Every crossing of the infinite line `origin + t * dir` with the surface, as sorted `t`.
    ///
    /// Hits of several triangles at one point (a shared edge or vertex, within
    /// [`CROSSING_MERGE_MM`]) count once; a line that only touches the surface there (the
    /// triangles' facings cancel) does not cross it and is left out.
    pub fn line_crossings(&self, origin: &Point, dir: &UnitVector) -> Vec<f64> {
        let mut hits = Vec::new();
        self.collect_crossings(
            origin,
            dir.as_ref(),
            f64::NEG_INFINITY,
            f64::INFINITY,
            &mut hits,
        );
        merge_crossings(&mut hits)
    }

    /// The surface a cylinder of `radius_mm` meets where its axis, running along `dir`, enters
    /// the solid at `p`: the area-weighted mean outward normal of the triangles within
    /// `radius_mm` of `p` that face the incoming axis (`normal . dir < 0`; the far side of a
    /// thin plate does not count). `None` when no such triangle is near (`p` is not on the
    /// surface). Exact and deterministic (the BVH is walked in a fixed order).
    pub fn footprint_normal(&self, p: &Point, dir: &Vector, radius_mm: f64) -> Option<Vector> {
        let pa = arr(p);
        let mut sum = Vector::zeros();
        self.bvh.traverse(|node| {
            let (lo, hi) = node_box(node);
            if point_aabb_distance(&pa, &lo, &hi) > radius_mm {
                return TraversalAction::Prune;
            }
            if let Some(leaf) = node.leaf_data() {
                let tri = &self.corners[leaf as usize];
                let area_normal = (tri[1] - tri[0]).cross(&(tri[2] - tri[0]));
                if area_normal.dot(dir) < 0.0 && point_triangle_distance(p, tri) <= radius_mm {
                    sum += area_normal;
                }
            }
            TraversalAction::Continue
        });
        let n = sum.norm();
        (n > 0.0).then(|| sum / n)
    }

    /// How far the surface falls away below the plane through `p` with outward normal `normal`
    /// within `radius_mm` of `p`, mm (0 for a flat or concave surface): the largest depth under
    /// that plane of a corner (or the point nearest `p`) of a triangle facing the incoming axis
    /// `dir`. A cannula docking on a convex surface needs this much more depth than on a plane.
    pub fn surface_drop_mm(&self, p: &Point, normal: &Vector, dir: &Vector, radius_mm: f64) -> f64 {
        let pa = arr(p);
        let mut drop = 0.0_f64;
        self.bvh.traverse(|node| {
            let (lo, hi) = node_box(node);
            if point_aabb_distance(&pa, &lo, &hi) > radius_mm {
                return TraversalAction::Prune;
            }
            if let Some(leaf) = node.leaf_data() {
                drop = drop.max(triangle_drop(
                    &self.corners[leaf as usize],
                    p,
                    normal,
                    dir,
                    radius_mm,
                ));
            }
            TraversalAction::Continue
        });
        drop
    }

    /// Bytes held by the prepared mesh (vertices, triangles, BVH).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.corners.capacity() * std::mem::size_of::<[Point; 3]>()
            + self.bvh.heap_memory_size()
    }
}

/// Slow, obvious versions of the queries: every triangle, no acceleration. The oracle for tests.
pub mod brute {
    use super::*;

    /// Minimum of [`point_triangle_distance`] over every triangle.
    pub fn distance_to_point(mesh: &TriMesh, p: &Point) -> f64 {
        (0..mesh.triangles.len())
            .map(|i| point_triangle_distance(p, &mesh.triangle(i)))
            .fold(f64::INFINITY, f64::min)
    }

    /// Minimum of [`segment_triangle_distance`] over every triangle.
    pub fn distance_to_segment(mesh: &TriMesh, a: &Point, b: &Point) -> f64 {
        (0..mesh.triangles.len())
            .map(|i| segment_triangle_distance(a, b, &mesh.triangle(i)))
            .fold(f64::INFINITY, f64::min)
    }

    /// Ray parity along several fixed directions, majority vote.
    pub fn contains_point(mesh: &TriMesh, p: &Point) -> bool {
        let votes = (0..3)
            .filter(|&k| {
                let dir = ray_dir(k);
                let crossings = (0..mesh.triangles.len())
                    .filter_map(|i| line_triangle_crossing(p, &dir, &mesh.triangle(i)))
                    .filter(|h| h.t > 0.0)
                    .count();
                crossings % 2 == 1
            })
            .count();
        votes >= 2
    }

    /// [`ClearanceMesh::first_nearest_to_segment`] by a scan of every triangle in order,
    /// taking each strictly nearer one.
    pub fn first_nearest_to_segment(mesh: &TriMesh, a: &Point, b: &Point) -> Option<(f64, usize)> {
        let mut best: Option<(f64, usize)> = None;
        for i in 0..mesh.triangles.len() {
            let d = segment_triangle_distance(a, b, &mesh.triangle(i));
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, i));
            }
        }
        best
    }

    /// [`ClearanceMesh::surface_drop_mm`] over every triangle.
    pub fn surface_drop_mm(
        mesh: &TriMesh,
        p: &Point,
        normal: &Vector,
        dir: &Vector,
        radius_mm: f64,
    ) -> f64 {
        (0..mesh.triangles.len())
            .map(|i| triangle_drop(&mesh.triangle(i), p, normal, dir, radius_mm))
            .fold(0.0, f64::max)
    }

    /// [`ClearanceMesh::footprint_normal`] over every triangle, in triangle order.
    pub fn footprint_normal(
        mesh: &TriMesh,
        p: &Point,
        dir: &Vector,
        radius_mm: f64,
    ) -> Option<Vector> {
        let sum = (0..mesh.triangles.len())
            .map(|i| mesh.triangle(i))
            .filter(|t| point_triangle_distance(p, t) <= radius_mm)
            .map(|t| (t[1] - t[0]).cross(&(t[2] - t[0])))
            .filter(|n| n.dot(dir) < 0.0)
            .fold(Vector::zeros(), |a, n| a + n);
        let n = sum.norm();
        (n > 0.0).then(|| sum / n)
    }
}

/// Parry's own capsule-vs-mesh distance, the obvious approach: the reference the benchmarks
/// compare [`ClearanceMesh::distance_to_segment`] against. Not used by the planner.
pub mod parry_builtin {
    use parry3d_f64::math::Pose as PPose;
    use parry3d_f64::shape::{Capsule, TriMesh as PTriMesh};

    use super::pvec;
    use crate::math::Point;
    use crate::mesh::TriMesh;

    /// A mesh as parry's own `TriMesh` shape (a hollow surface).
    pub struct ParryMesh {
        shape: PTriMesh,
    }

    impl ParryMesh {
        /// `mesh` must be validated (indices in range, no degenerate triangles).
        pub fn new(mesh: &TriMesh) -> Self {
            let vertices = mesh.vertices_mm.iter().map(pvec).collect();
            let shape = PTriMesh::new(vertices, mesh.triangles.clone())
                .expect("a validated mesh is a valid parry TriMesh");
            ParryMesh { shape }
        }

        /// Distance from the capsule of axis `a-b` and radius `radius_mm` to the surface, with
        /// `parry3d_f64::query::distance` (0 when they touch).
        pub fn capsule_distance(&self, a: &Point, b: &Point, radius_mm: f64) -> f64 {
            let capsule = Capsule::new(pvec(a), pvec(b), radius_mm);
            parry3d_f64::query::distance(&PPose::IDENTITY, &capsule, &PPose::IDENTITY, &self.shape)
                .expect("capsule-mesh distance is supported")
                .distance
        }
    }

    /// The segments the exact query and parry's are compared on, the same in every run: the
    /// planned cannula axes of `plan` (10 mm behind the bone entry to the tip), both ends moved
    /// by up to 4 mm with a seeded generator, `count` of them, cycling through the axes. Empty
    /// when no side of `plan` is planned.
    pub fn comparison_segments(plan: &crate::plan::Plan, count: usize) -> Vec<(Point, Point)> {
        let axes: Vec<(Point, Point)> = plan
            .levels
            .iter()
            .flat_map(|l| &l.sides)
            .filter_map(|s| s.trajectory.as_ref())
            .map(|t| {
                let (e, tip) = (
                    crate::math::point(t.bone_entry_mm),
                    crate::math::point(t.target_mm),
                );
                (e - (tip - e).normalize() * 10.0, tip)
            })
            .collect();
        if axes.is_empty() {
            return Vec::new();
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        (0..count)
            .map(|i| {
                let (a, b) = axes[i % axes.len()];
                (a + rng.vec(4.0), b + rng.vec(4.0))
            })
            .collect()
    }

    /// A small seeded generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn vec(&mut self, half: f64) -> crate::math::Vector {
            crate::math::Vector::new(
                (2.0 * self.next() - 1.0) * half,
                (2.0 * self.next() - 1.0) * half,
                (2.0 * self.next() - 1.0) * half,
            )
        }
    }
}
