//! Triangle meshes in millimetres (f64): the raw anatomy as it arrives, before validation.

use crate::math::{Point, Pose, Real, Vector};

/// An indexed triangle mesh. Coordinates in millimetres; the frame is the one of the anatomy it
/// belongs to (LPS inside the planner). Triangles are counter-clockwise seen from outside when
/// the mesh is outward wound.
#[derive(Clone, Debug, PartialEq)]
pub struct TriMesh {
    pub vertices_mm: Vec<Point>,
    pub triangles: Vec<[u32; 3]>,
}

/// Axis-aligned box.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aabb {
    pub min: Point,
    pub max: Point,
}

impl Aabb {
    pub fn extents_mm(&self) -> Vector {
        self.max - self.min
    }
    pub fn center(&self) -> Point {
        nalgebra::center(&self.min, &self.max)
    }
}

/// Mass properties of the solid a closed, outward-wound mesh encloses.
#[derive(Clone, Copy, Debug)]
pub struct SolidProperties {
    pub volume_mm3: Real,
    pub centroid: Point,
    /// Inertia tensor about the centroid, unit density (mm^5).
    pub inertia_mm5: nalgebra::Matrix3<Real>,
}

impl TriMesh {
    pub fn new(vertices_mm: Vec<Point>, triangles: Vec<[u32; 3]>) -> Self {
        Self {
            vertices_mm,
            triangles,
        }
    }

    /// The three corners of triangle `i` (indices must be valid: use after validation).
    pub fn triangle(&self, i: usize) -> [Point; 3] {
        let [a, b, c] = self.triangles[i];
        [
            self.vertices_mm[a as usize],
            self.vertices_mm[b as usize],
            self.vertices_mm[c as usize],
        ]
    }

    pub fn bounding_box(&self) -> Aabb {
        let mut min = Point::new(Real::INFINITY, Real::INFINITY, Real::INFINITY);
        let mut max = Point::new(Real::NEG_INFINITY, Real::NEG_INFINITY, Real::NEG_INFINITY);
        for p in &self.vertices_mm {
            min = min.inf(p);
            max = max.sup(p);
        }
        Aabb { min, max }
    }

    /// Signed enclosed volume (divergence theorem): positive for an outward-wound closed mesh.
    pub fn signed_volume_mm3(&self) -> Real {
        self.solid_properties().volume_mm3
    }

    /// Volume, centroid and inertia of the enclosed solid, from signed tetrahedra against the
    /// bounding-box centre (exact for closed meshes; the reference point keeps round-off small
    /// at CT coordinates).
    pub fn solid_properties(&self) -> SolidProperties {
        let o = self.bounding_box().center();
        let mut vol = 0.0;
        let mut first = Vector::zeros();
        // Second moments sum x_i x_j over the solid, relative to o.
        let mut second = nalgebra::Matrix3::<Real>::zeros();
        for i in 0..self.triangles.len() {
            let [a, b, c] = self.triangle(i);
            let (a, b, c) = (a - o, b - o, c - o);
            let v6 = a.dot(&b.cross(&c));
            let v = v6 / 6.0;
            vol += v;
            first += (a + b + c) * (v / 4.0);
            // Covariance of a tetrahedron (0, a, b, c): v/20 * (sum_i x_i x_i^T + s s^T), s = a+b+c.
            let s = a + b + c;
            let m = a * a.transpose() + b * b.transpose() + c * c.transpose() + s * s.transpose();
            second += m * (v / 20.0);
        }
        let centroid_rel = if vol.abs() > 0.0 {
            first / vol
        } else {
            Vector::zeros()
        };
        // Second moments about the centroid.
        let cov = second - centroid_rel * centroid_rel.transpose() * vol;
        let inertia = nalgebra::Matrix3::identity() * cov.trace() - cov;
        SolidProperties {
            volume_mm3: vol,
            centroid: o + centroid_rel,
            inertia_mm5: inertia,
        }
    }

    /// The same mesh with every vertex moved by `pose`.
    pub fn transformed(&self, pose: &Pose) -> TriMesh {
        TriMesh {
            vertices_mm: self.vertices_mm.iter().map(|p| pose * p).collect(),
            triangles: self.triangles.clone(),
        }
    }

    /// The same mesh with every vertex mapped by `f` (e.g. a frame change that is not rigid).
    pub fn mapped(&self, f: impl Fn(&Point) -> Point) -> TriMesh {
        TriMesh {
            vertices_mm: self.vertices_mm.iter().map(f).collect(),
            triangles: self.triangles.clone(),
        }
    }

    /// The same surface with every triangle's winding reversed.
    pub fn flipped(&self) -> TriMesh {
        TriMesh {
            vertices_mm: self.vertices_mm.clone(),
            triangles: self.triangles.iter().map(|&[a, b, c]| [a, c, b]).collect(),
        }
    }

    pub fn surface_area_mm2(&self) -> Real {
        (0..self.triangles.len())
            .map(|i| {
                let [a, b, c] = self.triangle(i);
                (b - a).cross(&(c - a)).norm() * 0.5
            })
            .sum()
    }
}
