//! Planner -> proto -> wire -> proto -> planner is lossless: identical values and identical plan
//! JSON, for real plans and for edge-case floats.

use kyphoplan_planner::anatomy::{Level, PatientFrame, Role, Side};
use kyphoplan_planner::error::MeshFix;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::plan::*;
use kyphoplan_planner::prepare::{PrepareOptions, PreparedAnatomy};
use kyphoplan_planner::request::{Approach, Instrument, PlanRequest, Procedure, Safety};
use kyphoplan_planner::{planning, synth};
use kyphoplan_proto::{convert, pb};
use prost::Message;

fn through_the_wire(plan: &Plan) -> Plan {
    let bytes = convert::plan_to_pb(plan).encode_to_vec();
    convert::plan_from_pb(pb::Plan::decode(bytes.as_slice()).unwrap()).unwrap()
}

const ALL_REASONS: [ReasonCode; 29] = [
    ReasonCode::PedicleCorridorTooNarrow,
    ReasonCode::PedicleNotFound,
    ReasonCode::CanalTooClose,
    ReasonCode::NerveRootTooClose,
    ReasonCode::ForbiddenStructureTooClose,
    ReasonCode::WorkingLengthTooShort,
    ReasonCode::SkinNotReached,
    ReasonCode::BalloonDoesNotFit,
    ReasonCode::CortexMarginViolated,
    ReasonCode::CanalMarginViolated,
    ReasonCode::NerveRootMarginViolated,
    ReasonCode::ForbiddenMarginViolated,
    ReasonCode::TipOutsideBody,
    ReasonCode::TipNotInAnteriorThird,
    ReasonCode::EntryWrongSide,
    ReasonCode::EntryNotPosterior,
    ReasonCode::NotThroughPedicle,
    ReasonCode::LeavesBone,
    ReasonCode::EntryIncidenceTooSteep,
    ReasonCode::BilateralNotPossible,
    ReasonCode::UnipedicularNotPossible,
    ReasonCode::MidlineNotReached,
    ReasonCode::OtherSideChosen,
    ReasonCode::ErrorToleranceTooLow,
    ReasonCode::EntryNotOnRib,
    ReasonCode::NotLateralOfPedicle,
    ReasonCode::ExtrapedicularMeshesMissing,
    ReasonCode::ExtrapedicularNotPossible,
    ReasonCode::CannulaTooSmallForBalloon,
];

fn trajectory(x: f64) -> Trajectory {
    Trajectory {
        bone_entry_mm: [-0.0, 0.1 + 0.2, 1e308],
        target_mm: [f64::MIN_POSITIVE / 8.0, -123.45678901234568, x],
        skin_entry_mm: Some([1.0 / 3.0, -2.0 / 3.0, 5e-324]),
        cannula_outer_diameter_mm: 3.4,
        medial_angle_deg: -0.0,
        cranial_angle_deg: 1.0 / 7.0,
        clearance_mm: Clearances {
            cortex: -0.25,
            canal: 3.9000000000000004,
            nerve_root: f64::MAX,
            forbidden: Some(0.30000000000000004),
        },
        direction: [0.6, -0.8, 0.0],
        length_in_bone_mm: 42.00000000000001,
        insertion_length_mm: 99.99999999999999,
        tip_depth_fraction: 2.0 / 3.0,
        score: -1e-300,
        entry_incidence_deg: (x > 0.0).then_some(1.0 / 3.0),
        route: (x > 0.0).then_some(Route::Extrapedicular),
    }
}

