//! Planner benchmarks (criterion): exact clearance query, trajectory evaluation, balloon fit,
//! preparation, bilateral plans (the mean L3; a synthetic T8 with ribs and pleura, with and
//! without the extrapedicular fallback), parry's built-in capsule-vs-mesh distance on the same
//! candidates, and the preparation of a ~1M-triangle vertebra.
//!
//! `cargo bench -p kyphoplan-planner --bench planner`. Real meshes come from `../shared/anatomy`
//! (the mean L3, ~34k triangles, and the VHM L1-L5); without it the synthetic L3 of
//! `kyphoplan_planner::synth` stands in.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kyphoplan_planner::clearance::parry_builtin::{comparison_segments, ParryMesh};
use kyphoplan_planner::evaluate::{measure, RouteRule, SideContext};
use kyphoplan_planner::math::{point, Pose};
use kyphoplan_planner::request::{Approach, Procedure};
use kyphoplan_planner::*;

#[path = "support/mod.rs"]
mod subdivide;
use subdivide::{load_stl, subdivide};

fn shared_anatomy() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/anatomy"));
    dir.is_dir().then_some(dir)
}

/// The L3 of ~34k triangles (or the synthetic L3) as a one-vertebra anatomy.
fn l3_input() -> (String, AnatomyInput) {
    match shared_anatomy() {
        Some(dir) => {
            let mesh = load_stl(&dir.join("mean-lumbar-l2-l5/L3.stl"));
            (
                format!("mean-L3 ({} triangles)", mesh.triangles.len()),
                one_vertebra(Level::L3, mesh),
            )
        }
        None => {
            eprintln!("../shared/anatomy not found: benchmarking the synthetic L3");
            let (input, _) = synth::spine(&[Level::L3], &Pose::identity(), false);
            let n = input.structures[0].mesh.triangles.len();
            (format!("synthetic-L3 ({n} triangles)"), input)
        }
    }
}

fn one_vertebra(level: Level, mesh: TriMesh) -> AnatomyInput {
    AnatomyInput {
        name: format!("{level}"),
        frame: PatientFrame::Lps,
        structures: vec![Structure {
            name: format!("{level}.stl"),
            role: Role::Vertebra { level },
            mesh,
        }],
    }
}

/// Five lumbar levels (VHM L1-L5, or the synthetic L1-L5).
fn five_levels_input() -> AnatomyInput {
    match shared_anatomy() {
        Some(dir) => AnatomyInput {
            name: "vhm-male-lumbar".into(),
            frame: PatientFrame::Lps,
            structures: [Level::L1, Level::L2, Level::L3, Level::L4, Level::L5]
                .into_iter()
                .map(|level| Structure {
                    name: format!("{level}.stl"),
                    role: Role::Vertebra { level },
                    mesh: load_stl(&dir.join(format!("vhm-male-lumbar/{level}.stl"))),
                })
                .collect(),
        },
        None => synth::demo_anatomy(),
    }
}

fn request() -> PlanRequest {
    PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .unwrap()
}

