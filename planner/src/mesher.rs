//! Generic meshing of the synthetic anatomy: the zero level set of an implicit function by
//! marching tetrahedra (then its largest component, short edges collapsed), and closed tubes
//! through rings of points. Knows nothing of vertebrae.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::math::{Point, Real, Vector};
use crate::mesh::TriMesh;

// ---------------------------------------------------------------------------------------------
// Marching tetrahedra
// ---------------------------------------------------------------------------------------------

/// The six tetrahedra of a cube sharing the diagonal from corner 0 to corner 7 (corner bits:
/// 1 = +x, 2 = +y, 4 = +z). Neighbouring cubes split their shared faces along the same
/// diagonal, so the tetrahedralisation is conforming.
const TETS: [[usize; 4]; 6] = [
    [0, 1, 3, 7],
    [0, 1, 5, 7],
    [0, 2, 3, 7],
    [0, 2, 6, 7],
    [0, 4, 5, 7],
    [0, 4, 6, 7],
];

fn corner_offset(c: usize) -> [usize; 3] {
    [c & 1, (c >> 1) & 1, (c >> 2) & 1]
}

/// Mesh the zero level set of `f` (negative inside) over the box `lo..hi` with grid spacing
/// `res`. The box must be padded so that `f > 0` on its boundary. Returns the largest connected
/// component, outward wound.
pub fn marching_tetrahedra<F: Fn(&Vector) -> Real + Sync>(
    f: F,
    lo: Vector,
    hi: Vector,
    res: Real,
) -> TriMesh {
    let n = [
        ((hi.x - lo.x) / res).ceil() as usize + 1,
        ((hi.y - lo.y) / res).ceil() as usize + 1,
        ((hi.z - lo.z) / res).ceil() as usize + 1,
    ];
    let pos = |i: usize, j: usize, k: usize| {
        Vector::new(
            lo.x + i as Real * res,
            lo.y + j as Real * res,
            lo.z + k as Real * res,
        )
    };
    // Sample the field, slice by slice in parallel (each value depends only on its position).
    let values: Vec<Real> = (0..n[2])
        .into_par_iter()
        .flat_map_iter(|k| {
            let mut slice = Vec::with_capacity(n[0] * n[1]);
            for j in 0..n[1] {
                for i in 0..n[0] {
                    let v = f(&pos(i, j, k));
                    slice.push(if v == 0.0 { 1e-9 } else { v });
                }
            }
            slice.into_iter()
        })
        .collect();

    let mesh = tetrahedra_surface(&values, n, |i, j, k| Point::from(pos(i, j, k)));
    let mesh = largest_component(&mesh);
    collapse_short_edges(mesh, COLLAPSE_FRACTION * res)
}

/// The surface between negative (inside) and positive values sampled on a grid of `n` points
/// (x fastest), with every connected component, outward wound in the grid's index order
/// (mirror it if `pos` reverses orientation). No value may be exactly zero. Vertices are
/// interpolated linearly on the tetrahedra's edges (clamped to 2 %..98 % of the edge) and placed
/// by `pos(i, j, k)`, the position of grid point `(i, j, k)`.
///
/// Vertices are numbered in order of first use, cube by cube (x fastest), tetrahedron by
/// tetrahedron. Each grid edge of the tetrahedralisation runs from a lower grid point along a
/// non-zero 0/1 offset (the corner bits of `TETS`' edges), so its vertex is found in a table
/// of two grid slices (the cube layer's lower slice and its upper one) instead of a hash map.
pub fn tetrahedra_surface(
    values: &[Real],
    n: [usize; 3],
    pos: impl Fn(usize, usize, usize) -> Point,
) -> TriMesh {
    let idx = |i: usize, j: usize, k: usize| i + n[0] * (j + n[1] * k);
    let cases = tet_cases();
    let mut vertices: Vec<Point> = Vec::new();
    let mut triangles: Vec<[u32; 3]> = Vec::new();
    // The vertex of each edge by (lower grid point in its slice) * 8 + offset bits, for the
    // lower and the upper slice of the current cube layer.
    let slab = n[0] * n[1];
    let mut lower = vec![u32::MAX; slab * 8];
    let mut upper = vec![u32::MAX; slab * 8];

    for k in 0..n[2] - 1 {
        for j in 0..n[1] - 1 {
            for i in 0..n[0] - 1 {
                let mut cv = [0.0; 8];
                let mut inside = 0u8;
                for (c, v) in cv.iter_mut().enumerate() {
                    let [di, dj, dk] = corner_offset(c);
                    *v = values[idx(i + di, j + dj, k + dk)];
                    if *v < 0.0 {
                        inside |= 1 << c;
                    }
                }
                if inside == 0 || inside == 0xff {
                    continue;
                }
                for (t, tet) in TETS.iter().enumerate() {
                    let mask = tet
                        .iter()
                        .enumerate()
                        .fold(0usize, |m, (q, &c)| m | usize::from(inside >> c & 1) << q);
                    let case = &cases[t][mask];
                    if case.edges == 0 {
                        continue;
                    }
                    let mut ids = [0u32; 4];
                    for (e, id) in case.edge[..case.edges].iter().zip(&mut ids) {
                        let (ca, cb) = (e.0.min(e.1), e.0.max(e.1));
                        let [ai, aj, ak] = corner_offset(ca);
                        let slot = (i + ai + n[0] * (j + aj)) * 8 + (ca ^ cb);
                        let table = if ak == 0 { &mut lower } else { &mut upper };
                        if table[slot] == u32::MAX {
                            // Interpolate from the lower corner for a per-edge result.
                            let (va, vb) = (cv[ca], cv[cb]);
                            let s = (va / (va - vb)).clamp(0.02, 0.98);
                            let [bi, bj, bk] = corner_offset(cb);
                            let pa = pos(i + ai, j + aj, k + ak);
                            let pb = pos(i + bi, j + bj, k + bk);
                            vertices.push(pa + (pb - pa) * s);
                            table[slot] = (vertices.len() - 1) as u32;
                        }
                        *id = table[slot];
                    }
                    for tri in &case.tris[..case.tri_count] {
                        triangles.push(tri.map(|q| ids[q]));
                    }
                }
            }
        }
        // The upper slice becomes the next layer's lower one (its in-plane edges are shared).
        std::mem::swap(&mut lower, &mut upper);
        upper.fill(u32::MAX);
    }
    TriMesh::new(vertices, triangles)
}

