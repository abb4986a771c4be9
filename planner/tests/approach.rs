//! Procedure and approaches (issue 12, items 3-5): a level gets the first of the request's
//! approaches that is possible; a unipedicular plan is a verified plan with its balloon (or,
//! for vertebroplasty, its tip) on the mid-sagittal plane; vertebroplasty plans have no balloon
//! and a cement estimate from the body volume.

mod common;

use kyphoplan_planner::math::{point, Pose};
use kyphoplan_planner::plan::{LevelPlan, ReasonCode, SidePlan};
use kyphoplan_planner::planning::{body_volume_ml, VERTEBROPLASTY_FILL_FRACTION};
use kyphoplan_planner::search::MIDLINE_TOLERANCE_MM;
use kyphoplan_planner::synth::{self, VertebraParams};
use kyphoplan_planner::*;

/// A right pedicle this narrow (outer width, mm) cannot take the default 3.4 mm cannula with
/// 1 mm of cortex on each side (5.4 mm), nor the 11 G needle (5.05 mm).
const NARROW_RIGHT_PEDICLE_MM: f64 = 3.0;

fn prepare(input: AnatomyInput) -> PreparedAnatomy {
    PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap()
}

/// A mean L3 whose right pedicle is [`NARROW_RIGHT_PEDICLE_MM`] wide.
fn narrow_right_l3() -> PreparedAnatomy {
    let mut params = VertebraParams::mean(Level::L3);
    params.right_pedicle_width_mm = Some(NARROW_RIGHT_PEDICLE_MM);
    let v = synth::vertebra(&params, &Pose::identity());
    prepare(common::single_vertebra("narrow-right", Level::L3, v.mesh))
}

fn mean(level: Level) -> PreparedAnatomy {
    let v = synth::vertebra(&VertebraParams::mean(level), &Pose::identity());
    prepare(common::single_vertebra("mean", level, v.mesh))
}

fn request(procedure: Procedure, approaches: &[Approach]) -> PlanRequest {
    PlanRequest::new(
        None,
        Instrument::default_for(procedure),
        Safety::contract_default(),
    )
    .unwrap()
    .with_procedure(procedure, approaches.to_vec())
    .unwrap()
}

fn side(lp: &LevelPlan, s: Side) -> &SidePlan {
    lp.sides.iter().find(|p| p.side == s).expect("both sides")
}

/// Measure a planned trajectory again through the public `evaluate` (the exact measurement):
/// it must be safe.
fn assert_verified(anatomy: &PreparedAnatomy, lp: &LevelPlan, sp: &SidePlan, plan: &Plan) {
    let t = sp
        .trajectory
        .as_ref()
        .expect("a feasible side has a trajectory");
    let e = evaluate(
        anatomy,
        lp.level,
        sp.side,
        t.bone_entry_mm,
        t.target_mm,
        &plan.instrument,
        &plan.safety,
    )
    .unwrap();
    assert!(e.safe, "{} {}: {:?}", lp.level, sp.side, e.violations);
}

/// Distance of a case-frame (LPS here) point from the vertebra's mid-sagittal plane, mm.
fn midline_offset_mm(anatomy: &PreparedAnatomy, level: Level, p_mm: [f64; 3]) -> f64 {
    let f = &anatomy.vertebra(level).unwrap().frame;
    (f.lps_to_vertebra * point(p_mm)).x.abs()
}

