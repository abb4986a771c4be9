//! The BVH queries of `ClearanceMesh` against the brute-force oracle, on a non-convex closed test
//! mesh at CT-like coordinates and on a real lumbar vertebra; the exact primitives against dense
//! sampling.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::OnceLock;

use kyphoplan_planner::clearance::{
    brute, line_triangle_crossing, merge_crossings, point_aabb_distance, point_triangle_distance,
    segment_aabb_distance, segment_aabb_piece_min, segment_triangle_distance, ClearanceMesh,
};
use kyphoplan_planner::math::{Point, UnitVector, Vector};
use kyphoplan_planner::validate::{
    validate_mesh, MeshCheck, WindingPolicy, VERTEBRA_SIZE_RANGE_MM,
};
use kyphoplan_planner::TriMesh;
use proptest::prelude::*;

/// Where the test solid sits (CT-like coordinates), mm.
const CENTER: [f64; 3] = [120.0, -80.0, 300.0];
const MAJOR_MM: f64 = 35.0;
const MINOR_MM: f64 = 10.0;

fn center() -> Point {
    Point::new(CENTER[0], CENTER[1], CENTER[2])
}

/// Tube radius of the wobbly torus at `(u, v)`.
fn minor(u: f64, v: f64) -> f64 {
    MINOR_MM * (1.0 + 0.25 * (3.0 * u).sin() * (2.0 * v).cos())
}

/// Point of the wobbly torus surface at angles `(u, v)`.
fn torus_point(u: f64, v: f64) -> Point {
    let r = minor(u, v);
    center()
        + Vector::new(
            (MAJOR_MM + r * v.cos()) * u.cos(),
            (MAJOR_MM + r * v.cos()) * u.sin(),
            r * v.sin(),
        )
}

/// A closed, outward-wound, non-convex torus with a wobbling tube (14 400 triangles).
fn torus(n_u: u32, n_v: u32) -> TriMesh {
    let mut vertices = Vec::new();
    for i in 0..n_u {
        for j in 0..n_v {
            let u = 2.0 * PI * i as f64 / n_u as f64;
            let v = 2.0 * PI * j as f64 / n_v as f64;
            vertices.push(torus_point(u, v));
        }
    }
    let idx = |i: u32, j: u32| (i % n_u) * n_v + (j % n_v);
    let mut triangles = Vec::new();
    for i in 0..n_u {
        for j in 0..n_v {
            let (a, b, c, d) = (idx(i, j), idx(i + 1, j), idx(i + 1, j + 1), idx(i, j + 1));
            triangles.push([a, b, c]);
            triangles.push([a, c, d]);
        }
    }
    TriMesh::new(vertices, triangles)
}

struct Fixture {
    mesh: TriMesh,
    cm: ClearanceMesh,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mesh = torus(120, 60);
        let check = MeshCheck {
            closed: true,
            size_range_mm: None,
            winding: WindingPolicy::Refuse,
            max_triangles: 1_000_000,
        };
        let (mesh, fix) = validate_mesh(mesh, &check).expect("test torus is valid");
        assert_eq!(fix, None);
        assert!(mesh.signed_volume_mm3() > 0.0);
        let cm = ClearanceMesh::new(&mesh);
        assert!(cm.is_closed());
        Fixture { mesh, cm }
    })
}

fn unit(z: f64, phi: f64) -> Vector {
    let s = (1.0 - z * z).max(0.0).sqrt();
    Vector::new(s * phi.cos(), s * phi.sin(), z)
}

/// A point in the box around the torus.
fn box_point() -> impl Strategy<Value = Point> {
    (-60.0..60.0f64, -60.0..60.0f64, -25.0..25.0f64)
        .prop_map(|(x, y, z)| center() + Vector::new(x, y, z))
}

/// A random segment 1-120 mm long starting in the box around the torus.
fn random_segment() -> impl Strategy<Value = (Point, Point)> {
    (box_point(), -1.0..1.0f64, 0.0..2.0 * PI, 1.0..120.0f64)
        .prop_map(|(a, z, phi, len)| (a, a + unit(z, phi) * len))
}