/// How a tetrahedron is cut for one pattern of inside corners: the cut edges (cube corners) in
/// the order their vertices are first asked for, and the outward triangles over them.
#[derive(Clone, Copy, Default)]
struct TetCase {
    edges: usize,
    edge: [(usize, usize); 4],
    tri_count: usize,
    tris: [[usize; 3]; 2],
}

/// The cut of each of [`TETS`] for each 4-bit mask of inside corners (bit q: `tet[q]`).
/// Orientation is decided on the corners' exact cube-unit positions.
fn tet_cases() -> [[TetCase; 16]; 6] {
    let mut cases = [[TetCase::default(); 16]; 6];
    let cp = |c: usize| {
        let [a, b, d] = corner_offset(c);
        Vector::new(a as Real, b as Real, d as Real)
    };
    let mid = |a: usize, b: usize| (cp(a) + cp(b)) * 0.5;
    for (t, tet) in TETS.iter().enumerate() {
        for (mask, case) in cases[t].iter_mut().enumerate() {
            let inside = |q: usize| mask >> q & 1 == 1;
            let count = (0..4).filter(|&q| inside(q)).count();
            if count == 1 || count == 3 {
                let lone_inside = count == 1;
                let li = (0..4).find(|&q| inside(q) == lone_inside).unwrap_or(0);
                let lone = tet[li];
                let mut others = [0usize; 3];
                for (o, q) in others.iter_mut().zip((0..4).filter(|&q| q != li)) {
                    *o = tet[q];
                }
                let (m0, m1, m2) = (
                    mid(lone, others[0]),
                    mid(lone, others[1]),
                    mid(lone, others[2]),
                );
                let nrm = (m1 - m0).cross(&(m2 - m0));
                let away = m0 - cp(lone);
                let outward = if lone_inside { away } else { -away };
                case.edges = 3;
                case.edge[..3].copy_from_slice(&others.map(|o| (lone, o)));
                case.tri_count = 1;
                case.tris[0] = if nrm.dot(&outward) > 0.0 {
                    [0, 1, 2]
                } else {
                    [0, 2, 1]
                };
            } else if count == 2 {
                let mut ins = (0..4).filter(|&q| inside(q)).map(|q| tet[q]);
                let mut outs = (0..4).filter(|&q| !inside(q)).map(|q| tet[q]);
                let (a, b) = (ins.next().unwrap_or(0), ins.next().unwrap_or(0));
                let (c, d) = (outs.next().unwrap_or(0), outs.next().unwrap_or(0));
                // Cycle: a-c, a-d, b-d, b-c.
                let q = [mid(a, c), mid(a, d), mid(b, d), mid(b, c)];
                let nrm = (q[2] - q[0]).cross(&(q[3] - q[1]));
                let outward = (cp(c) + cp(d)) - (cp(a) + cp(b));
                case.edges = 4;
                case.edge = [(a, c), (a, d), (b, d), (b, c)];
                case.tri_count = 2;
                case.tris = if nrm.dot(&outward) < 0.0 {
                    [[3, 2, 1], [3, 1, 0]]
                } else {
                    [[0, 1, 2], [0, 2, 3]]
                };
            }
        }
    }
    cases
}

