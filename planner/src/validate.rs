//! Mesh validation: every fault of an input mesh becomes a typed [`MeshFault`].

use crate::error::{MeshFault, MeshFix};
use crate::mesh::TriMesh;

/// What to do with a closed mesh whose triangles all face inwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindingPolicy {
    /// Flip it and report [`MeshFix::FlippedInwardWinding`].
    Fix,
    /// Refuse it with [`MeshFault::InwardWinding`].
    Refuse,
}

/// Which checks a mesh of a given role must pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeshCheck {
    /// Watertight, 2-manifold and consistently wound (vertebrae; keep-outs that are closed).
    pub closed: bool,
    /// Largest bounding-box side must lie in this range (vertebrae: 15 to 150 mm).
    pub size_range_mm: Option<(f64, f64)>,
    pub winding: WindingPolicy,
    /// Refuse larger meshes before doing any work on them.
    pub max_triangles: usize,
}

/// Largest bounding-box side of a vertebra, millimetres.
pub const VERTEBRA_SIZE_RANGE_MM: (f64, f64) = (15.0, 150.0);

/// Validate `mesh`; on success return it (flipped if the policy fixed its winding) and the fix
/// applied, if any.
pub fn validate_mesh(
    mesh: TriMesh,
    check: &MeshCheck,
) -> Result<(TriMesh, Option<MeshFix>), MeshFault> {
    let _ = (mesh, check);
    todo!("helper A")
}

/// Whether every undirected edge is shared by exactly two triangles, used once in each direction.
pub fn is_closed_manifold(mesh: &TriMesh) -> bool {
    let _ = mesh;
    todo!("helper A")
}
