//! Shared helpers of the planner's integration tests: STL loading and the outside test data.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use kyphoplan_planner::clearance::brute;
use kyphoplan_planner::math::{Point, Real, UnitVector, Vector};
use kyphoplan_planner::prepare::PreparedVertebra;
use kyphoplan_planner::{
    AnatomyInput, Instrument, Level, PatientFrame, PlanRequest, Role, Safety, Side, Structure,
    TriMesh,
};

/// The request of the contract's defaults (instrument and safety), every level.
pub fn default_request() -> PlanRequest {
    PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .expect("the contract's defaults are valid")
}

/// `../shared/anatomy` of the workspace, or `None` (after saying so) when it is missing.
/// Under `CI=true` a missing directory is a failure, not a skip.
pub fn shared_anatomy() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/anatomy"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "../shared/anatomy not found at {} (required under CI=true)",
            dir.display()
        );
    }
    eprintln!("SKIPPED: ../shared/anatomy not found at {}", dir.display());
    None
}

/// Read a binary or ASCII STL and weld its vertices by exact coordinates.
pub fn load_stl(path: &std::path::Path) -> TriMesh {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stl = stl_io::read_stl(&mut f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut index: HashMap<[u64; 3], u32> = HashMap::new();
    let mut vertices = Vec::new();
    let mut map = Vec::with_capacity(stl.vertices.len());
    for v in &stl.vertices {
        let p = [v[0] as f64, v[1] as f64, v[2] as f64];
        let key = p.map(f64::to_bits);
        let id = *index.entry(key).or_insert_with(|| {
            vertices.push(Point::new(p[0], p[1], p[2]));
            (vertices.len() - 1) as u32
        });
        map.push(id);
    }
    let triangles = stl
        .faces
        .iter()
        .map(|f| [map[f.vertices[0]], map[f.vertices[1]], map[f.vertices[2]]])
        .collect();
    TriMesh::new(vertices, triangles)
}

/// The vertebrae `L1.stl` .. `L5.stl` of `dir/set` (those present), as an LPS anatomy.
pub fn load_set(dir: &std::path::Path, set: &str) -> AnatomyInput {
    let mut structures = Vec::new();
    for level in Level::ALL {
        let p = dir.join(set).join(format!("{level}.stl"));
        if p.exists() {
            structures.push(Structure {
                name: format!("{set}/{level}.stl"),
                role: Role::Vertebra { level },
                mesh: load_stl(&p),
            });
        }
    }
    assert!(!structures.is_empty(), "{set}: no STL found");
    AnatomyInput {
        name: set.into(),
        frame: PatientFrame::Lps,
        structures,
    }
}

/// An LPS anatomy of one vertebra.
pub fn single_vertebra(name: &str, level: Level, mesh: TriMesh) -> AnatomyInput {
    AnatomyInput {
        name: name.into(),
        frame: PatientFrame::Lps,
        structures: vec![Structure {
            name: format!("{level}.stl"),
            role: Role::Vertebra { level },
            mesh,
        }],
    }
}

/// Brute-force route check, independent of the isthmus outline polygon: the bone entry lies
/// behind the isthmus plane, and every point of the cylinder of radius `radius + margin` where it
/// cuts the isthmus plane (128 points around) is inside the bone (exact point containment by
/// ray casting over every triangle).
pub fn brute_route_check(
    v: &PreparedVertebra,
    side: Side,
    entry_lps: &Point,
    tip_lps: &Point,
    radius_mm: Real,
    margin_mm: Real,
) -> Result<(), String> {
    let p = v.pedicles[side]
        .as_ref()
        .map_err(|e| format!("pedicle not measured: {e}"))?;
    let to_v = v.frame.lps_to_vertebra;
    let (entry, tip) = (to_v * entry_lps, to_v * tip_lps);
    let (_, entry_along) = p.isthmus_coordinates(&entry);
    if entry_along >= 0.0 {
        return Err(format!(
            "bone entry {entry_along:.2} mm in front of the isthmus"
        ));
    }
    let d = UnitVector::new_normalize(tip - entry);
    let n = p.axis_vertebra;
    let c = p.isthmus_center_vertebra_mm;
    let e1 = UnitVector::new_normalize(d.cross(&Vector::z()));
    let e2 = d.cross(&e1);
    // Just inside the margin, so that a clearance of exactly the margin passes.
    let rr = radius_mm + margin_mm - 1e-6;
    let to_lps = v.frame.vertebra_to_lps();
    for k in 0..128 {
        let phi = k as Real / 128.0 * std::f64::consts::TAU;
        let a = entry + (e1.into_inner() * phi.cos() + e2 * phi.sin()) * rr;
        let t = (c - a).dot(&n) / d.dot(&n);
        let q = a + d.into_inner() * t;
        if !brute::contains_point(&v.mesh, &(to_lps * q)) {
            return Err(format!(
                "the cylinder (radius + margin) leaves the bone at the isthmus, {:.1} deg around",
                phi.to_degrees()
            ));
        }
    }
    Ok(())
}

/// Brute force over every triangle: the incidence (degrees) of the axis `entry -> entry + u` on
/// the surface under a cannula of `radius_mm` at its bone entry, and where along the axis (from
/// the tip at `len` past the entry, negative behind it) the cortex margin starts: the end of the
/// docking zone that incidence and the surface's drop under the footprint need.
#[allow(dead_code)]
pub fn brute_docking(
    mesh: &TriMesh,
    entry: &kyphoplan_planner::math::Point,
    u: &kyphoplan_planner::math::Vector,
    len: f64,
    radius_mm: f64,
    margin_mm: f64,
) -> (f64, f64) {
    use kyphoplan_planner::clearance::brute;
    let normal = brute::footprint_normal(mesh, entry, u, radius_mm)
        .expect("the bone entry is on the surface");
    let cos_incidence = -normal.dot(u);
    let footprint = (radius_mm + margin_mm) / cos_incidence;
    let drop = brute::surface_drop_mm(mesh, entry, &normal, u, footprint);
    let zone = (radius_mm + margin_mm + drop) / cos_incidence;
    (cos_incidence.acos().to_degrees(), (-len + zone).min(0.0))
}

/// Key of the cube of side `cell_mm` holding `p`.
fn cell_of(p: &Point, cell_mm: Real) -> (i64, i64, i64) {
    (
        (p.x / cell_mm).floor() as i64,
        (p.y / cell_mm).floor() as i64,
        (p.z / cell_mm).floor() as i64,
    )
}

/// The cubes of side `cell_mm` the bounding box of triangle `t` meets.
pub fn triangle_cells(t: &[Point; 3], cell_mm: Real) -> Vec<(i64, i64, i64)> {
    let lo = cell_of(&t[0].inf(&t[1]).inf(&t[2]), cell_mm);
    let hi = cell_of(&t[0].sup(&t[1]).sup(&t[2]), cell_mm);
    let mut cells = Vec::new();
    for x in lo.0..=hi.0 {
        for y in lo.1..=hi.1 {
            for z in lo.2..=hi.2 {
                cells.push((x, y, z));
            }
        }
    }
    cells
}

/// The triangles of `mesh` by the cubes of side `cell_mm` their bounding boxes meet: triangles
/// that share no cube cannot touch (a broad phase for brute-force crossing checks).
pub fn triangle_grid(mesh: &TriMesh, cell_mm: Real) -> HashMap<(i64, i64, i64), Vec<usize>> {
    let mut grid: HashMap<(i64, i64, i64), Vec<usize>> = HashMap::new();
    for i in 0..mesh.triangles.len() {
        for c in triangle_cells(&mesh.triangle(i), cell_mm) {
            grid.entry(c).or_default().push(i);
        }
    }
    grid
}