/// Edges shorter than this fraction of the grid spacing are collapsed after meshing (marching
/// tetrahedra leaves many slivers where the surface passes near a grid point).
const COLLAPSE_FRACTION: Real = 0.55;

/// Collapse edges shorter than `min_len_mm` to their midpoints, shortest first, keeping the mesh
/// closed and 2-manifold (link condition), its genus (each collapse removes one vertex, three
/// edges and two triangles) and its orientation (no triangle may turn by more than 60 degrees
/// or degenerate). Deterministic.
pub fn collapse_short_edges(mesh: TriMesh, min_len_mm: Real) -> TriMesh {
    let mut pos = mesh.vertices_mm;
    let mut tris = mesh.triangles;
    let mut alive = vec![true; tris.len()];
    let mut vert_tris: Vec<Vec<u32>> = vec![Vec::new(); pos.len()];
    for (i, t) in tris.iter().enumerate() {
        for &v in t {
            vert_tris[v as usize].push(i as u32);
        }
    }
    let normal = |p: &[Point], t: &[u32; 3]| {
        let [a, b, c] = t.map(|v| p[v as usize]);
        (b - a).cross(&(c - a))
    };
    for _pass in 0..3 {
        let mut edges: Vec<(Real, u32, u32)> = Vec::new();
        for (i, t) in tris.iter().enumerate() {
            if !alive[i] {
                continue;
            }
            for e in 0..3 {
                let (a, b) = (t[e], t[(e + 1) % 3]);
                if a < b {
                    let len = (pos[a as usize] - pos[b as usize]).norm();
                    if len < min_len_mm {
                        edges.push((len, a, b));
                    }
                }
            }
        }
        edges.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let mut collapsed = 0usize;
        for &(_, a, b) in &edges {
            let (au, bu) = (a as usize, b as usize);
            vert_tris[au].retain(|&t| alive[t as usize]);
            vert_tris[bu].retain(|&t| alive[t as usize]);
            if vert_tris[au].is_empty() || vert_tris[bu].is_empty() {
                continue;
            }
            if (pos[au] - pos[bu]).norm() >= min_len_mm {
                continue;
            }
            let shared: Vec<u32> = vert_tris[au]
                .iter()
                .copied()
                .filter(|&t| tris[t as usize].contains(&b))
                .collect();
            if shared.len() != 2 {
                continue;
            }
            let ring = |v: usize| {
                let mut r: Vec<u32> = vert_tris[v]
                    .iter()
                    .flat_map(|&t| tris[t as usize])
                    .filter(|&w| w != a && w != b)
                    .collect();
                r.sort_unstable();
                r.dedup();
                r
            };
            let (ra, rb) = (ring(au), ring(bu));
            let common = ra.iter().filter(|w| rb.binary_search(w).is_ok()).count();
            if common != 2 {
                continue;
            }
            let m = nalgebra::center(&pos[au], &pos[bu]);
            let ok = vert_tris[au]
                .iter()
                .chain(&vert_tris[bu])
                .filter(|t| !shared.contains(t))
                .all(|&t| {
                    let tri = tris[t as usize];
                    let n0 = normal(&pos, &tri);
                    let mut p3 = tri.map(|v| pos[v as usize]);
                    for (q, &v) in tri.iter().enumerate() {
                        if v == a || v == b {
                            p3[q] = m;
                        }
                    }
                    let n1 = (p3[1] - p3[0]).cross(&(p3[2] - p3[0]));
                    let (l0, l1) = (n0.norm(), n1.norm());
                    l1 > 1e-10 && n0.dot(&n1) > 0.5 * l0 * l1
                });
            if !ok {
                continue;
            }
            collapse_edge(&mut tris, &mut vert_tris, &mut alive, &shared, b, a);
            pos[au] = m;
            collapsed += 1;
        }
        if collapsed == 0 {
            break;
        }
    }
    compact(&pos, &tris, &alive)
}

/// Collapses the edge `from` -> `into`: the two triangles on the edge (`shared`) die, and every
/// other live triangle of `from` takes `into` in its place and joins `into`'s fan.
fn collapse_edge(
    tris: &mut [[u32; 3]],
    vert_tris: &mut [Vec<u32>],
    alive: &mut [bool],
    shared: &[u32],
    from: u32,
    into: u32,
) {
    for &t in shared {
        alive[t as usize] = false;
    }
    for t in std::mem::take(&mut vert_tris[from as usize]) {
        if !alive[t as usize] {
            continue;
        }
        for w in tris[t as usize].iter_mut() {
            if *w == from {
                *w = into;
            }
        }
        vert_tris[into as usize].push(t);
    }
}

