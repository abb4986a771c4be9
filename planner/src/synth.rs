//! Synthetic anatomy: parametric vertebrae T1..L5 from published morphometry, meshed as
//! watertight surfaces, with their pedicle axes known by construction; at thoracic levels, on
//! request, the ribs (head at the costovertebral joint, neck to the transverse process tip) and
//! a pleura slab in front of them ([`thorax`], [`spine_with`]). The built-in anatomy of
//! `kyphoplan demo` and the ground truth of the planner's tests.
//!
//! Each vertebra is an implicit solid (negative inside, a signed-distance-like field) built in
//! the *vertebra frame*: origin at the body centre, +x patient left, +y posterior, +z superior
//! (LPS-aligned when unposed). It is sampled on a regular grid and meshed with marching
//! tetrahedra ([`crate::mesher`]) (Freudenthal split of each cube into 6 tetrahedra), which yields a closed,
//! 2-manifold, outward-wound surface. The solid is a ring of bone around the vertebral foramen
//! (genus 1): body, two pedicles, articular pillars, laminae, spinous and transverse processes,
//! superior and inferior articular processes. Each pedicle is an elliptic cylinder of the given
//! outer width and height; its narrowest section (the isthmus) lies free between the body and
//! the posterior arch, so the pedicle axis is the best straight corridor.

use serde::{Deserialize, Serialize};

use crate::anatomy::{AnatomyInput, Level, PatientFrame, PerSide, Role, Side, Structure};
use crate::math::{Point, Pose, Real, Translation3, UnitVector, Vector};
use crate::mesh::TriMesh;
use crate::mesher::{marching_tetrahedra, ring, tube_through_rings};

/// The levels T10..L5, cranial to caudal: the levels the generator covered before the thoracic
/// table, over which the case library (`kyphoplan-cases`) and the lumbar tests iterate. Every
/// level of [`ALL_MEAN_LEVELS`] has mean morphometry in [`VertebraParams::mean`].
pub const MEAN_LEVELS: [Level; 8] = [
    Level::T10,
    Level::T11,
    Level::T12,
    Level::L1,
    Level::L2,
    Level::L3,
    Level::L4,
    Level::L5,
];

/// The thoracic levels T1..T12, cranial to caudal.
pub const THORACIC_LEVELS: [Level; 12] = *Level::ALL
    .first_chunk::<12>()
    .expect("Level::ALL starts with T1..T12");

/// Every level with its own mean morphometry in [`VertebraParams::mean`]: T1..L5.
pub const ALL_MEAN_LEVELS: [Level; 17] = *Level::ALL
    .first_chunk::<17>()
    .expect("Level::ALL runs T1..L5, then S1");

/// The published sources of the thoracic rows of [`VertebraParams::mean`] (see there for which
/// number comes from where).
pub const THORACIC_MORPHOMETRY_SOURCES: &str = "Kaur K, Singh R, Prasath V, Magu S, Tanwar M. \
Computed tomographic-based morphometric study of thoracic spine. J Clin Orthop Trauma 2016;7:101 \
(PMC4857161); Panjabi MM et al. Thoracic human vertebrae: quantitative three-dimensional anatomy. \
Spine 1991;16:888; Lien SB et al. 2007 (sagittal angle \
largest at T2); Egwu OA et al. J Anat Soc India 2019;68:110 (posterior body heights); \
Demiroz S, Erdem S. Turk Neurosurg, doi 10.5137/1019-5149.JTN.26848-19.2 (T12 transverse angle)";

/// Shape parameters of one synthetic vertebra. Lengths in millimetres, angles in degrees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VertebraParams {
    /// The vertebral level these parameters describe.
    pub level: Level,
    /// Lateral (left-right) width of the vertebral body.
    pub body_width_mm: Real,
    /// Antero-posterior depth of the vertebral body.
    pub body_depth_mm: Real,
    /// Posterior body height (superior to inferior endplate at the posterior wall).
    pub body_height_mm: Real,
    /// Wedge fracture: fraction (0..0.6) of the body height lost at the anterior wall.
    pub anterior_height_loss_fraction: Real,
    /// Outer (cortical) transverse width of the pedicle at its isthmus.
    pub pedicle_width_mm: Real,
    /// Outer transverse width of the right pedicle when it differs from the left's
    /// (`pedicle_width_mm`): an asymmetric vertebra (a dysplastic or sclerotic pedicle). The
    /// narrower pedicle keeps the same axis and centre. `None`: both are `pedicle_width_mm`.
    pub right_pedicle_width_mm: Option<Real>,
    /// Outer (cortical) height of the pedicle at its isthmus.
    pub pedicle_height_mm: Real,
    /// Transverse (medial) angle of the pedicle axis: positive converges towards the midline
    /// anteriorly.
    pub pedicle_medial_angle_deg: Real,
    /// Sagittal angle of the pedicle axis: positive points inferiorly as it runs anteriorly.
    pub pedicle_sagittal_angle_deg: Real,
    /// Length of the pedicle along its axis, from the posterior body wall to the articular
    /// pillar; the isthmus is at its middle.
    pub pedicle_length_mm: Real,
    /// Interpedicular width of the vertebral foramen (canal), at the isthmus.
    pub canal_width_mm: Real,
    /// Antero-posterior depth of the vertebral foramen (posterior body wall to laminae).
    pub canal_depth_mm: Real,
    /// Thickness of the laminae.
    pub lamina_thickness_mm: Real,
    /// Length of each transverse process from the articular pillar.
    pub transverse_process_length_mm: Real,
    /// Length of the spinous process from the laminar junction.
    pub spinous_process_length_mm: Real,
    /// How far the superior articular processes rise above the superior endplate.
    pub superior_articular_rise_mm: Real,
    /// How far the inferior articular processes reach below the inferior endplate.
    pub inferior_articular_drop_mm: Real,
    /// Grid spacing of the marching-tetrahedra mesher.
    pub mesh_resolution_mm: Real,
}

