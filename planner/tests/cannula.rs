//! Issue 15 leftover: a kyphoplasty request whose own cannula is under
//! `criteria::MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM` (2.9 mm: no balloon catheter passes it,
//! clinical.md "Needle and cannula gauges") was planned anyway, while the same cannula as an
//! alternative was refused. The requested cannula now follows the alternatives' rule: refused
//! unsearched with `CANNULA_TOO_SMALL_FOR_BALLOON` on every side (and every approach), the
//! request's alternatives tried after it in their order; vertebroplasty is unaffected.

mod common;

use kyphoplan_planner::criteria::MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::plan::{ReasonCode, Route};
use kyphoplan_planner::request::DEFAULT_APPROACHES;
use kyphoplan_planner::synth;
use kyphoplan_planner::*;

/// 13 G needle, mm (clinical.md: a vertebroplasty needle).
const NEEDLE_13G_MM: f64 = 2.4;
/// 11 G, mm: the smallest kyphoplasty working cannula of clinical.md's 2.9-3.4 mm.
const CANNULA_11G_MM: f64 = 3.05;

/// The mean synthetic L3 (bone only), whose pedicles take the 3.4 mm cannula.
fn l3() -> PreparedAnatomy {
    let (input, _) = synth::spine(&[Level::L3], &Pose::identity(), false);
    PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap()
}

fn request(procedure: Procedure, cannula_mm: f64, approaches: Vec<Approach>) -> PlanRequest {
    let instrument = Instrument {
        cannula_outer_diameter_mm: cannula_mm,
        ..Instrument::contract_default()
    };
    PlanRequest::new(None, instrument, Safety::contract_default())
        .unwrap()
        .with_procedure(procedure, approaches)
        .unwrap()
}

fn assert_too_small(r: &kyphoplan_planner::plan::Reason, cannula_mm: f64) {
    assert_eq!(r.code, ReasonCode::CannulaTooSmallForBalloon, "{r:?}");
    assert_eq!(r.value_mm, Some(cannula_mm));
    assert_eq!(r.limit_mm, Some(MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM));
    let measured = format!("cannula {cannula_mm} mm < {MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM} mm");
    assert!(r.message.contains(&measured), "{}", r.message);
}

/// Kyphoplasty with a 13 G cannula of its own: every side of every approach is refused with the
/// measured code, the bilateral sides list the refused attempt, no balloon and no cement; the
/// same request for vertebroplasty plans both sides with the 13 G needle.
#[test]
fn kyphoplasty_refuses_its_own_cannula_too_small_for_a_balloon() {
    const { assert!(NEEDLE_13G_MM < MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM) };
    let anatomy = l3();
    // The requested 3.4 mm cannula plans this level: the refusal below is the cannula's.
    let kp_default = plan(&anatomy, &common::default_request()).unwrap();
    assert!(kp_default.levels[0].sides.iter().all(|s| s.feasible));

    let kp = plan(
        &anatomy,
        &request(
            Procedure::Kyphoplasty,
            NEEDLE_13G_MM,
            DEFAULT_APPROACHES.to_vec(),
        ),
    )
    .unwrap();
    let lp = &kp.levels[0];
    assert_eq!(lp.approach, None);
    assert_eq!(lp.cement_volume_estimate_ml, None);
    for sp in &lp.sides {
        assert!(!sp.feasible && sp.trajectory.is_none() && sp.balloon.is_none());
        assert_too_small(&sp.reasons[0], NEEDLE_13G_MM);
        assert_eq!(sp.attempts.len(), 1, "{}: the attempt is stated", sp.side);
        let a = &sp.attempts[0];
        assert!(!a.feasible);
        assert_eq!(a.cannula_outer_diameter_mm, NEEDLE_13G_MM);
        assert_eq!(a.route, Route::Transpedicular);
        assert_too_small(&a.reasons[0], NEEDLE_13G_MM);
    }
    // Both approaches tried say why, with the cannula measured.
    assert_eq!(lp.approach_reasons.len(), 2, "{:?}", lp.approach_reasons);
    for r in &lp.approach_reasons {
        assert!(
            r.message.contains("CannulaTooSmallForBalloon"),
            "{}",
            r.message
        );
        assert_eq!(r.value_mm, Some(NEEDLE_13G_MM));
    }
    // Unipedicular alone: refused the same way on both sides.
    let uni = plan(
        &anatomy,
        &request(
            Procedure::Kyphoplasty,
            NEEDLE_13G_MM,
            vec![Approach::Unipedicular],
        ),
    )
    .unwrap();
    for sp in &uni.levels[0].sides {
        assert!(!sp.feasible);
        assert_too_small(&sp.reasons[0], NEEDLE_13G_MM);
    }

    // Vertebroplasty: the same needle is planned on both sides, nothing refused.
    let vp = plan(
        &anatomy,
        &request(
            Procedure::Vertebroplasty,
            NEEDLE_13G_MM,
            DEFAULT_APPROACHES.to_vec(),
        ),
    )
    .unwrap();
    for sp in &vp.levels[0].sides {
        assert!(sp.feasible, "{}: {:?}", sp.side, sp.reasons);
        let t = sp.trajectory.as_ref().unwrap();
        assert_eq!(t.cannula_outer_diameter_mm, NEEDLE_13G_MM);
        assert!(sp.attempts.is_empty());
    }
}