/// The live triangles (`alive`) over the vertices they use, renumbered in order of first use.
fn compact(pos: &[Point], tris: &[[u32; 3]], alive: &[bool]) -> TriMesh {
    let mut remap = vec![u32::MAX; pos.len()];
    let mut vertices = Vec::new();
    let mut triangles = Vec::new();
    for (t, _) in tris.iter().zip(alive).filter(|(_, &al)| al) {
        let mut nt = [0u32; 3];
        for (q, &v) in t.iter().enumerate() {
            if remap[v as usize] == u32::MAX {
                remap[v as usize] = vertices.len() as u32;
                vertices.push(pos[v as usize]);
            }
            nt[q] = remap[v as usize];
        }
        triangles.push(nt);
    }
    TriMesh::new(vertices, triangles)
}

/// Whether two exact normals point the same way (parallel, same sense, neither zero).
fn same_direction(n0: &Vector, n1: &Vector) -> bool {
    n0.cross(n1) == Vector::zeros() && n0.dot(n1) > 0.0
}

/// Remove the vertices that lie inside a flat region or on a straight crease between two flat
/// regions, each by a half-edge collapse into a neighbour (flat: any neighbour; crease: a
/// neighbour along the crease), leaving the surface **the same set of points**: every
/// remaining vertex is an original one, and a collapse is made only when every triangle it
/// changes stays in its plane with its orientation and a non-zero area (then the new fan covers
/// the old star exactly once: its coverage is the winding number of the unchanged link, 0 or 1)
/// and when `u` and `v` share exactly the two neighbours of their edge (the link condition:
/// the mesh stays a closed 2-manifold of the same genus). Passes over the vertices in index
/// order until nothing changes: deterministic.
///
/// The tests of planarity and collinearity are exact, so the coordinates must make the cross
/// products exact (e.g. the half-integer index coordinates of a label map's marching
/// tetrahedra, below 2^20); with inexact coordinates fewer vertices are removed, never wrong
/// ones.
pub fn simplify_flat(mesh: TriMesh) -> TriMesh {
    let pos = mesh.vertices_mm;
    let mut tris = mesh.triangles;
    let mut alive = vec![true; tris.len()];
    let mut vert_tris: Vec<Vec<u32>> = vec![Vec::new(); pos.len()];
    for (i, t) in tris.iter().enumerate() {
        for &v in t {
            vert_tris[v as usize].push(i as u32);
        }
    }
    let normal = |t: &[u32; 3]| {
        let [a, b, c] = t.map(|v| pos[v as usize]);
        (b - a).cross(&(c - a))
    };
    // The neighbours of `v`, sorted, into `out`.
    let neighbours = |vert_tris: &[Vec<u32>], tris: &[[u32; 3]], v: u32, out: &mut Vec<u32>| {
        out.clear();
        out.extend(
            vert_tris[v as usize]
                .iter()
                .flat_map(|&t| tris[t as usize])
                .filter(|&w| w != v),
        );
        out.sort_unstable();
        out.dedup();
    };
    // Scratch space, reused for every vertex.
    let mut plane_of: Vec<usize> = Vec::new();
    let mut ring: Vec<u32> = Vec::new();
    let mut candidates: Vec<u32> = Vec::new();
    let mut shared: Vec<u32> = Vec::new();
    let mut ring_u: Vec<u32> = Vec::new();
    for _pass in 0..64 {
        let mut collapsed = 0usize;
        for v in 0..pos.len() as u32 {
            let vu = v as usize;
            vert_tris[vu].retain(|&t| alive[t as usize]);
            if vert_tris[vu].len() < 3 {
                continue;
            }
            // The planes around v (at most two) and each triangle's plane.
            let mut planes = [Vector::zeros(); 2];
            let mut plane_count = 0usize;
            plane_of.clear();
            for &t in &vert_tris[vu] {
                let n = normal(&tris[t as usize]);
                let k = match planes[..plane_count]
                    .iter()
                    .position(|p| same_direction(p, &n))
                {
                    Some(k) => k,
                    None if plane_count < 2 => {
                        planes[plane_count] = n;
                        plane_count += 1;
                        plane_count - 1
                    }
                    None => {
                        plane_count += 1;
                        break;
                    }
                };
                plane_of.push(k);
            }
            if plane_count > 2 {
                continue;
            }
            neighbours(&vert_tris, &tris, v, &mut ring);
            candidates.clear();
            if plane_count == 1 {
                candidates.extend_from_slice(&ring);
            } else {
                // The crease edges: their two triangles lie in different planes.
                candidates.extend(ring.iter().copied().filter(|&w| {
                    let mut ks = vert_tris[vu]
                        .iter()
                        .zip(&plane_of)
                        .filter(|(&t, _)| tris[t as usize].contains(&w))
                        .map(|(_, &k)| k);
                    let first = ks.next();
                    ks.any(|k| Some(k) != first)
                }));
                if candidates.len() != 2 {
                    continue;
                }
                let (d1, d2) = (
                    pos[candidates[0] as usize] - pos[vu],
                    pos[candidates[1] as usize] - pos[vu],
                );
                if d1.cross(&d2) != Vector::zeros() || d1.dot(&d2) >= 0.0 {
                    continue;
                }
            }
            for &u in &candidates {
                let uu = u as usize;
                vert_tris[uu].retain(|&t| alive[t as usize]);
                shared.clear();
                shared.extend(
                    vert_tris[vu]
                        .iter()
                        .copied()
                        .filter(|&t| tris[t as usize].contains(&u)),
                );
                if shared.len() != 2 {
                    continue;
                }
                neighbours(&vert_tris, &tris, u, &mut ring_u);
                let common = ring
                    .iter()
                    .filter(|&&w| w != u && ring_u.binary_search(&w).is_ok())
                    .count();
                if common != 2 {
                    continue;
                }
                let keeps_plane = vert_tris[vu]
                    .iter()
                    .filter(|t| !shared.contains(t))
                    .all(|&t| {
                        let old = tris[t as usize];
                        let new = old.map(|w| if w == v { u } else { w });
                        same_direction(&normal(&old), &normal(&new))
                    });
                if !keeps_plane {
                    continue;
                }
                collapse_edge(&mut tris, &mut vert_tris, &mut alive, &shared, v, u);
                collapsed += 1;
                break;
            }
        }
        if collapsed == 0 {
            break;
        }
    }
    compact(&pos, &tris, &alive)
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize];
        x = p;
    }
    x
}

