//! The exports (Slicer markups, glTF scene, pictures, HTML report) of a synthetic plan: L2 and
//! L3 at mean morphometry (both sides feasible), and an L3 whose pedicles are too narrow.
//!
//! The pictures are kept in `CARGO_TARGET_TMPDIR/export-pictures/` to be looked at.

use std::path::PathBuf;
use std::sync::OnceLock;

use kyphoplan_cli::export::{gltf as scene, pictures, report, slicer};
use kyphoplan_planner::anatomy::{AnatomyInput, Level, PatientFrame, Role, Side, Structure};
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::plan::Plan;
use kyphoplan_planner::{synth, Instrument, PlanRequest, PrepareOptions, PreparedAnatomy, Safety};
use serde_json::{json, Value};

fn plan_of(input: AnatomyInput) -> (Plan, PreparedAnatomy) {
    let prepared = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).expect("prepare");
    let request = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .expect("request");
    let plan = kyphoplan_planner::plan(&prepared, &request).expect("plan");
    (plan, prepared)
}

/// L2 and L3, LPS, bone only.
fn spine() -> &'static (Plan, PreparedAnatomy) {
    static CASE: OnceLock<(Plan, PreparedAnatomy)> = OnceLock::new();
    CASE.get_or_init(|| plan_of(synth::spine(&[Level::L2, Level::L3], &Pose::identity(), false).0))
}

/// The same spine given in RAS.
fn spine_ras() -> &'static (Plan, PreparedAnatomy) {
    static CASE: OnceLock<(Plan, PreparedAnatomy)> = OnceLock::new();
    CASE.get_or_init(|| {
        let mut input = synth::spine(&[Level::L2, Level::L3], &Pose::identity(), false).0;
        input.frame = PatientFrame::Ras;
        for s in &mut input.structures {
            s.mesh = s.mesh.mapped(|p| PatientFrame::Ras.from_lps(p));
        }
        plan_of(input)
    })
}

/// L3 with 4.4 mm pedicles: no corridor fits a 3.4 mm cannula with 1 mm cortex margins.
fn narrow() -> &'static (Plan, PreparedAnatomy) {
    static CASE: OnceLock<(Plan, PreparedAnatomy)> = OnceLock::new();
    CASE.get_or_init(|| {
        let mut p = synth::VertebraParams::mean(Level::L3);
        p.pedicle_width_mm = 4.4;
        let v = synth::vertebra(&p, &Pose::identity());
        plan_of(AnatomyInput {
            name: "narrow-L3".to_string(),
            frame: PatientFrame::Lps,
            structures: vec![Structure {
                name: "L3.stl".to_string(),
                role: Role::Vertebra { level: Level::L3 },
                mesh: v.mesh,
            }],
        })
    })
}

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn feasible(plan: &Plan) -> Vec<(Level, Side, [f64; 3], [f64; 3])> {
    plan.levels
        .iter()
        .flat_map(|l| {
            l.sides.iter().filter(|s| s.feasible).map(move |s| {
                let t = s.trajectory.as_ref().unwrap();
                (l.level, s.side, t.bone_entry_mm, t.target_mm)
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Slicer markups.

/// The REQUIRED structure of the Slicer markups schema v1.0.x (markups-schema-v1.0.3.json):
/// required keys and their types.
fn markups_schema_fragment() -> Value {
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "required": ["@schema", "markups"],
        "properties": {
            "@schema": {"type": "string"},
            "markups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                        "name": {"type": "string"},
                        "coordinateSystem": {"enum": ["LPS", "RAS"]},
                        "coordinateUnits": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                        "locked": {"type": "boolean"},
                        "fixedNumberOfControlPoints": {"type": "boolean"},
                        "labelFormat": {"type": "string"},
                        "lastUsedControlPointNumber": {"type": "integer"},
                        "controlPoints": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["position"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "label": {"type": "string"},
                                    "description": {"type": "string"},
                                    "associatedNodeID": {"type": "string"},
                                    "position": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                                    "orientation": {"type": "array", "items": {"type": "number"}, "minItems": 9, "maxItems": 9},
                                    "selected": {"type": "boolean"},
                                    "locked": {"type": "boolean"},
                                    "visibility": {"type": "boolean"},
                                    "positionStatus": {"enum": ["undefined", "preview", "defined"]}
                                }
                            }
                        },
                        "display": {"type": "object"}
                    }
                }
            }
        }
    })
}

