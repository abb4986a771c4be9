//! PNG pictures of the plan, for a person to understand it at a glance.
//!
//! Per level, three panels side by side, all in the vertebra's own frame (`lps_to_vertebra`:
//! +x patient left, +y posterior, +z superior) and at one scale:
//! - AXIAL: the section of the bone with the vertebra's axial plane at the mean height of the
//!   planned cannulas, seen from the feet (patient's left on the right, anterior up), with the
//!   outline of the vertebral foramen (the derived canal);
//! - AP: a radiograph-like projection (brightness = path length through bone) seen from the
//!   front (patient's left on the right, superior up);
//! - LATERAL: the same seen from the patient's left (anterior on the left, superior up).
//!
//! Cannulas are drawn from the bone entry to the tip at their outer diameter to scale (left
//! orange, right cyan), balloons as the outline of the inflated capsule, entry as a ring, tip as
//! a dot. An infeasible side gets no cannula; its reason codes are written in the picture.
//! Plus one overview: the lateral projection of all levels with their cannulas.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use kyphoplan_planner::anatomy::{Level, PatientFrame, Side};
use kyphoplan_planner::math::{Point, Pose};
use kyphoplan_planner::mesh::TriMesh;
use kyphoplan_planner::plan::{LevelPlan, Plan, SidePlan};
use kyphoplan_planner::prepare::{PreparedAnatomy, PreparedVertebra};

use super::raster::{
    blend, circle, dashed_line, fill_segments, put, stadium, text, thick_line, title, PixelRect,
    Segment2,
};
use super::{check_frames, code_name, point, side_title, vertebra_of, ExportError};

/// Colour of the left cannula.
pub const LEFT_COLOUR: Rgb<u8> = Rgb([255, 140, 0]);
/// Colour of the right cannula.
pub const RIGHT_COLOUR: Rgb<u8> = Rgb([0, 190, 255]);
const BACKGROUND: Rgb<u8> = Rgb([18, 20, 26]);
const BONE: Rgb<u8> = Rgb([232, 230, 220]);
const SECTION_FILL: Rgb<u8> = Rgb([200, 198, 188]);
const CANAL: Rgb<u8> = Rgb([255, 220, 40]);
const TEXT: Rgb<u8> = Rgb([235, 235, 235]);
const DIM_TEXT: Rgb<u8> = Rgb([160, 165, 175]);
const WARN: Rgb<u8> = Rgb([255, 80, 80]);
const PANEL_BORDER: Rgb<u8> = Rgb([70, 74, 84]);
const BALLOON: Rgb<u8> = Rgb([170, 120, 255]);
const ISTHMUS: Rgb<u8> = Rgb([90, 230, 120]);

/// An angle to one decimal without a "-0.0".
fn deg(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    format!("{:.1}°", if r == 0.0 { 0.0 } else { r })
}

/// The colour of a side's cannula.
pub fn side_colour(side: Side) -> Rgb<u8> {
    match side {
        Side::Left => LEFT_COLOUR,
        Side::Right => RIGHT_COLOUR,
    }
}

/// Picture sizes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PictureOptions {
    /// Width and height of each square panel, pixels.
    pub panel_px: u32,
    /// Scale of the overview, pixels per millimetre.
    pub overview_px_per_mm: f64,
}

impl PictureOptions {
    /// 420 px panels (a 1260 px wide level picture), 4 px/mm overview.
    pub fn standard() -> Self {
        PictureOptions {
            panel_px: 420,
            overview_px_per_mm: 4.0,
        }
    }
}

/// Which panel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Axial,
    Ap,
    Lateral,
}

impl View {
    /// Screen right, screen down, and depth (towards the viewer is smaller) of a point of the
    /// vertebra frame.
    fn project(self, p_vertebra: &Point) -> [f64; 3] {
        let (x, y, z) = (p_vertebra.x, p_vertebra.y, p_vertebra.z);
        match self {
            // From the feet: left on the right, posterior down.
            View::Axial => [x, y, z],
            // From the front: left on the right, superior up; viewer at -y.
            View::Ap => [x, -z, y],
            // From the left: posterior on the right, superior up; viewer at +x.
            View::Lateral => [y, -z, -x],
        }
    }

    fn title(self) -> &'static str {
        match self {
            View::Axial => "AXIAL section (from feet)",
            View::Ap => "AP projection (from front)",
            View::Lateral => "LATERAL projection (from left)",
        }
    }

    /// Orientation letters: left, right, top, bottom edge of the panel.
    fn edges(self) -> [&'static str; 4] {
        match self {
            View::Axial => ["R", "L", "A", "P"],
            View::Ap => ["R", "L", "S", "I"],
            View::Lateral => ["A", "P", "S", "I"],
        }
    }
}