impl VertebraParams {
    /// The outer transverse width of the pedicle of `side`.
    pub fn pedicle_width_on(&self, side: Side) -> Real {
        match (side, self.right_pedicle_width_mm) {
            (Side::Right, Some(w)) => w,
            _ => self.pedicle_width_mm,
        }
    }

    /// Mean morphometry of `level`, T1..L5 (S1 uses L5's numbers, which is not anatomical).
    ///
    /// Lumbar and T10-T12 rows (unchanged since the generator stopped at T10; the case library's
    /// goldens are built on them): clinical.md, Panjabi 1992 / Zindrick 1987 pedicle widths,
    /// Panjabi body and canal sizes, Dickman medial angles.
    ///
    /// T1-T9 rows (see [`THORACIC_MORPHOMETRY_SOURCES`]): pedicle outer width from Kaur 2016
    /// (CT, 600 vertebrae: T1 9.27 mm, T4 4.5 mm, T12 8.31 mm; 62 % of T5 pedicles under 5 mm),
    /// levels between those anchors interpolated monotonically inside the 4.4-5.1 mm T4-T5 range
    /// of clinical.md; transverse (medial) angle from Kaur 2016's T1 35.4 deg falling towards
    /// T10's 5 deg (Kaur's T12 is -9.8 deg, other CT series report +3 deg at T12 (Demiroz and
    /// Erdem, Turk Neurosurg, doi 10.5137/1019-5149.JTN.26848-19.2):
    /// the T12 row keeps 0 deg inside that spread); sagittal angle largest at T2 (Lien 2007);
    /// body width, depth and posterior height, pedicle height and canal size growing from T1 to
    /// T10 as in Panjabi 1991 (narrowest canal T3-T9, "Thoracic human vertebrae: quantitative
    /// three-dimensional anatomy", Spine 16:888) with posterior body heights of 15.5-20.5 mm
    /// (Egwu 2019: 17.6-20.5 mm at T2-T9); transverse process length rising from T1 to T7 then
    /// falling (Kaur 2016: 23.5 mm at T1, 31.2 mm at T7, 12.1 mm at T12; the generator measures
    /// it from the articular pillar, so the values are a few mm shorter). These are model
    /// values of a plausible mean spine, not a population's means: a planner measures each mesh.
    pub fn mean(level: Level) -> VertebraParams {
        // Rows: T1..L5 in order (`Level::index`). Columns: body W, D, H; pedicle W, H, medial,
        // sagittal, length; canal W, D; lamina T; transverse process L; spinous L.
        #[rustfmt::skip]
        const TABLE: [[Real; 13]; 17] = [
            // T1
            [27.0, 16.5, 15.5,  9.3,  9.5, 35.4, 12.0, 10.0, 21.0, 14.5, 5.5, 22.0, 30.0],
            // T2
            [27.5, 18.0, 16.5,  7.6, 10.5, 27.0, 15.0, 10.5, 18.5, 15.0, 5.5, 24.0, 30.0],
            // T3
            [28.0, 20.0, 17.0,  5.9, 10.5, 20.0, 14.0, 11.0, 17.0, 15.0, 5.5, 25.0, 30.0],
            // T4
            [29.0, 22.0, 17.5,  4.5, 10.5, 15.0, 13.0, 11.0, 16.5, 15.0, 5.5, 26.0, 30.0],
            // T5
            [30.0, 23.5, 18.0,  4.8, 10.8, 12.5, 12.0, 11.0, 16.5, 15.0, 5.5, 26.0, 30.0],
            // T6
            [31.0, 25.0, 18.5,  5.1, 11.0, 11.0, 12.0, 11.5, 16.5, 15.0, 5.5, 26.0, 30.0],
            // T7
            [32.0, 26.0, 19.0,  5.4, 11.3, 10.0, 11.0, 11.5, 16.8, 15.0, 5.5, 26.0, 30.0],
            // T8
            [33.0, 27.0, 19.5,  5.8, 11.8,  8.5, 10.0, 12.0, 17.0, 15.5, 5.5, 24.0, 30.0],
            // T9
            [34.0, 28.0, 20.5,  6.3, 13.0,  7.0,  9.0, 12.0, 17.5, 15.5, 5.5, 21.0, 30.0],
            // T10
            [35.0, 29.0, 21.0,  7.2, 15.0,  5.0, 8.0, 12.0, 18.0, 16.0, 5.5, 18.0, 30.0],
            // T11
            [37.5, 30.5, 22.0,  7.8, 16.5,  3.0, 6.0, 12.0, 20.0, 16.5, 5.5, 14.0, 30.0],
            // T12
            [39.5, 31.5, 22.5,  8.3, 16.0,  0.0, 5.0, 12.0, 22.0, 17.0, 5.5, 12.0, 30.0],
            // L1
            [41.2, 33.0, 23.5,  8.6, 15.4,  7.0, 4.0, 12.0, 23.7, 17.5, 6.0, 16.0, 30.0],
            // L2
            [42.8, 34.0, 23.8,  8.3, 15.0, 10.0, 3.0, 12.0, 23.8, 17.8, 6.0, 20.0, 30.0],
            // L3
            [44.5, 35.5, 24.0, 10.2, 14.9, 15.0, 2.0, 13.0, 24.3, 18.2, 6.0, 24.0, 30.0],
            // L4
            [46.0, 36.5, 23.8, 14.1, 14.8, 20.0, 1.0, 14.0, 25.4, 18.9, 6.0, 20.0, 28.0],
            // L5
            [47.3, 38.0, 23.2, 18.6, 14.2, 27.0, 0.0, 15.0, 27.1, 19.7, 6.0, 18.0, 24.0],
        ];
        let row = level.index().min(Level::L5.index());
        let r = TABLE[row];
        VertebraParams {
            level,
            body_width_mm: r[0],
            body_depth_mm: r[1],
            body_height_mm: r[2],
            anterior_height_loss_fraction: 0.0,
            pedicle_width_mm: r[3],
            right_pedicle_width_mm: None,
            pedicle_height_mm: r[4],
            pedicle_medial_angle_deg: r[5],
            pedicle_sagittal_angle_deg: r[6],
            pedicle_length_mm: r[7],
            canal_width_mm: r[8],
            canal_depth_mm: r[9],
            lamina_thickness_mm: r[10],
            transverse_process_length_mm: r[11],
            spinous_process_length_mm: r[12],
            superior_articular_rise_mm: 3.5,
            inferior_articular_drop_mm: 4.5,
            mesh_resolution_mm: 1.0,
        }
    }

