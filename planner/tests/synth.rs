//! Facts about the synthetic vertebrae: topology, orientation, pedicle placement, posing, wedge
//! fractures and determinism.

mod common;

use std::collections::HashMap;

use kyphoplan_planner::anatomy::{Level, Role, Side};
use kyphoplan_planner::math::{Point, Pose, Real, Vector};
use kyphoplan_planner::mesh::TriMesh;
use kyphoplan_planner::synth::{self, SyntheticVertebra, VertebraParams};

const LEVELS: [Level; 17] = synth::ALL_MEAN_LEVELS;

/// Every undirected edge in exactly two triangles, each directed edge exactly once.
fn check_closed_manifold(mesh: &TriMesh) -> Result<usize, String> {
    let mut directed: HashMap<(u32, u32), usize> = HashMap::new();
    for t in &mesh.triangles {
        if t[0] == t[1] || t[1] == t[2] || t[0] == t[2] {
            return Err(format!("degenerate triangle {t:?}"));
        }
        for e in 0..3 {
            *directed.entry((t[e], t[(e + 1) % 3])).or_insert(0) += 1;
        }
    }
    let mut undirected = 0;
    for (&(a, b), &n) in &directed {
        if n != 1 {
            return Err(format!("directed edge {a}->{b} used {n} times"));
        }
        if !directed.contains_key(&(b, a)) {
            return Err(format!("edge {a}-{b} has one triangle (hole)"));
        }
        if a < b {
            undirected += 1;
        }
    }
    Ok(undirected)
}

fn components(mesh: &TriMesh) -> usize {
    let mut parent: Vec<usize> = (0..mesh.vertices_mm.len()).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for t in &mesh.triangles {
        for e in 1..3 {
            let a = find(&mut parent, t[0] as usize);
            let b = find(&mut parent, t[e] as usize);
            parent[a] = b;
        }
    }
    let mut roots: Vec<usize> = mesh
        .triangles
        .iter()
        .map(|t| find(&mut parent, t[0] as usize))
        .collect();
    roots.sort();
    roots.dedup();
    roots.len()
}

/// Möller-Trumbore: distance along the ray to the triangle, if hit.
fn ray_triangle(o: &Point, d: &Vector, tri: &[Point; 3]) -> Option<Real> {
    let e1 = tri[1] - tri[0];
    let e2 = tri[2] - tri[0];
    let p = d.cross(&e2);
    let det = e1.dot(&p);
    if det.abs() < 1e-14 {
        return None;
    }
    let inv = 1.0 / det;
    let s = o - tri[0];
    let u = s.dot(&p) * inv;
    if !(0.0..=1.0).contains(&u) {
        return None;
    }
    let q = s.cross(&e1);
    let v = d.dot(&q) * inv;
    if v < 0.0 || u + v > 1.0 {
        return None;
    }
    let t = e2.dot(&q) * inv;
    (t > 0.0).then_some(t)
}

/// Ray-parity point-in-mesh, along an irrational-ish direction.
fn inside(mesh: &TriMesh, p: &Point) -> bool {
    let d = Vector::new(0.5773, 0.5771, 0.5776).normalize();
    let hits = (0..mesh.triangles.len())
        .filter(|&i| ray_triangle(p, &d, &mesh.triangle(i)).is_some())
        .count();
    hits % 2 == 1
}

/// Distance from `o` (inside) along `d` to the first surface crossing.
fn first_hit(mesh: &TriMesh, o: &Point, d: &Vector) -> Real {
    (0..mesh.triangles.len())
        .filter_map(|i| ray_triangle(o, d, &mesh.triangle(i)))
        .fold(Real::INFINITY, Real::min)
}

/// In-plane lateral perpendicular of a pedicle axis (horizontal in the vertebra frame).
fn lateral(v: &SyntheticVertebra, side: usize) -> Vector {
    let ax = &v.pedicle_axes[side];
    let up = v.vertebra_to_lps.rotation * Vector::z();
    let l = ax.direction.cross(&up).normalize();
    // Point away from the midline: the left pedicle's lateral is +x of the vertebra frame.
    let left = v.vertebra_to_lps.rotation * Vector::x();
    if l.dot(&left) * ax.side.sign() > 0.0 {
        l
    } else {
        -l
    }
}

fn mean_vertebra(level: Level) -> SyntheticVertebra {
    synth::vertebra(&VertebraParams::mean(level), &Pose::identity())
}