/// A segment running roughly tangent to the surface, 0.05-8 mm outside it: the realistic case
/// where clearance is small but positive.
fn near_segment() -> impl Strategy<Value = (Point, Point)> {
    (
        0.0..2.0 * PI,
        0.0..2.0 * PI,
        0.05..8.0f64,
        0.0..2.0 * PI,
        1.0..120.0f64,
    )
        .prop_map(|(u, v, h, psi, len)| {
            let p = torus_point(u, v);
            let ring = center() + Vector::new(MAJOR_MM * u.cos(), MAJOR_MM * u.sin(), 0.0);
            let n = (p - ring).normalize();
            let t1 = n
                .cross(&Vector::z())
                .try_normalize(1e-9)
                .unwrap_or(Vector::x());
            let t2 = n.cross(&t1);
            let dir = t1 * psi.cos() + t2 * psi.sin();
            let mid = p + n * h;
            (mid - dir * (len / 2.0), mid + dir * (len / 2.0))
        })
}

fn brute_crossings(mesh: &TriMesh, origin: &Point, dir: &Vector) -> Vec<f64> {
    let mut hits: Vec<_> = (0..mesh.triangles.len())
        .filter_map(|i| line_triangle_crossing(origin, dir, &mesh.triangle(i)))
        .collect();
    merge_crossings(&mut hits)
}

/// The segment-box distance as first written, the slow, obvious oracle of the fast one: every
/// piece between the slab crossings minimised (the shared `segment_aabb_piece_min`, itself
/// checked against sampling below), the smallest taken.
fn segment_aabb_distance_every_piece(
    a: &[f64; 3],
    d: &[f64; 3],
    lo: &[f64; 3],
    hi: &[f64; 3],
) -> f64 {
    let mut ts = vec![0.0, 1.0];
    for i in 0..3 {
        if d[i] != 0.0 {
            for c in [lo[i], hi[i]] {
                let t = (c - a[i]) / d[i];
                if t > 0.0 && t < 1.0 {
                    ts.push(t);
                }
            }
        }
    }
    ts.sort_by(f64::total_cmp);
    ts.windows(2)
        .map(|w| segment_aabb_piece_min(a, d, lo, hi, w[0], w[1]).1)
        .fold(f64::INFINITY, f64::min)
}