fn edge_plan() -> Plan {
    let side = |side, feasible: bool| SidePlan {
        attempts: if feasible {
            vec![
                SideAttempt {
                    route: Route::Transpedicular,
                    cannula_outer_diameter_mm: 3.4,
                    feasible: false,
                    reasons: vec![Reason {
                        code: ReasonCode::PedicleCorridorTooNarrow,
                        message: "narrow".into(),
                        value_mm: Some(4.8),
                        limit_mm: Some(5.4),
                        value_deg: None,
                        limit_deg: None,
                    }],
                },
                SideAttempt {
                    route: Route::Extrapedicular,
                    cannula_outer_diameter_mm: 3.4,
                    feasible: true,
                    reasons: vec![],
                },
            ]
        } else {
            vec![]
        },
        side,
        feasible,
        trajectory: feasible.then(|| trajectory(176.1)),
        balloon: feasible.then_some(Balloon {
            center_mm: [5.1, -4.0, 178.0],
            axis: [-0.21, -0.97, 0.05],
            length_mm: 15.0,
            diameter_mm: 12.000000000000002,
            volume_ml: 2.1,
            cortex_clearance_mm: 0.1,
            posterior_wall_clearance_mm: -0.0,
        }),
        reasons: if feasible {
            vec![]
        } else {
            ALL_REASONS
                .iter()
                .enumerate()
                .map(|(i, &code)| Reason {
                    code,
                    message: format!("reason {i} \u{00b5}m \"quoted\""),
                    value_mm: (i % 2 == 0).then_some(i as f64 / 3.0),
                    limit_mm: (i % 3 == 0).then_some(-(i as f64) / 7.0),
                    value_deg: (i % 4 == 0).then_some(i as f64 / 9.0),
                    limit_deg: (i % 5 == 0).then_some(45.0),
                })
                .collect()
        },
        alternatives: vec![
            Alternative {
                code: AlternativeCode::SmallerCannula,
                message: "a".into(),
            },
            Alternative {
                code: AlternativeCode::UnipedicularFromOtherSide,
                message: "b".into(),
            },
            Alternative {
                code: AlternativeCode::Extrapedicular,
                message: "c".into(),
            },
            Alternative {
                code: AlternativeCode::SmallerMargins,
                message: "d".into(),
            },
            Alternative {
                code: AlternativeCode::LongerCannula,
                message: "e".into(),
            },
        ],
        // Feasible sides carry a measured pedicle, infeasible ones none: both shapes round-trip.
        pedicle: feasible.then_some(PedicleSummary {
            isthmus_center_mm: [12.3, -0.0, 1e-7],
            axis: [0.1, -0.99, 0.0999999999999999],
            width_mm: 8.600000000000001,
            height_mm: 15.4,
            area_mm2: 103.25,
        }),
        approach: if feasible {
            Approach::Unipedicular
        } else {
            Approach::BilateralTranspedicular
        },
        navigation_tolerance: feasible.then(|| NavigationTolerance {
            translation_mm: 0.1 + 0.2,
            rotation_deg: 1e-9,
            translation_limited_by: "balloon to cortex".into(),
            rotation_limited_by: "cannula to canal".into(),
            violation_probability: 13.0 / 32.0,
            cannula_translation_mm: 1.0 / 3.0,
            cannula_rotation_deg: 2.5,
            sigma_mm: 1.0,
            sigma_deg: 1.0,
            samples: 32,
        }),
    };
    Plan {
        cannula_alternatives_mm: vec![2.4, 2.1],
        case: "edge-case".into(),
        frame: PatientFrame::Ras,
        levels: vec![
            LevelPlan {
                level: Level::T1,
                sides: vec![side(Side::Left, true), side(Side::Right, false)],
                cement_volume_estimate_ml: Some(4.9),
                vertebra_frame: Some(VertebraFrameSummary {
                    body_center_mm: [1.0, 2.0, 3.0],
                    anterior: [0.0, -1.0, 0.0],
                    left: [1.0, 0.0, 0.0],
                    superior: [0.0, 0.0, 1.0],
                    body_depth_mm: 33.3,
                    body_width_mm: 44.4,
                    body_height_mm: 25.5,
                }),
                keep_outs: vec![
                    KeepOutSummary {
                        kind: "spinal_canal".into(),
                        side: None,
                        source: KeepOutSource::Derived,
                        from: "bone geometry".into(),
                        margin_mm: 2.0,
                    },
                    KeepOutSummary {
                        kind: "nerve_root".into(),
                        side: Some(Side::Right),
                        source: KeepOutSource::Given,
                        from: "root.stl".into(),
                        margin_mm: 2.0,
                    },
                ],
                approach: Some(Approach::Unipedicular),
                approach_reasons: vec![Reason {
                    code: ReasonCode::BilateralNotPossible,
                    message: "bilateral transpedicular not possible (right: ...)".into(),
                    value_mm: Some(3.0),
                    limit_mm: Some(5.4),
                    value_deg: Some(50.0),
                    limit_deg: Some(45.0),
                }],
            },
            LevelPlan {
                level: Level::S1,
                sides: vec![],
                cement_volume_estimate_ml: None,
                vertebra_frame: None,
                keep_outs: vec![],
                approach: None,
                approach_reasons: vec![],
            },
        ],
        instrument: Instrument {
            cannula_outer_diameter_mm: 3.3,
            cannula_working_length_mm: 150.0,
            balloon_lengths_mm: vec![10.0, 15.000000000000002, 20.0],
            balloon_max_diameter_mm: 16.0,
        },
        safety: Safety {
            cortex_margin_mm: 1.0,
            canal_margin_mm: 0.0,
            nerve_root_margin_mm: 2.5,
            max_entry_incidence_deg: 44.99999999999999,
            navigation_error_mm: Some(1.5),
            navigation_error_deg: None,
        },
        mesh_fixes: vec![StructureNotice {
            structure: "L1.stl".into(),
            fix: MeshFix::FlippedInwardWinding,
        }],
        planner_version: "0.1.0".into(),
        procedure: Procedure::Vertebroplasty,
        approaches: vec![Approach::Unipedicular, Approach::BilateralTranspedicular],
    }
}