/// The connected component (through shared vertices) of each triangle, named by its smallest
/// vertex index.
fn triangle_roots(mesh: &TriMesh) -> Vec<u32> {
    let nv = mesh.vertices_mm.len();
    let mut parent: Vec<u32> = (0..nv as u32).collect();
    for t in &mesh.triangles {
        for e in 1..3 {
            let a = find(&mut parent, t[0]);
            let b = find(&mut parent, t[e]);
            if a != b {
                let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                parent[hi as usize] = lo;
            }
        }
    }
    mesh.triangles
        .iter()
        .map(|t| find(&mut parent, t[0]))
        .collect()
}

/// The connected component (through shared vertices) with the most triangles, compacted.
fn largest_component(mesh: &TriMesh) -> TriMesh {
    let nv = mesh.vertices_mm.len();
    let mut count: HashMap<u32, usize> = HashMap::new();
    let roots = triangle_roots(mesh);
    for r in &roots {
        *count.entry(*r).or_insert(0) += 1;
    }
    // Deterministic: most triangles, then the smallest root.
    let best = count
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(r, _)| *r);
    let Some(best) = best else {
        return mesh.clone();
    };
    let mut remap = vec![u32::MAX; nv];
    let mut vertices = Vec::new();
    let mut triangles = Vec::new();
    for (t, r) in mesh.triangles.iter().zip(&roots) {
        if *r != best {
            continue;
        }
        let mut nt = [0u32; 3];
        for (q, &v) in t.iter().enumerate() {
            if remap[v as usize] == u32::MAX {
                remap[v as usize] = vertices.len() as u32;
                vertices.push(mesh.vertices_mm[v as usize]);
            }
            nt[q] = remap[v as usize];
        }
        triangles.push(nt);
    }
    TriMesh::new(vertices, triangles)
}

/// Every connected component (through shared vertices), compacted, the one with the most
/// triangles first (ties: the one whose first triangle comes first). Deterministic.
pub fn connected_components(mesh: &TriMesh) -> Vec<TriMesh> {
    let nv = mesh.vertices_mm.len();
    let roots = triangle_roots(mesh);
    let mut order: Vec<u32> = Vec::new();
    let mut slot: HashMap<u32, usize> = HashMap::new();
    let mut parts: Vec<(Vec<Point>, Vec<[u32; 3]>)> = Vec::new();
    let mut remap = vec![u32::MAX; nv];
    for (t, &root) in mesh.triangles.iter().zip(&roots) {
        let s = *slot.entry(root).or_insert_with(|| {
            order.push(root);
            parts.push((Vec::new(), Vec::new()));
            parts.len() - 1
        });
        let (verts, tris) = &mut parts[s];
        let mut nt = [0u32; 3];
        for (q, &v) in t.iter().enumerate() {
            if remap[v as usize] == u32::MAX {
                remap[v as usize] = verts.len() as u32;
                verts.push(mesh.vertices_mm[v as usize]);
            }
            nt[q] = remap[v as usize];
        }
        tris.push(nt);
    }
    let mut meshes: Vec<TriMesh> = parts.into_iter().map(|(v, t)| TriMesh::new(v, t)).collect();
    // Stable sort: equal sizes keep the order of their first triangle.
    meshes.sort_by_key(|m| std::cmp::Reverse(m.triangles.len()));
    meshes
}

// ---------------------------------------------------------------------------------------------
// Tubes
// ---------------------------------------------------------------------------------------------