    fn is_thoracic(&self) -> bool {
        self.level <= Level::T12
    }
}

/// One pedicle's axis, known by construction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PedicleAxis {
    /// The patient side of the pedicle.
    pub side: Side,
    /// Centre of the pedicle's narrowest cross-section (LPS, mm).
    pub isthmus_center: Point,
    /// Unit direction of the axis, pointing anteriorly (into the body), LPS.
    pub direction: UnitVector,
    /// Outer transverse width of the pedicle at the isthmus.
    pub width_mm: Real,
}

/// A synthetic vertebra with its soft tissue and ground truth, all in LPS millimetres.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticVertebra {
    /// The level.
    pub level: Level,
    /// The parameters it was built from.
    pub params: VertebraParams,
    /// The bone surface: closed, 2-manifold, outward wound, genus 1.
    pub mesh: TriMesh,
    /// The pose of the vertebra frame (origin body centre, +x left, +y posterior, +z superior).
    pub vertebra_to_lps: Pose,
    /// Left and right pedicle axes.
    pub pedicle_axes: PerSide<PedicleAxis>,
    /// Centre of the vertebral body.
    pub body_center_lps: Point,
    /// The dural sac: a closed elliptic tube filling the foramen shrunk by 1.5 mm, extending
    /// 10 mm above and below the body.
    pub canal: TriMesh,
    /// Left and right exiting nerve roots: closed tubes of 5 mm diameter, just below each
    /// pedicle, running laterally, anteriorly and inferiorly.
    pub nerve_roots: PerSide<TriMesh>,
}

// ---------------------------------------------------------------------------------------------
// Implicit primitives
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Section {
    Ellipse,
    Rect,
}

/// A straight prism along `axis` (length `2 * half_len`, centred at `center`) with an elliptic
/// or rectangular cross-section of semi-axes `r1` along `e1` and `r2` along `e2`, edges rounded
/// by `round_mm`.
#[derive(Clone, Copy, Debug)]
struct Prism {
    center: Vector,
    axis: Vector,
    e1: Vector,
    e2: Vector,
    r1: Real,
    r2: Real,
    half_len: Real,
    section: Section,
    round_mm: Real,
}

/// Approximate signed distance to an ellipse of semi-axes `r1`, `r2` (first order exact on the
/// boundary).
fn ellipse_sd(a: Real, b: Real, r1: Real, r2: Real) -> Real {
    let k = ((a / r1).powi(2) + (b / r2).powi(2)).sqrt();
    let g = ((a / (r1 * r1)).powi(2) + (b / (r2 * r2)).powi(2)).sqrt();
    if g < 1e-12 {
        return -r1.min(r2);
    }
    k * (k - 1.0) / g
}

fn rect_sd(a: Real, b: Real, r1: Real, r2: Real) -> Real {
    let qa = a.abs() - r1;
    let qb = b.abs() - r2;
    qa.max(qb).min(0.0) + (qa.max(0.0).powi(2) + qb.max(0.0).powi(2)).sqrt()
}

/// Extrude a 2-D distance `d2` along an axis with axial distance `dz`, rounding the rim.
fn extrude(d2: Real, dz: Real, r: Real) -> Real {
    let a = d2 + r;
    let b = dz + r;
    a.max(b).min(0.0) + (a.max(0.0).powi(2) + b.max(0.0).powi(2)).sqrt() - r
}

/// Polynomial smooth minimum (union with a fillet of size `k`).
fn smin(a: Real, b: Real, k: Real) -> Real {
    let h = (k - (a - b).abs()).max(0.0) / k;
    a.min(b) - h * h * k * 0.25
}

impl Prism {
    fn from_segment(
        a: Vector,
        b: Vector,
        up: Vector,
        r1: Real,
        r2: Real,
        section: Section,
    ) -> Prism {
        let axis = (b - a).normalize();
        let e1 = axis.cross(&up).normalize();
        let e2 = e1.cross(&axis).normalize();
        Prism {
            center: (a + b) * 0.5,
            axis,
            e1,
            e2,
            r1,
            r2,
            half_len: (b - a).norm() * 0.5,
            section,
            round_mm: 1.0_f64.min(0.5 * r1.min(r2)),
        }
    }

    fn sd(&self, p: &Vector) -> Real {
        let q = p - self.center;
        let t = q.dot(&self.axis);
        let a = q.dot(&self.e1);
        let b = q.dot(&self.e2);
        let r = self.round_mm;
        let d2 = match self.section {
            Section::Ellipse => ellipse_sd(a, b, self.r1, self.r2),
            Section::Rect => rect_sd(a, b, self.r1 - r, self.r2 - r) - r,
        };
        extrude(d2, t.abs() - self.half_len, r)
    }

    fn aabb(&self) -> (Vector, Vector) {
        let ext =
            self.axis.abs() * self.half_len + self.e1.abs() * self.r1 + self.e2.abs() * self.r2;
        (self.center - ext, self.center + ext)
    }
}

/// The implicit solid of one vertebra, in the vertebra frame.
struct Shape {
    body_a: Real,
    body_b: Real,
    body_post_y: Real,
    body_height_post: Real,
    body_height_ant: Real,
    parts: Vec<Prism>,
    blend_mm: Real,
}