/// Where a point of the case lands in a panel.
#[derive(Clone, Debug)]
pub struct PanelProjection {
    pub view: View,
    /// Top-left corner of the panel in the image, pixels.
    pub origin_px: (u32, u32),
    pub size_px: (u32, u32),
    pub px_per_mm: f64,
    /// Screen coordinates (mm) shown at the panel centre.
    center_mm: [f64; 2],
    case_to_vertebra: CaseToVertebra,
}

#[derive(Clone, Copy, Debug)]
struct CaseToVertebra {
    frame: PatientFrame,
    lps_to_vertebra: Pose,
}

impl CaseToVertebra {
    fn map(&self, p_case: &Point) -> Point {
        self.lps_to_vertebra * self.frame.to_lps(p_case)
    }
}

impl PanelProjection {
    /// Pixel (x right, y down, fractional) of a point given in the case frame.
    pub fn pixel_of(&self, p_case: [f64; 3]) -> (f64, f64) {
        let q = self
            .view
            .project(&self.case_to_vertebra.map(&point(p_case)));
        self.screen_px(q[0], q[1])
    }

    fn pixel_of_vertebra(&self, p_vertebra: &Point) -> (f64, f64, f64) {
        let q = self.view.project(p_vertebra);
        let (x, y) = self.screen_px(q[0], q[1]);
        (x, y, q[2])
    }

    fn screen_px(&self, u_mm: f64, v_mm: f64) -> (f64, f64) {
        (
            self.origin_px.0 as f64
                + 0.5 * self.size_px.0 as f64
                + (u_mm - self.center_mm[0]) * self.px_per_mm,
            self.origin_px.1 as f64
                + 0.5 * self.size_px.1 as f64
                + (v_mm - self.center_mm[1]) * self.px_per_mm,
        )
    }

    /// The panel's pixels: drawing into the panel stays inside them.
    fn rect(&self) -> PixelRect {
        PixelRect {
            origin_px: self.origin_px,
            size_px: self.size_px,
        }
    }
}

/// A level's picture and where its panels are.
pub struct LevelPicture {
    pub image: RgbImage,
    pub panels: Vec<PanelProjection>,
    /// Height (vertebra-frame z, mm) of the axial section.
    pub section_z_mm: f64,
}

impl LevelPicture {
    pub fn panel(&self, view: View) -> &PanelProjection {
        self.panels
            .iter()
            .find(|p| p.view == view)
            .expect("every view has a panel")
    }
}

/// Path length through the closed `mesh` (vertebra frame) along the view direction per pixel of
/// `panel`: back faces add their depth, front faces subtract it.
fn thickness_map(mesh_vertebra: &TriMesh, panel: &PanelProjection) -> Vec<f32> {
    let (w, h) = panel.size_px;
    let mut acc = vec![0.0f32; (w * h) as usize];
    let (ox, oy) = (panel.origin_px.0 as f64, panel.origin_px.1 as f64);
    let projected: Vec<(f64, f64, f64)> = mesh_vertebra
        .vertices_mm
        .iter()
        .map(|p| {
            let (x, y, d) = panel.pixel_of_vertebra(p);
            (x - ox, y - oy, d)
        })
        .collect();
    for t in &mesh_vertebra.triangles {
        let [a, b, c] = t.map(|i| projected[i as usize]);
        let area = (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0);
        if area.abs() < 1e-12 {
            continue;
        }
        let sign = area.signum();
        let xmin = a.0.min(b.0).min(c.0).floor().max(0.0) as i64;
        let xmax = a.0.max(b.0).max(c.0).ceil().min(w as f64 - 1.0) as i64;
        let ymin = a.1.min(b.1).min(c.1).floor().max(0.0) as i64;
        let ymax = a.1.max(b.1).max(c.1).ceil().min(h as f64 - 1.0) as i64;
        for y in ymin..=ymax {
            for x in xmin..=xmax {
                let p = (x as f64 + 0.5, y as f64 + 0.5);
                let w0 = ((b.0 - p.0) * (c.1 - p.1) - (b.1 - p.1) * (c.0 - p.0)) / area;
                let w1 = ((c.0 - p.0) * (a.1 - p.1) - (c.1 - p.1) * (a.0 - p.0)) / area;
                let w2 = 1.0 - w0 - w1;
                // Half-open barycentric test: pixels on a shared edge go to one triangle.
                if w0 < 0.0 || w1 < 0.0 || w2 < 0.0 {
                    continue;
                }
                if (w0 == 0.0 && edge_excluded(b, c, sign))
                    || (w1 == 0.0 && edge_excluded(c, a, sign))
                    || (w2 == 0.0 && edge_excluded(a, b, sign))
                {
                    continue;
                }
                let depth = w0 * a.2 + w1 * b.2 + w2 * c.2;
                acc[(y as u32 * w + x as u32) as usize] += (sign * depth) as f32;
            }
        }
    }
    acc
}

