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
pub fn tetrahedra_surface(
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