/// Derived layout of the posterior elements, in the vertebra frame.
struct Layout {
    /// Posterior body wall (y).
    post_wall_y: Real,
    /// Isthmus centre and anterior unit direction of the left pedicle.
    left_isthmus: Vector,
    left_dir: Vector,
    /// Canal centre (x = 0).
    canal_center: Vector,
    pedicle_z: Real,
}

fn layout(p: &VertebraParams) -> Layout {
    let post_wall_y = 0.42 * p.body_depth_mm;
    let th = p.pedicle_medial_angle_deg.to_radians();
    let ph = p.pedicle_sagittal_angle_deg.to_radians();
    // Left pedicle, pointing anteriorly: towards the midline (-x), anterior (-y), inferior.
    let dir = Vector::new(-th.sin() * ph.cos(), -th.cos() * ph.cos(), -ph.sin());
    let pedicle_z = 0.12 * p.body_height_mm;
    let half = 0.5 * p.pedicle_length_mm;
    // Medial wall of the isthmus on the canal's interpedicular boundary.
    let along_y = half * th.cos() * ph.cos();
    let isthmus = Vector::new(
        0.5 * p.canal_width_mm + 0.5 * p.pedicle_width_mm * th.cos(),
        post_wall_y + along_y,
        pedicle_z,
    );
    Layout {
        post_wall_y,
        left_isthmus: isthmus,
        left_dir: dir,
        canal_center: Vector::new(0.0, post_wall_y + 0.5 * p.canal_depth_mm, pedicle_z),
        pedicle_z,
    }
}

fn mirror_x(v: Vector) -> Vector {
    Vector::new(-v.x, v.y, v.z)
}

impl Shape {
    fn new(p: &VertebraParams) -> Shape {
        let lay = layout(p);
        let z = Vector::z();
        let h = p.body_height_mm;
        let half_len = 0.5 * p.pedicle_length_mm;
        let mut parts = Vec::new();
        for s in [1.0, -1.0] {
            let side = |v: Vector| if s > 0.0 { v } else { mirror_x(v) };
            let iso = side(lay.left_isthmus);
            let dir = side(lay.left_dir);
            let pedicle_width_mm = if s > 0.0 {
                p.pedicle_width_mm
            } else {
                p.pedicle_width_on(Side::Right)
            };
            // Pedicle: from the pillar centre through the isthmus into the body.
            let back = iso - dir * half_len;
            let front = iso + dir * (half_len + 0.25 * p.body_depth_mm);
            parts.push(Prism::from_segment(
                back,
                front,
                z,
                0.5 * pedicle_width_mm,
                0.5 * p.pedicle_height_mm,
                Section::Ellipse,
            ));
            // Articular pillar with the superior articular process.
            let pil = Vector::new(back.x, back.y, 0.0);
            let pil_rx = (0.4 * p.pedicle_width_mm).max(4.5);
            let pil_ry = 5.0;
            let pil_bot = lay.pedicle_z - 0.5 * p.pedicle_height_mm - 1.0;
            let pil_top = 0.5 * h + p.superior_articular_rise_mm;
            parts.push(Prism {
                center: Vector::new(pil.x, pil.y, 0.5 * (pil_bot + pil_top)),
                axis: z,
                e1: Vector::x(),
                e2: Vector::y(),
                r1: pil_rx,
                r2: pil_ry,
                half_len: 0.5 * (pil_top - pil_bot),
                section: Section::Ellipse,
                round_mm: 1.0,
            });
            // Lamina: from the pillar to just past the midline behind the canal.
            let lam_t = p.lamina_thickness_mm;
            let mid = Vector::new(0.0, lay.post_wall_y + p.canal_depth_mm + 0.5 * lam_t, 0.0);
            let lam_dir = (mid - Vector::new(pil.x, pil.y, 0.0)).normalize();
            let lam_end = mid + lam_dir * (0.5 * lam_t);
            let lam_bot = -0.5 * h + 3.0;
            let lam_top = lay.pedicle_z + 0.5 * p.pedicle_height_mm - 1.0;
            let lam_zc = 0.5 * (lam_bot + lam_top);
            parts.push(Prism::from_segment(
                Vector::new(pil.x, pil.y, lam_zc),
                Vector::new(lam_end.x, lam_end.y, lam_zc),
                z,
                0.5 * lam_t,
                0.5 * (lam_top - lam_bot),
                Section::Rect,
            ));
            // Inferior articular process: behind the lamina, hanging below the body.
            let iap = Vector::new(pil.x - s * 3.0, pil.y + 6.0, 0.0);
            let iap_bot = -0.5 * h - p.inferior_articular_drop_mm;
            let iap_top = lam_bot + 6.0;
            parts.push(Prism {
                center: Vector::new(iap.x, iap.y, 0.5 * (iap_bot + iap_top)),
                axis: z,
                e1: Vector::x(),
                e2: Vector::y(),
                r1: 3.5,
                r2: 3.5,
                half_len: 0.5 * (iap_top - iap_bot),
                section: Section::Ellipse,
                round_mm: 1.0,
            });
            // Transverse process: lateral (lumbar) or posterolateral and slightly up (thoracic).
            let tp_dir = if p.is_thoracic() {
                Vector::new(s, 0.8, 0.25).normalize()
            } else {
                Vector::new(s, 0.2, 0.0).normalize()
            };
            let tp_a = Vector::new(pil.x, pil.y, lay.pedicle_z);
            let tp_b = tp_a + tp_dir * p.transverse_process_length_mm;
            parts.push(Prism::from_segment(
                tp_a,
                tp_b,
                z,
                3.0,
                5.0,
                Section::Ellipse,
            ));
        }
        // Spinous process from the laminar junction, posteriorly and inferiorly.
        let mid = Vector::new(
            0.0,
            lay.post_wall_y + p.canal_depth_mm + 0.5 * p.lamina_thickness_mm,
            0.5 * (-0.5 * h + 3.0 + lay.pedicle_z + 0.5 * p.pedicle_height_mm - 1.0),
        );
        let down_deg: Real = if p.is_thoracic() { 35.0 } else { 15.0 };
        let sp_dir = Vector::new(
            0.0,
            down_deg.to_radians().cos(),
            -down_deg.to_radians().sin(),
        );
        let sp_half_height = if p.is_thoracic() { 5.0 } else { 8.0 };
        parts.push(Prism::from_segment(
            mid,
            mid + sp_dir * p.spinous_process_length_mm,
            Vector::x(),
            sp_half_height,
            3.0,
            Section::Rect,
        ));
        let loss = p.anterior_height_loss_fraction.clamp(0.0, 0.6);
        Shape {
            body_a: 0.5 * p.body_width_mm,
            body_b: 0.5 * p.body_depth_mm,
            body_post_y: lay.post_wall_y,
            body_height_post: h,
            body_height_ant: h * (1.0 - loss),
            parts,
            blend_mm: 1.5,
        }
    }