/// Top-left rule for an edge of a triangle of winding `sign`.
fn edge_excluded(p: (f64, f64, f64), q: (f64, f64, f64), sign: f64) -> bool {
    let (dx, dy) = ((q.0 - p.0) * sign, (q.1 - p.1) * sign);
    !(dy < 0.0 || (dy == 0.0 && dx > 0.0))
}

/// Paint a thickness map as a radiograph: dark background, bone bright with thickness.
fn paint_thickness(img: &mut RgbImage, panel: &PanelProjection, acc: &[f32]) {
    let (w, h) = panel.size_px;
    for y in 0..h {
        for x in 0..w {
            let t = acc[(y * w + x) as usize].abs() as f64;
            if t > 0.05 {
                let a = 0.30 + 0.70 * (1.0 - (-t / 18.0).exp());
                img.put_pixel(
                    panel.origin_px.0 + x,
                    panel.origin_px.1 + y,
                    blend(BACKGROUND, BONE, a),
                );
            }
        }
    }
}

/// Intersection of the mesh (vertebra frame) with the plane z = `z_mm`, as screen segments.
fn section_segments(mesh_vertebra: &TriMesh, z_mm: f64, panel: &PanelProjection) -> Vec<Segment2> {
    let mut out = Vec::new();
    for i in 0..mesh_vertebra.triangles.len() {
        let tri = mesh_vertebra.triangle(i);
        let mut pts = Vec::with_capacity(2);
        for k in 0..3 {
            let (p, q) = (tri[k], tri[(k + 1) % 3]);
            // Half-open so that a vertex on the plane counts once.
            let (dp, dq) = (p.z - z_mm, q.z - z_mm);
            if (dp < 0.0) != (dq < 0.0) {
                let t = dp / (dp - dq);
                let x = p + (q - p) * t;
                let (sx, sy, _) = panel.pixel_of_vertebra(&x);
                pts.push((sx, sy));
            }
        }
        if pts.len() == 2 {
            out.push((pts[0], pts[1]));
        }
    }
    out
}

fn panel_frame(img: &mut RgbImage, panel: &PanelProjection) {
    let (x0, y0) = (panel.origin_px.0 as i64, panel.origin_px.1 as i64);
    let (w, h) = (panel.size_px.0 as i64, panel.size_px.1 as i64);
    for x in x0..x0 + w {
        put(img, None, x, y0, PANEL_BORDER);
        put(img, None, x, y0 + h - 1, PANEL_BORDER);
    }
    for y in y0..y0 + h {
        put(img, None, x0, y, PANEL_BORDER);
        put(img, None, x0 + w - 1, y, PANEL_BORDER);
    }
}

fn scale_bar(img: &mut RgbImage, panel: &PanelProjection) {
    let len = 10.0 * panel.px_per_mm;
    let x0 = panel.origin_px.0 as f64 + 14.0;
    let y0 = (panel.origin_px.1 + panel.size_px.1) as f64 - 16.0;
    thick_line(
        img,
        Some(panel.rect()),
        (x0, y0),
        (x0 + len, y0),
        3.0,
        TEXT,
        true,
    );
    thick_line(
        img,
        Some(panel.rect()),
        (x0, y0 - 5.0),
        (x0, y0 + 2.0),
        2.0,
        TEXT,
        true,
    );
    thick_line(
        img,
        Some(panel.rect()),
        (x0 + len, y0 - 5.0),
        (x0 + len, y0 + 2.0),
        2.0,
        TEXT,
        true,
    );
    text(
        img,
        (x0 + len + 6.0) as i32,
        (y0 - 7.0) as i32,
        "10 mm",
        TEXT,
    );
}

fn orientation_letters(img: &mut RgbImage, panel: &PanelProjection) {
    let [l, r, t, b] = panel.view.edges();
    let (x0, y0) = (panel.origin_px.0 as i32, panel.origin_px.1 as i32);
    let (w, h) = (panel.size_px.0 as i32, panel.size_px.1 as i32);
    title(img, x0 + 6, y0 + h / 2 - 7, l, DIM_TEXT);
    title(img, x0 + w - 15, y0 + h / 2 - 7, r, DIM_TEXT);
    title(img, x0 + w / 2 - 4, y0 + 24, t, DIM_TEXT);
    title(img, x0 + w / 2 - 4, y0 + h - 18, b, DIM_TEXT);
}