/// A box (CT-like coordinates, 0-20 mm a side, flat ones included) and a segment around it,
/// some of its direction's components zero (axis-parallel segments).
fn box_and_segment() -> impl Strategy<Value = ([f64; 3], [f64; 3], [f64; 3], [f64; 3])> {
    (
        prop::array::uniform3(-10.0..10.0f64),
        prop::array::uniform3(prop_oneof![Just(0.0), 0.0..20.0f64]),
        prop::array::uniform3(-40.0..40.0f64),
        prop::array::uniform3(prop_oneof![Just(0.0), -60.0..60.0f64, -3.0..3.0f64]),
    )
        .prop_map(|(lo, size, a, d)| {
            let lo = [lo[0] + CENTER[0], lo[1] + CENTER[1], lo[2] + CENTER[2]];
            let hi = [lo[0] + size[0], lo[1] + size[1], lo[2] + size[2]];
            let a = [a[0] + CENTER[0], a[1] + CENTER[1], a[2] + CENTER[2]];
            (a, d, lo, hi)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The fast segment-box distance (the BVH walks' box bound: it stops at the first piece
    /// whose minimum lies before its end, and answers 0 where the segment meets the box)
    /// against the version that minimises every piece, and against dense sampling of the
    /// segment (never above the sampled minimum, below it by at most the sampling's step).
    #[test]
    fn segment_box_distance_matches_every_piece_and_sampling(
        (a, d, lo, hi) in box_and_segment()
    ) {
        let fast = segment_aabb_distance(&a, &d, &lo, &hi);
        let slow = segment_aabb_distance_every_piece(&a, &d, &lo, &hi);
        prop_assert!((fast - slow).abs() <= 1e-9, "fast {fast} every piece {slow}");
        let n = 4000;
        let sampled = (0..=n)
            .map(|k| {
                let t = k as f64 / n as f64;
                point_aabb_distance(&[a[0] + t * d[0], a[1] + t * d[1], a[2] + t * d[2]], &lo, &hi)
            })
            .fold(f64::INFINITY, f64::min);
        let step = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt() / n as f64;
        prop_assert!(fast <= sampled + 1e-9, "fast {fast} above sampled {sampled}");
        prop_assert!(fast >= sampled - step - 1e-9, "fast {fast} sampled {sampled} step {step}");
    }

    #[test]
    fn segment_distance_matches_brute((a, b) in random_segment()) {
        let f = fixture();
        let fast = f.cm.distance_to_segment(&a, &b);
        let slow = brute::distance_to_segment(&f.mesh, &a, &b);
        prop_assert!((fast - slow).abs() <= 1e-9, "bvh {fast} brute {slow}");
    }

    #[test]
    fn near_segment_distance_matches_brute((a, b) in near_segment()) {
        let f = fixture();
        let fast = f.cm.distance_to_segment(&a, &b);
        let slow = brute::distance_to_segment(&f.mesh, &a, &b);
        prop_assert!((fast - slow).abs() <= 1e-9, "bvh {fast} brute {slow}");
    }

    /// `segment_within` (the walk that stops at a margin's verdict) says what the brute-force
    /// distance says, for thresholds around it (above, below, and at it exactly).
    #[test]
    fn segment_within_matches_brute((a, b) in near_segment(), delta in -0.5f64..0.5) {
        let f = fixture();
        let slow = brute::distance_to_segment(&f.mesh, &a, &b);
        for limit in [slow + delta, slow, slow + 1e-12, slow - 1e-12] {
            let r = 1.5;
            let fast = f.cm.segment_within(&a, &b, |d| d - r < limit - r);
            prop_assert_eq!(fast, slow - r < limit - r, "limit {} brute {}", limit, slow);
            let fast_le = f.cm.segment_within(&a, &b, |d| d <= limit);
            prop_assert_eq!(fast_le, slow <= limit, "limit {} brute {}", limit, slow);
        }
    }

    /// `distance_to_segment_below` (the walk that prunes at a cap, for a minimum over several
    /// meshes) gives the exact distance, bit for bit, below the cap and infinity at or above
    /// it, for caps around the brute-force distance.
    #[test]
    fn distance_below_a_cap_matches_brute((a, b) in near_segment(), delta in -0.5f64..0.5) {
        let f = fixture();
        let slow = brute::distance_to_segment(&f.mesh, &a, &b);
        let exact = f.cm.distance_to_segment(&a, &b);
        for cap in [slow + delta, slow, slow + 1e-9, slow - 1e-9, f64::INFINITY] {
            let fast = f.cm.distance_to_segment_below(&a, &b, cap);
            if exact < cap {
                prop_assert_eq!(fast.to_bits(), exact.to_bits(), "cap {} exact {}", cap, exact);
            } else {
                prop_assert_eq!(fast, f64::INFINITY, "cap {} exact {}", cap, exact);
            }
        }
    }

    /// The first triangle at a segment's distance is the one a scan of every triangle in
    /// order takes, distance bit for bit: for segments tangent to the surface, and for
    /// segments passing just above a vertex of the mesh, whose nearest point is that vertex,
    /// shared by every triangle around it.
    #[test]
    fn first_nearest_triangle_matches_the_scan(
        (a, b) in near_segment(),
        vertex in 0usize..100_000,
        h in 0.0..2.0f64,
        psi in 0.0..2.0 * PI,
    ) {
        let f = fixture();
        let v = f.mesh.vertices_mm[vertex % f.mesh.vertices_mm.len()];
        let n = (v - center()).normalize();
        let t = n.cross(&Vector::z()).try_normalize(1e-9).unwrap_or(Vector::x());
        let dir = t * psi.cos() + n.cross(&t) * psi.sin();
        let above = v + n * h;
        for (a, b) in [(a, b), (above - dir * 3.0, above + dir * 3.0), (above, above + n * 5.0)] {
            let fast = f.cm.first_nearest_to_segment(&a, &b).unwrap();
            let slow = brute::first_nearest_to_segment(&f.mesh, &a, &b).unwrap();
            prop_assert_eq!((fast.0.to_bits(), fast.1), (slow.0.to_bits(), slow.1));
        }
    }

    #[test]
    fn point_distance_matches_brute(p in box_point()) {
        let f = fixture();
        let fast = f.cm.distance_to_point(&p);
        let slow = brute::distance_to_point(&f.mesh, &p);
        prop_assert!((fast - slow).abs() <= 1e-9, "bvh {fast} brute {slow}");
    }

    #[test]
    fn containment_and_crossings_agree_with_brute(
        p in box_point(), z in -1.0..1.0f64, phi in 0.0..2.0 * PI,
    ) {
        let f = fixture();
        prop_assume!(brute::distance_to_point(&f.mesh, &p) > 1e-6);
        let inside = brute::contains_point(&f.mesh, &p);
        prop_assert_eq!(f.cm.contains_point(&p), inside);

        let dir = UnitVector::new_normalize(unit(z, phi));
        let ts = f.cm.line_crossings(&p, &dir);
        prop_assert!(ts.windows(2).all(|w| w[0] < w[1]), "not sorted: {:?}", ts);
        prop_assert_eq!(ts.len() % 2, 0, "a closed surface is crossed an even number of times");
        let ahead = ts.iter().filter(|&&t| t > 0.0).count();
        prop_assert_eq!(ahead % 2 == 1, inside, "crossings {:?}", ts);
        let slow = brute_crossings(&f.mesh, &p, dir.as_ref());
        prop_assert_eq!(ts.len(), slow.len());
        for (x, y) in ts.iter().zip(&slow) {
            prop_assert!((x - y).abs() < 1e-9);
        }
    }
}

#[test]
fn containment_sanity() {
    let f = fixture();
    // On the tube's centre ring: inside. In the hole and far away: outside.
    for k in 0..16 {
        let u = 2.0 * PI * (k as f64 + 0.37) / 16.0;
        let ring = center() + Vector::new(MAJOR_MM * u.cos(), MAJOR_MM * u.sin(), 0.0);
        assert!(f.cm.contains_point(&ring));
        assert!(brute::contains_point(&f.mesh, &ring));
    }
    assert!(!f.cm.contains_point(&center()));
    assert!(!f
        .cm
        .contains_point(&(center() + Vector::new(0.0, 0.0, 30.0))));
    assert!(!f.cm.contains_point(&Point::origin()));
    // The hole's axis misses the solid; a line through the tube crosses it 4 times.
    let z = UnitVector::new_normalize(Vector::z());
    assert!(f.cm.line_crossings(&center(), &z).is_empty());
    let x = UnitVector::new_normalize(Vector::new(1.0, 1e-3, 2e-3));
    assert_eq!(f.cm.line_crossings(&center(), &x).len(), 4);
}

#[test]
fn line_through_vertices_and_edges_counts_once() {
    // A line along a grid row of the torus passes exactly through vertices and edges, where up
    // to six triangles are hit at one point: each crossing must count once.
    let f = fixture();
    let v = f.mesh.vertices_mm[7];
    let w = f.mesh.vertices_mm[7 + 60 * 30];
    let dir = UnitVector::new_normalize(w - v);
    let ts = f.cm.line_crossings(&v, &dir);
    assert_eq!(ts.len() % 2, 0, "{ts:?}");
    assert_eq!(ts.iter().filter(|t| t.abs() < 1e-9).count(), 1, "{ts:?}");
    assert!(ts.windows(2).all(|w| w[1] - w[0] >= 1e-9), "{ts:?}");
}

#[test]
fn open_mesh_is_not_closed() {
    let mut mesh = fixture().mesh.clone();
    mesh.triangles.pop();
    let cm = ClearanceMesh::new(&mesh);
    assert!(!cm.is_closed());
    assert!(!cm.contains_point(&(center() + Vector::new(MAJOR_MM, 0.0, 0.0))));
    // Distances still work on open surfaces.
    let p = center() + Vector::new(0.0, 0.0, 40.0);
    assert!((cm.distance_to_point(&p) - brute::distance_to_point(&mesh, &p)).abs() < 1e-12);
    assert!(cm.memory_bytes() > mesh.triangles.len() * 72);
}

/// Small deterministic generator (splitmix64) for the sampled tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
    fn unit(&mut self) -> Vector {
        unit(self.range(-1.0, 1.0), self.range(0.0, 2.0 * PI))
    }
}

/// The primitive's oracle: segment-triangle distance against the minimum over 2000 samples of
/// the segment of the point-triangle distance. Sampling can only overestimate, by at most half
/// the sample spacing.
#[test]
fn segment_triangle_distance_matches_dense_sampling() {
    let mut rng = Rng(7);
    for case in 0..400 {
        let c = center() + rng.unit() * rng.range(0.0, 20.0);
        let scale = rng.range(0.5, 15.0);
        let tri = [
            c + rng.unit() * scale,
            c + rng.unit() * scale,
            c + rng.unit() * scale,
        ];
        let a = c + rng.unit() * rng.range(0.0, 30.0);
        let b = a + rng.unit() * rng.range(0.0, 60.0);
        let exact = segment_triangle_distance(&a, &b, &tri);
        let n = 2000;
        let sampled = (0..=n)
            .map(|k| point_triangle_distance(&(a + (b - a) * (k as f64 / n as f64)), &tri))
            .fold(f64::INFINITY, f64::min);
        let half_step = (b - a).norm() / n as f64 / 2.0;
        assert!(
            exact <= sampled + 1e-9 && sampled <= exact + half_step + 1e-9,
            "case {case}: exact {exact} sampled {sampled} (step/2 {half_step})"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The real vertebra.
// ---------------------------------------------------------------------------------------------

const ANATOMY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/anatomy");

/// Read a binary STL and weld vertices by exact coordinate equality.
fn load_stl(path: &str) -> TriMesh {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let reader = stl_io::create_stl_reader(&mut file).expect("STL header");
    let mut index: HashMap<[u32; 3], u32> = HashMap::new();
    let mut vertices = Vec::new();
    let mut triangles = Vec::new();
    for tri in reader {
        let tri = tri.expect("STL triangle");
        let t = tri.vertices.map(|v| {
            let key = v.0.map(f32::to_bits);
            *index.entry(key).or_insert_with(|| {
                vertices.push(Point::new(v.0[0] as f64, v.0[1] as f64, v.0[2] as f64));
                (vertices.len() - 1) as u32
            })
        });
        triangles.push(t);
    }
    TriMesh::new(vertices, triangles)
}

/// The L3 mesh, validated, or `None` (after saying so) when the shared anatomy is absent.
fn l3() -> Option<TriMesh> {
    if !std::path::Path::new(ANATOMY).exists() {
        let msg = "SKIPPED: ../shared/anatomy not found";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        println!("{msg}");
        return None;
    }
    let mesh = load_stl(&format!("{ANATOMY}/mean-lumbar-l2-l5/L3.stl"));
    let check = MeshCheck {
        closed: true,
        size_range_mm: Some(VERTEBRA_SIZE_RANGE_MM),
        winding: WindingPolicy::Refuse,
        max_triangles: 2_000_000,
    };
    let (mesh, fix) = validate_mesh(mesh, &check).expect("L3 is a valid closed vertebra");
    assert_eq!(fix, None);
    assert!(mesh.signed_volume_mm3() > 0.0);
    Some(mesh)
}

/// Area-weighted vertex normals.
fn vertex_normals(mesh: &TriMesh) -> Vec<Vector> {
    let mut n = vec![Vector::zeros(); mesh.vertices_mm.len()];
    for (i, t) in mesh.triangles.iter().enumerate() {
        let [a, b, c] = mesh.triangle(i);
        let f = (b - a).cross(&(c - a));
        for &k in t {
            n[k as usize] += f;
        }
    }
    n.into_iter().map(|v| v.normalize()).collect()
}

/// `count` segments near the L3 surface: 100 mm long, tangent, 0.5-6 mm off a vertex.
fn l3_near_segments(mesh: &TriMesh, rng: &mut Rng, count: usize) -> Vec<(Point, Point)> {
    let normals = vertex_normals(mesh);
    (0..count)
        .map(|_| {
            let k = (rng.next() * mesh.vertices_mm.len() as f64) as usize;
            let (p, n) = (mesh.vertices_mm[k], normals[k]);
            let t = n.cross(&rng.unit()).normalize();
            let mid = p + n * rng.range(0.5, 6.0);
            (mid - t * 50.0, mid + t * 50.0)
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(shared_anatomy),
    ignore = "needs ../shared/anatomy next to the repository"
)]
fn l3_vertebra_bvh_matches_brute() {
    let Some(mesh) = l3() else { return };
    let cm = ClearanceMesh::new(&mesh);
    assert!(cm.is_closed());
    let bb = mesh.bounding_box();
    let mut rng = Rng(42);
    let random_point = |rng: &mut Rng| {
        Point::new(
            rng.range(bb.min.x - 20.0, bb.max.x + 20.0),
            rng.range(bb.min.y - 20.0, bb.max.y + 20.0),
            rng.range(bb.min.z - 20.0, bb.max.z + 20.0),
        )
    };
    let mut positive = 0;
    for _ in 0..100 {
        let a = random_point(&mut rng);
        let b = a + rng.unit() * rng.range(1.0, 120.0);
        let (fast, slow) = (
            cm.distance_to_segment(&a, &b),
            brute::distance_to_segment(&mesh, &a, &b),
        );
        assert!((fast - slow).abs() <= 1e-9, "bvh {fast} brute {slow}");
        positive += usize::from(slow > 0.0);
    }
    for (a, b) in l3_near_segments(&mesh, &mut rng, 100) {
        let (fast, slow) = (
            cm.distance_to_segment(&a, &b),
            brute::distance_to_segment(&mesh, &a, &b),
        );
        assert!((fast - slow).abs() <= 1e-9, "bvh {fast} brute {slow}");
        positive += usize::from(slow > 0.0);
    }
    assert!(
        positive >= 40,
        "only {positive} of 200 segments miss the bone"
    );
    let mut inside = 0;
    for _ in 0..200 {
        let p = random_point(&mut rng);
        assert!((cm.distance_to_point(&p) - brute::distance_to_point(&mesh, &p)).abs() <= 1e-9);
        if brute::distance_to_point(&mesh, &p) > 1e-6 {
            let c = brute::contains_point(&mesh, &p);
            assert_eq!(cm.contains_point(&p), c, "{p}");
            inside += usize::from(c);
        }
    }
    assert!(
        inside > 5,
        "only {inside} random points inside the vertebra"
    );
}

/// One-off timing of `distance_to_segment` on L3 (run with `--release -- --ignored --nocapture`).
#[test]
#[ignore]
fn l3_timing() {
    let Some(mesh) = l3() else { return };
    let build = std::time::Instant::now();
    let cm = ClearanceMesh::new(&mesh);
    println!(
        "L3: {} triangles, BVH build {:?}, {} bytes",
        mesh.triangles.len(),
        build.elapsed(),
        cm.memory_bytes()
    );
    let mut rng = Rng(1);
    let segs = l3_near_segments(&mesh, &mut rng, 4000);
    let mut times = Vec::new();
    let mut dists = Vec::new();
    for (a, b) in &segs {
        let t = std::time::Instant::now();
        let d = cm.distance_to_segment(a, b);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        dists.push(d);
    }
    let mut sel: Vec<f64> = times
        .iter()
        .zip(&dists)
        .filter(|(_, &d)| (1.0..=5.0).contains(&d))
        .map(|(&t, _)| t)
        .collect();
    sel.sort_by(f64::total_cmp);
    times.sort_by(f64::total_cmp);
    println!(
        "distance_to_segment, 100 mm, 1-5 mm clearance: n={} median {:.4} ms, p90 {:.4} ms; all: median {:.4} ms",
        sel.len(),
        sel[sel.len() / 2],
        sel[sel.len() * 9 / 10],
        times[times.len() / 2]
    );
    let (a, b) = segs[0];
    let t = std::time::Instant::now();
    for _ in 0..20 {
        std::hint::black_box(brute::distance_to_segment(&mesh, &a, &b));
    }
    println!("brute: {:.3} ms", t.elapsed().as_secs_f64() * 1e3 / 20.0);
    let t = std::time::Instant::now();
    let dir = UnitVector::new_normalize(Vector::new(0.0, 1.0, 0.0));
    let bb = mesh.bounding_box();
    let mut n = 0;
    for k in 0..10_000 {
        let (sx, sz) = ((k % 100) as f64 / 100.0, (k / 100) as f64 / 100.0);
        let o = Point::new(
            bb.min.x + (bb.max.x - bb.min.x) * sx,
            0.0,
            bb.min.z + (bb.max.z - bb.min.z) * sz,
        );
        n += cm.line_crossings(&o, &dir).len();
    }
    println!(
        "line_crossings: {:.4} ms per line ({n} crossings over 10000 lines)",
        t.elapsed().as_secs_f64() * 1e3 / 10_000.0
    );
}

/// An outward-wound cube `[0, s]^3` moved by `o` (each face split along a diagonal).
fn cube(s: f64, o: Point) -> TriMesh {
    let v = |x: f64, y: f64, z: f64| o + Vector::new(x, y, z) * s;
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

#[test]
fn crossings_at_shared_edges_count_once_and_touches_not_at_all() {
    let s = 30.0;
    let o = center();
    let mesh = cube(s, o);
    let cm = ClearanceMesh::new(&mesh);
    assert!(cm.is_closed());
    // Along z through the bottom and top faces' diagonals (shared edges 0-2 and 4-6).
    let start = o + Vector::new(s / 2.0, s / 2.0, -10.0);
    let z = UnitVector::new_normalize(Vector::z());
    let ts = cm.line_crossings(&start, &z);
    assert_eq!(ts.len(), 2, "{ts:?}");
    assert!(
        (ts[0] - 10.0).abs() < 1e-9 && (ts[1] - 40.0).abs() < 1e-9,
        "{ts:?}"
    );
    // Through a body diagonal: enters and leaves at cube corners shared by 3-6 triangles.
    let diag = UnitVector::new_normalize(Vector::new(1.0, 1.0, 1.0));
    let ts = cm.line_crossings(&o, &diag);
    assert_eq!(ts.len(), 2, "{ts:?}");
    assert!(ts[0].abs() < 1e-9 && (ts[1] - s * 3f64.sqrt()).abs() < 1e-9);
    // Touching the vertical edge 2-6 from outside at 45 degrees: no crossing.
    let touch = UnitVector::new_normalize(Vector::new(1.0, -1.0, 0.0));
    let ts = cm.line_crossings(&(o + Vector::new(s, s, s / 2.0)), &touch);
    assert!(ts.is_empty(), "{ts:?}");
    // Containment from points whose first ray direction is not special, and from the centre.
    assert!(cm.contains_point(&(o + Vector::new(s / 2.0, s / 2.0, s / 2.0))));
    assert!(cm.contains_point(&(o + Vector::new(1.0, 29.0, 0.5))));
    assert!(!cm.contains_point(&(o + Vector::new(-1.0, 15.0, 15.0))));
    assert!((cm.distance_to_point(&(o + Vector::new(-1.0, 15.0, 15.0))) - 1.0).abs() < 1e-12);
    let d = cm.distance_to_segment(
        &(o + Vector::new(-2.0, -5.0, 15.0)),
        &(o + Vector::new(-2.0, 50.0, 15.0)),
    );
    assert!((d - 2.0).abs() < 1e-12, "{d}");
}
