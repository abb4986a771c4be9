//! Mesh validation: every fault of an input mesh becomes a typed [`MeshFault`].
//!
//! Checks run in a fixed order and the first failure is returned: size limit, emptiness, finite
//! coordinates, index range, repeated vertices, zero-area triangles, plausible size, then (for
//! closed meshes) watertightness, manifoldness, consistent winding and outward orientation.
//! Coincident vertices with different indices are *not* merged here: the loader welds vertices.

use rayon::slice::ParallelSliceMut;

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

/// A triangle whose area is at most this fraction of the squared bounding-box diagonal is
/// degenerate.
pub const ZERO_AREA_REL: f64 = 1e-12;

/// Validate `mesh`; on success return it (flipped if the policy fixed its winding) and the fix
/// applied, if any.
pub fn validate_mesh(
    mesh: TriMesh,
    check: &MeshCheck,
) -> Result<(TriMesh, Option<MeshFix>), MeshFault> {
    let n_tri = mesh.triangles.len();
    if n_tri > check.max_triangles {
        return Err(MeshFault::TooLarge {
            triangles: n_tri,
            limit: check.max_triangles,
        });
    }
    let n_vert = mesh.vertices_mm.len();
    if n_vert == 0 || n_tri == 0 {
        return Err(MeshFault::Empty {
            vertices: n_vert,
            triangles: n_tri,
        });
    }
    if let Some(vertex) = mesh
        .vertices_mm
        .iter()
        .position(|p| !(p.x.is_finite() && p.y.is_finite() && p.z.is_finite()))
    {
        return Err(MeshFault::NonFiniteVertex { vertex });
    }
    check_indices(&mesh)?;
    check_repeated(&mesh)?;
    check_areas(&mesh)?;
    if let Some(range) = check.size_range_mm {
        check_size(&mesh, range)?;
    }
    if !check.closed {
        return Ok((mesh, None));
    }
    if let Some(fault) = edge_fault(&mesh) {
        return Err(fault);
    }
    let signed_volume_mm3 = mesh.signed_volume_mm3();
    if signed_volume_mm3 < 0.0 {
        return match check.winding {
            WindingPolicy::Fix => Ok((mesh.flipped(), Some(MeshFix::FlippedInwardWinding))),
            WindingPolicy::Refuse => Err(MeshFault::InwardWinding { signed_volume_mm3 }),
        };
    }
    Ok((mesh, None))
}

/// Whether every undirected edge is shared by exactly two triangles, used once in each direction.
///
/// Also false for an empty mesh or one with out-of-range indices.
pub fn is_closed_manifold(mesh: &TriMesh) -> bool {
    !mesh.triangles.is_empty() && check_indices(mesh).is_ok() && edge_fault(mesh).is_none()
}

/// The first triangle that refers to a vertex that does not exist.
fn check_indices(mesh: &TriMesh) -> Result<(), MeshFault> {
    let vertex_count = mesh.vertices_mm.len();
    for (triangle, tri) in mesh.triangles.iter().enumerate() {
        if let Some(&index) = tri.iter().find(|&&i| i as usize >= vertex_count) {
            return Err(MeshFault::IndexOutOfRange {
                triangle,
                index,
                vertex_count,
            });
        }
    }
    Ok(())
}

/// The first triangle that uses a vertex index twice.
fn check_repeated(mesh: &TriMesh) -> Result<(), MeshFault> {
    for (triangle, &[a, b, c]) in mesh.triangles.iter().enumerate() {
        let vertex = if a == b || a == c {
            a
        } else if b == c {
            b
        } else {
            continue;
        };
        return Err(MeshFault::RepeatedVertex { triangle, vertex });
    }
    Ok(())
}

/// The first triangle whose area is (relative to the mesh's size) zero.
fn check_areas(mesh: &TriMesh) -> Result<(), MeshFault> {
    let diag2_mm2 = mesh.bounding_box().extents_mm().norm_squared();
    let min_area_mm2 = ZERO_AREA_REL * diag2_mm2;
    for triangle in 0..mesh.triangles.len() {
        let [a, b, c] = mesh.triangle(triangle);
        let area_mm2 = 0.5 * (b - a).cross(&(c - a)).norm();
        if area_mm2 <= min_area_mm2 || area_mm2 == 0.0 {
            return Err(MeshFault::ZeroAreaTriangle { triangle, area_mm2 });
        }
    }
    Ok(())
}