#[test]
fn a_narrow_pedicle_makes_bilateral_infeasible_with_its_isthmus_and_unipedicular_plans_from_the_other_side(
) {
    let anatomy = narrow_right_l3();
    let measured = anatomy.vertebra(Level::L3).unwrap().pedicles[Side::Right]
        .as_ref()
        .expect("the narrow pedicle is measured")
        .width_mm;
    assert!(
        (measured - NARROW_RIGHT_PEDICLE_MM).abs() < 0.5,
        "measured {measured:.2} mm"
    );

    // Bilateral transpedicular only: the right side is infeasible, its reason names the
    // isthmus and its measured width.
    let bilateral = plan(
        &anatomy,
        &request(Procedure::Kyphoplasty, &[Approach::BilateralTranspedicular]),
    )
    .unwrap();
    let lp = &bilateral.levels[0];
    assert_eq!(lp.approach, None);
    assert_eq!(lp.approach_reasons.len(), 1);
    assert_eq!(
        lp.approach_reasons[0].code,
        ReasonCode::BilateralNotPossible
    );
    let right = side(lp, Side::Right);
    assert!(!right.feasible && right.trajectory.is_none());
    let width = format!("isthmus measures {measured:.1} mm wide");
    assert!(
        right
            .reasons
            .iter()
            .any(|r| r.code == ReasonCode::PedicleCorridorTooNarrow && r.message.contains(&width)),
        "{:?}",
        right.reasons
    );
    assert!(lp.approach_reasons[0].message.contains("right"));
    // The left pedicle is normal: its half of the bilateral plan is feasible.
    assert!(side(lp, Side::Left).feasible);

    // The defaults allow unipedicular: a real, verified plan from the left.
    let default = plan(&anatomy, &common::default_request()).unwrap();
    let lp = &default.levels[0];
    assert_eq!(lp.approach, Some(Approach::Unipedicular));
    assert_eq!(
        lp.approach_reasons[0].code,
        ReasonCode::BilateralNotPossible
    );
    let left = side(lp, Side::Left);
    assert!(left.feasible, "{:?}", left.reasons);
    assert_eq!(left.approach, Approach::Unipedicular);
    assert_verified(&anatomy, lp, left, &default);
    let t = left.trajectory.as_ref().unwrap();
    assert!(t.tip_depth_fraction >= 2.0 / 3.0);
    assert!(t.clearance_mm.cortex >= 1.0 && t.clearance_mm.canal >= 2.0);
    // Aimed across: the tip is to the right of the midline, the entry on the left.
    let b = left.balloon.as_ref().expect("kyphoplasty: a balloon");
    let off = midline_offset_mm(&anatomy, Level::L3, b.center_mm);
    assert!(
        off <= MIDLINE_TOLERANCE_MM,
        "balloon centre {off:.2} mm off"
    );
    let right = side(lp, Side::Right);
    assert!(!right.feasible && right.trajectory.is_none() && right.balloon.is_none());
    assert_eq!(right.approach, Approach::BilateralTranspedicular);
    assert!(lp.cement_volume_estimate_ml.unwrap() > b.volume_ml);
}

#[test]
fn default_requests_plan_normal_vertebrae_bilaterally() {
    for level in [Level::L1, Level::L4] {
        let plan = plan(&mean(level), &common::default_request()).unwrap();
        let lp = &plan.levels[0];
        assert_eq!(lp.approach, Some(Approach::BilateralTranspedicular));
        assert!(lp.approach_reasons.is_empty());
        for s in &lp.sides {
            assert!(s.feasible && s.balloon.is_some());
            assert_eq!(s.approach, Approach::BilateralTranspedicular);
        }
        assert_eq!(plan.procedure, Procedure::Kyphoplasty);
        assert_eq!(
            plan.approaches,
            [Approach::BilateralTranspedicular, Approach::Unipedicular]
        );
    }
}

