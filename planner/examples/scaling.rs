//! Preparation time and memory against triangle count: a real vertebra (or the synthetic L3
//! without `../shared/anatomy`) refined by uniform subdivision, every edge split into `n`.
//!
//! `cargo run --release -p kyphoplan-planner --example scaling [n ...]` (default 1 2 3 4 6).
#[path = "../benches/support/mod.rs"]
mod subdivide;

use std::time::Instant;

use kyphoplan_planner::math::Pose;
use kyphoplan_planner::*;

fn main() {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![1, 2, 3, 4, 6]
    } else {
        ns
    };
    let dir =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/anatomy"));
    let mut bases = Vec::new();
    if dir.is_dir() {
        bases.push((
            "vhm L3",
            subdivide::load_stl(&dir.join("vhm-male-lumbar/L3.stl")),
        ));
        bases.push((
            "mean L3",
            subdivide::load_stl(&dir.join("mean-lumbar-l2-l5/L3.stl")),
        ));
    } else {
        let (input, _) = synth::spine(&[Level::L3], &Pose::identity(), false);
        bases.push(("synthetic L3", input.structures[0].mesh.clone()));
    }
    let req = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .unwrap();
    println!("| mesh | triangles | prepare ms (median of 3) | plan ms | memory MB |");
    println!("|---|---:|---:|---:|---:|");
    for (name, base) in &bases {
        for &n in &ns {
            if *name == "vhm L3" && n > 1 {
                continue;
            }
            let mesh = subdivide::subdivide(base, n);
            let input = AnatomyInput {
                name: "scaling".into(),
                frame: PatientFrame::Lps,
                structures: vec![Structure {
                    name: "L3.stl".into(),
                    role: Role::Vertebra { level: Level::L3 },
                    mesh,
                }],
            };
            let tris = input.structures[0].mesh.triangles.len();
            let mut times = Vec::new();
            let mut plan_ms = 0.0;
            let mut mem = 0;
            for _ in 0..3 {
                let t = Instant::now();
                let a = PreparedAnatomy::prepare(input.clone(), &PrepareOptions::standard())
                    .expect("prepare");
                times.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                plan(&a, &req).expect("plan");
                plan_ms = t.elapsed().as_secs_f64() * 1e3;
                mem = a.memory_bytes();
            }
            times.sort_by(f64::total_cmp);
            println!(
                "| {name} x{n} | {tris} | {:.0} ({:.0}, {:.0}) | {plan_ms:.0} | {:.1} |",
                times[1],
                times[0],
                times[2],
                mem as f64 / 1e6
            );
        }
    }
}