/// The largest bounding-box side must lie in `[min_mm, max_mm]`.
fn check_size(mesh: &TriMesh, (min_mm, max_mm): (f64, f64)) -> Result<(), MeshFault> {
    let ext = mesh.bounding_box().extents_mm();
    let extent_mm = ext.x.max(ext.y).max(ext.z);
    let in_range = |v: f64| v >= min_mm && v <= max_mm;
    if in_range(extent_mm) {
        return Ok(());
    }
    let hint = if in_range(extent_mm * 1000.0) {
        " - the coordinates look like metres; give millimetres"
    } else if in_range(extent_mm * 10.0) {
        " - the coordinates look like centimetres; give millimetres"
    } else {
        ""
    };
    Err(MeshFault::ImplausibleSize {
        extent_mm,
        min_mm,
        max_mm,
        hint: hint.to_string(),
    })
}

/// Edge checks of a closed mesh (indices must be in range): boundary edges first, then
/// non-manifold edges, then edges used twice in the same direction. Each reports the smallest
/// offending edge `[min, max]` so that messages are deterministic.
fn edge_fault(mesh: &TriMesh) -> Option<MeshFault> {
    let n = mesh.vertices_mm.len() as u64;
    // Key: (min * n + max) * 2 + (1 if the edge runs max -> min). Fits u64 while 2 n^2 < 2^64.
    if n < (1u64 << 31) {
        let mut keys: Vec<u64> = Vec::with_capacity(mesh.triangles.len() * 3);
        for_each_edge(mesh, |a, b| {
            let (lo, hi, rev) = if a < b { (a, b, 0) } else { (b, a, 1) };
            keys.push((lo as u64 * n + hi as u64) * 2 + rev);
        });
        edge_fault_sorted(keys, n as u128)
    } else {
        let n = n as u128;
        let mut keys: Vec<u128> = Vec::with_capacity(mesh.triangles.len() * 3);
        for_each_edge(mesh, |a, b| {
            let (lo, hi, rev) = if a < b { (a, b, 0) } else { (b, a, 1) };
            keys.push((lo as u128 * n + hi as u128) * 2 + rev);
        });
        edge_fault_sorted(keys, n)
    }
}

fn for_each_edge(mesh: &TriMesh, mut f: impl FnMut(u32, u32)) {
    for &[a, b, c] in &mesh.triangles {
        f(a, b);
        f(b, c);
        f(c, a);
    }
}

fn edge_fault_sorted<K>(mut keys: Vec<K>, n: u128) -> Option<MeshFault>
where
    K: Ord + Copy + Send + Into<u128>,
{
    keys.par_sort_unstable();
    let decode = |k: u128| -> [u32; 2] {
        let und = k >> 1;
        [(und / n) as u32, (und % n) as u32]
    };
    let mut boundary_edges = 0usize;
    let mut first_boundary: Option<u128> = None;
    let mut first_non_manifold: Option<(u128, usize)> = None;
    let mut first_same_direction: Option<u128> = None;
    let mut i = 0;
    while i < keys.len() {
        let k0: u128 = keys[i].into();
        let mut j = i + 1;
        while j < keys.len() && (keys[j].into() >> 1) == (k0 >> 1) {
            j += 1;
        }
        match j - i {
            1 => {
                boundary_edges += 1;
                first_boundary.get_or_insert(k0);
            }
            2 => {
                // Sorted: a pair with equal direction bits is the same directed edge twice.
                let k1: u128 = keys[i + 1].into();
                if k0 == k1 {
                    first_same_direction.get_or_insert(k0);
                }
            }
            faces => {
                first_non_manifold.get_or_insert((k0, faces));
            }
        }
        i = j;
    }
    if let Some(k) = first_boundary {
        return Some(MeshFault::Open {
            boundary_edges,
            edge: decode(k),
        });
    }
    if let Some((k, faces)) = first_non_manifold {
        return Some(MeshFault::NonManifoldEdge {
            edge: decode(k),
            faces,
        });
    }
    first_same_direction.map(|k| MeshFault::InconsistentWinding { edge: decode(k) })
}
