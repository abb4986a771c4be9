//! One test per `MeshFault` variant: the exact variant, its fields and its message.

use kyphoplan_planner::math::Point;
use kyphoplan_planner::validate::{
    is_closed_manifold, validate_mesh, MeshCheck, WindingPolicy, VERTEBRA_SIZE_RANGE_MM,
};
use kyphoplan_planner::{MeshFault, MeshFix, TriMesh};

/// An outward-wound cube `[0, s]^3` moved by `offset`: 8 vertices, 12 triangles.
fn cube(s: f64, offset: [f64; 3]) -> TriMesh {
    let [ox, oy, oz] = offset;
    let v = |x: f64, y: f64, z: f64| Point::new(ox + x * s, oy + y * s, oz + z * s);
    TriMesh::new(
        vec![
            v(0., 0., 0.),
            v(1., 0., 0.),
            v(1., 1., 0.),
            v(0., 1., 0.),
            v(0., 0., 1.),
            v(1., 0., 1.),
            v(1., 1., 1.),
            v(0., 1., 1.),
        ],
        vec![
            [0, 2, 1],
            [0, 3, 2],
            [4, 5, 6],
            [4, 6, 7],
            [0, 1, 5],
            [0, 5, 4],
            [3, 7, 6],
            [3, 6, 2],
            [0, 4, 7],
            [0, 7, 3],
            [1, 2, 6],
            [1, 6, 5],
        ],
    )
}

/// A 30 mm cube at CT-like coordinates: a plausible "vertebra".
fn good_cube() -> TriMesh {
    cube(30.0, [120.0, -80.0, 300.0])
}

fn check() -> MeshCheck {
    MeshCheck {
        closed: true,
        size_range_mm: Some(VERTEBRA_SIZE_RANGE_MM),
        winding: WindingPolicy::Refuse,
        max_triangles: 1_000_000,
    }
}

fn fault(mesh: TriMesh, check: &MeshCheck) -> MeshFault {
    match validate_mesh(mesh, check) {
        Ok(_) => panic!("mesh was accepted"),
        Err(f) => f,
    }
}

fn assert_message(f: &MeshFault, words: &[&str]) {
    let msg = f.to_string();
    for w in words {
        assert!(msg.contains(w), "message {msg:?} lacks {w:?}");
    }
}

#[test]
fn accepts_a_good_cube() {
    let mesh = good_cube();
    let (out, fix) = validate_mesh(mesh.clone(), &check()).unwrap();
    assert_eq!(out, mesh);
    assert_eq!(fix, None);
    assert!(is_closed_manifold(&mesh));
}

#[test]
fn too_large_is_checked_before_anything_else() {
    let mut mesh = good_cube();
    mesh.vertices_mm[0].x = f64::NAN;
    let c = MeshCheck {
        max_triangles: 11,
        ..check()
    };
    let f = fault(mesh, &c);
    assert_eq!(
        f,
        MeshFault::TooLarge {
            triangles: 12,
            limit: 11
        }
    );
    assert_message(&f, &["12 triangles", "limit of 11"]);
}

#[test]
fn empty() {
    let mut mesh = good_cube();
    mesh.triangles.clear();
    let f = fault(mesh, &check());
    assert_eq!(
        f,
        MeshFault::Empty {
            vertices: 8,
            triangles: 0
        }
    );
    assert_message(&f, &["empty", "8 vertices", "0 triangles"]);

    let f = fault(TriMesh::new(vec![], vec![[0, 1, 2]]), &check());
    assert_eq!(
        f,
        MeshFault::Empty {
            vertices: 0,
            triangles: 1
        }
    );
}

#[test]
fn non_finite_vertex_nan() {
    let mut mesh = good_cube();
    mesh.vertices_mm[3].x = f64::NAN;
    mesh.vertices_mm[5].y = f64::NAN;
    let f = fault(mesh, &check());
    assert_eq!(f, MeshFault::NonFiniteVertex { vertex: 3 });
    assert_message(&f, &["vertex 3", "NaN or infinite"]);
}

#[test]
fn non_finite_vertex_infinite() {
    let mut mesh = good_cube();
    mesh.vertices_mm[6].z = f64::NEG_INFINITY;
    let f = fault(mesh, &check());
    assert_eq!(f, MeshFault::NonFiniteVertex { vertex: 6 });
    assert_message(&f, &["vertex 6", "NaN or infinite"]);
}

#[test]
fn index_out_of_range() {
    let mut mesh = good_cube();
    mesh.triangles[5] = [0, 5, 99];
    mesh.triangles[7] = [8, 5, 4];
    let f = fault(mesh, &check());
    assert_eq!(
        f,
        MeshFault::IndexOutOfRange {
            triangle: 5,
            index: 99,
            vertex_count: 8
        }
    );
    assert_message(&f, &["triangle 5", "vertex 99", "8 vertices"]);
}