fn check_markups(plan: &Plan, doc: &Value) {
    let validator = jsonschema::validator_for(&markups_schema_fragment()).unwrap();
    let errors: Vec<String> = validator.iter_errors(doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "schema violations: {errors:?}");
    // The fragment itself rejects a wrong document.
    assert!(!validator.is_valid(&json!({"@schema": "x", "markups": [{"type": "Point"}]})));

    assert_eq!(doc["@schema"], slicer::MARKUPS_SCHEMA);
    let markups = doc["markups"].as_array().unwrap();
    let sides = feasible(plan);
    assert!(!sides.is_empty());
    assert_eq!(markups.len(), 2 * sides.len());
    let by_name = |name: &str| {
        markups
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no markup named {name}"))
    };
    let position = |v: &Value| -> [f64; 3] {
        let a = v["position"].as_array().unwrap();
        [0, 1, 2].map(|i| a[i].as_f64().unwrap())
    };
    for (level, side, entry, tip) in sides {
        let title = format!("{} {}", level.name(), side.name());
        for (kind, name) in [
            ("Line", format!("{title} cannula")),
            ("Fiducial", title.clone()),
        ] {
            let m = by_name(&name);
            assert_eq!(m["type"], kind);
            assert_eq!(m["coordinateSystem"], plan.frame.name());
            assert_eq!(m["coordinateUnits"], "mm");
            let cps = m["controlPoints"].as_array().unwrap();
            assert_eq!(cps.len(), 2);
            assert_eq!(cps[0]["label"], format!("{title} entry"));
            assert_eq!(cps[1]["label"], format!("{title} tip"));
            assert_eq!(position(&cps[0]), entry, "{name} entry");
            assert_eq!(position(&cps[1]), tip, "{name} tip");
            assert_eq!(cps[0]["positionStatus"], "defined");
            assert_eq!(cps[0]["orientation"].as_array().unwrap().len(), 9);
        }
    }
}

#[test]
fn slicer_markups_follow_the_schema_and_the_plan() {
    let (plan, _) = spine();
    let path = out_dir("export-slicer").join("plan.mrk.json");
    slicer::write_markups(plan, &path).unwrap();
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc, slicer::to_markups_json(plan));
    check_markups(plan, &doc);
}

#[test]
fn slicer_markups_of_a_ras_case_are_ras() {
    let (plan, _) = spine_ras();
    assert_eq!(plan.frame, PatientFrame::Ras);
    check_markups(plan, &slicer::to_markups_json(plan));
}

