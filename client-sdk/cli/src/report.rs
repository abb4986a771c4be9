//! Readable tables of plans and evaluations for the terminal.

use std::fmt::Write;

use kyphoplan_planner::plan::{Evaluation, NavigationTolerance, Plan, Reason, Route};

use crate::export::code_name;

/// One decimal, and never "-0.0": a tilt of -0.02 deg reads as 0.0.
fn num(v: f64) -> String {
    let rounded = (v * 10.0).round() / 10.0 + 0.0;
    format!("{rounded:.1}")
}

fn reason_text(r: &Reason) -> String {
    let Reason {
        code,
        message,
        value_mm,
        limit_mm,
        value_deg,
        limit_deg,
    } = r;
    let code = code_name(code);
    let mut s = format!("{code}: {message}");
    match (value_mm, limit_mm) {
        (Some(v), Some(l)) => {
            let _ = write!(s, " (value {v:.2} mm, limit {l:.2} mm)");
        }
        (Some(v), None) => {
            let _ = write!(s, " (value {v:.2} mm)");
        }
        (None, Some(l)) => {
            let _ = write!(s, " (limit {l:.2} mm)");
        }
        (None, None) => {}
    }
    match (value_deg, limit_deg) {
        (Some(v), Some(l)) => {
            let _ = write!(s, " (value {v:.1} deg, limit {l:.1} deg)");
        }
        (Some(v), None) => {
            let _ = write!(s, " (value {v:.1} deg)");
        }
        (None, Some(l)) => {
            let _ = write!(s, " (limit {l:.1} deg)");
        }
        (None, None) => {}
    }
    s
}

/// The route's name as in the plan JSON (`transpedicular`), or `-` when unknown.
fn route_name(route: Option<Route>) -> String {
    route.map_or_else(|| "-".to_owned(), |r| code_name(&r))
}

/// One row per level and side: feasibility, angles, clearances, balloon, reason.
pub fn plan_table(plan: &Plan) -> String {
    let header = [
        "level",
        "side",
        "feasible",
        "approach",
        "medial_deg",
        "cranial_deg",
        "incidence_deg",
        "cortex_mm",
        "canal_mm",
        "root_mm",
        "balloon_mm",
        "volume_ml",
        "tol_mm",
        "tol_deg",
        "p_breach",
        "reason",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for level in &plan.levels {
        for side in &level.sides {
            let t = side.trajectory.as_ref();
            let b = side.balloon.as_ref();
            let tol = side.navigation_tolerance.as_ref();
            let dash = || "-".to_owned();
            rows.push(vec![
                level.level.to_string(),
                side.side.to_string(),
                if side.feasible { "yes" } else { "NO" }.to_owned(),
                side.approach.to_string(),
                t.map_or_else(dash, |t| num(t.medial_angle_deg)),
                t.map_or_else(dash, |t| num(t.cranial_angle_deg)),
                t.and_then(|t| t.entry_incidence_deg).map_or_else(dash, num),
                t.map_or_else(dash, |t| num(t.clearance_mm.cortex)),
                t.map_or_else(dash, |t| num(t.clearance_mm.canal)),
                t.map_or_else(dash, |t| num(t.clearance_mm.nerve_root)),
                b.map_or_else(dash, |b| {
                    format!("{:.0} x {:.1}", b.length_mm, b.diameter_mm)
                }),
                b.map_or_else(dash, |b| format!("{:.2}", b.volume_ml)),
                tol.map_or_else(dash, |t| format!("{:.2}", t.translation_mm)),
                tol.map_or_else(dash, |t| format!("{:.2}", t.rotation_deg)),
                tol.map_or_else(dash, |t| format!("{:.2}", t.violation_probability)),
                side.reasons.first().map_or_else(dash, reason_text),
            ]);
        }
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = format!(
        "case {} ({}), {}\n",
        plan.case,
        plan.frame.name(),
        plan.procedure
    );
    let line = |cells: &[String], out: &mut String| {
        let last = cells.len() - 1;
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ");
            }
        }
        out.push('\n');
    };
    line(&header.map(str::to_owned), &mut out);
    for row in &rows {
        line(row, &mut out);
    }
    if plan
        .levels
        .iter()
        .any(|l| l.sides.iter().any(|s| s.navigation_tolerance.is_some()))
    {
        let _ = writeln!(
            out,
            "tol_mm / tol_deg: certified tolerance to navigation error (rigid translation, rotation about the bone entry) of cannula and balloon; p_breach: probability of a margin violation under the error model{}",
            match &plan.safety.navigation_error() {
                Some((mm, deg)) => format!("; required: {mm} mm and {deg} deg together"),
                None => String::new(),
            }
        );
    }
    // Which approach each level got, and why the preferred ones were not possible.
    for level in &plan.levels {
        let got = level
            .approach
            .map_or_else(|| "no approach possible".to_owned(), |a| a.to_string());
        let _ = writeln!(out, "{}: {got}", level.level);
        for r in &level.approach_reasons {
            let _ = writeln!(out, "  {}", reason_text(r));
        }
    }
    for notice in &plan.mesh_fixes {
        let _ = writeln!(out, "note: {}: {:?}", notice.structure, notice.fix);
    }
    out
}