    fn body_sd(&self, p: &Vector) -> Real {
        let d2 = ellipse_sd(p.x, p.y, self.body_a, self.body_b).max(p.y - self.body_post_y);
        // Height varies linearly from the anterior wall (-b) to the posterior wall.
        let f = ((p.y + self.body_b) / (self.body_post_y + self.body_b)).clamp(0.0, 1.0);
        let hh = 0.5 * (self.body_height_ant + f * (self.body_height_post - self.body_height_ant));
        extrude(d2, p.z.abs() - hh, 1.5)
    }

    fn sd(&self, p: &Vector) -> Real {
        let mut d = self.body_sd(p);
        for part in &self.parts {
            d = smin(d, part.sd(p), self.blend_mm);
        }
        d
    }

    fn aabb(&self) -> (Vector, Vector) {
        let h = 0.5 * self.body_height_post;
        let mut lo = Vector::new(-self.body_a, -self.body_b, -h);
        let mut hi = Vector::new(self.body_a, self.body_b, h);
        for part in &self.parts {
            let (a, b) = part.aabb();
            lo = lo.inf(&a);
            hi = hi.sup(&b);
        }
        (lo, hi)
    }
}

// ---------------------------------------------------------------------------------------------
// Soft tissue
// ---------------------------------------------------------------------------------------------

/// Clearance kept between the dural sac and the bone.
const CANAL_CLEARANCE_MM: Real = 1.5;

const CANAL_SEGMENTS: usize = 32;

/// The dural sac's cross-section in the vertebra frame (z = 0): the foramen's ellipse (canal
/// width x depth) shrunk by the clearance, and pulled in further wherever the bone of any
/// transverse slice through the body comes closer than the clearance.
fn canal_profile(p: &VertebraParams) -> Vec<Vector> {
    let lay = layout(p);
    let shape = Shape::new(p);
    let c = Vector::new(0.0, lay.canal_center.y, 0.0);
    let a = 0.5 * p.canal_width_mm - CANAL_CLEARANCE_MM;
    let b = 0.5 * p.canal_depth_mm - CANAL_CLEARANCE_MM;
    let h = 0.5 * p.body_height_mm + p.inferior_articular_drop_mm;
    let slices: Vec<Real> = (0..=20).map(|k| -h + 2.0 * h * k as Real / 20.0).collect();
    (0..CANAL_SEGMENTS)
        .map(|i| {
            let t = std::f64::consts::TAU * i as Real / CANAL_SEGMENTS as Real;
            let e = Vector::new(a * t.cos(), b * t.sin(), 0.0);
            let steps = 200;
            let mut free = 0.0;
            for k in 1..=steps {
                let f = k as Real / steps as Real;
                let q = c + e * f;
                let clear = slices
                    .iter()
                    .all(|&z| shape.sd(&Vector::new(q.x, q.y, z)) >= CANAL_CLEARANCE_MM);
                if !clear {
                    break;
                }
                free = f;
            }
            c + e * free
        })
        .collect()
}

/// One ring of the dural sac at height `z` of the vertebra frame.
fn canal_ring(profile: &[Vector], z: Real) -> Vec<Point> {
    profile.iter().map(|q| Point::new(q.x, q.y, z)).collect()
}

fn canal_tube(p: &VertebraParams) -> TriMesh {
    let profile = canal_profile(p);
    let top = 0.5 * p.body_height_mm + 10.0;
    let steps = 8;
    let rings: Vec<Vec<Point>> = (0..=steps)
        .map(|s| canal_ring(&profile, top - 2.0 * top * s as Real / steps as Real))
        .collect();
    tube_through_rings(&rings)
}

fn nerve_root(p: &VertebraParams, side: Side) -> TriMesh {
    let lay = layout(p);
    let s = side.sign();
    let radius = 2.5;
    let start = Vector::new(
        s * 0.5 * p.canal_width_mm,
        lay.left_isthmus.y,
        lay.pedicle_z - 0.5 * p.pedicle_height_mm - 1.75 - radius,
    );
    let dir = Vector::new(s * 0.8, -0.3, -0.5).normalize();
    let e1 = dir.cross(&Vector::z()).normalize();
    let e2 = e1.cross(&dir).normalize();
    let length = 25.0;
    let steps = 5;
    let rings: Vec<Vec<Point>> = (0..=steps)
        .map(|k| {
            let c = start + dir * (length * k as Real / steps as Real);
            ring(c, e1, e2, radius, radius, 16)
        })
        .collect();
    tube_through_rings(&rings)
}

// ---------------------------------------------------------------------------------------------
// Ribs and pleura (thoracic levels)
// ---------------------------------------------------------------------------------------------