#[test]
fn unipedicular_first_centres_the_balloon_and_leaves_the_other_side_unused() {
    for level in [Level::L3, Level::L4] {
        let anatomy = mean(level);
        let p = plan(
            &anatomy,
            &request(Procedure::Kyphoplasty, &[Approach::Unipedicular]),
        )
        .unwrap();
        let lp = &p.levels[0];
        assert_eq!(
            lp.approach,
            Some(Approach::Unipedicular),
            "{level}: {:?}",
            lp.approach_reasons
        );
        let used: Vec<&SidePlan> = lp.sides.iter().filter(|s| s.feasible).collect();
        assert_eq!(used.len(), 1, "{level}: one cannula");
        assert_verified(&anatomy, lp, used[0], &p);
        let b = used[0].balloon.as_ref().unwrap();
        let off = midline_offset_mm(&anatomy, level, b.center_mm);
        println!("{level} unipedicular from the {}: balloon {} mm x {} mm, centre {off:.3} mm off the midline", used[0].side, b.length_mm, b.diameter_mm);
        assert!(off <= MIDLINE_TOLERANCE_MM, "{level}: {off:.2} mm");
        let unused = lp.sides.iter().find(|s| !s.feasible).unwrap();
        assert_eq!(unused.reasons[0].code, ReasonCode::OtherSideChosen);
    }
}

#[test]
fn vertebroplasty_plans_have_no_balloon_and_a_cement_estimate_from_the_body_volume() {
    // Bilateral on a mean L3.
    let anatomy = mean(Level::L3);
    let p = plan(
        &anatomy,
        &request(Procedure::Vertebroplasty, &synth_default_approaches()),
    )
    .unwrap();
    assert_eq!(p.procedure, Procedure::Vertebroplasty);
    assert_eq!(p.instrument.cannula_outer_diameter_mm, 3.05);
    let lp = &p.levels[0];
    assert_eq!(lp.approach, Some(Approach::BilateralTranspedicular));
    for s in &lp.sides {
        assert!(s.feasible && s.balloon.is_none(), "{:?}", s.reasons);
        assert!(s.trajectory.as_ref().unwrap().tip_depth_fraction >= 2.0 / 3.0);
        assert_verified(&anatomy, lp, s, &p);
    }
    let body = body_volume_ml(anatomy.vertebra(Level::L3).unwrap());
    let cement = lp.cement_volume_estimate_ml.unwrap();
    assert!((cement - VERTEBROPLASTY_FILL_FRACTION * body).abs() < 0.01);
    // A mean L3 body (44.5 x 35.5 x 24 mm) holds ~30 ml: about 5 ml of cement.
    assert!((3.0..8.0).contains(&cement), "{cement} ml of {body} ml");

    // Unipedicular on the narrow-right L3: the tip on the midline.
    let anatomy = narrow_right_l3();
    let p = plan(
        &anatomy,
        &request(Procedure::Vertebroplasty, &synth_default_approaches()),
    )
    .unwrap();
    let lp = &p.levels[0];
    assert_eq!(lp.approach, Some(Approach::Unipedicular));
    let left = side(lp, Side::Left);
    assert!(left.feasible && left.balloon.is_none());
    assert_verified(&anatomy, lp, left, &p);
    let t = left.trajectory.as_ref().unwrap();
    let off = midline_offset_mm(&anatomy, Level::L3, t.target_mm);
    assert!(
        off <= MIDLINE_TOLERANCE_MM,
        "tip {off:.2} mm off the midline"
    );
    assert!(t.tip_depth_fraction >= 2.0 / 3.0);
    assert!(lp.cement_volume_estimate_ml.unwrap() > 0.0);
}

fn synth_default_approaches() -> Vec<Approach> {
    kyphoplan_planner::request::DEFAULT_APPROACHES.to_vec()
}

#[test]
fn approaches_are_validated_by_name() {
    let base = || common::default_request();
    let e = base()
        .with_procedure(Procedure::Kyphoplasty, vec![])
        .unwrap_err();
    assert_eq!(e.field(), "approaches");
    let e = base()
        .with_procedure(
            Procedure::Kyphoplasty,
            vec![Approach::Unipedicular, Approach::Unipedicular],
        )
        .unwrap_err();
    assert_eq!(e.field(), "approaches[1]");
    assert_eq!(
        "extrapedicular".parse::<Approach>().unwrap(),
        Approach::Extrapedicular
    );
    assert!("transforaminal".parse::<Approach>().is_err());
    assert!("vertebroplasty".parse::<Procedure>().unwrap() == Procedure::Vertebroplasty);
}