/// A closed tube through `rings` (each the same number of points, in order around), capped at
/// both ends with a centre vertex; wound outward.
pub fn tube_through_rings(rings: &[Vec<Point>]) -> TriMesh {
    let m = rings[0].len();
    let mut vertices: Vec<Point> = rings.iter().flatten().copied().collect();
    let mut triangles = Vec::new();
    let id = |r: usize, i: usize| (r * m + i % m) as u32;
    for r in 0..rings.len() - 1 {
        for i in 0..m {
            triangles.push([id(r, i), id(r, i + 1), id(r + 1, i + 1)]);
            triangles.push([id(r, i), id(r + 1, i + 1), id(r + 1, i)]);
        }
    }
    let centroid = |ring: &Vec<Point>| {
        Point::from(ring.iter().map(|p| p.coords).sum::<Vector>() / ring.len() as Real)
    };
    let first = vertices.len() as u32;
    vertices.push(centroid(&rings[0]));
    let last = vertices.len() as u32;
    vertices.push(centroid(&rings[rings.len() - 1]));
    let lr = rings.len() - 1;
    for i in 0..m {
        triangles.push([first, id(0, i + 1), id(0, i)]);
        triangles.push([last, id(lr, i), id(lr, i + 1)]);
    }
    let mesh = TriMesh::new(vertices, triangles);
    if mesh.signed_volume_mm3() < 0.0 {
        mesh.flipped()
    } else {
        mesh
    }
}

