//! Plan the mean L3 of ../shared/anatomy REPS times (a development aid for profiling, e.g.
//! `perf stat -e instructions:u`, with RAYON_NUM_THREADS=1 for a count that does not depend on
//! the machine's load). With `EVALUATE` set: plan once, then evaluate (with the tolerance) the
//! planned sides REPS times each.
#[path = "../tests/common/mod.rs"]
mod common;

use kyphoplan_planner::*;

fn main() {
    let dir = common::shared_anatomy().expect("shared anatomy");
    let mesh = common::load_stl(&dir.join("mean-lumbar-l2-l5/L3.stl"));
    let input = AnatomyInput {
        name: "L3".into(),
        frame: PatientFrame::Lps,
        structures: vec![Structure {
            name: "L3.stl".into(),
            role: Role::Vertebra { level: Level::L3 },
            mesh,
        }],
    };
    let a = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
    let req = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .unwrap();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    if std::env::var_os("EVALUATE").is_some() {
        // The console's evaluate (measurement and tolerance) of the planned trajectories,
        // REPS times each.
        let p = plan(&a, &req).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..reps {
            for s in &p.levels[0].sides {
                if let Some(tr) = &s.trajectory {
                    let e = evaluate(
                        &a,
                        Level::L3,
                        s.side,
                        tr.bone_entry_mm,
                        tr.target_mm,
                        req.instrument(),
                        req.safety(),
                    )
                    .unwrap();
                    std::hint::black_box(e);
                }
            }
        }
        eprintln!(
            "{reps} x evaluate of the planned sides in {:?}",
            t.elapsed()
        );
        return;
    }
    let t = std::time::Instant::now();
    let mut last = None;
    for _ in 0..reps {
        last = Some(plan(&a, &req).unwrap());
    }
    if let Some(p) = last {
        eprintln!(
            "{reps} plans in {:?}; {}",
            t.elapsed(),
            serde_json::to_string(
                &p.levels[0]
                    .sides
                    .iter()
                    .map(|s| s
                        .trajectory
                        .as_ref()
                        .map(|t| (t.bone_entry_mm, t.target_mm)))
                    .collect::<Vec<_>>()
            )
            .unwrap()
        );
    }
}
