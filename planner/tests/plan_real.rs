//! The planner on real lumbar vertebrae (../shared/anatomy: bone only, no canal or root
//! meshes), each returned cannula and balloon checked independently by brute force over every
//! triangle.

mod common;

use kyphoplan_planner::clearance::brute;
use kyphoplan_planner::keepout::KeepOutKind;
use kyphoplan_planner::math::{point, segment_segment_distance};
use kyphoplan_planner::plan::{ReasonCode, Route};
use kyphoplan_planner::*;

#[test]
#[cfg_attr(
    not(shared_anatomy),
    ignore = "needs ../shared/anatomy next to the repository"
)]
fn every_real_pedicle_gets_a_verified_cannula_and_balloon() {
    let Some(dir) = common::shared_anatomy() else {
        return;
    };
    let instrument = Instrument::contract_default();
    let safety = Safety::contract_default();
    let r = instrument.cannula_radius_mm();
    let mut checked = 0;
    let mut infeasible = Vec::new();
    for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
        let anatomy =
            PreparedAnatomy::prepare(common::load_set(&dir, set), &PrepareOptions::standard())
                .unwrap_or_else(|e| panic!("{set}: {e}"));
        let request = PlanRequest::new(None, instrument.clone(), safety.clone()).unwrap();
        let plan = plan(&anatomy, &request).unwrap();
        for lp in &plan.levels {
            let v = anatomy.vertebra(lp.level).unwrap();
            let canal: Vec<_> = anatomy
                .keep_outs(lp.level)
                .into_iter()
                .filter(|k| k.kind == KeepOutKind::Canal)
                .collect();
            assert_eq!(canal.len(), 1, "one derived canal per level");
            let mut balloons = Vec::new();
            for s in &lp.sides {
                let Some(t) = &s.trajectory else {
                    // A route is open on every real pedicle; a side may only lose its balloon
                    // to the other side's (the pair is chosen after the lines, issue 13).
                    assert!(
                        s.reasons
                            .iter()
                            .all(|r| r.code == ReasonCode::BalloonDoesNotFit),
                        "{set} {} {}: infeasible: {:?}",
                        lp.level,
                        s.side,
                        s.reasons
                    );
                    infeasible.push(format!("{set} {} {}", lp.level, s.side));
                    continue;
                };
                let (entry, tip) = (point(t.bone_entry_mm), point(t.target_mm));
                let u = (tip - entry).normalize();
                // 1. The axis is in bone from just past the entry to the tip.
                let len = (tip - entry).norm();
                let n = (len / 0.5) as usize;
                for i in 1..=n {
                    let p = entry + u * (0.5 * i as f64).min(len);
                    assert!(
                        brute::contains_point(&v.mesh, &p),
                        "{set} {} {}: axis leaves the bone {:.1} mm past the entry",
                        lp.level,
                        s.side,
                        0.5 * i as f64
                    );
                }
                // 2. The cannula docks within the incidence limit, on the surface under its
                //    footprint (brute force over every triangle), and the cylinder keeps the
                //    cortex margin from the end of the docking zone that incidence needs.
                let f = &v.frame;
                let tip_v = f.lps_to_vertebra * tip;
                let (incidence_deg, start) =
                    common::brute_docking(&v.mesh, &entry, &u, len, r, safety.cortex_margin_mm);
                assert!(
                    incidence_deg <= safety.max_entry_incidence_deg + 1e-9,
                    "{set} {} {}: incidence {incidence_deg:.1} deg",
                    lp.level,
                    s.side
                );
                assert!(
                    (incidence_deg - t.entry_incidence_deg.unwrap()).abs() < 1e-6,
                    "reported incidence {:?} vs brute {incidence_deg}",
                    t.entry_incidence_deg
                );
                assert_eq!(t.route, Some(Route::Transpedicular));
                let from = tip + u * start;
                let d = brute::distance_to_segment(&v.mesh, &from, &tip) - r;
                assert!(
                    d >= safety.cortex_margin_mm - 1e-9,
                    "{set} {} {}: cortex {d:.3}",
                    lp.level,
                    s.side
                );
                assert!(
                    (d - t.clearance_mm.cortex).abs() < 1e-9,
                    "fast engine {} vs brute {d}",
                    t.clearance_mm.cortex
                );
                // 3. The whole cannula keeps the canal margin from the derived canal.
                let tail = tip - u * instrument.cannula_working_length_mm;
                let dc = brute::distance_to_segment(&canal[0].mesh, &tail, &tip) - r;
                assert!(!brute::contains_point(&canal[0].mesh, &tip));
                assert!(
                    dc >= safety.canal_margin_mm - 1e-9,
                    "{set} {} {}: canal {dc:.3}",
                    lp.level,
                    s.side
                );
                // 4. The entry is behind the body and on the named side, lateral of the canal.
                let e_v = f.lps_to_vertebra * entry;
                assert!(e_v.y > f.posterior_wall_y_mm, "entry not behind the body");
                assert!(
                    e_v.x * s.side.sign()
                        > f.canal_half_width_mm[if s.side == Side::Left { 0 } else { 1 }]
                );
                // 5. The tip is in the anterior body.
                assert!(tip_v.y < f.posterior_wall_y_mm && t.tip_depth_fraction >= 2.0 / 3.0);
                // 6. The inflated balloon stays inside the bone by the margin.
                let b = s.balloon.as_ref().expect("feasible sides carry a balloon");
                let c = point(b.center_mm);
                let ax = nalgebra::Vector3::from(b.axis);
                let (p0, p1) = (c - ax * (b.length_mm / 2.0), c + ax * (b.length_mm / 2.0));
                assert!(brute::contains_point(&v.mesh, &p0) && brute::contains_point(&v.mesh, &p1));
                let db = brute::distance_to_segment(&v.mesh, &p0, &p1) - b.diameter_mm / 2.0;
                assert!(
                    db >= safety.cortex_margin_mm - 1e-9,
                    "balloon cortex {db:.3}"
                );
                balloons.push((p0, p1, b.diameter_mm));
                checked += 1;
                eprintln!(
                    "{set} {} {:5}: medial {:5.1} cranial {:5.1} cortex {:.2} canal {:.2} corridor >= {:.1} mm, balloon {}x{} mm",
                    lp.level, s.side.name(), t.medial_angle_deg, t.cranial_angle_deg, t.clearance_mm.cortex,
                    t.clearance_mm.canal, 2.0 * (t.clearance_mm.cortex + r), b.length_mm, b.diameter_mm
                );
            }
            // 7. The two balloons do not overlap.
            let [a, b] = &balloons[..] else {
                continue;
            };
            let gap = segment_segment_distance(&a.0, &a.1, &b.0, &b.1) - (a.2 + b.2) / 2.0;
            assert!(
                gap >= 0.0,
                "{set} {}: balloons overlap by {:.2} mm",
                lp.level,
                -gap
            );
        }
    }
    eprintln!("sides without a balloon of their own: {infeasible:?}");
    assert_eq!(checked + infeasible.len(), 18, "9 vertebrae, 18 pedicles");
    assert!(
        infeasible.len() <= 1,
        "more sides lost their balloon than the one known: {infeasible:?}"
    );
}
