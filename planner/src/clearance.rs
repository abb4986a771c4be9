//! The collision module: the only file that knows parry3d. Exact f64 clearance queries against a
//! triangle mesh, walking parry's BVH, and the brute-force oracle they are tested against.

use crate::math::{Point, UnitVector};
use crate::mesh::TriMesh;

/// A mesh prepared for fast exact queries. Coordinates stay f64 millimetres.
pub struct ClearanceMesh {
    _todo: (),
}

impl ClearanceMesh {
    /// Build the BVH. `mesh` must be validated (finite, indices in range, no degenerate
    /// triangles). Containment queries are available when the mesh is closed and outward wound.
    pub fn new(mesh: &TriMesh) -> Self {
        let _ = mesh;
        todo!("helper A")
    }

    /// The mesh is closed and outward wound: `contains_point` is meaningful.
    pub fn is_closed(&self) -> bool {
        todo!("helper A")
    }

    /// Exact distance from `p` to the surface.
    pub fn distance_to_point(&self, p: &Point) -> f64 {
        let _ = p;
        todo!("helper A")
    }

    /// Exact distance from the segment `a-b` to the surface (0 if it touches or crosses it).
    pub fn distance_to_segment(&self, a: &Point, b: &Point) -> f64 {
        let _ = (a, b);
        todo!("helper A")
    }

    /// Is `p` inside the closed solid? (false for open meshes)
    pub fn contains_point(&self, p: &Point) -> bool {
        let _ = p;
        todo!("helper A")
    }

    /// Every crossing of the infinite line `origin + t * dir` with the surface, as sorted `t`.
    pub fn line_crossings(&self, origin: &Point, dir: &UnitVector) -> Vec<f64> {
        let _ = (origin, dir);
        todo!("helper A")
    }

    /// Bytes held by the prepared mesh (vertices, triangles, BVH).
    pub fn memory_bytes(&self) -> usize {
        todo!("helper A")
    }
}

/// Slow, obvious versions of the queries: every triangle, no acceleration. The oracle for tests.
pub mod brute {
    use super::*;

    pub fn distance_to_point(mesh: &TriMesh, p: &Point) -> f64 {
        let _ = (mesh, p);
        todo!("helper A")
    }

    pub fn distance_to_segment(mesh: &TriMesh, a: &Point, b: &Point) -> f64 {
        let _ = (mesh, a, b);
        todo!("helper A")
    }

    /// Ray parity along several fixed directions, majority vote.
    pub fn contains_point(mesh: &TriMesh, p: &Point) -> bool {
        let _ = (mesh, p);
        todo!("helper A")
    }
}