/// Procedure and approaches of a request survive the wire; unset ones take the defaults, and
/// for vertebroplasty an unset cannula is the 11 G needle.
#[test]
fn procedure_and_approaches_of_a_request_round_trip() {
    let request = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .unwrap()
    .with_procedure(Procedure::Vertebroplasty, vec![Approach::Unipedicular])
    .unwrap();
    let m = convert::create_plan_request_to_pb(
        pb::create_plan_request::Anatomy::AnatomyId(String::new()),
        &request,
    );
    let back = convert::plan_request_from_pb(
        &m.levels,
        m.instrument,
        m.safety,
        m.procedure,
        &m.approaches,
    )
    .unwrap();
    assert_eq!(back, request);
    let d = convert::plan_request_from_pb(&[], None, None, 0, &[]).unwrap();
    assert_eq!(d.procedure(), Procedure::Kyphoplasty);
    assert_eq!(
        d.approaches(),
        [Approach::BilateralTranspedicular, Approach::Unipedicular]
    );
    assert_eq!(d.instrument().cannula_outer_diameter_mm, 3.4);
    let v =
        convert::plan_request_from_pb(&[], None, None, pb::Procedure::Vertebroplasty as i32, &[])
            .unwrap();
    assert_eq!(v.instrument().cannula_outer_diameter_mm, 3.05);
    let e = convert::plan_request_from_pb(&[], None, None, 0, &[2, 2]).unwrap_err();
    assert_eq!(e.field(), "approaches[1]");
    let e = convert::plan_request_from_pb(&[], None, None, 0, &[0]).unwrap_err();
    assert_eq!(e.field(), "approaches[0]");
}

#[test]
fn edge_case_plan_is_lossless() {
    let plan = edge_plan();
    let back = through_the_wire(&plan);
    assert_eq!(back, plan);
    assert_eq!(
        serde_json::to_string_pretty(&back).unwrap(),
        serde_json::to_string_pretty(&plan).unwrap()
    );
    // -0.0 keeps its sign.
    assert!(back.levels[0].sides[0]
        .trajectory
        .as_ref()
        .unwrap()
        .bone_entry_mm[0]
        .is_sign_negative());
}

#[test]
fn every_reason_code_maps_to_a_distinct_wire_value() {
    let mut seen = std::collections::BTreeSet::new();
    for code in ALL_REASONS {
        let v = convert::reason_code_to_pb(code) as i32;
        assert_ne!(v, 0);
        assert!(seen.insert(v));
        assert_eq!(convert::reason_code_from_pb(v, "code").unwrap(), code);
    }
    for level in Level::ALL {
        let v = convert::level_to_pb(level) as i32;
        assert_eq!(convert::level_from_pb(v, "level").unwrap(), level);
    }
    assert!(convert::level_from_pb(0, "levels[0]").is_err());
    assert!(convert::frame_from_pb(0, "frame").is_err());
    assert!(convert::side_from_pb(99, "side").is_err());
}

/// Issue 15's roles `rib` (level and side) and `pleura` survive the wire and JSON; a rib
/// without its side, or a pleura with a level, is refused naming the field.
#[test]
fn rib_and_pleura_roles_round_trip_through_proto_and_json() {
    let options = synth::SpineOptions {
        with_soft_tissue: false,
        with_ribs_and_pleura: true,
    };
    let (anatomy, _) = synth::spine_with(&[Level::T7], &Pose::identity(), &options);
    let roles: Vec<Role> = anatomy.structures.iter().map(|s| s.role).collect();
    assert!(roles.contains(&Role::Pleura));
    assert!(roles.contains(&Role::Rib {
        level: Level::T7,
        side: Side::Right
    }));
    let data = convert::anatomy_to_pb(&anatomy);
    let decoded = pb::AnatomyData::decode(data.encode_to_vec().as_slice()).unwrap();
    assert_eq!(convert::anatomy_from_pb(decoded).unwrap(), anatomy);
    for role in roles {
        let json = serde_json::to_string(&role).unwrap();
        assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), role, "{json}");
        let d = convert::descriptor_to_pb("x", &role);
        assert_eq!(
            convert::descriptor_from_pb(d, "structures[0]").unwrap(),
            ("x".to_string(), role)
        );
    }
    assert_eq!(
        serde_json::to_string(&Role::Rib {
            level: Level::T7,
            side: Side::Left
        })
        .unwrap(),
        r#"{"role":"rib","level":"T7","side":"left"}"#
    );
    let mut rib = convert::descriptor_to_pb(
        "rib",
        &Role::Rib {
            level: Level::T7,
            side: Side::Left,
        },
    );
    rib.side = pb::Side::Unspecified as i32;
    let e = convert::descriptor_from_pb(rib, "structures[3]").unwrap_err();
    assert!(format!("{e}").contains("structures[3].side"), "{e}");
    let mut pleura = convert::descriptor_to_pb("pleura", &Role::Pleura);
    pleura.level = pb::Level::T7 as i32;
    let e = convert::descriptor_from_pb(pleura, "structures[4]").unwrap_err();
    assert!(format!("{e}").contains("structures[4].level"), "{e}");
}