// ---------------------------------------------------------------------------------------------
// Plan geometry in the vertebra frame.

/// Entry, tip, radius (mm) of a feasible side, and its balloon's segment and radius.
struct SideGeometry {
    side: Side,
    entry: Point,
    tip: Point,
    radius_mm: f64,
    balloon: Option<(Point, Point, f64)>,
}

fn side_geometry(side: &SidePlan, map: &CaseToVertebra) -> Option<SideGeometry> {
    if !side.feasible {
        return None;
    }
    let t = side.trajectory.as_ref()?;
    let balloon = side.balloon.as_ref().map(|b| {
        let c = point(b.center_mm);
        let axis = kyphoplan_planner::math::Vector::from(b.axis).normalize() * (0.5 * b.length_mm);
        (
            map.map(&(c - axis)),
            map.map(&(c + axis)),
            0.5 * b.diameter_mm,
        )
    });
    Some(SideGeometry {
        side: side.side,
        entry: map.map(&point(t.bone_entry_mm)),
        tip: map.map(&point(t.target_mm)),
        radius_mm: 0.5 * t.cannula_outer_diameter_mm,
        balloon,
    })
}

/// The measured isthmus of each pedicle (its bony outline, in the vertebra frame) as a closed
/// outline: the section every transpedicular cannula must pass inside of.
fn draw_isthmi(img: &mut RgbImage, panel: &PanelProjection, vertebra: &PreparedVertebra) {
    for side in Side::BOTH {
        let Ok(pedicle) = &vertebra.pedicles[side] else {
            continue;
        };
        let outline = pedicle.outline_vertebra_mm();
        for k in 0..outline.len() {
            let (a, b) = (outline[k], outline[(k + 1) % outline.len()]);
            let (pa, pb) = (panel.pixel_of_vertebra(&a), panel.pixel_of_vertebra(&b));
            thick_line(
                img,
                Some(panel.rect()),
                (pa.0, pa.1),
                (pb.0, pb.1),
                1.5,
                ISTHMUS,
                false,
            );
        }
    }
}

