//! `kyphoplan demo` (issue 15, item 5): the README's table of which approach each level T1-L5
//! of the built-in mean spine gets is what the planner does (re-planned here, so the table
//! cannot go stale), and the demo's case directory re-plans as the demo planned it (its
//! case.toml carries the procedure, approaches and cannula alternatives).

use std::path::Path;

use kyphoplan_cli::demo;
use kyphoplan_client::case;
use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::plan::{ReasonCode, Route};
use kyphoplan_planner::request::Approach;
use kyphoplan_planner::synth;

/// The README block between the table's markers, markers included.
fn readme_block() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&path).expect("README.md");
    let begin = text
        .find(demo::TABLE_BEGIN)
        .expect("the table's first marker");
    let end = text[begin..]
        .find(demo::TABLE_END)
        .expect("the table's end marker")
        + begin;
    let end = end + demo::TABLE_END.len() + 1;
    text[begin..end.min(text.len())].to_owned()
}

#[test]
fn the_readme_approach_table_is_what_the_planner_does() {
    let levels = synth::ALL_MEAN_LEVELS.to_vec();
    let table = demo::approach_table(&levels).unwrap();
    println!("{table}");
    assert_eq!(
        readme_block(),
        table,
        "README.md's approach table is stale: replace it with `kyphoplan demo --levels T1-L5 --approach-table`"
    );
}

/// The facts behind the table, asserted from the plans themselves: bone only never gives an
/// extrapedicular side; with ribs and pleura every feasible extrapedicular side is a thoracic
/// one whose transpedicular attempts were refused first with a measured reason, and no
/// kyphoplasty side took the 13 G needle (it is refused as too small for a balloon).
#[test]
fn the_demo_plans_behind_the_table_keep_their_rules() {
    let levels = synth::ALL_MEAN_LEVELS.to_vec();
    let (bone, ribs) = demo::plan_both(&levels).unwrap();
    for lp in &bone.levels {
        for s in &lp.sides {
            assert_ne!(
                s.approach,
                Approach::Extrapedicular,
                "{} {}",
                lp.level,
                s.side
            );
            if let Some(t) = &s.trajectory {
                assert_eq!(t.route, Some(Route::Transpedicular));
            }
        }
    }
    let mut extrapedicular = 0;
    for lp in &ribs.levels {
        for s in &lp.sides {
            let Some(t) = s.trajectory.as_ref().filter(|_| s.feasible) else {
                continue;
            };
            assert!(
                t.cannula_outer_diameter_mm >= 2.9,
                "{} {}",
                lp.level,
                s.side
            );
            if t.route == Some(Route::Extrapedicular) {
                extrapedicular += 1;
                assert!(lp.level <= Level::T12);
                let tried: Vec<_> = s.attempts.iter().filter(|a| !a.feasible).collect();
                assert!(
                    tried
                        .iter()
                        .filter(|a| a.route == Route::Transpedicular)
                        .all(|a| !a.reasons.is_empty()),
                    "{} {}",
                    lp.level,
                    s.side
                );
            }
            for a in &s.attempts {
                if a.cannula_outer_diameter_mm < 2.9 {
                    assert!(!a.feasible);
                    assert_eq!(a.reasons[0].code, ReasonCode::CannulaTooSmallForBalloon);
                }
            }
        }
    }
    assert!(
        extrapedicular > 0,
        "no extrapedicular side on the mean spine"
    );
}

/// The demo's case.toml names the request it was planned with: re-reading it gives the same
/// procedure, approaches and cannula alternatives.
#[test]
fn the_demo_case_toml_carries_the_approaches_and_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    let levels = [Level::T8];
    let request = demo::request(true).unwrap();
    case::write_case_for(
        dir.path(),
        &demo::anatomy(&levels, true),
        None,
        Some(&request),
    )
    .unwrap();
    let read = case::read_case(dir.path()).unwrap();
    assert_eq!(read.request.procedure(), request.procedure());
    assert_eq!(read.request.approaches(), request.approaches());
    assert_eq!(
        read.request.cannula_alternatives_mm(),
        request.cannula_alternatives_mm()
    );
    assert!(read
        .request
        .approaches()
        .contains(&Approach::Extrapedicular));
}