/// Kyphoplasty with a 13 G cannula of its own and an 11 G alternative (larger than the request's
/// own, which the request now accepts): each side refuses the 13 G attempt and plans with the 11
/// G cannula, a balloon in place; the trajectory re-evaluated with that cannula is safe.
#[test]
fn kyphoplasty_with_a_too_small_cannula_plans_with_an_alternative_that_carries_a_balloon() {
    const { assert!(CANNULA_11G_MM >= MIN_BALLOON_CANNULA_OUTER_DIAMETER_MM) };
    let anatomy = l3();
    let req = request(
        Procedure::Kyphoplasty,
        NEEDLE_13G_MM,
        DEFAULT_APPROACHES.to_vec(),
    )
    .with_cannula_alternatives(vec![CANNULA_11G_MM])
    .unwrap();
    let kp = plan(&anatomy, &req).unwrap();
    let lp = &kp.levels[0];
    assert_eq!(lp.approach, Some(Approach::BilateralTranspedicular));
    assert!(lp.cement_volume_estimate_ml.is_some());
    for sp in &lp.sides {
        assert!(sp.feasible, "{}: {:?}", sp.side, sp.reasons);
        let t = sp.trajectory.as_ref().unwrap();
        assert_eq!(t.cannula_outer_diameter_mm, CANNULA_11G_MM);
        assert!(sp.balloon.is_some());
        let tried: Vec<(f64, bool)> = sp
            .attempts
            .iter()
            .map(|a| (a.cannula_outer_diameter_mm, a.feasible))
            .collect();
        assert_eq!(
            tried,
            vec![(NEEDLE_13G_MM, false), (CANNULA_11G_MM, true)],
            "{}",
            sp.side
        );
        assert_too_small(&sp.attempts[0].reasons[0], NEEDLE_13G_MM);
        let instrument = Instrument {
            cannula_outer_diameter_mm: CANNULA_11G_MM,
            ..Instrument::contract_default()
        };
        let e = evaluate(
            &anatomy,
            Level::L3,
            sp.side,
            t.bone_entry_mm,
            t.target_mm,
            &instrument,
            &Safety::contract_default(),
        )
        .unwrap();
        assert!(e.safe, "{}: {:?}", sp.side, e.violations);
    }
    // Only the requested size itself is refused as an alternative.
    let same = request(
        Procedure::Kyphoplasty,
        NEEDLE_13G_MM,
        DEFAULT_APPROACHES.to_vec(),
    )
    .with_cannula_alternatives(vec![CANNULA_11G_MM, NEEDLE_13G_MM]);
    assert!(same
        .unwrap_err()
        .to_string()
        .contains("cannula_alternatives_mm[1]"));
}