fn draw_sides(img: &mut RgbImage, panel: &PanelProjection, sides: &[SideGeometry]) {
    let px = |p: &Point| {
        let (x, y, _) = panel.pixel_of_vertebra(p);
        (x, y)
    };
    for s in sides {
        if let Some((a, b, r)) = &s.balloon {
            stadium(
                img,
                panel.rect(),
                px(a),
                px(b),
                r * panel.px_per_mm,
                BALLOON,
            );
        }
    }
    // Far cannulas first, so that the nearer one is seen on top where they cross.
    let mut order: Vec<&SideGeometry> = sides.iter().collect();
    let depth = |s: &SideGeometry| panel.view.project(&s.entry)[2] + panel.view.project(&s.tip)[2];
    order.sort_by(|a, b| depth(b).total_cmp(&depth(a)));
    for s in order {
        let c = side_colour(s.side);
        let width = (2.0 * s.radius_mm * panel.px_per_mm).max(3.0);
        // A dark rim keeps the cannula readable over bright bone.
        thick_line(
            img,
            Some(panel.rect()),
            px(&s.entry),
            px(&s.tip),
            width + 2.0,
            BACKGROUND,
            true,
        );
        thick_line(
            img,
            Some(panel.rect()),
            px(&s.entry),
            px(&s.tip),
            width,
            c,
            true,
        );
        circle(
            img,
            Some(panel.rect()),
            px(&s.entry),
            0.5 * width + 3.0,
            2.0,
            TEXT,
            false,
        );
        circle(
            img,
            Some(panel.rect()),
            px(&s.tip),
            0.5 * width + 1.0,
            1.0,
            c,
            true,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The level picture.

const HEADER_PX: u32 = 34;
const LINE_PX: i32 = 16;

fn level_plan(plan: &Plan, level: Level) -> Result<&LevelPlan, ExportError> {
    plan.levels
        .iter()
        .find(|l| l.level == level)
        .ok_or(ExportError::LevelNotInAnatomy(level))
}

/// The picture of one level with the geometry of its panels.
pub fn level_picture(
    plan: &Plan,
    anatomy: &PreparedAnatomy,
    level: Level,
    options: &PictureOptions,
) -> Result<LevelPicture, ExportError> {
    check_frames(plan, anatomy)?;
    let lp = level_plan(plan, level)?;
    let vertebra = vertebra_of(anatomy, level)?;
    let map = CaseToVertebra {
        frame: plan.frame,
        lps_to_vertebra: vertebra.frame.lps_to_vertebra,
    };
    let mesh_v = vertebra.mesh.transformed(&vertebra.frame.lps_to_vertebra);
    let sides: Vec<SideGeometry> = lp
        .sides
        .iter()
        .filter_map(|s| side_geometry(s, &map))
        .collect();
    let section_z_mm = section_height_mm(vertebra, &sides);
    let p = options.panel_px;
    let panels = layout_panels(&mesh_v, map, p);

    let footer_lines = lp
        .sides
        .iter()
        .map(|s| side_lines(lp.level, s).len() as u32)
        .sum::<u32>()
        + 2;
    let width = 3 * p;
    let height = HEADER_PX + p + 10 + footer_lines * LINE_PX as u32 + 8;
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);
    for panel in &panels {
        match panel.view {
            View::Axial => draw_axial_section(&mut img, panel, &mesh_v, vertebra, section_z_mm),
            View::Ap | View::Lateral => draw_projection(&mut img, panel, &mesh_v, vertebra),
        }
        draw_isthmi(&mut img, panel, vertebra);
        draw_sides(&mut img, panel, &sides);
        panel_frame(&mut img, panel);
        scale_bar(&mut img, panel);
        orientation_letters(&mut img, panel);
        panel_title(&mut img, panel, section_z_mm);
    }
    angle_labels(&mut img, lp, &sides, &panels);
    infeasible_labels(&mut img, lp, &panels[0]);
    header(&mut img, plan, level);
    footer(&mut img, plan, lp, (HEADER_PX + p + 10) as i32);
    Ok(LevelPicture {
        image: img,
        panels,
        section_z_mm,
    })
}

/// Height (vertebra-frame z, mm) of the axial section: the mean height of the cannula axes,
/// else the middle of the pedicles.
fn section_height_mm(vertebra: &PreparedVertebra, sides: &[SideGeometry]) -> f64 {
    if sides.is_empty() {
        let r = vertebra.frame.pedicle_z_range_mm;
        0.25 * (r[0].0 + r[0].1 + r[1].0 + r[1].1)
    } else {
        sides
            .iter()
            .map(|s| 0.5 * (s.entry.z + s.tip.z))
            .sum::<f64>()
            / sides.len() as f64
    }
}

/// The axial, AP and lateral panels side by side, `panel_px` square, at one scale: the bone's
/// box in each view fits with a margin.
fn layout_panels(
    mesh_vertebra: &TriMesh,
    map: CaseToVertebra,
    panel_px: u32,
) -> Vec<PanelProjection> {
    let bbox = mesh_vertebra.bounding_box();
    let views = [View::Axial, View::Ap, View::Lateral];
    let usable = panel_px as f64 - 70.0;
    let mut px_per_mm = f64::INFINITY;
    let mut centres = Vec::new();
    for view in views {
        let corners: Vec<[f64; 3]> = (0..8)
            .map(|i| {
                let c = Point::new(
                    if i & 1 == 0 { bbox.min.x } else { bbox.max.x },
                    if i & 2 == 0 { bbox.min.y } else { bbox.max.y },
                    if i & 4 == 0 { bbox.min.z } else { bbox.max.z },
                );
                view.project(&c)
            })
            .collect();
        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        for c in &corners {
            for k in 0..2 {
                lo[k] = lo[k].min(c[k]);
                hi[k] = hi[k].max(c[k]);
            }
        }
        px_per_mm = px_per_mm.min(usable / (hi[0] - lo[0]).max(hi[1] - lo[1]).max(1.0));
        centres.push([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1])]);
    }
    views
        .iter()
        .zip(&centres)
        .enumerate()
        .map(|(i, (&view, &center_mm))| PanelProjection {
            view,
            origin_px: (i as u32 * panel_px, HEADER_PX),
            size_px: (panel_px, panel_px),
            px_per_mm,
            center_mm,
            case_to_vertebra: map,
        })
        .collect()
}

/// The axial panel's bone: the filled section at `section_z_mm` and its outline, and the
/// vertebral foramen from which the canal keep-out is derived.
fn draw_axial_section(
    img: &mut RgbImage,
    panel: &PanelProjection,
    mesh_vertebra: &TriMesh,
    vertebra: &PreparedVertebra,
    section_z_mm: f64,
) {
    let segs = section_segments(mesh_vertebra, section_z_mm, panel);
    fill_segments(img, panel.rect(), &segs, SECTION_FILL);
    for (a, b) in &segs {
        thick_line(img, Some(panel.rect()), *a, *b, 1.5, BONE, false);
    }
    let outline = &vertebra.frame.canal_outline_xy_mm;
    for k in 0..outline.len() {
        let (a, b) = (outline[k], outline[(k + 1) % outline.len()]);
        let pa = panel.pixel_of_vertebra(&Point::new(a[0], a[1], section_z_mm));
        let pb = panel.pixel_of_vertebra(&Point::new(b[0], b[1], section_z_mm));
        thick_line(
            img,
            Some(panel.rect()),
            (pa.0, pa.1),
            (pb.0, pb.1),
            2.0,
            CANAL,
            false,
        );
    }
}

