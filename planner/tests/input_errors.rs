//! Bad anatomy and bad requests are refused with typed errors that name the structure or field.

use kyphoplan_planner::math::Pose;
use kyphoplan_planner::synth;
use kyphoplan_planner::validate::WindingPolicy;
use kyphoplan_planner::*;

fn l3() -> AnatomyInput {
    synth::spine(&[Level::L3], &Pose::identity(), false).0
}

fn prepare(input: AnatomyInput) -> Result<PreparedAnatomy, InputError> {
    PreparedAnatomy::prepare(input, &PrepareOptions::standard())
}

#[test]
fn a_nan_vertex_names_the_structure() {
    let mut input = l3();
    input.structures[0].mesh.vertices_mm[7].y = f64::NAN;
    match prepare(input) {
        Err(InputError::Mesh {
            structure,
            fault: MeshFault::NonFiniteVertex { vertex: 7 },
        }) => {
            assert_eq!(structure, "L3.stl")
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn a_vertebra_in_metres_is_refused_with_a_hint() {
    let mut input = l3();
    let m = &mut input.structures[0].mesh;
    *m = m.mapped(|p| p * 0.001);
    let e = prepare(input).err().unwrap();
    assert!(matches!(
        &e,
        InputError::Mesh {
            fault: MeshFault::ImplausibleSize { .. },
            ..
        }
    ));
    assert!(e.to_string().contains("metres"), "{e}");
}

#[test]
fn duplicate_levels_are_refused() {
    let mut input = l3();
    let mut twin = input.structures[0].clone();
    twin.name = "L3-again.stl".into();
    input.structures.push(twin);
    match prepare(input) {
        Err(InputError::DuplicateLevel {
            level,
            first,
            second,
        }) => {
            assert_eq!(
                (level, first.as_str(), second.as_str()),
                (Level::L3, "L3.stl", "L3-again.stl")
            )
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn inward_winding_is_fixed_and_reported_or_refused_as_asked() {
    let mut input = l3();
    input.structures[0].mesh = input.structures[0].mesh.flipped();
    let refused = PreparedAnatomy::prepare(
        input.clone(),
        &PrepareOptions {
            winding: WindingPolicy::Refuse,
            ..PrepareOptions::standard()
        },
    );
    assert!(matches!(
        refused,
        Err(InputError::Mesh {
            fault: MeshFault::InwardWinding { .. },
            ..
        })
    ));
    let fixed = prepare(input).unwrap();
    assert_eq!(fixed.mesh_fixes().len(), 1);
    assert_eq!(fixed.mesh_fixes()[0].structure, "L3.stl");
    let req = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .unwrap();
    let p = plan(&fixed, &req).unwrap();
    assert!(
        p.levels[0].sides.iter().all(|s| s.feasible),
        "the fixed mesh plans normally"
    );
    assert_eq!(p.mesh_fixes.len(), 1);
}

#[test]
fn an_open_vertebra_is_refused() {
    let mut input = l3();
    let n = input.structures[0].mesh.triangles.len();
    input.structures[0].mesh.triangles.truncate(n - 3);
    assert!(matches!(
        prepare(input),
        Err(InputError::Mesh {
            fault: MeshFault::Open { .. },
            ..
        })
    ));
}

#[test]
fn too_many_triangles_are_refused_before_any_work() {
    let input = l3();
    let opts = PrepareOptions {
        max_triangles_per_mesh: 1000,
        ..PrepareOptions::standard()
    };
    assert!(matches!(
        PreparedAnatomy::prepare(input, &opts),
        Err(InputError::Mesh {
            fault: MeshFault::TooLarge { limit: 1000, .. },
            ..
        })
    ));
}

#[test]
fn no_vertebra_and_missing_levels() {
    let mut input = l3();
    input.structures.clear();
    assert!(matches!(prepare(input), Err(InputError::NoVertebra)));
    let a = prepare(l3()).unwrap();
    let req = PlanRequest::new(
        Some(vec![Level::L4]),
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .unwrap();
    assert!(matches!(
        plan(&a, &req),
        Err(InputError::LevelNotInAnatomy { level: Level::L4 })
    ));
}

#[test]
fn request_parameters_are_checked_field_by_field() {
    let bad = |f: &dyn Fn(&mut Instrument, &mut Safety)| {
        let (mut i, mut s) = (Instrument::contract_default(), Safety::contract_default());
        f(&mut i, &mut s);
        PlanRequest::new(None, i, s).expect_err("refused").field()
    };
    assert_eq!(
        bad(&|_, s| s.canal_margin_mm = -1.0),
        "safety.canal_margin_mm"
    );
    assert_eq!(
        bad(&|_, s| s.cortex_margin_mm = f64::NAN),
        "safety.cortex_margin_mm"
    );
    assert_eq!(
        bad(&|i, _| i.cannula_outer_diameter_mm = 0.0),
        "instrument.cannula_outer_diameter_mm"
    );
    assert_eq!(
        bad(&|i, _| i.cannula_outer_diameter_mm = 60.0),
        "instrument.cannula_outer_diameter_mm"
    );
    assert_eq!(
        bad(&|i, _| i.balloon_lengths_mm = vec![]),
        "instrument.balloon_lengths_mm"
    );
    assert_eq!(
        bad(&|i, _| i.balloon_lengths_mm = vec![15.0, -2.0]),
        "instrument.balloon_lengths_mm[1]"
    );
    assert!(PlanRequest::new(
        Some(vec![Level::L1, Level::L1]),
        Instrument::contract_default(),
        Safety::contract_default()
    )
    .is_err());
}