/// Radius of the rib head (the head of a typical rib is about 8-10 mm high; model value).
pub const RIB_HEAD_RADIUS_MM: Real = 4.5;
/// Radius of the rib neck and shaft (model value).
pub const RIB_NECK_RADIUS_MM: Real = 3.2;
/// The open joint space kept between a rib and its vertebra (costovertebral and costotransverse
/// joints: cartilage and capsule), so that the meshes never touch: the generator subtracts the
/// bone dilated by this much from the rib.
pub const RIB_JOINT_GAP_MM: Real = 1.5;
/// How far the parietal pleura lies in front of the ribs and beside the vertebral body (the
/// paravertebral fat, sympathetic trunk and segmental vessels between; model value).
pub const PLEURA_OFFSET_MM: Real = 4.0;
/// Thickness of the pleura slab (a closed solid standing for the pleural surface; model value).
pub const PLEURA_THICKNESS_MM: Real = 2.0;

/// One rib's shape by construction, in LPS.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RibTruth {
    /// The patient side.
    pub side: Side,
    /// Centre of the rib head, at the costovertebral joint beside the body's posterolateral
    /// corner, in front of the pedicle root, at the superior endplate.
    pub head_center: Point,
    /// Centre of the rib tubercle at the costotransverse joint, in front of the transverse
    /// process tip. The neck runs from the head to here.
    pub tubercle_center: Point,
    /// Lateral end of the modelled piece of the shaft.
    pub shaft_end: Point,
}

/// The ribs and pleura of one thoracic level, in LPS.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticThorax {
    /// The level.
    pub level: Level,
    /// Left and right rib (head, neck and the first 30 mm of the shaft): closed, 2-manifold,
    /// outward wound, clear of the vertebra by about [`RIB_JOINT_GAP_MM`].
    pub ribs: PerSide<TriMesh>,
    /// The ribs' construction points.
    pub rib_truth: PerSide<RibTruth>,
    /// Left and right pleura: a closed slab [`PLEURA_THICKNESS_MM`] thick, [`PLEURA_OFFSET_MM`]
    /// in front of the rib and beside the vertebral body, spanning the level's height.
    pub pleura: PerSide<TriMesh>,
}

/// Rib construction points in the vertebra frame (left side; mirror for the right).
struct RibLayout {
    head: Vector,
    tubercle: Vector,
    shaft_end: Vector,
}

fn rib_layout(p: &VertebraParams) -> RibLayout {
    let lay = layout(p);
    let a = 0.5 * p.body_width_mm;
    let b = 0.5 * p.body_depth_mm;
    let h = p.body_height_mm;
    // The head: beside the body's lateral wall at 45 % of its half-depth behind the centre (the
    // posterolateral corner, in front of the pedicle root), at the superior endplate where the
    // costal facet takes the head, pushed out along the body outline's normal.
    let y0 = 0.45 * b;
    let x0 = a * (1.0 - (y0 / b).powi(2)).sqrt();
    let n = Vector::new(x0 / (a * a), y0 / (b * b), 0.0).normalize();
    let head = Vector::new(x0, y0, 0.5 * h - 1.0) + n * (RIB_HEAD_RADIUS_MM + 2.0);
    // The tubercle: in front of the transverse process, 3 mm short of its tip (the same
    // transverse process as `Shape::new` builds for a thoracic level).
    let back = lay.left_isthmus - lay.left_dir * (0.5 * p.pedicle_length_mm);
    let tp_dir = Vector::new(1.0, 0.8, 0.25).normalize();
    let tp_a = Vector::new(back.x, back.y, lay.pedicle_z);
    let tp_b = tp_a + tp_dir * p.transverse_process_length_mm;
    let anterior = Vector::new(0.8, -1.0, 0.0).normalize();
    let tubercle =
        tp_b - tp_dir * 3.0 + anterior * (3.0 + RIB_NECK_RADIUS_MM + RIB_JOINT_GAP_MM + 0.3);
    // The shaft: laterally, anteriorly and down.
    let shaft_end = tubercle + Vector::new(0.75, -0.55, -0.35).normalize() * 30.0;
    RibLayout {
        head,
        tubercle,
        shaft_end,
    }
}

/// Signed distance to the capsule `a`-`b` of radius `r`.
fn capsule_sd(p: &Vector, a: &Vector, b: &Vector, r: Real) -> Real {
    let ab = b - a;
    let t = ((p - a).dot(&ab) / ab.norm_squared()).clamp(0.0, 1.0);
    (p - (a + ab * t)).norm() - r
}

/// Distance in the axial (x, y) plane from `p` to the segment `a`-`b`.
fn segment_distance_xy(p: &Vector, a: &Vector, b: &Vector) -> Real {
    let (p, a, b) = (
        Vector::new(p.x, p.y, 0.0),
        Vector::new(a.x, a.y, 0.0),
        Vector::new(b.x, b.y, 0.0),
    );
    capsule_sd(&p, &a, &b, 0.0)
}

fn side_vector(side: Side, v: Vector) -> Vector {
    match side {
        Side::Left => v,
        Side::Right => mirror_x(v),
    }
}

/// The rib of `side` as an implicit solid: head, neck and shaft, minus the vertebra dilated by
/// the joint gap.
fn rib_sd(shape: &Shape, r: &RibLayout, side: Side, p: &Vector) -> Real {
    let (h, t, e) = (
        side_vector(side, r.head),
        side_vector(side, r.tubercle),
        side_vector(side, r.shaft_end),
    );
    let head = (p - h).norm() - RIB_HEAD_RADIUS_MM;
    let neck = capsule_sd(p, &h, &t, RIB_NECK_RADIUS_MM);
    let shaft = capsule_sd(p, &t, &e, RIB_NECK_RADIUS_MM);
    smin(smin(head, neck, 1.5), shaft, 1.5).max(RIB_JOINT_GAP_MM - shape.sd(p))
}