#[test]
fn slicer_markups_leave_out_infeasible_sides() {
    let (plan, _) = narrow();
    let doc = slicer::to_markups_json(plan);
    let infeasible: Vec<Side> = plan.levels[0]
        .sides
        .iter()
        .filter(|s| !s.feasible)
        .map(|s| s.side)
        .collect();
    assert!(
        !infeasible.is_empty(),
        "the narrow pedicle must make a side infeasible"
    );
    for side in infeasible {
        let name = format!("L3 {} cannula", side.name());
        assert!(doc["markups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != name.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// glTF.

struct Bounds {
    min: [f32; 3],
    max: [f32; 3],
}

impl Bounds {
    fn contains(&self, p: [f64; 3], tol: f32) -> bool {
        (0..3).all(|i| p[i] as f32 >= self.min[i] - tol && p[i] as f32 <= self.max[i] + tol)
    }
}

/// Read a .glb back: node name -> bounds of its mesh's positions (read from the BIN chunk),
/// checking the POSITION accessor's min/max on the way.
fn read_glb(bytes: &[u8]) -> (gltf::Document, std::collections::BTreeMap<String, Bounds>) {
    assert_eq!(&bytes[0..4], b"glTF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 2);
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
        bytes.len()
    );
    assert_eq!(bytes.len() % 4, 0);
    let glb = gltf::Gltf::from_slice(bytes).expect("valid glTF");
    let blob = glb.blob.clone().expect("BIN chunk");
    let mut out = std::collections::BTreeMap::new();
    for node in glb.document.nodes() {
        let Some(mesh) = node.mesh() else { continue };
        let mut b = Bounds {
            min: [f32::INFINITY; 3],
            max: [f32::NEG_INFINITY; 3],
        };
        for prim in mesh.primitives() {
            let acc = prim.get(&gltf::Semantic::Positions).expect("POSITION");
            let (min, max) = (
                acc.min().expect("POSITION min"),
                acc.max().expect("POSITION max"),
            );
            let reader = prim.reader(|_| Some(&blob[..]));
            let mut n = 0;
            for p in reader.read_positions().expect("positions") {
                n += 1;
                for (i, c) in p.into_iter().enumerate() {
                    b.min[i] = b.min[i].min(c);
                    b.max[i] = b.max[i].max(c);
                }
            }
            assert_eq!(n, acc.count());
            for i in 0..3 {
                assert_eq!(min[i].as_f64().unwrap() as f32, b.min[i]);
                assert_eq!(max[i].as_f64().unwrap() as f32, b.max[i]);
            }
            assert!(reader.read_indices().is_some());
            assert!(prim.material().name().is_some());
        }
        out.insert(node.name().unwrap().to_string(), b);
    }
    (glb.document, out)
}

fn check_glb(plan: &Plan, anatomy: &PreparedAnatomy, name: &str) {
    let path = out_dir("export-gltf").join(name);
    scene::write_glb(plan, anatomy, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (doc, bounds) = read_glb(&bytes);
    let sides = feasible(plan);
    let balloons: usize = plan
        .levels
        .iter()
        .flat_map(|l| &l.sides)
        .filter(|s| s.feasible && s.balloon.is_some())
        .count();
    // Bone and derived canal per level, one cannula per feasible side, one balloon each.
    assert_eq!(
        doc.meshes().count(),
        2 * plan.levels.len() + sides.len() + balloons
    );
    let materials: Vec<_> = doc
        .materials()
        .filter_map(|m| m.name().map(str::to_string))
        .collect();
    assert_eq!(materials, ["bone", "cannula", "balloon", "canal"]);
    for level in &plan.levels {
        let bone = &bounds[level.level.name()];
        assert!(bounds.contains_key(&format!("{} canal (derived)", level.level.name())));
        for s in level.sides.iter().filter(|s| s.feasible) {
            let t = s.trajectory.as_ref().unwrap();
            // The entry is on the bone surface: inside the bone mesh's box, in the same frame.
            assert!(bone.contains(t.bone_entry_mm, 1e-3));
        }
    }
    for (level, side, entry, tip) in sides {
        let title = format!("{} {}", level.name(), side.name());
        let cannula = &bounds[&format!("{title} cannula")];
        assert!(cannula.contains(entry, 1e-3), "{title} entry");
        assert!(cannula.contains(tip, 1e-3), "{title} tip");
        assert!(bounds.contains_key(&format!("{title} balloon")));
    }
    // The root converts millimetres to metres, z-up to y-up.
    let root = doc.scenes().next().unwrap().nodes().next().unwrap();
    let (_, rotation, scale) = root.transform().decomposed();
    assert_eq!(scale, [0.001; 3]);
    assert!((rotation[0] + std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
}

#[test]
fn glb_scene_reads_back_with_named_nodes_and_plan_geometry() {
    let (plan, anatomy) = spine();
    check_glb(plan, anatomy, "spine.glb");
}

#[test]
fn glb_scene_of_a_ras_case_is_in_ras() {
    let (plan, anatomy) = spine_ras();
    check_glb(plan, anatomy, "spine-ras.glb");
}

// ---------------------------------------------------------------------------------------------
// Pictures.

fn has_colour_near(img: &image::RgbImage, (x, y): (f64, f64), colour: image::Rgb<u8>) -> bool {
    let (x, y) = (x.floor() as i64, y.floor() as i64);
    (-1..=1).any(|dy| {
        (-1..=1).any(|dx| {
            let (px, py) = (x + dx, y + dy);
            px >= 0
                && py >= 0
                && (px as u32) < img.width()
                && (py as u32) < img.height()
                && *img.get_pixel(px as u32, py as u32) == colour
        })
    })
}

#[test]
fn level_pictures_show_the_cannulas_at_their_tips() {
    let (plan, anatomy) = spine();
    let options = pictures::PictureOptions::standard();
    for level in [Level::L2, Level::L3] {
        let pic = pictures::level_picture(plan, anatomy, level, &options).unwrap();
        assert_eq!(pic.image.width(), 3 * options.panel_px);
        assert!(pic.image.height() > options.panel_px);
        let level_plan = plan.levels.iter().find(|l| l.level == level).unwrap();
        assert!(level_plan.sides.iter().all(|s| s.feasible));
        for s in &level_plan.sides {
            let t = s.trajectory.as_ref().unwrap();
            let colour = pictures::side_colour(s.side);
            let other = pictures::side_colour(s.side.other());
            for view in [
                pictures::View::Axial,
                pictures::View::Ap,
                pictures::View::Lateral,
            ] {
                let at = pic.panel(view).pixel_of(t.target_mm);
                // Seen from the left, the left cannula hides the right one where they overlap.
                let hidden_by_other = view == pictures::View::Lateral && s.side == Side::Right;
                assert!(
                    has_colour_near(&pic.image, at, colour)
                        || (hidden_by_other && has_colour_near(&pic.image, at, other)),
                    "{level} {} tip in {view:?} at {at:?}",
                    s.side
                );
            }
        }
        // Bone is drawn: many light pixels in the AP panel.
        let ap = pic.panel(pictures::View::Ap);
        let light = (ap.origin_px.1..ap.origin_px.1 + ap.size_px.1)
            .flat_map(|y| (ap.origin_px.0..ap.origin_px.0 + ap.size_px.0).map(move |x| (x, y)))
            .filter(|&(x, y)| pic.image.get_pixel(x, y)[0] > 120)
            .count();
        assert!(light > 5000, "{light} light pixels");
    }
    let dir = out_dir("export-pictures");
    let files = pictures::write_pictures(plan, anatomy, &dir).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["overview.png", "L2.png", "L3.png"]);
    for f in &files {
        let img = image::open(f).expect("PNG").to_rgb8();
        assert!(img.width() > 200 && img.height() > 200);
    }
    let l3 = image::open(&files[2]).unwrap().to_rgb8();
    assert_eq!(l3.width(), 3 * options.panel_px);
}

/// Pixels of exactly `colour` inside a panel of a level picture.
fn pixels_of(pic: &pictures::LevelPicture, view: pictures::View, colour: image::Rgb<u8>) -> usize {
    let panel = pic.panel(view);
    (panel.origin_px.1..panel.origin_px.1 + panel.size_px.1)
        .flat_map(|y| (panel.origin_px.0..panel.origin_px.0 + panel.size_px.0).map(move |x| (x, y)))
        .filter(|&(x, y)| *pic.image.get_pixel(x, y) == colour)
        .count()
}

const VIEWS: [pictures::View; 3] = [
    pictures::View::Axial,
    pictures::View::Ap,
    pictures::View::Lateral,
];

#[test]
fn infeasible_side_draws_no_cannula() {
    // The pixel count sees a cannula when there is one: a feasible side of the spine is drawn
    // in its colour in every panel.
    let (spine_plan, spine_anatomy) = spine();
    let options = pictures::PictureOptions::standard();
    let l3 = spine_plan
        .levels
        .iter()
        .find(|l| l.level == Level::L3)
        .expect("the spine plans L3");
    let drawn = l3
        .sides
        .iter()
        .find(|s| s.feasible)
        .expect("the mean L3 has a feasible side");
    let pic = pictures::level_picture(spine_plan, spine_anatomy, Level::L3, &options).unwrap();
    for view in VIEWS {
        assert!(
            pixels_of(&pic, view, pictures::side_colour(drawn.side)) > 0,
            "the feasible {} cannula is not drawn in {view:?}",
            drawn.side
        );
    }

    // Both sides of the 4.4 mm pedicles are infeasible, and neither gets a cannula.
    let (plan, anatomy) = narrow();
    let level = &plan.levels[0];
    assert_eq!(level.level, Level::L3);
    let pic = pictures::level_picture(plan, anatomy, Level::L3, &options).unwrap();
    let dir = out_dir("export-pictures");
    pic.image.save(dir.join("narrow-L3.png")).unwrap();
    for side in [Side::Left, Side::Right] {
        let s = level
            .sides
            .iter()
            .find(|s| s.side == side)
            .unwrap_or_else(|| panic!("the narrow L3 plan has a {side} side"));
        assert!(
            !s.feasible && s.trajectory.is_none(),
            "the {side} side of a 4.4 mm pedicle must be infeasible: {s:?}"
        );
        for view in VIEWS {
            let count = pixels_of(&pic, view, pictures::side_colour(side));
            assert_eq!(count, 0, "{side} cannula drawn in {view:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report.

#[test]
fn report_is_self_contained_and_complete() {
    let (plan, anatomy) = spine();
    let (narrow_plan, narrow_anatomy) = narrow();
    let dir = out_dir("export-report");
    let pics = pictures::write_pictures(plan, anatomy, &dir.join("pictures")).unwrap();
    let inputs = vec![
        ("L2.stl".to_string(), "ab".repeat(32)),
        ("case <1>.toml".to_string(), "cd".repeat(32)),
    ];
    let path = dir.join("report.html");
    report::write_report(plan, anatomy, &pics, &inputs, &path).unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("data:image/png;base64,").count(), pics.len());
    assert!(!html.contains("src=\"http"), "no external resources");
    for level in ["L2", "L3"] {
        assert!(
            html.contains(&format!("{level} left")) && html.contains(&format!("{level} right"))
        );
    }
    assert!(html.contains(&"ab".repeat(32)));
    assert!(html.contains("case &lt;1&gt;.toml"));
    assert!(html.contains(&plan.planner_version));
    let t = plan.levels[0].sides[0].trajectory.as_ref().unwrap();
    assert!(html.contains(&format!("{:.1}", t.medial_angle_deg)));

    // The infeasible case: every reason code, and text from the plan escaped.
    let mut narrow_plan = narrow_plan.clone();
    narrow_plan.case = "<script>alert(1)</script>".to_string();
    let html = report::to_html(&narrow_plan, narrow_anatomy, &[], &[]).unwrap();
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;"));
    let mut codes = 0;
    for s in narrow_plan.levels[0].sides.iter().filter(|s| !s.feasible) {
        for r in &s.reasons {
            let code = serde_json::to_value(r.code).unwrap();
            assert!(html.contains(code.as_str().unwrap()), "{code}");
            codes += 1;
        }
        for a in &s.alternatives {
            let code = serde_json::to_value(a.code).unwrap();
            assert!(html.contains(code.as_str().unwrap()), "{code}");
        }
    }
    assert!(codes > 0);
    std::fs::write(dir.join("narrow-report.html"), html).unwrap();
}
