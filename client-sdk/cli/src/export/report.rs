//! One self-contained HTML report of a plan: pictures embedded as data URIs, the measurements
//! per level and side, the reasons and alternatives of infeasible sides, instrument and safety
//! settings, keep-outs (given or derived), input checksums, planner version and date. Every
//! text from the plan or the inputs is HTML-escaped.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kyphoplan_planner::plan::{KeepOutSource, LevelPlan, Plan, SidePlan};
use kyphoplan_planner::prepare::PreparedAnatomy;
use kyphoplan_planner::request::Procedure;

use super::{check_frames, code_name, write_file, ExportError};

/// Escape text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The current time as "YYYY-MM-DD HH:MM UTC".
fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #1d2330; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 2px solid #d0d4dc; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #c8ccd4; padding: 4px 8px; text-align: right; }
th { background: #eef0f4; } td.t, th.t { text-align: left; }
tr.infeasible td { background: #fdecec; }
.ok { color: #17803d; font-weight: bold; } .no { color: #c62828; font-weight: bold; }
.meta { color: #5a6270; } figure { margin: 12px 0; } figure img { max-width: 100%; border: 1px solid #c8ccd4; }
code { font-size: 13px; } .note { background: #fff8e1; border: 1px solid #f0d890; padding: 8px 12px; }
";

fn mm(v: f64) -> String {
    format!("{v:.1}")
}

fn side_rows(out: &mut String, level: &LevelPlan, s: &SidePlan) {
    let name = super::side_title(level.level, s);
    match (&s.trajectory, s.feasible) {
        (Some(t), true) => {
            let c = &t.clearance_mm;
            let forbidden = c.forbidden.map(mm).unwrap_or_else(|| "-".into());
            let (balloon, volume, b_cortex, b_wall) = match &s.balloon {
                Some(b) => (
                    format!("{:.0} x {:.1}", b.length_mm, b.diameter_mm),
                    format!("{:.2}", b.volume_ml),
                    mm(b.cortex_clearance_mm),
                    mm(b.posterior_wall_clearance_mm),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            let (tol_mm, tol_deg, p_breach) = match &s.navigation_tolerance {
                Some(n) => (
                    format!("{:.2}", n.translation_mm),
                    format!("{:.2}", n.rotation_deg),
                    format!("{:.0} %", 100.0 * n.violation_probability),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "<tr><td class=t>{}</td><td class=t><span class=ok>feasible</span></td>\
                 <td class=t>{}</td><td>{}</td>\
                 <td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{:.0} %</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&name),
                t.route.map_or_else(|| "-".into(), |r| code_name(&r)),
                t.entry_incidence_deg
                    .map_or_else(|| "-".into(), |i| format!("{i:.1}")),
                t.medial_angle_deg,
                t.cranial_angle_deg,
                mm(c.cortex),
                mm(c.canal),
                mm(c.nerve_root),
                forbidden,
                mm(t.length_in_bone_mm),
                mm(t.insertion_length_mm),
                100.0 * t.tip_depth_fraction,
                balloon,
                volume,
                b_cortex,
                b_wall,
                tol_mm,
                tol_deg,
                p_breach,
            );
        }
        _ => {
            let codes: Vec<String> = s
                .reasons
                .iter()
                .map(|r| format!("<code>{}</code>", escape_html(&code_name(&r.code))))
                .collect();
            let _ = writeln!(
                out,
                "<tr class=infeasible><td class=t>{}</td><td class=t><span class=no>not feasible</span></td>\
                 <td class=t colspan=18>{}</td></tr>",
                escape_html(&name),
                codes.join(", ")
            );
        }
    }
}

fn infeasible_details(out: &mut String, plan: &Plan) {
    let mut any = false;
    for level in &plan.levels {
        for s in level.sides.iter().filter(|s| !s.feasible) {
            if !any {
                out.push_str("<h2>Infeasible sides: reasons and alternatives</h2>\n");
                any = true;
            }
            let _ = writeln!(
                out,
                "<h3>{} {}</h3>\n<table><tr><th class=t>reason</th><th class=t>message</th><th>value (mm)</th><th>limit (mm)</th></tr>",
                escape_html(level.level.name()),
                escape_html(s.side.name())
            );
            for r in &s.reasons {
                let _ = writeln!(
                    out,
                    "<tr><td class=t><code>{}</code></td><td class=t>{}</td><td>{}</td><td>{}</td></tr>",
                    escape_html(&code_name(&r.code)),
                    escape_html(&r.message),
                    r.value_mm.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                    r.limit_mm.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
                );
            }
            out.push_str("</table>\n");
            if !s.alternatives.is_empty() {
                out.push_str(
                    "<table><tr><th class=t>alternative</th><th class=t>message</th></tr>\n",
                );
                for a in &s.alternatives {
                    let _ = writeln!(
                        out,
                        "<tr><td class=t><code>{}</code></td><td class=t>{}</td></tr>",
                        escape_html(&code_name(&a.code)),
                        escape_html(&a.message)
                    );
                }
                out.push_str("</table>\n");
            }
        }
    }
}

fn picture(out: &mut String, path: &Path) -> Result<(), ExportError> {
    let bytes = std::fs::read(path).map_err(|e| ExportError::io(path, e))?;
    let mime = match path.extension().and_then(|e| e.to_str()) {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("svg") => "image/svg+xml",
        _ => "image/png",
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "<figure><img alt=\"{}\" src=\"data:{mime};base64,{}\"><figcaption class=meta>{}</figcaption></figure>",
        escape_html(&name),
        base64::engine::general_purpose::STANDARD.encode(&bytes),
        escape_html(&name)
    );
    Ok(())
}

/// The report as an HTML string.
pub fn to_html(
    plan: &Plan,
    anatomy: &PreparedAnatomy,
    pictures: &[PathBuf],
    inputs: &[(String, String)],
) -> Result<String, ExportError> {
    check_frames(plan, anatomy)?;
    let mut out = String::new();
    let case = escape_html(&plan.case);
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n<title>kyphoplan plan: {case}</title>\n<style>{STYLE}</style>\n</head>\n<body>"
    );
    let title = match plan.procedure {
        Procedure::Kyphoplasty => "Balloon kyphoplasty",
        Procedure::Vertebroplasty => "Vertebroplasty",
    };
    let approaches: Vec<String> = plan.approaches.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(out, "<h1>{title} plan: {case}</h1>");
    let _ = writeln!(
        out,
        "<p class=meta>Approaches allowed, in order of preference: {}</p>",
        escape_html(&approaches.join(", "))
    );
    let _ = writeln!(
        out,
        "<p class=meta>Planner version {} &middot; generated {} &middot; coordinates {} (mm) &middot; levels {}</p>",
        escape_html(&plan.planner_version),
        now_utc(),
        plan.frame.name(),
        plan.levels
            .iter()
            .map(|l| l.level.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str(
        "<p class=note>A planning aid computed from surface meshes: verify every trajectory on the \
         images before use. Entry is where the cannula axis crosses the bone surface; clearances \
         are surface to surface. Navigation tolerance: the largest rigid translation, or rotation about the bone entry, under which every margin of cannula and balloon still holds (certified from the exact clearance profile); P(margin violated): under the error model of the README (1 mm / 1 deg RMS).</p>\n",
    );

    // Measurements.
    out.push_str("<h2>Measurements per level and side</h2>\n");
    out.push_str(
        "<table><tr><th class=t>level side</th><th class=t>status</th><th class=t>route</th>\
         <th>entry incidence (&deg;)</th><th>medial (&deg;)</th>\
         <th>cranial (&deg;)</th><th>cortex (mm)</th><th>canal (mm)</th><th>root (mm)</th>\
         <th>forbidden (mm)</th><th>in bone (mm)</th><th>insertion (mm)</th><th>tip depth</th>\
         <th>balloon L x D (mm)</th><th>balloon (ml)</th><th>balloon-cortex (mm)</th>\
         <th>balloon-posterior wall (mm)</th><th>navigation tolerance (mm)</th>\
         <th>navigation tolerance (&deg;)</th><th>P(margin violated)</th></tr>\n",
    );
    for level in &plan.levels {
        for s in &level.sides {
            side_rows(&mut out, level, s);
        }
    }
    out.push_str("</table>\n");
    out.push_str("<table><tr><th class=t>level</th><th class=t>approach</th><th>cement estimate (ml)</th><th>body W x D x H (mm)</th><th class=t>bone mesh</th><th class=t>preferred approaches not possible</th></tr>\n");
    for level in &plan.levels {
        let cement = level
            .cement_volume_estimate_ml
            .map(|v| format!("{v:.1}"))
            .unwrap_or_else(|| "-".into());
        let body = level
            .vertebra_frame
            .as_ref()
            .map(|f| {
                format!(
                    "{:.1} x {:.1} x {:.1}",
                    f.body_width_mm, f.body_depth_mm, f.body_height_mm
                )
            })
            .unwrap_or_else(|| "-".into());
        let mesh = anatomy
            .vertebra(level.level)
            .map(|v| format!("{} ({} triangles)", v.structure, v.mesh.triangles.len()))
            .unwrap_or_else(|| "-".into());
        let approach = level
            .approach
            .map_or_else(|| "none possible".to_owned(), |a| a.to_string());
        let why: Vec<String> = level
            .approach_reasons
            .iter()
            .map(|r| {
                format!(
                    "<code>{}</code> {}",
                    escape_html(&code_name(&r.code)),
                    escape_html(&r.message)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "<tr><td class=t>{}</td><td class=t>{}</td><td>{cement}</td><td>{body}</td><td class=t>{}</td><td class=t>{}</td></tr>",
            escape_html(level.level.name()),
            escape_html(&approach),
            escape_html(&mesh),
            why.join("<br>")
        );
    }
    out.push_str("</table>\n");

    infeasible_details(&mut out, plan);

    // Pictures.
    if !pictures.is_empty() {
        out.push_str("<h2>Pictures</h2>\n");
        for p in pictures {
            picture(&mut out, p)?;
        }
    }

    // Settings.
    let i = &plan.instrument;
    let s = &plan.safety;
    out.push_str("<h2>Instrument and safety settings</h2>\n<table>\n");
    let rows: [(&str, String); 8] = [
        (
            "cannula outer diameter",
            format!("{:.2} mm", i.cannula_outer_diameter_mm),
        ),
        (
            "cannula working length",
            format!("{:.1} mm", i.cannula_working_length_mm),
        ),
        (
            "balloon lengths",
            i.balloon_lengths_mm
                .iter()
                .map(|l| format!("{l:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
                + " mm",
        ),
        (
            "balloon max diameter",
            format!("{:.1} mm", i.balloon_max_diameter_mm),
        ),
        ("cortex margin", format!("{:.1} mm", s.cortex_margin_mm)),
        ("canal margin", format!("{:.1} mm", s.canal_margin_mm)),
        (
            "nerve root margin",
            format!("{:.1} mm", s.nerve_root_margin_mm),
        ),
        (
            "navigation error required",
            match s.navigation_error() {
                Some((mm, deg)) => format!("{mm:.1} mm and {deg:.1} deg together"),
                None => "none (the tolerance is reported)".into(),
            },
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(
            out,
            "<tr><td class=t>{k}</td><td>{}</td></tr>",
            escape_html(&v)
        );
    }
    out.push_str("</table>\n");

    // Keep-outs.
    out.push_str("<h2>Keep-outs</h2>\n<table><tr><th class=t>level</th><th class=t>kind</th><th class=t>side</th><th class=t>source</th><th class=t>from</th><th>margin (mm)</th></tr>\n");
    for level in &plan.levels {
        for k in &level.keep_outs {
            let source = match k.source {
                KeepOutSource::Given => "given",
                KeepOutSource::Derived => "derived",
            };
            let _ = writeln!(
                out,
                "<tr><td class=t>{}</td><td class=t>{}</td><td class=t>{}</td><td class=t>{source}</td><td class=t>{}</td><td>{:.1}</td></tr>",
                escape_html(level.level.name()),
                escape_html(&k.kind),
                k.side.map(|s| s.name()).unwrap_or("-"),
                escape_html(&k.from),
                k.margin_mm
            );
        }
    }
    out.push_str("</table>\n");

    if !plan.mesh_fixes.is_empty() {
        out.push_str("<h2>Fixes applied to input meshes</h2>\n<ul>\n");
        for f in &plan.mesh_fixes {
            let _ = writeln!(
                out,
                "<li>{}: {}</li>",
                escape_html(&f.structure),
                escape_html(&format!("{:?}", f.fix))
            );
        }
        out.push_str("</ul>\n");
    }

    // Inputs.
    out.push_str(
        "<h2>Input files</h2>\n<table><tr><th class=t>file</th><th class=t>SHA-256</th></tr>\n",
    );
    for (name, sha) in inputs {
        let _ = writeln!(
            out,
            "<tr><td class=t>{}</td><td class=t><code>{}</code></td></tr>",
            escape_html(name),
            escape_html(sha)
        );
    }
    out.push_str("</table>\n");
    let _ = writeln!(
        out,
        "<p class=meta>kyphoplan planner {} &middot; report by kyphoplan-client {} &middot; {}</p>\n</body>\n</html>",
        escape_html(&plan.planner_version),
        env!("CARGO_PKG_VERSION"),
        now_utc()
    );
    Ok(out)
}

/// Write the report to `path` (`.html`). `pictures` are embedded in the given order;
/// `inputs` are (file name, SHA-256 hex) of the case's input files.
pub fn write_report(
    plan: &Plan,
    anatomy: &PreparedAnatomy,
    pictures: &[PathBuf],
    inputs: &[(String, String)],
    path: &Path,
) -> Result<(), ExportError> {
    let html = to_html(plan, anatomy, pictures, inputs)?;
    write_file(path, html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_html("<b a=\"1\">R&D's</b>"),
            "&lt;b a=&quot;1&quot;&gt;R&amp;D&#39;s&lt;/b&gt;"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