#[test]
fn every_level_is_a_closed_outward_genus_one_solid() {
    for level in LEVELS {
        let t0 = std::time::Instant::now();
        let v = mean_vertebra(level);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let m = &v.mesh;
        let edges = check_closed_manifold(m).unwrap_or_else(|e| panic!("{level}: {e}"));
        let euler = m.vertices_mm.len() as i64 - edges as i64 + m.triangles.len() as i64;
        let vol = m.signed_volume_mm3();
        let ext = m.bounding_box().extents_mm();
        println!(
            "{level}: {} triangles, {:.0} ms, volume {:.0} mm3, extents {:.1} x {:.1} x {:.1}",
            m.triangles.len(),
            ms,
            vol,
            ext.x,
            ext.y,
            ext.z
        );
        assert!(vol > 0.0, "{level}: not outward ({vol})");
        assert_eq!(components(m), 1, "{level}: several components");
        assert_eq!(
            euler, 0,
            "{level}: Euler characteristic {euler}, not genus 1"
        );
        let largest = ext.x.max(ext.y).max(ext.z);
        assert!(
            (40.0..=120.0).contains(&largest),
            "{level}: extent {largest}"
        );
        // T1, the smallest body (27 x 16.5 x 15.5 mm), has about 14,000 at 1 mm.
        assert!(
            (10_000..=80_000).contains(&m.triangles.len()),
            "{level}: {} triangles",
            m.triangles.len()
        );
    }
}

#[test]
fn pedicles_are_where_the_axes_say() {
    for level in LEVELS {
        let v = mean_vertebra(level);
        let canal_center = Point::new(
            0.0,
            0.5 * (v.pedicle_axes[0].isthmus_center.y + v.pedicle_axes[1].isthmus_center.y),
            v.pedicle_axes[0].isthmus_center.z,
        );
        assert!(
            !inside(&v.mesh, &canal_center),
            "{level}: the canal centre is bone"
        );
        for s in 0..2 {
            let ax = v.pedicle_axes[s];
            let c = ax.isthmus_center;
            let d = ax.direction.into_inner();
            for t in [-3.0, -1.5, 0.0, 1.5, 3.0] {
                assert!(
                    inside(&v.mesh, &(c + d * t)),
                    "{level} {}: axis point at {t} mm outside",
                    ax.side
                );
            }
            let l = lateral(&v, s);
            let w = ax.width_mm;
            for sign in [1.0, -1.0] {
                let near = c + l * (sign * (0.5 * w - 0.6));
                let far = c + l * (sign * (0.5 * w + 0.6));
                assert!(
                    inside(&v.mesh, &near),
                    "{level} {}: wall {sign} thin",
                    ax.side
                );
                assert!(
                    !inside(&v.mesh, &far),
                    "{level} {}: wall {sign} thick",
                    ax.side
                );
            }
            // Measured width through the isthmus centre.
            let width = first_hit(&v.mesh, &c, &l) + first_hit(&v.mesh, &c, &-l);
            println!(
                "{level} {}: isthmus width {width:.2} mm (parameter {w})",
                ax.side
            );
            assert!((width - w).abs() < 0.5, "{level}: measured width {width}");
            // The isthmus is the narrowest section along the axis: 3 mm towards the body and 3
            // mm towards the arch, the bone is at least as wide.
            for t in [-4.0, 4.0] {
                let p = c + d * t;
                let wt = first_hit(&v.mesh, &p, &l) + first_hit(&v.mesh, &p, &-l);
                assert!(
                    wt >= width - 0.3,
                    "{level} {}: {wt} mm at {t} mm, narrower than the isthmus",
                    ax.side
                );
            }
        }
        // The pedicle axes converge anteriorly (or are parallel at T12).
        let [l, r]: [_; 2] = v.pedicle_axes.into();
        assert_eq!(l.side, Side::Left);
        assert!(l.direction.y < 0.0 && r.direction.y < 0.0);
        assert!(l.direction.x <= 1e-12 && r.direction.x >= -1e-12);
    }
}

