//! Plan the real meshes in ../shared/anatomy and print a summary (a development aid).
#[path = "../tests/common/mod.rs"]
mod common;

use kyphoplan_planner::*;

fn main() {
    let dir = common::shared_anatomy().expect("shared anatomy");
    for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
        let mut structures = vec![];
        for l in ["L1", "L2", "L3", "L4", "L5"] {
            let p = dir.join(set).join(format!("{l}.stl"));
            if p.exists() {
                structures.push(Structure {
                    name: format!("{l}.stl"),
                    role: Role::Vertebra {
                        level: l.parse().unwrap(),
                    },
                    mesh: common::load_stl(&p),
                });
            }
        }
        let input = AnatomyInput {
            name: set.into(),
            frame: PatientFrame::Lps,
            structures,
        };
        let t = std::time::Instant::now();
        let a = PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap();
        let tp = t.elapsed();
        let mut safety = Safety::contract_default();
        if let Some(deg) = std::env::var("MAX_INCIDENCE_DEG")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            safety.max_entry_incidence_deg = deg;
        }
        let mut instrument = Instrument::contract_default();
        if let Some(d) = std::env::var("CANNULA_MM")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            instrument.cannula_outer_diameter_mm = d;
        }
        let req = PlanRequest::new(None, instrument, safety).unwrap();
        let t = std::time::Instant::now();
        let plan = plan(&a, &req).unwrap();
        eprintln!("{set}: prepare {:?}, plan {:?}", tp, t.elapsed());
        for l in &plan.levels {
            let f = l.vertebra_frame.as_ref().unwrap();
            eprintln!(
                "  {} body {:.1}x{:.1}x{:.1} ant {:?}",
                l.level,
                f.body_width_mm,
                f.body_depth_mm,
                f.body_height_mm,
                f.anterior.map(|x| (x * 100.0).round() / 100.0)
            );
            for s in &l.sides {
                match &s.trajectory {
                    Some(t) => eprintln!(
                        "    {:5} ok incidence {:4.1} route {:?} medial {:5.1} cranial {:5.1} cortex {:.2} canal {:.2} root {:.2} depth {:.2} balloon {:?}",
                        s.side.name(), t.entry_incidence_deg.unwrap_or(f64::NAN), t.route, t.medial_angle_deg, t.cranial_angle_deg, t.clearance_mm.cortex, t.clearance_mm.canal,
                        t.clearance_mm.nerve_root, t.tip_depth_fraction,
                        s.balloon.as_ref().map(|b| (b.length_mm, b.diameter_mm, (b.volume_ml * 100.0).round() / 100.0))
                    ),
                    None => eprintln!("    {:5} INFEASIBLE {:?}", s.side.name(), s.reasons.iter().map(|r| r.message.clone()).collect::<Vec<_>>()),
                }
            }
        }
    }
}