/// The axial polyline the pleura follows on `side`: from in front of the body's anterolateral
/// wall, beside the body, in front of the rib head, then in front of the neck and shaft.
fn pleura_path(p: &VertebraParams, r: &RibLayout, side: Side) -> Vec<Vector> {
    let a = 0.5 * p.body_width_mm;
    let b = 0.5 * p.body_depth_mm;
    let off = PLEURA_OFFSET_MM + 0.5 * PLEURA_THICKNESS_MM;
    let on_body = |t_deg: Real| {
        // Point of the body outline at angle t from the anterior midline, pushed out.
        let t = t_deg.to_radians();
        let q = Vector::new(a * t.sin(), -b * t.cos(), 0.0);
        let n = Vector::new(q.x / (a * a), q.y / (b * b), 0.0).normalize();
        q + n * off
    };
    let rib_off = RIB_NECK_RADIUS_MM + off;
    let head_front = r.head + Vector::new(0.6, -0.8, 0.0) * (RIB_HEAD_RADIUS_MM + off);
    let neck_dir = (r.tubercle - r.head).normalize();
    let neck_front = Vector::new(neck_dir.y, -neck_dir.x, 0.0); // the neck's anterior normal
    let shaft_dir = (r.shaft_end - r.tubercle).normalize();
    let shaft_front = Vector::new(shaft_dir.y, -shaft_dir.x, 0.0);
    [
        on_body(40.0),
        on_body(70.0),
        head_front,
        r.tubercle + neck_front * rib_off,
        r.shaft_end + shaft_front * rib_off,
    ]
    .into_iter()
    .map(|v| side_vector(side, Vector::new(v.x, v.y, 0.0)))
    .collect()
}

fn pleura_sd(
    shape: &Shape,
    r: &RibLayout,
    path: &[Vector],
    half_height_mm: Real,
    p: &Vector,
) -> Real {
    let d2 = path
        .windows(2)
        .map(|w| segment_distance_xy(p, &w[0], &w[1]))
        .fold(Real::INFINITY, Real::min)
        - 0.5 * PLEURA_THICKNESS_MM;
    let slab = extrude(d2, p.z.abs() - half_height_mm, 0.5);
    if slab > 2.0 {
        // Far from the slab: the subtractions cannot bring it back inside.
        return slab;
    }
    let mut d = slab.max(RIB_JOINT_GAP_MM - shape.sd(p));
    for side in Side::BOTH {
        d = d.max(RIB_JOINT_GAP_MM - rib_sd(shape, r, side, p));
    }
    d
}

/// The ribs and pleura of a thoracic vertebra built from `params`, posed by `vertebra_to_lps`
/// (the same pose as [`vertebra`]'s); `None` below T12. Model simplifications: every rib has a
/// head, a neck to the transverse process and a short straight shaft (ribs 1, 11 and 12 differ
/// in the body: the first is flat, the last two have no costotransverse joint); no costal facets
/// are carved; the pleura is a slab that follows the body and the ribs, not the lung's dome.
pub fn thorax(params: &VertebraParams, vertebra_to_lps: &Pose) -> Option<SyntheticThorax> {
    if !params.is_thoracic() {
        return None;
    }
    let shape = Shape::new(params);
    let r = rib_layout(params);
    let res = params.mesh_resolution_mm.clamp(0.2, 5.0);
    let pad = Vector::repeat(2.0 * res + 3.0);
    let rib_mesh = |side: Side| {
        let (h, t, e) = (
            side_vector(side, r.head),
            side_vector(side, r.tubercle),
            side_vector(side, r.shaft_end),
        );
        let rr = Vector::repeat(RIB_HEAD_RADIUS_MM);
        let lo = h.inf(&t).inf(&e) - rr - pad;
        let hi = h.sup(&t).sup(&e) + rr + pad;
        marching_tetrahedra(|p| rib_sd(&shape, &r, side, p), lo, hi, res)
            .transformed(vertebra_to_lps)
    };
    let ribs = PerSide::from_fn(rib_mesh);
    let half_height_mm = 0.5 * params.body_height_mm + 3.5;
    let pleura = PerSide::from_fn(|side| {
        let path = pleura_path(params, &r, side);
        let mut lo = Vector::repeat(Real::INFINITY);
        let mut hi = Vector::repeat(Real::NEG_INFINITY);
        for q in &path {
            lo = lo.inf(q);
            hi = hi.sup(q);
        }
        lo.z = -half_height_mm;
        hi.z = half_height_mm;
        marching_tetrahedra(
            |p| pleura_sd(&shape, &r, &path, half_height_mm, p),
            lo - pad,
            hi + pad,
            res,
        )
        .transformed(vertebra_to_lps)
    });
    let rib_truth = PerSide::from_fn(|side| RibTruth {
        side,
        head_center: vertebra_to_lps * Point::from(side_vector(side, r.head)),
        tubercle_center: vertebra_to_lps * Point::from(side_vector(side, r.tubercle)),
        shaft_end: vertebra_to_lps * Point::from(side_vector(side, r.shaft_end)),
    });
    Some(SyntheticThorax {
        level: params.level,
        ribs,
        rib_truth,
        pleura,
    })
}

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// The bone surface of a vertebra in its own frame (before posing).
fn bone_mesh(params: &VertebraParams) -> TriMesh {
    let shape = Shape::new(params);
    let res = params.mesh_resolution_mm.clamp(0.2, 5.0);
    let pad = 2.0 * res + 2.0;
    let (lo, hi) = shape.aabb();
    let pad = Vector::repeat(pad);
    marching_tetrahedra(|p| shape.sd(p), lo - pad, hi + pad, res)
}

