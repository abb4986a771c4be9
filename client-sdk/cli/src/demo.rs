//! `kyphoplan demo`: the built-in mean spine ([`kyphoplan_planner::synth`]) and the requests it
//! is planned with, and the approach table of the README ("Which approach each level gets"),
//! made by planning, so that a test can check the README against the planner.

use kyphoplan_planner::anatomy::{AnatomyInput, Level, Side};
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::plan::{LevelPlan, Plan, Route, SidePlan};
use kyphoplan_planner::prepare::{PrepareOptions, PreparedAnatomy};
use kyphoplan_planner::request::{Approach, Instrument, PlanRequest, Procedure, Safety};
use kyphoplan_planner::{planning, synth};

use crate::cases::THORACIC_CANNULA_ALTERNATIVES_MM;

/// The built-in mean spine at `levels` (stacked as in the body, LPS), named "built-in-demo";
/// with `ribs_and_pleura`, every thoracic level with its ribs and pleura.
pub fn anatomy(levels: &[Level], ribs_and_pleura: bool) -> AnatomyInput {
    let options = synth::SpineOptions {
        with_soft_tissue: false,
        with_ribs_and_pleura: ribs_and_pleura,
    };
    let mut anatomy = synth::spine_with(levels, &Pose::identity(), &options).0;
    anatomy.name = "built-in-demo".to_string();
    anatomy
}

/// The demo's request: the contract's instrument and safety, kyphoplasty. Default approaches
/// (bilateral transpedicular, then unipedicular) unless `extrapedicular`: then bilateral
/// transpedicular, extrapedicular, unipedicular, with the thoracic cannula alternatives
/// ([`THORACIC_CANNULA_ALTERNATIVES_MM`]: 11 G, and 13 G, which carries no balloon).
pub fn request(extrapedicular: bool) -> Result<PlanRequest, String> {
    let request = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .map_err(|e| e.to_string())?;
    if !extrapedicular {
        return Ok(request);
    }
    request
        .with_procedure(
            Procedure::Kyphoplasty,
            vec![
                Approach::BilateralTranspedicular,
                Approach::Extrapedicular,
                Approach::Unipedicular,
            ],
        )
        .and_then(|r| r.with_cannula_alternatives(THORACIC_CANNULA_ALTERNATIVES_MM.to_vec()))
        .map_err(|e| e.to_string())
}

/// The first line of the README's approach table block.
pub const TABLE_BEGIN: &str =
    "<!-- approach-table: kyphoplan demo --levels T1-L5 --approach-table -->";
/// The line after the README's approach table block.
pub const TABLE_END: &str = "<!-- /approach-table -->";

fn side_cell(s: &SidePlan) -> String {
    match (&s.trajectory, s.feasible) {
        (Some(t), true) => format!(
            "{} {} mm",
            match t.route {
                Some(Route::Extrapedicular) => "extrapedicular",
                Some(Route::Transpedicular) => "transpedicular",
                _ => "unrecognised",
            },
            t.cannula_outer_diameter_mm
        ),
        _ if s.approach == Approach::Unipedicular
            && s.reasons
                .iter()
                .any(|r| r.code == kyphoplan_planner::plan::ReasonCode::OtherSideChosen) =>
        {
            "not used".to_owned()
        }
        _ => {
            let code = s.reasons.first().map_or_else(
                || "-".to_owned(),
                |r| {
                    serde_json::to_value(r.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                },
            );
            format!("no: {code}")
        }
    }
}

fn level_cells(lp: &LevelPlan) -> [String; 3] {
    let side = |s: Side| {
        lp.sides
            .iter()
            .find(|p| p.side == s)
            .map_or_else(|| "-".to_owned(), side_cell)
    };
    [
        lp.approach
            .map_or_else(|| "none".to_owned(), |a| a.as_str().to_owned()),
        side(Side::Left),
        side(Side::Right),
    ]
}

/// Plan `levels` of the built-in spine bone only (default request) and with ribs and pleura
/// (the extrapedicular request), in process.
pub fn plan_both(levels: &[Level]) -> Result<(Plan, Plan), String> {
    let run = |ribs: bool| -> Result<Plan, String> {
        let prepared = PreparedAnatomy::prepare(anatomy(levels, ribs), &PrepareOptions::standard())
            .map_err(|e| e.to_string())?;
        planning::plan(&prepared, &request(ribs)?).map_err(|e| e.to_string())
    };
    Ok((run(false)?, run(true)?))
}

/// The README's approach table for `levels` (markdown, between [`TABLE_BEGIN`] and
/// [`TABLE_END`]): per level the approach taken and each side's route and cannula (or the
/// first reason it is refused), bone only at default settings, and with ribs and pleura with
/// the extrapedicular approach and the cannula alternatives allowed ([`request`]).
pub fn approach_table(levels: &[Level]) -> Result<String, String> {
    let (bone, ribs) = plan_both(levels)?;
    let mut out = String::new();
    out.push_str(TABLE_BEGIN);
    out.push('\n');
    out.push_str("| level | bone only | left | right | with ribs and pleura | left | right |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for (b, r) in bone.levels.iter().zip(&ribs.levels) {
        let [ba, bl, br] = level_cells(b);
        let [ra, rl, rr] = level_cells(r);
        out.push_str(&format!(
            "| {} | {ba} | {bl} | {br} | {ra} | {rl} | {rr} |\n",
            b.level
        ));
    }
    out.push_str(TABLE_END);
    out.push('\n');
    Ok(out)
}