#[test]
fn repeated_vertex() {
    let mut mesh = good_cube();
    mesh.triangles[3] = [4, 6, 6];
    let f = fault(mesh, &check());
    assert_eq!(
        f,
        MeshFault::RepeatedVertex {
            triangle: 3,
            vertex: 6
        }
    );
    assert_message(&f, &["triangle 3", "repeats vertex 6"]);
}

#[test]
fn zero_area_triangle_exact() {
    let mut mesh = good_cube();
    // Vertex 8 on the edge 0-1: triangle [0, 1, 8] is a sliver of exactly zero area.
    let mid = nalgebra::center(&mesh.vertices_mm[0], &mesh.vertices_mm[1]);
    mesh.vertices_mm.push(mid);
    mesh.triangles.push([0, 1, 8]);
    let f = fault(mesh, &check());
    assert_eq!(
        f,
        MeshFault::ZeroAreaTriangle {
            triangle: 12,
            area_mm2: 0.0
        }
    );
    assert_message(&f, &["triangle 12", "zero area"]);
}

#[test]
fn zero_area_triangle_relative() {
    let mut mesh = good_cube();
    // Vertex 8 0.1 nm off the edge 0-1: area 1.5e-9 mm^2 <= 1e-12 * 2700 mm^2 (diagonal^2).
    let mut p = nalgebra::center(&mesh.vertices_mm[0], &mesh.vertices_mm[1]);
    p.y += 1e-10;
    mesh.vertices_mm.push(p);
    mesh.triangles.push([0, 1, 8]);
    match fault(mesh, &check()) {
        MeshFault::ZeroAreaTriangle { triangle, area_mm2 } => {
            assert_eq!(triangle, 12);
            assert!(area_mm2 > 1e-9 && area_mm2 < 2.7e-9, "{area_mm2}");
        }
        f => panic!("wrong fault {f:?}"),
    }
}

#[test]
fn open_cube_without_top() {
    let mut mesh = good_cube();
    mesh.triangles
        .retain(|t| *t != [4, 5, 6] && *t != [4, 6, 7]);
    assert!(!is_closed_manifold(&mesh));
    let f = fault(mesh.clone(), &check());
    assert_eq!(
        f,
        MeshFault::Open {
            boundary_edges: 4,
            edge: [4, 5]
        }
    );
    assert_message(&f, &["open", "4 boundary edges", "[4, 5]"]);
    // An open mesh is fine where closedness is not required.
    let c = MeshCheck {
        closed: false,
        ..check()
    };
    assert!(validate_mesh(mesh, &c).is_ok());
}

#[test]
fn non_manifold_edge_two_cubes_sharing_an_edge() {
    // Cube B sits diagonally next to cube A; they share A's edge 2-6 (x = y = s).
    let s = 30.0;
    let a = cube(s, [0.0, 0.0, 0.0]);
    let b = cube(s, [s, s, 0.0]);
    let mut vertices = a.vertices_mm.clone();
    vertices.extend_from_slice(&b.vertices_mm);
    // B's local vertices 0 and 4 are A's 2 and 6.
    let map = |i: u32| match i {
        0 => 2,
        4 => 6,
        i => i + 8,
    };
    let mut triangles = a.triangles.clone();
    triangles.extend(b.triangles.iter().map(|t| t.map(map)));
    let mesh = TriMesh::new(vertices, triangles);
    assert!(!is_closed_manifold(&mesh));
    let f = fault(mesh, &check());
    assert_eq!(
        f,
        MeshFault::NonManifoldEdge {
            edge: [2, 6],
            faces: 4
        }
    );
    assert_message(&f, &["[2, 6]", "4 triangles", "non-manifold"]);
}

#[test]
fn inconsistent_winding_one_flipped_triangle() {
    let mut mesh = good_cube();
    mesh.triangles[0] = [0, 1, 2];
    assert!(!is_closed_manifold(&mesh));
    let f = fault(mesh, &check());
    assert_eq!(f, MeshFault::InconsistentWinding { edge: [0, 1] });
    assert_message(&f, &["inconsistent winding", "[0, 1]"]);
}

#[test]
fn inward_winding_refused() {
    let mesh = good_cube().flipped();
    // Still closed and consistently wound: just inside out.
    assert!(is_closed_manifold(&mesh));
    match fault(mesh, &check()) {
        MeshFault::InwardWinding { signed_volume_mm3 } => {
            assert!(
                (signed_volume_mm3 + 27_000.0).abs() < 1e-6,
                "{signed_volume_mm3}"
            );
            let f = MeshFault::InwardWinding { signed_volume_mm3 };
            assert_message(&f, &["face inwards", "-27000.0 mm^3"]);
        }
        f => panic!("wrong fault {f:?}"),
    }
}