#[test]
fn posing_moves_everything_rigidly() {
    let params = VertebraParams::mean(Level::L3);
    let pose = Pose::new(
        Vector::new(12.0, -40.0, 310.5),
        Vector::new(0.2, -0.35, 0.6),
    );
    let posed = synth::vertebra(&params, &pose);
    let plain = synth::vertebra(&params, &Pose::identity());
    let moved = plain.mesh.transformed(&pose);
    assert_eq!(posed.mesh.triangles, moved.triangles);
    for (a, b) in posed.mesh.vertices_mm.iter().zip(&moved.vertices_mm) {
        assert!((a - b).norm() < 1e-9);
    }
    for s in 0..2 {
        let (a, b) = (posed.pedicle_axes[s], plain.pedicle_axes[s]);
        assert!((a.isthmus_center - pose * b.isthmus_center).norm() < 1e-9);
        assert!(
            (a.direction.into_inner() - pose.rotation * b.direction.into_inner()).norm() < 1e-12
        );
    }
    assert!(
        (posed.body_center_lps - pose.translation.vector)
            .coords
            .norm()
            < 1e-9
    );
}

/// Height of the bone in a slab near the anterior wall, on the midline.
fn anterior_height(mesh: &TriMesh) -> Real {
    let min_y = mesh
        .vertices_mm
        .iter()
        .map(|p| p.y)
        .fold(Real::INFINITY, Real::min);
    let (lo, hi) = mesh
        .vertices_mm
        .iter()
        .filter(|p| p.y < min_y + 3.0 && p.x.abs() < 5.0)
        .fold((Real::INFINITY, Real::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.z), hi.max(p.z))
        });
    hi - lo
}

#[test]
fn wedge_fracture_lowers_the_anterior_wall() {
    let mut params = VertebraParams::mean(Level::L1);
    let normal = anterior_height(&synth::vertebra(&params, &Pose::identity()).mesh);
    params.anterior_height_loss_fraction = 0.4;
    let v = synth::vertebra(&params, &Pose::identity());
    let wedged = anterior_height(&v.mesh);
    let ratio = wedged / normal;
    println!("anterior height {normal:.2} -> {wedged:.2} mm (ratio {ratio:.3})");
    assert!((ratio - 0.6).abs() < 0.06, "ratio {ratio}");
    assert!(check_closed_manifold(&v.mesh).is_ok());
}

#[test]
fn generation_is_deterministic() {
    let params = VertebraParams::mean(Level::L4);
    let a = synth::vertebra(&params, &Pose::identity());
    let b = synth::vertebra(&params, &Pose::identity());
    assert_eq!(a.mesh.triangles, b.mesh.triangles);
    let bits = |m: &TriMesh| -> Vec<[u64; 3]> {
        m.vertices_mm
            .iter()
            .map(|p| [p.x.to_bits(), p.y.to_bits(), p.z.to_bits()])
            .collect()
    };
    assert_eq!(bits(&a.mesh), bits(&b.mesh));
}

#[test]
fn soft_tissue_is_closed_and_clear_of_the_pedicle() {
    let v = mean_vertebra(Level::L2);
    for tube in std::iter::once(&v.canal).chain(v.nerve_roots.iter()) {
        check_closed_manifold(tube).unwrap();
        assert!(tube.signed_volume_mm3() > 0.0);
    }
    for s in 0..2 {
        let c = v.pedicle_axes[s].isthmus_center;
        assert!(!inside(&v.canal, &c));
        assert!(!inside(&v.nerve_roots[s], &c));
        // The root lies below the pedicle.
        let top = v.nerve_roots[s]
            .vertices_mm
            .iter()
            .map(|p| p.z)
            .fold(Real::NEG_INFINITY, Real::max);
        assert!(top < c.z - 0.5 * v.params.pedicle_height_mm);
    }
}

#[test]
fn spine_stacks_levels_with_roles() {
    let (anatomy, verts) = synth::spine(&[Level::L2, Level::L3], &Pose::identity(), true);
    assert_eq!(verts.len(), 2);
    let names: Vec<&str> = anatomy.structures.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "L2.stl",
            "L3.stl",
            "canal",
            "L2_root_left",
            "L2_root_right",
            "L3_root_left",
            "L3_root_right"
        ]
    );
    assert_eq!(
        anatomy.structures[1].role,
        Role::Vertebra { level: Level::L3 }
    );
    assert_eq!(anatomy.structures[2].role, Role::SpinalCanal);
    let gap = verts[0].body_center_lps.z - verts[1].body_center_lps.z;
    let expected = 0.5 * (verts[0].params.body_height_mm + verts[1].params.body_height_mm)
        + synth::DISC_HEIGHT_MM;
    assert!((gap - expected).abs() < 1e-9);
    // The bodies do not overlap.
    let low_top = verts[1].mesh.bounding_box().max.z;
    let up_body_bottom = verts[0].body_center_lps.z - 0.5 * verts[0].params.body_height_mm;
    assert!(low_top < up_body_bottom);
    check_closed_manifold(&anatomy.structures[2].mesh).unwrap();
    let demo = synth::demo_anatomy();
    assert_eq!(demo.name, "built-in-demo");
    assert_eq!(demo.structures.len(), 5);
}