/// An AP or lateral panel's bone: the radiograph-like thickness projection, and the foramen's
/// extent as a dashed box.
fn draw_projection(
    img: &mut RgbImage,
    panel: &PanelProjection,
    mesh_vertebra: &TriMesh,
    vertebra: &PreparedVertebra,
) {
    let acc = thickness_map(mesh_vertebra, panel);
    paint_thickness(img, panel, &acc);
    let outline = &vertebra.frame.canal_outline_xy_mm;
    let (z0, z1) = vertebra.frame.canal_z_range_mm;
    let idx = if panel.view == View::Ap { 0 } else { 1 };
    let lo = outline.iter().map(|q| q[idx]).fold(f64::INFINITY, f64::min);
    let hi = outline
        .iter()
        .map(|q| q[idx])
        .fold(f64::NEG_INFINITY, f64::max);
    if lo.is_finite() && hi.is_finite() {
        let corner = |u: f64, z: f64| {
            let q = if idx == 0 {
                Point::new(u, 0.0, z)
            } else {
                Point::new(0.0, u, z)
            };
            let (x, y, _) = panel.pixel_of_vertebra(&q);
            (x, y)
        };
        let c = [
            corner(lo, z0),
            corner(hi, z0),
            corner(hi, z1),
            corner(lo, z1),
        ];
        for k in 0..4 {
            dashed_line(img, Some(panel.rect()), c[k], c[(k + 1) % 4], CANAL);
        }
    }
}

fn panel_title(img: &mut RgbImage, panel: &PanelProjection, section_z_mm: f64) {
    let mut name = panel.view.title().to_string();
    if panel.view == View::Axial {
        name = format!("AXIAL at z {section_z_mm:+.1} mm (from feet)");
    }
    title(
        img,
        panel.origin_px.0 as i32 + 8,
        panel.origin_px.1 as i32 + 6,
        &name,
        TEXT,
    );
}

/// Angles next to the entries: medial in the axial panel, cranial in the lateral one.
fn angle_labels(
    img: &mut RgbImage,
    lp: &LevelPlan,
    sides: &[SideGeometry],
    panels: &[PanelProjection],
) {
    for s in lp.sides.iter() {
        let (Some(t), Some(g)) = (
            s.trajectory.as_ref().filter(|_| s.feasible),
            sides.iter().find(|g| g.side == s.side),
        ) else {
            continue;
        };
        let c = side_colour(s.side);
        let axial = &panels[0];
        let (x, y, _) = axial.pixel_of_vertebra(&g.entry);
        let dx = if s.side == Side::Left { 10 } else { -110 };
        let label = format!("{} med {}", s.side.name(), deg(t.medial_angle_deg));
        text(img, x as i32 + dx, y as i32 + 6, &label, c);
        let lateral = &panels[2];
        let (x, y, _) = lateral.pixel_of_vertebra(&g.entry);
        let dy = if s.side == Side::Left { -22 } else { 8 };
        let label = format!("{} cran {}", s.side.name(), deg(t.cranial_angle_deg));
        text(img, x as i32 + 8, y as i32 + dy, &label, c);
    }
}

/// Infeasible sides: the reason codes in the axial panel, on the side's half.
fn infeasible_labels(img: &mut RgbImage, lp: &LevelPlan, axial: &PanelProjection) {
    for s in lp.sides.iter().filter(|s| !s.feasible) {
        let x = if s.side == Side::Left {
            (axial.origin_px.0 + axial.size_px.0 / 2 + 8) as i32
        } else {
            axial.origin_px.0 as i32 + 8
        };
        let mut y = (axial.origin_px.1 + axial.size_px.1) as i32 - 100;
        title(
            img,
            x,
            y,
            &format!("{} NOT FEASIBLE", s.side.name().to_uppercase()),
            WARN,
        );
        for r in &s.reasons {
            y += LINE_PX;
            text(img, x, y, &code_name(&r.code), WARN);
        }
    }
}