/// The verdict and every violation with its number.
pub fn evaluation_report(e: &Evaluation) -> String {
    let mut out = format!(
        "{} {} {}: {}\n",
        e.level,
        e.side,
        if e.safe { "SAFE" } else { "UNSAFE" },
        if e.violations.is_empty() {
            "no violation".to_owned()
        } else {
            format!("{} violation(s)", e.violations.len())
        }
    );
    let t = &e.trajectory;
    let _ = writeln!(
        out,
        "route {}; entry incidence {} deg; medial {:.1} deg, cranial {:.1} deg; clearance cortex {:.2} mm, canal {:.2} mm, nerve root {:.2} mm",
        route_name(t.route),
        t.entry_incidence_deg.map_or_else(|| "-".to_owned(), num),
        t.medial_angle_deg, t.cranial_angle_deg, t.clearance_mm.cortex, t.clearance_mm.canal, t.clearance_mm.nerve_root
    );
    if let Some(tol) = &e.navigation_tolerance {
        let _ = writeln!(out, "{}", tolerance_text(tol));
    }
    for v in &e.violations {
        let _ = writeln!(out, "  {}", reason_text(v));
    }
    out
}

/// One line on a trajectory's tolerance to navigation error.
pub fn tolerance_text(t: &NavigationTolerance) -> String {
    let NavigationTolerance {
        translation_mm,
        rotation_deg,
        translation_limited_by,
        rotation_limited_by,
        violation_probability,
        cannula_translation_mm,
        cannula_rotation_deg,
        sigma_mm,
        sigma_deg,
        samples,
    } = t;
    format!(
        "navigation tolerance (certified): {translation_mm:.2} mm translation (limited by {translation_limited_by}) or {rotation_deg:.2} deg rotation about the bone entry (limited by {rotation_limited_by}); cannula alone {cannula_translation_mm:.2} mm / {cannula_rotation_deg:.2} deg; margin violated in {:.0} % of {samples} samples of {sigma_mm} mm / {sigma_deg} deg RMS error",
        violation_probability * 100.0
    )
}

/// What the server stored of an anatomy (`kyphoplan upload`): one row per structure (with the
/// label ids, voxels and pieces left out of a label map's), the vertebrae refused as cut by the
/// scan and the label map's notices.
pub fn anatomy_table(anatomy: &kyphoplan_proto::pb::Anatomy) -> String {
    use kyphoplan_proto::pb;
    let mut out = String::new();
    let _ = writeln!(out, "anatomy {} ({})", anatomy.anatomy_id, anatomy.name);
    if let Some(lm) = &anatomy.labelmap {
        let dims: Vec<String> = lm.dims.iter().map(u64::to_string).collect();
        let spacing: Vec<String> = lm.spacing_mm.iter().map(|s| format!("{s:.2}")).collect();
        let _ = writeln!(
            out,
            "label map {}: {} voxels, spacing {} mm, {}",
            lm.file_name,
            dims.join(" x "),
            spacing.join(" x "),
            pb::LabelConvention::try_from(lm.convention)
                .map(|c| c
                    .as_str_name()
                    .trim_start_matches("LABEL_CONVENTION_")
                    .to_lowercase())
                .unwrap_or_else(|_| lm.convention.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "{:<16} {:<12} {:<6} {:>10} {:>10} {:>10}  pieces left out (ml)",
        "structure", "role", "level", "triangles", "labels", "voxels"
    );
    for s in &anatomy.structures {
        let d = s.descriptor.clone().unwrap_or_default();
        let role = pb::Role::try_from(d.role)
            .map(|r| r.as_str_name().trim_start_matches("ROLE_").to_lowercase())
            .unwrap_or_default();
        let level = match pb::Level::try_from(d.level) {
            Ok(pb::Level::Unspecified) | Err(_) => "-".to_owned(),
            Ok(l) => l.as_str_name().trim_start_matches("LEVEL_").to_owned(),
        };
        let (labels, voxels, dropped) = match &s.label {
            None => ("-".to_owned(), "-".to_owned(), String::new()),
            Some(l) => (
                l.labels
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                l.voxel_count.to_string(),
                l.dropped_pieces_ml
                    .iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:<6} {:>10} {:>10} {:>10}  {}",
            d.name, role, level, s.triangle_count, labels, voxels, dropped
        );
    }
    if let Some(lm) = &anatomy.labelmap {
        for r in &lm.refused {
            let _ = writeln!(out, "refused: {}", r.message);
        }
        for n in &lm.notices {
            if !lm.refused.iter().any(|r| &r.message == n) {
                let _ = writeln!(out, "notice: {n}");
            }
        }
    }
    out
}