#[test]
fn soft_tissue_does_not_enter_the_bone_and_triangles_are_not_degenerate() {
    for level in [Level::T11, Level::L1, Level::L3, Level::L5] {
        let v = mean_vertebra(level);
        let h = 0.5 * v.params.body_height_mm;
        let mut tested = 0;
        for p in v.canal.vertices_mm.iter().filter(|p| p.z.abs() < h) {
            assert!(!inside(&v.mesh, p), "{level}: canal point {p} in bone");
            tested += 1;
        }
        for root in &v.nerve_roots {
            for p in &root.vertices_mm {
                assert!(!inside(&v.mesh, p), "{level}: root point {p} in bone");
                tested += 1;
            }
        }
        assert!(tested > 100);
        let ext = v.canal.bounding_box().extents_mm();
        println!(
            "{level}: dural sac {:.1} x {:.1} mm (canal {} x {})",
            ext.x, ext.y, v.params.canal_width_mm, v.params.canal_depth_mm
        );
        assert!(ext.x > 0.6 * v.params.canal_width_mm && ext.y > 0.5 * v.params.canal_depth_mm);
        let (mut min_area, mut min_edge) = (Real::INFINITY, Real::INFINITY);
        for i in 0..v.mesh.triangles.len() {
            let [a, b, c] = v.mesh.triangle(i);
            min_area = min_area.min(0.5 * (b - a).cross(&(c - a)).norm());
            min_edge = min_edge
                .min((b - a).norm())
                .min((c - b).norm())
                .min((a - c).norm());
        }
        println!("{level}: smallest triangle {min_area:.2e} mm2, shortest edge {min_edge:.3} mm");
        assert!(min_area > 1e-6 && min_edge > 1e-3);
    }
}

/// Pairs of triangles without a shared vertex where an edge of one crosses the other.
fn self_intersections(mesh: &TriMesh) -> usize {
    let grid = common::triangle_grid(mesh, 2.0);
    let mut pairs = std::collections::HashSet::new();
    for list in grid.values() {
        for (n, &i) in list.iter().enumerate() {
            for &j in &list[n + 1..] {
                let (ti, tj) = (mesh.triangles[i], mesh.triangles[j]);
                if ti.iter().any(|v| tj.contains(v)) {
                    continue;
                }
                let (pi, pj) = (mesh.triangle(i), mesh.triangle(j));
                let crosses = |a: &[Point; 3], b: &[Point; 3]| {
                    (0..3).any(|e| {
                        let (p, q) = (a[e], a[(e + 1) % 3]);
                        ray_triangle(&p, &(q - p), b).is_some_and(|t| t < 1.0)
                    })
                };
                if crosses(&pi, &pj) || crosses(&pj, &pi) {
                    pairs.insert((i.min(j), i.max(j)));
                }
            }
        }
    }
    pairs.len()
}

#[test]
fn bone_surfaces_do_not_self_intersect() {
    // The detector finds a crossing pair.
    let crossing = TriMesh::new(
        vec![
            Point::new(0.0, 0.0, 0.0),
            Point::new(4.0, 0.0, 0.0),
            Point::new(0.0, 4.0, 0.0),
            Point::new(1.0, 1.0, -1.0),
            Point::new(1.0, 1.0, 1.0),
            Point::new(3.0, 3.0, 0.5),
        ],
        vec![[0, 1, 2], [3, 4, 5]],
    );
    assert_eq!(self_intersections(&crossing), 1);
    for level in LEVELS {
        let v = mean_vertebra(level);
        assert_eq!(self_intersections(&v.mesh), 0, "{level}");
    }
    let mut params = VertebraParams::mean(Level::L2);
    params.anterior_height_loss_fraction = 0.5;
    let v = synth::vertebra(&params, &Pose::identity());
    assert_eq!(self_intersections(&v.mesh), 0, "wedged L2");
}