#[test]
fn a_real_plan_and_evaluation_are_lossless() {
    let (anatomy, _) = synth::spine(&[Level::L4, Level::L5], &Pose::identity(), true);
    // The anatomy itself survives the wire.
    let data = convert::anatomy_to_pb(&anatomy);
    let decoded = pb::AnatomyData::decode(data.encode_to_vec().as_slice()).unwrap();
    assert_eq!(convert::anatomy_from_pb(decoded).unwrap(), anatomy);

    let prepared = PreparedAnatomy::prepare(anatomy, &PrepareOptions::standard()).unwrap();
    let request = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .unwrap();
    let plan = planning::plan(&prepared, &request).unwrap();
    let back = through_the_wire(&plan);
    assert_eq!(back, plan);
    assert_eq!(
        serde_json::to_string_pretty(&back).unwrap(),
        serde_json::to_string_pretty(&plan).unwrap()
    );

    let side = &plan.levels[0].sides[0];
    let t = side.trajectory.clone().unwrap_or_else(|| trajectory(0.0));
    let e = planning::evaluate(
        &prepared,
        plan.levels[0].level,
        side.side,
        t.bone_entry_mm,
        t.target_mm,
        &Instrument::contract_default(),
        &Safety::contract_default(),
    )
    .unwrap();
    let wire = convert::evaluation_to_pb(&e).encode_to_vec();
    let e_back =
        convert::evaluation_from_pb(pb::Evaluation::decode(wire.as_slice()).unwrap()).unwrap();
    assert_eq!(e_back, e);
}

#[test]
fn unset_request_options_take_the_contract_defaults_field_by_field() {
    assert_eq!(
        convert::instrument_from_options(None),
        Instrument::contract_default()
    );
    assert_eq!(
        convert::safety_from_options(None),
        Safety::contract_default()
    );
    let i = convert::instrument_from_options(Some(pb::InstrumentOptions {
        cannula_outer_diameter_mm: Some(2.9),
        cannula_working_length_mm: None,
        balloon_lengths_mm: None,
        balloon_max_diameter_mm: None,
    }));
    assert_eq!(i.cannula_outer_diameter_mm, 2.9);
    assert_eq!(
        i.balloon_lengths_mm,
        Instrument::contract_default().balloon_lengths_mm
    );
    // Set and empty is not unset: the planner refuses it.
    let i = convert::instrument_from_options(Some(pb::InstrumentOptions {
        cannula_outer_diameter_mm: None,
        cannula_working_length_mm: None,
        balloon_lengths_mm: Some(pb::BalloonLengths { values_mm: vec![] }),
        balloon_max_diameter_mm: None,
    }));
    let e = convert::plan_request_from_pb(
        &[],
        Some(convert::instrument_options_to_pb(&i)),
        None,
        0,
        &[],
    )
    .unwrap_err();
    assert_eq!(e.field(), "instrument.balloon_lengths_mm");
    let s = convert::safety_from_options(Some(pb::SafetyOptions {
        cortex_margin_mm: None,
        canal_margin_mm: Some(3.0),
        nerve_root_margin_mm: None,
        max_entry_incidence_deg: None,
        navigation_error_mm: Some(1.5),
        navigation_error_deg: None,
    }));
    assert_eq!(s.canal_margin_mm, 3.0);
    assert_eq!(s.navigation_error(), Some((1.5, 0.0)));
    assert_eq!(
        s.cortex_margin_mm,
        Safety::contract_default().cortex_margin_mm
    );
}