/// Level, case and frame on the left, the legend on the right.
fn header(img: &mut RgbImage, plan: &Plan, level: Level) {
    title(
        img,
        10,
        9,
        &format!(
            "{}   case {}   frame {}",
            level.name(),
            plan.case,
            plan.frame.name()
        ),
        TEXT,
    );
    let legend_x = img.width() as i32 - 640;
    legend(img, legend_x, 10);
}

/// Below the panels from `y`: one or two lines per side, the cement estimate, the frame and
/// the instrument and margins.
fn footer(img: &mut RgbImage, plan: &Plan, lp: &LevelPlan, mut y: i32) {
    for s in &lp.sides {
        for line in side_lines(lp.level, s) {
            let colour = if s.feasible {
                side_colour(s.side)
            } else {
                WARN
            };
            text(img, 10, y, &line, colour);
            y += LINE_PX;
        }
    }
    if let Some(v) = lp.cement_volume_estimate_ml {
        text(img, 10, y, &format!("cement estimate {v:.1} ml"), TEXT);
    }
    text(
        img,
        10,
        y + LINE_PX,
        &format!(
            "vertebra frame: x left, y posterior, z superior; cannula {:.1} mm OD; margins cortex {:.1} / canal {:.1} / root {:.1} mm",
            plan.instrument.cannula_outer_diameter_mm,
            plan.safety.cortex_margin_mm,
            plan.safety.canal_margin_mm,
            plan.safety.nerve_root_margin_mm
        ),
        DIM_TEXT,
    );
}

/// The lines of text that describe a side.
fn side_lines(level: Level, s: &SidePlan) -> Vec<String> {
    let name = side_title(level, s);
    match (&s.trajectory, s.feasible) {
        (Some(t), true) => {
            let c = &t.clearance_mm;
            let mut first = format!(
                "{name}: medial {}, cranial {}, clearance cortex {:.1} / canal {:.1} / root {:.1} mm",
                deg(t.medial_angle_deg),
                deg(t.cranial_angle_deg),
                c.cortex,
                c.canal,
                c.nerve_root
            );
            if let Some(f) = c.forbidden {
                first.push_str(&format!(" / forbidden {f:.1} mm"));
            }
            let mut second = format!(
                "      in bone {:.1} mm, insertion {:.1} mm, tip depth {:.0} %",
                t.length_in_bone_mm,
                t.insertion_length_mm,
                100.0 * t.tip_depth_fraction
            );
            if let Some(route) = t.route {
                second.push_str(&format!(", route {}", code_name(&route)));
            }
            if let Some(i) = t.entry_incidence_deg {
                second.push_str(&format!(", incidence {}", deg(i)));
            }
            if let Some(b) = &s.balloon {
                second.push_str(&format!(
                    ", balloon {:.0} x {:.1} mm ({:.1} ml)",
                    b.length_mm, b.diameter_mm, b.volume_ml
                ));
            }
            match &s.navigation_tolerance {
                Some(n) => vec![
                    first,
                    second,
                    format!(
                        "      navigation tolerance {:.2} mm or {:.2} deg (limited by {}), margin violated in {:.0} % of {} mm / {} deg samples",
                        n.translation_mm,
                        n.rotation_deg,
                        n.translation_limited_by,
                        100.0 * n.violation_probability,
                        n.sigma_mm,
                        n.sigma_deg
                    ),
                ],
                None => vec![first, second],
            }
        }
        _ => {
            let codes: Vec<String> = s.reasons.iter().map(|r| code_name(&r.code)).collect();
            let first = format!("{name}: NO CANNULA - {}", codes.join(", "));
            let second = s
                .reasons
                .first()
                .map(|r| format!("      {}", r.message))
                .unwrap_or_default();
            vec![first, second]
        }
    }
}

fn legend(img: &mut RgbImage, x: i32, y: i32) {
    let items: [(&str, Rgb<u8>); 6] = [
        ("bone", BONE),
        ("canal", CANAL),
        ("isthmus", ISTHMUS),
        ("left", LEFT_COLOUR),
        ("right", RIGHT_COLOUR),
        ("balloon", BALLOON),
    ];
    let mut cx = x;
    for (name, c) in items {
        for dy in 0..10 {
            for dx in 0..18 {
                put(img, None, (cx + dx) as i64, (y + 2 + dy) as i64, c);
            }
        }
        text(img, cx + 22, y, name, TEXT);
        cx += 22 + 7 * name.len() as i32 + 18;
    }
    text(img, cx, y, "ring: bone entry, dot: tip", TEXT);
}

/// The picture of one level (see [`level_picture`]).
pub fn render_level(
    plan: &Plan,
    anatomy: &PreparedAnatomy,
    level: Level,
    options: &PictureOptions,
) -> Result<RgbImage, ExportError> {
    Ok(level_picture(plan, anatomy, level, options)?.image)
}