/// An elliptic ring of `m` points around `center` with semi-axes `a` along `e1`, `b` along `e2`.
pub fn ring(center: Vector, e1: Vector, e2: Vector, a: Real, b: Real, m: usize) -> Vec<Point> {
    (0..m)
        .map(|i| {
            let t = std::f64::consts::TAU * i as Real / m as Real;
            Point::from(center + e1 * (a * t.cos()) + e2 * (b * t.sin()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first implementation (a hash map of edges, per-tetrahedron case analysis): the
    /// oracle of the two-slice table of [`tetrahedra_surface`].
    fn reference_tetrahedra_surface(
        values: &[Real],
        n: [usize; 3],
        pos: impl Fn(usize, usize, usize) -> Point,
    ) -> TriMesh {
        let idx = |i: usize, j: usize, k: usize| i + n[0] * (j + n[1] * k);
        let mut vertices: Vec<Point> = Vec::new();
        let mut triangles: Vec<[u32; 3]> = Vec::new();
        let mut edge_vertex: HashMap<u64, u32> = HashMap::new();

        for k in 0..n[2] - 1 {
            for j in 0..n[1] - 1 {
                for i in 0..n[0] - 1 {
                    let mut cv = [0.0; 8];
                    let mut cg = [0usize; 8];
                    let mut any_in = false;
                    let mut any_out = false;
                    for c in 0..8 {
                        let [di, dj, dk] = corner_offset(c);
                        cg[c] = idx(i + di, j + dj, k + dk);
                        cv[c] = values[cg[c]];
                        if cv[c] < 0.0 {
                            any_in = true;
                        } else {
                            any_out = true;
                        }
                    }
                    if !(any_in && any_out) {
                        continue;
                    }
                    for tet in &TETS {
                        let mut get_vertex = |a: usize, b: usize| -> u32 {
                            let (ga, gb) = (cg[a], cg[b]);
                            let key = if ga < gb {
                                ((ga as u64) << 32) | gb as u64
                            } else {
                                ((gb as u64) << 32) | ga as u64
                            };
                            *edge_vertex.entry(key).or_insert_with(|| {
                                // Interpolate from the lower global index for a per-edge result.
                                let (ca, cb) = if ga < gb { (a, b) } else { (b, a) };
                                let (va, vb) = (cv[ca], cv[cb]);
                                let t = (va / (va - vb)).clamp(0.02, 0.98);
                                let [ai, aj, ak] = corner_offset(ca);
                                let [bi, bj, bk] = corner_offset(cb);
                                let pa = pos(i + ai, j + aj, k + ak);
                                let pb = pos(i + bi, j + bj, k + bk);
                                let p = pa + (pb - pa) * t;
                                vertices.push(p);
                                (vertices.len() - 1) as u32
                            })
                        };
                        let inside: Vec<bool> = tet.iter().map(|&c| cv[c] < 0.0).collect();
                        let count = inside.iter().filter(|&&b| b).count();
                        if count == 0 || count == 4 {
                            continue;
                        }
                        // Corner positions in cube units (exact) decide orientation.
                        let cp = |c: usize| {
                            let [a, b, d] = corner_offset(c);
                            Vector::new(a as Real, b as Real, d as Real)
                        };
                        let mid = |a: usize, b: usize| (cp(a) + cp(b)) * 0.5;
                        if count == 1 || count == 3 {
                            let lone_inside = count == 1;
                            let li = (0..4).find(|&q| inside[q] == lone_inside).unwrap_or(0);
                            let lone = tet[li];
                            let others: Vec<usize> =
                                (0..4).filter(|&q| q != li).map(|q| tet[q]).collect();
                            let (m0, m1, m2) = (
                                mid(lone, others[0]),
                                mid(lone, others[1]),
                                mid(lone, others[2]),
                            );
                            let nrm = (m1 - m0).cross(&(m2 - m0));
                            let away = m0 - cp(lone);
                            let outward = if lone_inside { away } else { -away };
                            let v0 = get_vertex(lone, others[0]);
                            let v1 = get_vertex(lone, others[1]);
                            let v2 = get_vertex(lone, others[2]);
                            if nrm.dot(&outward) > 0.0 {
                                triangles.push([v0, v1, v2]);
                            } else {
                                triangles.push([v0, v2, v1]);
                            }
                        } else {
                            let ins: Vec<usize> =
                                (0..4).filter(|&q| inside[q]).map(|q| tet[q]).collect();
                            let outs: Vec<usize> =
                                (0..4).filter(|&q| !inside[q]).map(|q| tet[q]).collect();
                            let (a, b) = (ins[0], ins[1]);
                            let (c, d) = (outs[0], outs[1]);
                            // Cycle: a-c, a-d, b-d, b-c.
                            let q = [mid(a, c), mid(a, d), mid(b, d), mid(b, c)];
                            let nrm = (q[2] - q[0]).cross(&(q[3] - q[1]));
                            let outward = (cp(c) + cp(d)) - (cp(a) + cp(b));
                            let mut vq = [
                                get_vertex(a, c),
                                get_vertex(a, d),
                                get_vertex(b, d),
                                get_vertex(b, c),
                            ];
                            if nrm.dot(&outward) < 0.0 {
                                vq.reverse();
                            }
                            triangles.push([vq[0], vq[1], vq[2]]);
                            triangles.push([vq[0], vq[2], vq[3]]);
                        }
                    }
                }
            }
        }
        TriMesh::new(vertices, triangles)
    }

    /// The first implementation of [`simplify_flat`] (allocating per vertex): its oracle.
    fn reference_simplify_flat(mesh: TriMesh) -> TriMesh {
        let pos = mesh.vertices_mm;
        let mut tris = mesh.triangles;
        let mut alive = vec![true; tris.len()];
        let mut vert_tris: Vec<Vec<u32>> = vec![Vec::new(); pos.len()];
        for (i, t) in tris.iter().enumerate() {
            for &v in t {
                vert_tris[v as usize].push(i as u32);
            }
        }
        let normal = |t: &[u32; 3]| {
            let [a, b, c] = t.map(|v| pos[v as usize]);
            (b - a).cross(&(c - a))
        };
        let neighbours = |vert_tris: &[Vec<u32>], tris: &[[u32; 3]], v: u32| -> Vec<u32> {
            let mut r: Vec<u32> = vert_tris[v as usize]
                .iter()
                .flat_map(|&t| tris[t as usize])
                .filter(|&w| w != v)
                .collect();
            r.sort_unstable();
            r.dedup();
            r
        };
        for _pass in 0..64 {
            let mut collapsed = 0usize;
            for v in 0..pos.len() as u32 {
                let vu = v as usize;
                vert_tris[vu].retain(|&t| alive[t as usize]);
                if vert_tris[vu].len() < 3 {
                    continue;
                }
                // The planes around v (at most two) and each triangle's plane.
                let mut planes: Vec<Vector> = Vec::new();
                let mut plane_of: Vec<usize> = Vec::with_capacity(vert_tris[vu].len());
                for &t in &vert_tris[vu] {
                    let n = normal(&tris[t as usize]);
                    let k = match planes.iter().position(|p| same_direction(p, &n)) {
                        Some(k) => k,
                        None => {
                            planes.push(n);
                            planes.len() - 1
                        }
                    };
                    plane_of.push(k);
                }
                if planes.len() > 2 {
                    continue;
                }
                let ring = neighbours(&vert_tris, &tris, v);
                let candidates: Vec<u32> = if planes.len() == 1 {
                    ring.clone()
                } else {
                    // The crease edges: their two triangles lie in different planes.
                    let crease: Vec<u32> = ring
                        .iter()
                        .copied()
                        .filter(|&w| {
                            let mut ks = vert_tris[vu]
                                .iter()
                                .zip(&plane_of)
                                .filter(|(&t, _)| tris[t as usize].contains(&w))
                                .map(|(_, &k)| k);
                            let first = ks.next();
                            ks.any(|k| Some(k) != first)
                        })
                        .collect();
                    if crease.len() != 2 {
                        continue;
                    }
                    let (d1, d2) = (
                        pos[crease[0] as usize] - pos[vu],
                        pos[crease[1] as usize] - pos[vu],
                    );
                    if d1.cross(&d2) != Vector::zeros() || d1.dot(&d2) >= 0.0 {
                        continue;
                    }
                    crease
                };
                for u in candidates {
                    let uu = u as usize;
                    vert_tris[uu].retain(|&t| alive[t as usize]);
                    let shared: Vec<u32> = vert_tris[vu]
                        .iter()
                        .copied()
                        .filter(|&t| tris[t as usize].contains(&u))
                        .collect();
                    if shared.len() != 2 {
                        continue;
                    }
                    let ring_u = neighbours(&vert_tris, &tris, u);
                    let common = ring
                        .iter()
                        .filter(|&&w| w != u && ring_u.binary_search(&w).is_ok())
                        .count();
                    if common != 2 {
                        continue;
                    }
                    let keeps_plane =
                        vert_tris[vu]
                            .iter()
                            .filter(|t| !shared.contains(t))
                            .all(|&t| {
                                let old = tris[t as usize];
                                let new = old.map(|w| if w == v { u } else { w });
                                same_direction(&normal(&old), &normal(&new))
                            });
                    if !keeps_plane {
                        continue;
                    }
                    collapse_edge(&mut tris, &mut vert_tris, &mut alive, &shared, v, u);
                    collapsed += 1;
                    break;
                }
            }
            if collapsed == 0 {
                break;
            }
        }
        compact(&pos, &tris, &alive)
    }

    /// A small deterministic generator (64-bit LCG).
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    #[test]
    fn tetrahedra_surface_equals_the_hash_map_oracle_vertex_for_vertex() {
        let mut seed = 7u64;
        for case in 0..24 {
            let n = [
                3 + (lcg(&mut seed) * 9.0) as usize,
                3 + (lcg(&mut seed) * 9.0) as usize,
                3 + (lcg(&mut seed) * 9.0) as usize,
            ];
            // Half the cases binary (a label map's indicator), half smooth random values; the
            // grid's boundary outside.
            let binary = case % 2 == 0;
            let fill = 0.2 + 0.6 * lcg(&mut seed);
            let mut values = Vec::new();
            for k in 0..n[2] {
                for j in 0..n[1] {
                    for i in 0..n[0] {
                        let border = [i, j, k]
                            .iter()
                            .zip(&n)
                            .any(|(&x, &m)| x == 0 || x + 1 == m);
                        let r = lcg(&mut seed);
                        values.push(if border {
                            0.5
                        } else if binary {
                            if r < fill {
                                -0.5
                            } else {
                                0.5
                            }
                        } else {
                            let v = r - fill;
                            if v == 0.0 {
                                1e-9
                            } else {
                                v
                            }
                        });
                    }
                }
            }
            let pos = |i: usize, j: usize, k: usize| {
                Point::new(
                    0.7 * i as Real,
                    0.8 * j as Real - 3.0,
                    1.1 * k as Real + 2.0,
                )
            };
            let fast = tetrahedra_surface(&values, n, pos);
            let slow = reference_tetrahedra_surface(&values, n, pos);
            assert!(!slow.triangles.is_empty(), "case {case}: empty surface");
            assert_eq!(fast, slow, "case {case} ({n:?}, binary {binary})");
        }
    }

    #[test]
    fn simplify_flat_equals_the_allocating_oracle() {
        let mut seed = 11u64;
        for case in 0..16 {
            // A union of random boxes with a few voxels flipped: flat faces, straight and
            // stepped creases, and irregular spots.
            let n = [10 + case % 5, 11 + case % 3, 9 + case % 4];
            let mut inside = vec![false; n[0] * n[1] * n[2]];
            for _ in 0..3 {
                let lo = n.map(|m| 1 + (lcg(&mut seed) * (m as f64 - 4.0)) as usize);
                let hi = [0, 1, 2]
                    .map(|a| lo[a] + 1 + (lcg(&mut seed) * (n[a] - 2 - lo[a]) as f64) as usize);
                for k in lo[2]..hi[2].min(n[2] - 1) {
                    for j in lo[1]..hi[1].min(n[1] - 1) {
                        for i in lo[0]..hi[0].min(n[0] - 1) {
                            inside[i + n[0] * (j + n[1] * k)] = true;
                        }
                    }
                }
            }
            for _ in 0..4 {
                let p = [0, 1, 2].map(|a| 1 + (lcg(&mut seed) * (n[a] - 2) as f64) as usize);
                let at = p[0] + n[0] * (p[1] + n[1] * p[2]);
                inside[at] = !inside[at];
            }
            let values: Vec<Real> = inside.iter().map(|&b| if b { -0.5 } else { 0.5 }).collect();
            let pos = |i: usize, j: usize, k: usize| Point::new(i as Real, j as Real, k as Real);
            let full = tetrahedra_surface(&values, n, pos);
            let fast = simplify_flat(full.clone());
            let slow = reference_simplify_flat(full.clone());
            assert!(fast.triangles.len() < full.triangles.len(), "case {case}");
            assert_eq!(fast, slow, "case {case}");
        }
    }
}
