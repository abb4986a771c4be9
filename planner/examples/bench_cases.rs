//! The planning work of `kyphoplan bench`'s warm-plan figures, one case at a time, for
//! instruction counts (`valgrind --tool=callgrind` with RAYON_NUM_THREADS=1, `REPS=1` less
//! `REPS=0`) or `perf stat`: `CASE` is one of `T8` (demo/plan_warm/T8: the built-in mean T8
//! with ribs and pleura, the default request), `T8_fallbacks`, `T5_fallbacks` (the demo's
//! thoracic request: bilateral transpedicular, extrapedicular, unipedicular, with the 3.05 and
//! 2.4 mm alternatives; likewise `T1`..`T12` and `T1_fallbacks`..`T12_fallbacks`, the built-in
//! mean level with ribs and pleura), or `L1`..`L5` (demo/plan_warm/Ln: the built-in L1-L5, one level, the
//! default request). Prepares once, then plans REPS times (default 5) and prints the median
//! time and every side's trajectory (so two builds can be compared bit for bit). `CASE=realL3`:
//! the real mean L3 of `../shared/anatomy` (real/plan_warm/L3). With `EVAL=1`, the timed work
//! is instead `evaluate` of the plan's first feasible side (the `*/evaluate` figures), printed
//! with its tolerance.
//! `cargo run --release -p kyphoplan-planner --example bench_cases`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use kyphoplan_planner::math::Pose;
use kyphoplan_planner::request::{Approach, Procedure};
use kyphoplan_planner::synth::{self, SpineOptions};
use kyphoplan_planner::*;

fn main() {
    let case = std::env::var("CASE").unwrap_or_else(|_| "T8".into());
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let default = |levels: Option<Vec<Level>>| {
        PlanRequest::new(
            levels,
            Instrument::contract_default(),
            Safety::contract_default(),
        )
        .unwrap()
    };
    // The demo's thoracic request (`kyphoplan_cli::demo::request(true)`).
    let fallbacks = default(None)
        .with_procedure(
            Procedure::Kyphoplasty,
            vec![
                Approach::BilateralTranspedicular,
                Approach::Extrapedicular,
                Approach::Unipedicular,
            ],
        )
        .and_then(|r| r.with_cannula_alternatives(vec![3.05, 2.4]))
        .unwrap();
    let level = |name: &str| {
        Level::ALL
            .into_iter()
            .find(|l| l.to_string() == name)
            .unwrap_or_else(|| panic!("unknown level {name}"))
    };
    let (input, request) = match case.as_str() {
        thoracic if thoracic.starts_with('T') => {
            let options = SpineOptions {
                with_soft_tissue: false,
                with_ribs_and_pleura: true,
            };
            let (name, with_fallbacks) = match thoracic.strip_suffix("_fallbacks") {
                Some(name) => (name, true),
                None => (thoracic, false),
            };
            let input = synth::spine_with(&[level(name)], &Pose::identity(), &options).0;
            let req = if with_fallbacks {
                fallbacks.clone()
            } else {
                default(None)
            };
            (input, req)
        }
        "realL3" => {
            let dir = common::shared_anatomy().expect("../shared/anatomy");
            let mesh = common::load_stl(&dir.join("mean-lumbar-l2-l5/L3.stl"));
            (
                common::single_vertebra("mean-lumbar", Level::L3, mesh),
                default(None),
            )
        }
        name => (synth::demo_anatomy(), default(Some(vec![level(name)]))),
    };
    let anatomy = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
    if std::env::var_os("KEEPOUTS").is_some() {
        for l in anatomy.levels() {
            for k in anatomy.keep_outs(l) {
                println!(
                    "keep-out {l} {:?} {} {} triangles",
                    k.kind,
                    k.from,
                    k.mesh.triangles.len()
                );
            }
            let v = anatomy.vertebra(l).unwrap();
            println!("vertebra {l} {} triangles", v.mesh.triangles.len());
        }
    }
    if std::env::var_os("EVAL").is_some() {
        let p = plan(&anatomy, &request).unwrap();
        let (level, side, t) = p
            .levels
            .iter()
            .find_map(|l| {
                l.sides
                    .iter()
                    .find_map(|s| s.trajectory.as_ref().map(|t| (l.level, s.side, t.clone())))
            })
            .expect("a feasible side");
        let (median_s, last) = timed(reps, || {
            planning::evaluate(
                &anatomy,
                level,
                side,
                t.bone_entry_mm,
                t.target_mm,
                request.instrument(),
                request.safety(),
            )
            .unwrap()
        });
        if let Some(e) = last {
            println!("{case} evaluate: median {:.0} us of {reps}", median_s * 1e6);
            println!(
                "  {level} {side} safe {} {:?}",
                e.safe, e.navigation_tolerance
            );
        }
        return;
    }
    let (median_s, last) = timed(reps, || plan(&anatomy, &request).unwrap());
    if let (Some(p), Some(path)) = (&last, std::env::var_os("JSON")) {
        std::fs::write(path, serde_json::to_string_pretty(p).unwrap()).unwrap();
    }
    if let Some(p) = last {
        println!("{case}: median {:.1} ms of {reps}", median_s * 1e3);
        for l in &p.levels {
            println!("  {} approach {:?}", l.level, l.approach);
            for s in &l.sides {
                println!(
                    "  {} feasible {} {:?} {:?}",
                    s.side,
                    s.feasible,
                    s.trajectory
                        .as_ref()
                        .map(|t| (t.bone_entry_mm, t.target_mm, t.score)),
                    s.balloon.as_ref().map(|b| (b.center_mm, b.volume_ml))
                );
            }
        }
    }
}

/// `f` run `reps` times: the median of its times (seconds; NaN for none) and its last result.
fn timed<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, Option<T>) {
    let mut times = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps {
        let start = Instant::now();
        last = Some(f());
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times.get(reps / 2).copied().unwrap_or(f64::NAN), last)
}