// ---------------------------------------------------------------------------------------------
// The overview.

/// Lateral projection of all levels of the plan with their cannulas, in the frame of the middle
/// level's vertebra (so a rotated patient is still seen from the side).
pub fn render_overview(
    plan: &Plan,
    anatomy: &PreparedAnatomy,
    options: &PictureOptions,
) -> Result<RgbImage, ExportError> {
    check_frames(plan, anatomy)?;
    let mut levels = Vec::new();
    for lp in &plan.levels {
        levels.push((lp, vertebra_of(anatomy, lp.level)?));
    }
    if levels.is_empty() {
        return Ok(RgbImage::from_pixel(400, 100, BACKGROUND));
    }
    let reference = levels[levels.len() / 2].1;
    let map = CaseToVertebra {
        frame: plan.frame,
        lps_to_vertebra: reference.frame.lps_to_vertebra,
    };
    let meshes: Vec<TriMesh> = levels
        .iter()
        .map(|(_, v)| v.mesh.transformed(&map.lps_to_vertebra))
        .collect();
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for m in &meshes {
        for p in &m.vertices_mm {
            let q = View::Lateral.project(p);
            for k in 0..2 {
                lo[k] = lo[k].min(q[k]);
                hi[k] = hi[k].max(q[k]);
            }
        }
    }
    let s = options.overview_px_per_mm.clamp(0.5, 20.0);
    let margin = 60.0;
    let w = ((hi[0] - lo[0]) * s + 2.0 * margin + 140.0).min(4000.0) as u32;
    let h = ((hi[1] - lo[1]) * s + 2.0 * margin).min(6000.0) as u32;
    let header = HEADER_PX;
    let mut img = RgbImage::from_pixel(w, h + header, BACKGROUND);
    let panel = PanelProjection {
        view: View::Lateral,
        origin_px: (0, header),
        size_px: (w, h),
        px_per_mm: s,
        center_mm: [0.5 * (lo[0] + hi[0]) - 70.0 / s, 0.5 * (lo[1] + hi[1])],
        case_to_vertebra: map,
    };
    let mut acc = vec![0.0f32; (w * h) as usize];
    for m in &meshes {
        for (a, b) in acc.iter_mut().zip(thickness_map(m, &panel)) {
            *a += b.abs();
        }
    }
    paint_thickness(&mut img, &panel, &acc);
    for (lp, _) in &levels {
        let sides: Vec<SideGeometry> = lp
            .sides
            .iter()
            .filter_map(|s| side_geometry(s, &map))
            .collect();
        draw_sides(&mut img, &panel, &sides);
    }
    // Level names in front of each body, with the count of planned sides.
    for (lp, v) in &levels {
        let centre_v = map.lps_to_vertebra * (v.frame.vertebra_to_lps() * Point::origin());
        let (_, y, _) = panel.pixel_of_vertebra(&centre_v);
        let feasible = lp.sides.iter().filter(|s| s.feasible).count();
        let colour = if feasible == lp.sides.len() {
            TEXT
        } else {
            WARN
        };
        title(&mut img, 10, y as i32 - 7, lp.level.name(), colour);
        text(
            &mut img,
            10,
            y as i32 + 9,
            &format!("{feasible}/{} sides", lp.sides.len()),
            DIM_TEXT,
        );
    }
    panel_frame(&mut img, &panel);
    scale_bar(&mut img, &panel);
    title(
        &mut img,
        10,
        9,
        &format!("case {}: lateral overview (from left)", plan.case),
        TEXT,
    );
    Ok(img)
}

fn save(img: &RgbImage, path: &Path) -> Result<(), ExportError> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| ExportError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Write `overview.png` and one `LEVEL.png` per level of the plan into `dir` (created if
/// missing); returns the paths written, overview first.
pub fn write_pictures(
    plan: &Plan,
    anatomy: &PreparedAnatomy,
    dir: &Path,
) -> Result<Vec<PathBuf>, ExportError> {
    std::fs::create_dir_all(dir).map_err(|e| ExportError::io(dir, e))?;
    let options = PictureOptions::standard();
    let mut out = Vec::new();
    let path = dir.join("overview.png");
    save(&render_overview(plan, anatomy, &options)?, &path)?;
    out.push(path);
    for lp in &plan.levels {
        let path = dir.join(format!("{}.png", lp.level.name()));
        save(&render_level(plan, anatomy, lp.level, &options)?, &path)?;
        out.push(path);
    }
    Ok(out)
}
