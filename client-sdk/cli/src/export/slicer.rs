//! 3D Slicer markups JSON (`.mrk.json`, schema v1.0.3): the planned cannulas, for planning
//! engineers to open directly in Slicer over the CT.
//!
//! Per feasible side: one `Line` markup "L3 left cannula" from the bone entry to the tip, and one
//! `Fiducial` markup "L3 left" with the points "L3 left entry" and "L3 left tip". Coordinates are
//! the plan's own numbers in the plan's frame (`coordinateSystem` "LPS" or "RAS"), millimetres.
//! Infeasible sides have no markups.

use std::path::Path;

use kyphoplan_planner::anatomy::Side;
use kyphoplan_planner::plan::Plan;
use serde_json::{json, Value};

use super::{feasible_sides, side_title, write_file, ExportError};

/// The schema URL Slicer writes and reads.
pub const MARKUPS_SCHEMA: &str = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#";

/// Identity orientation, row-major 3x3.
const IDENTITY_ORIENTATION: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

/// Display colour of a side (RGB 0..1): left orange, right cyan, as in the pictures.
pub(crate) fn side_colour(side: Side) -> [f64; 3] {
    match side {
        Side::Left => [1.0, 0.55, 0.0],
        Side::Right => [0.0, 0.75, 1.0],
    }
}

fn control_point(id: usize, label: &str, position: [f64; 3]) -> Value {
    json!({
        "id": id.to_string(),
        "label": label,
        "description": "",
        "associatedNodeID": "",
        "position": position,
        "orientation": IDENTITY_ORIENTATION,
        "selected": true,
        "locked": true,
        "visibility": true,
        "positionStatus": "defined",
    })
}

fn display(side: Side) -> Value {
    let c = side_colour(side);
    json!({
        "visibility": true,
        "opacity": 1.0,
        "color": c,
        "selectedColor": c,
        "activeColor": [0.4, 1.0, 0.0],
        "propertiesLabelVisibility": true,
        "pointLabelsVisibility": true,
        "textScale": 3.0,
        "glyphType": "Sphere3D",
        "glyphScale": 1.0,
        "glyphSize": 3.0,
        "useGlyphScale": true,
        "sliceProjection": false,
        "lineThickness": 0.2,
        "lineColorFadingStart": 1.0,
        "lineColorFadingEnd": 10.0,
        "lineColorFadingSaturation": 1.0,
        "lineColorFadingHueOffset": 0.0,
        "handlesInteractive": false,
        "snapMode": "toVisibleSurface",
    })
}

fn markup(kind: &str, name: &str, frame: &str, points: Vec<Value>, side: Side) -> Value {
    let n = points.len();
    json!({
        "type": kind,
        "coordinateSystem": frame,
        "coordinateUnits": "mm",
        "locked": true,
        "fixedNumberOfControlPoints": true,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": n,
        "name": name,
        "controlPoints": points,
        "measurements": [],
        "display": display(side),
    })
}

/// The markups document of `plan`.
pub fn to_markups_json(plan: &Plan) -> Value {
    let frame = plan.frame.name();
    let mut markups = Vec::new();
    for level in &plan.levels {
        for (side, t) in feasible_sides(level) {
            let title = side_title(level.level, side);
            let entry_label = format!("{title} entry");
            let tip_label = format!("{title} tip");
            markups.push(markup(
                "Line",
                &format!("{title} cannula"),
                frame,
                vec![
                    control_point(1, &entry_label, t.bone_entry_mm),
                    control_point(2, &tip_label, t.target_mm),
                ],
                side.side,
            ));
            markups.push(markup(
                "Fiducial",
                &title,
                frame,
                vec![
                    control_point(1, &entry_label, t.bone_entry_mm),
                    control_point(2, &tip_label, t.target_mm),
                ],
                side.side,
            ));
        }
    }
    json!({
        "@schema": MARKUPS_SCHEMA,
        "markups": markups,
    })
}

/// Write the markups of `plan` to `path` (conventionally `*.mrk.json`).
pub fn write_markups(plan: &Plan, path: &Path) -> Result<(), ExportError> {
    let text =
        serde_json::to_string_pretty(&to_markups_json(plan)).map_err(|e| ExportError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_file(path, text.as_bytes())
}