/// Build one synthetic vertebra: mesh the implicit solid in the vertebra frame, then move the
/// mesh, pedicle axes, canal and nerve roots to LPS by `vertebra_to_lps`.
pub fn vertebra(params: &VertebraParams, vertebra_to_lps: &Pose) -> SyntheticVertebra {
    let lay = layout(params);
    let mesh = bone_mesh(params).transformed(vertebra_to_lps);
    let axes = PerSide::from_fn(|side| {
        let (c, d) = match side {
            Side::Left => (lay.left_isthmus, lay.left_dir),
            Side::Right => (mirror_x(lay.left_isthmus), mirror_x(lay.left_dir)),
        };
        PedicleAxis {
            side,
            isthmus_center: vertebra_to_lps * Point::from(c),
            direction: UnitVector::new_normalize(vertebra_to_lps.rotation * d),
            width_mm: params.pedicle_width_on(side),
        }
    });
    SyntheticVertebra {
        level: params.level,
        params: params.clone(),
        mesh,
        vertebra_to_lps: *vertebra_to_lps,
        pedicle_axes: axes,
        body_center_lps: vertebra_to_lps * Point::origin(),
        canal: canal_tube(params).transformed(vertebra_to_lps),
        nerve_roots: PerSide::from_fn(|s| nerve_root(params, s).transformed(vertebra_to_lps)),
    }
}

/// Height of the intervertebral disc used when stacking levels.
pub const DISC_HEIGHT_MM: Real = 9.0;

/// Stack `levels` (mean morphometry) as in the body: each below the previous by half their body
/// heights plus a 9 mm disc, posterior walls aligned, the whole moved by `patient_pose` (the
/// pose of the most cranial level's vertebra frame in LPS; the others sit below it along its
/// -z). Gaps in `levels` keep their space. With `with_soft_tissue`, adds one spinal canal ("canal")
/// through all levels and the exiting nerve roots ("L3_root_left", ...). Vertebrae are named
/// like "L3.stl". Frame LPS.
pub fn spine(
    levels: &[Level],
    patient_pose: &Pose,
    with_soft_tissue: bool,
) -> (AnatomyInput, Vec<SyntheticVertebra>) {
    spine_with(
        levels,
        patient_pose,
        &SpineOptions {
            with_soft_tissue,
            with_ribs_and_pleura: false,
        },
    )
}

/// What [`spine_with`] adds to the bone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpineOptions {
    /// One spinal canal through all levels and the exiting nerve roots (as [`spine`]'s
    /// `with_soft_tissue`).
    pub with_soft_tissue: bool,
    /// At every thoracic level the left and right rib (role `rib`, "T5_rib_left") and pleura
    /// (role `pleura`, "T5_pleura_left"), from [`thorax`].
    pub with_ribs_and_pleura: bool,
}

/// [`spine`] with [`SpineOptions`]; the structures come in the order vertebrae, canal, nerve
/// roots, then per thoracic level its left and right rib and left and right pleura.
pub fn spine_with(
    levels: &[Level],
    patient_pose: &Pose,
    options: &SpineOptions,
) -> (AnatomyInput, Vec<SyntheticVertebra>) {
    let with_soft_tissue = options.with_soft_tissue;
    let mut sorted: Vec<Level> = levels.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut out = Vec::new();
    if let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) {
        let mut z = 0.0;
        let mut prev_half: Option<Real> = None;
        for level in Level::ALL
            .iter()
            .copied()
            .filter(|l| *l >= first && *l <= last)
        {
            let params = VertebraParams::mean(level);
            let half = 0.5 * params.body_height_mm;
            if let Some(ph) = prev_half {
                z -= ph + DISC_HEIGHT_MM + half;
            }
            prev_half = Some(half);
            if sorted.contains(&level) {
                let pose = patient_pose * Translation3::new(0.0, 0.0, z);
                out.push(vertebra(&params, &pose));
            }
        }
    }
    let mut structures: Vec<Structure> = out
        .iter()
        .map(|v| Structure {
            name: format!("{}.stl", v.level.name()),
            role: Role::Vertebra { level: v.level },
            mesh: v.mesh.clone(),
        })
        .collect();
    if with_soft_tissue && !out.is_empty() {
        let mut rings = Vec::new();
        let n = out.len();
        for (i, v) in out.iter().enumerate() {
            let profile = canal_profile(&v.params);
            let h = 0.5 * v.params.body_height_mm;
            let mut zs = vec![h, -h];
            if i == 0 {
                zs.insert(0, h + 10.0);
            }
            if i + 1 == n {
                zs.push(-h - 10.0);
            }
            for z in zs {
                let r = canal_ring(&profile, z);
                rings.push(r.iter().map(|p| v.vertebra_to_lps * p).collect());
            }
        }
        structures.push(Structure {
            name: "canal".to_string(),
            role: Role::SpinalCanal,
            mesh: tube_through_rings(&rings),
        });
        for v in &out {
            for (side, root) in v.nerve_roots.with_sides() {
                structures.push(Structure {
                    name: format!("{}_root_{}", v.level.name(), side.name()),
                    role: Role::NerveRoot {
                        level: v.level,
                        side,
                    },
                    mesh: root.clone(),
                });
            }
        }
    }
    if options.with_ribs_and_pleura {
        for v in &out {
            let Some(t) = thorax(&v.params, &v.vertebra_to_lps) else {
                continue;
            };
            for (side, rib) in t.ribs.with_sides() {
                structures.push(Structure {
                    name: format!("{}_rib_{}", v.level.name(), side.name()),
                    role: Role::Rib {
                        level: v.level,
                        side,
                    },
                    mesh: rib.clone(),
                });
            }
            for (side, pleura) in t.pleura.with_sides() {
                structures.push(Structure {
                    name: format!("{}_pleura_{}", v.level.name(), side.name()),
                    role: Role::Pleura,
                    mesh: pleura.clone(),
                });
            }
        }
    }
    (
        AnatomyInput {
            name: "synthetic-spine".to_string(),
            frame: PatientFrame::Lps,
            structures,
        },
        out,
    )
}

/// The built-in anatomy of `kyphoplan demo`: L1 to L5 at mean morphometry, stacked as in the
/// body, bone only, LPS millimetres.
pub fn demo_anatomy() -> AnatomyInput {
    let levels = [Level::L1, Level::L2, Level::L3, Level::L4, Level::L5];
    let mut anatomy = spine(&levels, &Pose::identity(), false).0;
    anatomy.name = "built-in-demo".to_string();
    anatomy
}
