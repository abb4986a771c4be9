//! Test meshes for the benchmarks: STL loading and uniform subdivision.
#![allow(dead_code)]

use std::collections::HashMap;

use kyphoplan_planner::math::Point;
use kyphoplan_planner::TriMesh;

/// Binary or ASCII STL, vertices welded by exact coordinates.
pub fn load_stl(path: &std::path::Path) -> TriMesh {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stl = stl_io::read_stl(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut index: HashMap<[u64; 3], u32> = HashMap::new();
    let mut vertices = Vec::new();
    let map: Vec<u32> = stl
        .vertices
        .iter()
        .map(|v| {
            let p = [v[0] as f64, v[1] as f64, v[2] as f64];
            *index.entry(p.map(f64::to_bits)).or_insert_with(|| {
                vertices.push(Point::new(p[0], p[1], p[2]));
                (vertices.len() - 1) as u32
            })
        })
        .collect();
    let triangles = stl
        .faces
        .iter()
        .map(|f| [map[f.vertices[0]], map[f.vertices[1]], map[f.vertices[2]]])
        .collect();
    TriMesh::new(vertices, triangles)
}

/// Split every edge into `n` equal parts and every triangle into `n^2` (shared edge points are
/// shared vertices, so a closed manifold stays one): the same surface with `n^2` times the
/// triangles.
pub fn subdivide(mesh: &TriMesh, n: usize) -> TriMesh {
    if n <= 1 {
        return mesh.clone();
    }
    let mut vertices = mesh.vertices_mm.clone();
    let mut edges: HashMap<(u32, u32), u32> = HashMap::new();
    let mut triangles = Vec::with_capacity(mesh.triangles.len() * n * n);
    let at = |i: usize, j: usize| i * (n + 1) + j;
    let mut lattice = vec![0u32; (n + 1) * (n + 1)];
    for &[a, b, c] in &mesh.triangles {
        let (pa, pb, pc) = (
            mesh.vertices_mm[a as usize],
            mesh.vertices_mm[b as usize],
            mesh.vertices_mm[c as usize],
        );
        // Point of an edge `u-v` at step s of n from u (the vertices of an edge are made once,
        // from its lower index).
        let mut edge_point = |u: u32, v: u32, s: usize, vertices: &mut Vec<Point>| -> u32 {
            let (lo, hi, s) = if u < v { (u, v, s) } else { (v, u, n - s) };
            let first = *edges.entry((lo, hi)).or_insert_with(|| {
                let (p, q) = (mesh.vertices_mm[lo as usize], mesh.vertices_mm[hi as usize]);
                let first = vertices.len() as u32;
                for k in 1..n {
                    vertices.push(p + (q - p) * (k as f64 / n as f64));
                }
                first
            });
            first + (s - 1) as u32
        };
        for i in 0..=n {
            for j in 0..=n - i {
                let k = n - i - j;
                lattice[at(i, j)] = match (i, j, k) {
                    (0, 0, _) => a,
                    (_, 0, 0) => b,
                    (0, _, 0) => c,
                    (_, 0, _) => edge_point(a, b, i, &mut vertices),
                    (0, _, _) => edge_point(a, c, j, &mut vertices),
                    (_, _, 0) => edge_point(b, c, j, &mut vertices),
                    _ => {
                        let p = pa
                            + (pb - pa) * (i as f64 / n as f64)
                            + (pc - pa) * (j as f64 / n as f64);
                        vertices.push(p);
                        (vertices.len() - 1) as u32
                    }
                };
            }
        }
        for i in 0..n {
            for j in 0..n - i {
                triangles.push([
                    lattice[at(i, j)],
                    lattice[at(i + 1, j)],
                    lattice[at(i, j + 1)],
                ]);
                if i + j + 1 < n {
                    triangles.push([
                        lattice[at(i + 1, j)],
                        lattice[at(i + 1, j + 1)],
                        lattice[at(i, j + 1)],
                    ]);
                }
            }
        }
    }
    TriMesh::new(vertices, triangles)
}