fn benches(c: &mut Criterion) {
    let (name, input) = l3_input();
    let req = request();
    let options = PrepareOptions::standard();
    let anatomy = PreparedAnatomy::prepare(input.clone(), &options).expect("prepare");
    let level = anatomy.levels()[0];
    let plan = plan(&anatomy, &req).expect("plan");
    eprintln!(
        "{name}: prepared memory {:.1} MB",
        anatomy.memory_bytes() as f64 / 1e6
    );
    let vertebra = anatomy.vertebra(level).unwrap();
    let r = req.instrument().cannula_radius_mm();
    // Cannula axes like those the search verifies (the planned sides, ends moved by up to 4 mm).
    let segments = comparison_segments(&plan, 256);
    assert!(
        !segments.is_empty(),
        "the benchmark vertebra has a planned side"
    );

    // Exact clearance: our BVH walk vs parry's capsule-vs-TriMesh distance, same candidates.
    let parry = ParryMesh::new(&vertebra.mesh);
    for (a, b) in &segments {
        let ours = vertebra.bone.distance_to_segment(a, b) - r;
        let theirs = parry.capsule_distance(a, b, r);
        assert!(
            (ours.max(0.0) - theirs).abs() < 1e-3,
            "clearance differs from parry's: {ours} vs {theirs}"
        );
    }
    let mut g = c.benchmark_group("clearance");
    g.bench_function(format!("segment_distance/{name}"), |bch| {
        let mut i = 0;
        bch.iter(|| {
            i = (i + 1) % segments.len();
            let (a, b) = &segments[i];
            black_box(vertebra.bone.distance_to_segment(a, b) - r)
        })
    });
    g.bench_function(format!("parry_builtin_capsule_distance/{name}"), |bch| {
        let mut i = 0;
        bch.iter(|| {
            i = (i + 1) % segments.len();
            let (a, b) = &segments[i];
            black_box(parry.capsule_distance(a, b, r))
        })
    });
    g.finish();

    // Exact measurement of the planned trajectory (the console's evaluate).
    let side_plan = plan.levels[0]
        .sides
        .iter()
        .find(|s| s.trajectory.is_some())
        .unwrap();
    let t = side_plan.trajectory.as_ref().unwrap();
    c.bench_function(&format!("evaluate/planned_trajectory/{name}"), |bch| {
        bch.iter(|| {
            black_box(
                evaluate(
                    &anatomy,
                    level,
                    side_plan.side,
                    t.bone_entry_mm,
                    t.target_mm,
                    req.instrument(),
                    req.safety(),
                )
                .unwrap(),
            )
        })
    });

    // Balloon fit on both planned sides (every length and offset, then the pair).
    let ctx: Vec<SideContext<'_>> = plan.levels[0]
        .sides
        .iter()
        .filter(|s| s.trajectory.is_some())
        .map(|s| SideContext {
            anatomy: &anatomy,
            vertebra,
            keep_outs: anatomy.keep_outs(level),
            side: s.side,
            instrument: req.instrument(),
            safety: req.safety(),
            route_rule: RouteRule::Transpedicular,
        })
        .collect();
    let measured: Vec<_> = ctx
        .iter()
        .zip(
            plan.levels[0]
                .sides
                .iter()
                .filter(|s| s.trajectory.is_some()),
        )
        .map(|(cx, s)| {
            let t = s.trajectory.as_ref().unwrap();
            measure(cx, &point(t.bone_entry_mm), &point(t.target_mm))
        })
        .collect();
    c.bench_function(&format!("balloon/fit_bilateral/{name}"), |bch| {
        bch.iter(|| {
            let opts: Vec<_> = ctx
                .iter()
                .zip(&measured)
                .map(|(cx, m)| balloon::options(cx, m))
                .collect();
            if opts.len() == 2 {
                black_box(balloon::best_pair(&opts[0], &opts[1]));
            }
            black_box(opts)
        })
    });

    // Preparation and plans.
    let mut g = c.benchmark_group("plan");
    g.sample_size(20);
    g.bench_function(format!("prepare/{name}"), |bch| {
        bch.iter_batched(
            || input.clone(),
            |i| black_box(PreparedAnatomy::prepare(i, &options).unwrap()),
            BatchSize::LargeInput,
        )
    });
    g.bench_function(format!("bilateral_prepared/{name}"), |bch| {
        bch.iter(|| black_box(kyphoplan_planner::plan(&anatomy, &req).unwrap()))
    });
    g.bench_function(format!("bilateral_from_raw/{name}"), |bch| {
        bch.iter_batched(
            || input.clone(),
            |i| {
                let a = PreparedAnatomy::prepare(i, &options).unwrap();
                black_box(kyphoplan_planner::plan(&a, &req).unwrap())
            },
            BatchSize::LargeInput,
        )
    });
    // A thoracic level (issue 15): the mean T8 with its ribs and pleura, prepared, planned
    // with the default approach and with the extrapedicular one as the fallback.
    let t8 = PreparedAnatomy::prepare(
        synth::spine_with(
            &[Level::T8],
            &Pose::identity(),
            &synth::SpineOptions {
                with_soft_tissue: false,
                with_ribs_and_pleura: true,
            },
        )
        .0,
        &options,
    )
    .expect("prepare T8");
    let t8_fallbacks = req
        .clone()
        .with_procedure(
            Procedure::Kyphoplasty,
            vec![Approach::BilateralTranspedicular, Approach::Extrapedicular],
        )
        .unwrap();
    g.bench_function("thoracic_prepared/synthetic-T8-ribs-pleura", |bch| {
        bch.iter(|| black_box(kyphoplan_planner::plan(&t8, &req).unwrap()))
    });
    g.bench_function(
        "thoracic_prepared_with_extrapedicular/synthetic-T8-ribs-pleura",
        |bch| bch.iter(|| black_box(kyphoplan_planner::plan(&t8, &t8_fallbacks).unwrap())),
    );
    let five = five_levels_input();
    g.sample_size(10);
    g.bench_function("five_levels_from_raw", |bch| {
        bch.iter_batched(
            || five.clone(),
            |i| {
                let a = PreparedAnatomy::prepare(i, &options).unwrap();
                black_box(kyphoplan_planner::plan(&a, &req).unwrap())
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    // Scaling: the L3 with every triangle split into 36 (~1.2M triangles).
    let big = subdivide(&input.structures[0].mesh, 6);
    let big_name = format!("{}_triangles", big.triangles.len());
    let big_input = one_vertebra(level, big);
    let mut g = c.benchmark_group("scaling");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    let big_check = validate::MeshCheck {
        closed: true,
        size_range_mm: Some(validate::VERTEBRA_SIZE_RANGE_MM),
        winding: validate::WindingPolicy::Refuse,
        max_triangles: 4_000_000,
    };
    g.bench_function(format!("validate/{big_name}"), |bch| {
        bch.iter_batched(
            || big_input.structures[0].mesh.clone(),
            |m| black_box(validate::validate_mesh(m, &big_check).unwrap()),
            BatchSize::LargeInput,
        )
    });
    g.bench_function(format!("prepare/{big_name}"), |bch| {
        bch.iter_batched(
            || big_input.clone(),
            |i| black_box(PreparedAnatomy::prepare(i, &options).unwrap()),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(planner, benches);
criterion_main!(planner);