#[test]
fn inward_winding_fixed() {
    let c = MeshCheck {
        winding: WindingPolicy::Fix,
        ..check()
    };
    let (out, fix) = validate_mesh(good_cube().flipped(), &c).unwrap();
    assert_eq!(fix, Some(MeshFix::FlippedInwardWinding));
    assert!((out.signed_volume_mm3() - 27_000.0).abs() < 1e-6);
    assert_eq!(out, good_cube());
}

#[test]
fn implausible_size_metres() {
    let f = fault(cube(0.05, [0.12, -0.08, 0.3]), &check());
    match &f {
        MeshFault::ImplausibleSize {
            extent_mm,
            min_mm,
            max_mm,
            hint,
        } => {
            assert!((extent_mm - 0.05).abs() < 1e-12);
            assert_eq!((*min_mm, *max_mm), VERTEBRA_SIZE_RANGE_MM);
            assert_eq!(
                hint,
                " - the coordinates look like metres; give millimetres"
            );
        }
        f => panic!("wrong fault {f:?}"),
    }
    assert_message(
        &f,
        &["0.050 mm across", "not a vertebra", "look like metres"],
    );
}

#[test]
fn implausible_size_centimetres() {
    match fault(cube(5.0, [12.0, -8.0, 30.0]), &check()) {
        MeshFault::ImplausibleSize { hint, .. } => {
            assert_eq!(
                hint,
                " - the coordinates look like centimetres; give millimetres"
            )
        }
        f => panic!("wrong fault {f:?}"),
    }
}

#[test]
fn implausible_size_no_hint() {
    let f = fault(cube(500.0, [0.0, 0.0, 0.0]), &check());
    assert_eq!(
        f,
        MeshFault::ImplausibleSize {
            extent_mm: 500.0,
            min_mm: 15.0,
            max_mm: 150.0,
            hint: String::new()
        }
    );
    assert_eq!(
        f.to_string(),
        "500.000 mm across is not a vertebra (expected 15 to 150 mm)"
    );
}

/// A UV sphere with `n_u * n_v * 2`-ish triangles (closed, outward).
fn uv_sphere(radius: f64, n_u: u32, n_v: u32) -> TriMesh {
    use std::f64::consts::PI;
    let mut v = vec![Point::new(0.0, 0.0, radius), Point::new(0.0, 0.0, -radius)];
    for j in 1..n_v {
        let th = PI * j as f64 / n_v as f64;
        for i in 0..n_u {
            let ph = 2.0 * PI * i as f64 / n_u as f64;
            v.push(Point::new(
                radius * th.sin() * ph.cos(),
                radius * th.sin() * ph.sin(),
                radius * th.cos(),
            ));
        }
    }
    let idx = |j: u32, i: u32| 2 + (j - 1) * n_u + (i % n_u);
    let mut t = Vec::new();
    for i in 0..n_u {
        t.push([0, idx(1, i), idx(1, i + 1)]);
        t.push([1, idx(n_v - 1, i + 1), idx(n_v - 1, i)]);
    }
    for j in 1..n_v - 1 {
        for i in 0..n_u {
            let (a, b, c, d) = (idx(j, i), idx(j + 1, i), idx(j + 1, i + 1), idx(j, i + 1));
            t.push([a, b, c]);
            t.push([a, c, d]);
        }
    }
    TriMesh::new(v, t)
}

/// A mesh of a million triangles (the size of a fine CT segmentation) is validated in full and
/// accepted as given: nothing is skipped or altered at that size. (Its speed is measured by the
/// `validate` criterion bench, not here.)
#[test]
fn large_sphere_of_a_million_triangles_is_accepted_unchanged() {
    // ~1M triangles.
    let mesh = uv_sphere(40.0, 1000, 500);
    assert!(mesh.triangles.len() > 990_000);
    let (valid, fix) = validate_mesh(mesh.clone(), &check()).unwrap();
    assert_eq!(fix, None);
    assert_eq!(valid, mesh);
    assert!(is_closed_manifold(&valid));
    // Outward wound, and encloses (almost all of) the sphere.
    let sphere_mm3 = 4.0 / 3.0 * std::f64::consts::PI * 40.0_f64.powi(3);
    let volume_mm3 = valid.signed_volume_mm3();
    assert!(
        volume_mm3 > 0.999 * sphere_mm3 && volume_mm3 < sphere_mm3,
        "{volume_mm3} mm^3 of a {sphere_mm3} mm^3 sphere"
    );
}
