//! The certified tolerance to navigation error (issue 13, items 2 and 3), checked against exact
//! re-measurement: sound (perturbations at the certified bound never violate a margin) and
//! tight (20 % beyond it, in the worst of many directions, one is violated on most sides), on
//! the synthetic and the real vertebrae; a side planned with a required navigation error keeps
//! that much slack everywhere (brute force over every triangle) or says why not.

mod common;

use kyphoplan_planner::balloon::BalloonFit;
use kyphoplan_planner::clearance::brute;
use kyphoplan_planner::evaluate::{margin_codes, measure, Measurement, RouteRule, SideContext};
use kyphoplan_planner::extrapedicular;
use kyphoplan_planner::keepout::KeepOutKind;
use kyphoplan_planner::math::{point, Pose, Vector};
use kyphoplan_planner::plan::{ReasonCode, Route, SidePlan};
use kyphoplan_planner::tolerance::{
    self, is_margin_violation, margin_violation, model_sample, perturbation, Profile,
};
use kyphoplan_planner::*;

fn prepare(input: AnatomyInput) -> PreparedAnatomy {
    PreparedAnatomy::prepare(input, &PrepareOptions::standard()).unwrap()
}

/// `n` unit directions spread over the sphere (Fibonacci lattice).
fn sphere(n: usize) -> Vec<Vector> {
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    (0..n)
        .map(|i| {
            let z = 1.0 - 2.0 * (i as f64 + 0.5) / n as f64;
            let r = (1.0 - z * z).sqrt();
            let phi = golden * i as f64;
            Vector::new(r * phi.cos(), r * phi.sin(), z)
        })
        .collect()
}

/// The planned side's trajectory re-measured, and its balloon, LPS (the anatomies here are LPS).
fn side_geometry(ctx: &SideContext<'_>, s: &SidePlan) -> Option<(Measurement, Option<BalloonFit>)> {
    let t = s.trajectory.as_ref()?;
    let (entry, tip) = (point(t.bone_entry_mm), point(t.target_mm));
    let u = (tip - entry).normalize();
    let m = measure(ctx, &(entry - u * 50.0), &tip);
    assert!(m.violations.is_empty(), "{:?}", m.violations);
    let b = s.balloon.as_ref().map(|b| {
        let (c, a) = (point(b.center_mm), Vector::from(b.axis));
        BalloonFit {
            proximal: c - a * (b.length_mm * 0.5),
            distal: c + a * (b.length_mm * 0.5),
            axis: a,
            length_mm: b.length_mm,
            diameter_mm: b.diameter_mm,
            volume_ml: b.volume_ml,
            room_diameter_mm: b.diameter_mm,
            cortex_clearance_mm: b.cortex_clearance_mm,
            posterior_wall_clearance_mm: b.posterior_wall_clearance_mm,
        }
    });
    Some((m, b))
}

#[derive(Default, Debug)]
struct Tally {
    sides: usize,
    sound_violations: Vec<String>,
    translation_tight: usize,
    rotation_tight: usize,
}

/// Soundness and tightness of every feasible side of `plan` (LPS anatomy), each side measured
/// under its own route rule and with the cannula it took.
fn check_plan(anatomy: &PreparedAnatomy, plan: &Plan, label: &str, tally: &mut Tally) {
    let safety = &plan.safety;
    let dirs = sphere(48);
    for lp in &plan.levels {
        let v = anatomy.vertebra(lp.level).unwrap();
        for s in &lp.sides {
            let Some(t) = s.trajectory.as_ref() else {
                continue;
            };
            let instrument = Instrument {
                cannula_outer_diameter_mm: t.cannula_outer_diameter_mm,
                ..plan.instrument.clone()
            };
            let base = SideContext {
                anatomy,
                vertebra: v,
                keep_outs: anatomy.keep_outs(lp.level),
                side: s.side,
                instrument: &instrument,
                safety,
                route_rule: RouteRule::Transpedicular,
            };
            let ctx = match t.route {
                Some(Route::Extrapedicular) => extrapedicular::context(&base),
                _ => base,
            };
            let Some((m, b)) = side_geometry(&ctx, s) else {
                continue;
            };
            let profile = Profile::new(&ctx, &m, b.as_ref());
            let cert = profile.certificate();
            let reported = s.navigation_tolerance.as_ref().expect("feasible sides say");
            assert!((reported.translation_mm - cert.translation_mm).abs() < 1e-6);
            assert!((reported.rotation_deg - cert.rotation_deg).abs() < 1e-6);
            assert!((0.0..=1.0).contains(&reported.violation_probability));
            // The probability's shortcuts (the floor's convex combination, the moved spans'
            // own test) skip only samples the exact re-check finds safe: the same fraction as
            // re-checking every sample.
            let brute = (0..tolerance::VIOLATION_SAMPLES)
                .filter(|&i| {
                    let (t, w) = model_sample(i, reported.sigma_mm, reported.sigma_deg);
                    let motion = perturbation(&m.bone_entry_lps, &t, &w);
                    margin_violation(&ctx, &m, b.as_ref(), &motion).is_some()
                })
                .count() as f64
                / tolerance::VIOLATION_SAMPLES as f64;
            assert_eq!(reported.violation_probability, brute, "{label}");
            // The cannula's certificate, which the plan takes from the same pieces as the
            // whole one (`Profile::certificates`), is the one of a profile without the balloon.
            assert_eq!(
                profile.certificates(),
                (cert, Profile::new(&ctx, &m, None).certificate())
            );
            // The search's worst-slack term is the cannula's certified translation tolerance.
            assert!(
                (reported.cannula_translation_mm - m.worst_slack_mm(safety).max(0.0)).abs() < 1e-9
            );
            tally.sides += 1;
            let e = m.bone_entry_lps;
            let u = m.direction_lps.into_inner();
            // Rotation axes: perpendicular to the cannula (the ones that swing it) and a few
            // oblique ones.
            let axes: Vec<Vector> = dirs
                .iter()
                .map(|d| {
                    let p = d - u * d.dot(&u);
                    if p.norm() > 0.3 {
                        p.normalize()
                    } else {
                        *d
                    }
                })
                .collect();
            let moves = |scale: f64| -> (Vec<Pose>, Vec<Pose>) {
                let tr = dirs
                    .iter()
                    .map(|d| perturbation(&e, &(d * cert.translation_mm * scale), &Vector::zeros()))
                    .collect();
                let rot = axes
                    .iter()
                    .map(|a| {
                        perturbation(
                            &e,
                            &Vector::zeros(),
                            &(a * cert.rotation_deg.to_radians() * scale),
                        )
                    })
                    .collect();
                (tr, rot)
            };
            let where_ = format!("{label} {} {}", lp.level, s.side);
            // Sound: at the bound (and half of each together), no margin fails.
            let (tr, rot) = moves(1.0);
            let (half_tr, half_rot) = moves(0.5);
            let combined: Vec<Pose> = half_tr
                .iter()
                .zip(half_rot.iter())
                .map(|(a, b)| a * b)
                .collect();
            for (kind, poses) in [
                ("translation", &tr),
                ("rotation", &rot),
                ("half and half", &combined),
            ] {
                for p in poses {
                    if let Some((code, part)) = margin_violation(&ctx, &m, b.as_ref(), p) {
                        tally.sound_violations.push(format!(
                            "{where_}: {kind} at the bound ({:.3} mm, {:.3} deg) violates {code:?} ({part})",
                            cert.translation_mm, cert.rotation_deg
                        ));
                        break;
                    }
                }
            }
            // Tight: 20 % beyond, some direction violates.
            let (tr, rot) = moves(1.2);
            let t_tight = tr
                .iter()
                .any(|p| margin_violation(&ctx, &m, b.as_ref(), p).is_some());
            let r_tight = rot
                .iter()
                .any(|p| margin_violation(&ctx, &m, b.as_ref(), p).is_some());
            eprintln!(
                "{where_}: translation {:.3} mm ({}) tight {t_tight}; rotation {:.3} deg ({}) tight {r_tight}; p(violation) {:.3}; cannula alone {:.2} mm, {:.2} deg",
                cert.translation_mm,
                cert.translation_limited_by,
                cert.rotation_deg,
                cert.rotation_limited_by,
                reported.violation_probability,
                reported.cannula_translation_mm,
                reported.cannula_rotation_deg,
            );
            tally.translation_tight += t_tight as usize;
            tally.rotation_tight += r_tight as usize;
        }
    }
}

fn report(tally: &Tally, what: &str) {
    eprintln!(
        "{what}: {} sides; sound violations {}; tight (20 % beyond violates): translation {}/{} ({:.0} %), rotation {}/{} ({:.0} %)",
        tally.sides,
        tally.sound_violations.len(),
        tally.translation_tight,
        tally.sides,
        100.0 * tally.translation_tight as f64 / tally.sides as f64,
        tally.rotation_tight,
        tally.sides,
        100.0 * tally.rotation_tight as f64 / tally.sides as f64,
    );
    assert!(
        tally.sound_violations.is_empty(),
        "{:#?}",
        tally.sound_violations
    );
    assert!(tally.sides > 0);
    // Translation: the certificate is the exact smallest slack, so 20 % beyond it towards the
    // nearest surface breaches. Rotation: the cone search covers the rotated axis directions by
    // cells refined where a margin comes near, so it ends within a few % of where a rotation
    // breaches (stop 23: 18/18 real, 10/10 synthetic); the per-point floor alone was tight on
    // 7/18 real sides, because it lets every axis point move straight at the nearest surface.
    assert!(
        2 * tally.translation_tight > tally.sides,
        "translation not tight on most sides"
    );
    assert!(
        2 * tally.rotation_tight > tally.sides,
        "rotation not tight on most sides"
    );
}

#[test]
fn certified_tolerance_is_sound_and_tight_on_synthetic_vertebrae() {
    let mut tally = Tally::default();
    for (levels, soft) in [
        (vec![Level::L1, Level::L3, Level::L5], false),
        (vec![Level::L2, Level::L4], true),
    ] {
        let (input, _) = synth::spine(&levels, &Pose::identity(), soft);
        let anatomy = prepare(input);
        let plan = plan(&anatomy, &common::default_request()).unwrap();
        check_plan(
            &anatomy,
            &plan,
            if soft { "synthetic+soft" } else { "synthetic" },
            &mut tally,
        );
    }
    report(&tally, "synthetic");
}

/// Issue 15's leftover: an extrapedicular side's certified tolerance read 0, because the
/// certificate's cortex span started at the docking zone's end measured from where the cannula
/// docks on the rib (in the rib and the rib-pedicle gap, outside the vertebra). It starts now
/// where the cortex margin applies (the end of the docking zone at the body entry,
/// `Measurement::cortex_from_mm`): the tolerance is positive, reported as certified, and sound
/// by exact re-measurement at the bound (the route's docking and its gap are route rules).
#[test]
fn certified_tolerance_of_extrapedicular_sides_is_positive_and_sound() {
    let mut tally = Tally::default();
    let options = synth::SpineOptions {
        with_soft_tissue: false,
        with_ribs_and_pleura: true,
    };
    let mut extrapedicular = 0;
    for (level, procedure) in [
        (Level::T5, Procedure::Vertebroplasty),
        (Level::T7, Procedure::Kyphoplasty),
        (Level::T8, Procedure::Kyphoplasty),
    ] {
        let (input, _) = synth::spine_with(&[level], &Pose::identity(), &options);
        let anatomy = prepare(input);
        let request = PlanRequest::new(
            None,
            Instrument::default_for(procedure),
            Safety::contract_default(),
        )
        .unwrap()
        .with_procedure(
            procedure,
            vec![Approach::BilateralTranspedicular, Approach::Extrapedicular],
        )
        .unwrap();
        let plan = plan(&anatomy, &request).unwrap();
        for s in &plan.levels[0].sides {
            let Some(t) = s.trajectory.as_ref().filter(|_| s.feasible) else {
                continue;
            };
            if t.route == Some(Route::Extrapedicular) {
                extrapedicular += 1;
                let tol = s.navigation_tolerance.as_ref().unwrap();
                println!(
                    "{level} {procedure} {}: extrapedicular, tolerance {:.3} mm / {:.3} deg",
                    s.side, tol.translation_mm, tol.rotation_deg
                );
                assert!(
                    tol.translation_mm > 0.0 && tol.rotation_deg > 0.0,
                    "{level} {}: {tol:?}",
                    s.side
                );
            }
        }
        check_plan(&anatomy, &plan, &format!("{level} {procedure}"), &mut tally);
    }
    assert!(extrapedicular >= 3, "{extrapedicular} extrapedicular sides");
    eprintln!(
        "extrapedicular: {} sides; tight (20 % beyond violates): translation {}/{}, rotation {}/{}",
        tally.sides, tally.translation_tight, tally.sides, tally.rotation_tight, tally.sides
    );
    assert!(
        tally.sound_violations.is_empty(),
        "{:#?}",
        tally.sound_violations
    );
}

#[test]
#[cfg_attr(
    not(shared_anatomy),
    ignore = "needs ../shared/anatomy next to the repository"
)]
fn certified_tolerance_is_sound_and_tight_on_real_vertebrae() {
    let Some(dir) = common::shared_anatomy() else {
        return;
    };
    let mut tally = Tally::default();
    for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
        let anatomy = prepare(common::load_set(&dir, set));
        let plan = plan(&anatomy, &common::default_request()).unwrap();
        check_plan(&anatomy, &plan, set, &mut tally);
    }
    report(&tally, "real");
}

/// A side planned with `navigation_error_mm = 2.0` keeps 2 mm of slack beyond every margin along
/// the cannula (from the end of its docking zone for the cortex, the whole cannula for the
/// keep-outs) and the balloon, by brute force over every triangle; or it is infeasible with
/// ERROR_TOLERANCE_TOO_LOW and the best tolerance found.
fn check_required_error(anatomy: &PreparedAnatomy, label: &str, need_mm: f64) -> (usize, usize) {
    let mut safety = Safety::contract_default();
    safety.navigation_error_mm = Some(need_mm);
    let request = PlanRequest::new(None, Instrument::contract_default(), safety.clone()).unwrap();
    let plan = plan(anatomy, &request).unwrap();
    let (mut feasible, mut refused) = (0, 0);
    let r = request.instrument().cannula_radius_mm();
    for lp in &plan.levels {
        let v = anatomy.vertebra(lp.level).unwrap();
        let keep_outs = anatomy.keep_outs(lp.level);
        for s in &lp.sides {
            if s.trajectory.is_none() {
                if s.reasons
                    .iter()
                    .any(|r| r.code == ReasonCode::ErrorToleranceTooLow)
                {
                    let reason = s
                        .reasons
                        .iter()
                        .find(|r| r.code == ReasonCode::ErrorToleranceTooLow)
                        .unwrap();
                    assert!(reason.value_mm.unwrap() < need_mm);
                    eprintln!("{label} {} {}: {}", lp.level, s.side, reason.message);
                    refused += 1;
                }
                continue;
            };
            feasible += 1;
            let ctx = SideContext {
                anatomy,
                vertebra: v,
                keep_outs: keep_outs.clone(),
                side: s.side,
                instrument: request.instrument(),
                safety: &safety,
                route_rule: RouteRule::Transpedicular,
            };
            let (m, b) = side_geometry(&ctx, s).unwrap();
            let u = m.direction_lps.into_inner();
            let cortex_from = m.bone_entry_lps + u * m.docking_zone_mm;
            let slack = brute::distance_to_segment(&v.mesh, &cortex_from, &m.tip_lps)
                - r
                - safety.cortex_margin_mm;
            assert!(
                slack >= need_mm,
                "{label} {} {}: cortex slack {slack}",
                lp.level,
                s.side
            );
            let tail = m.tip_lps - u * request.instrument().cannula_working_length_mm;
            let mut min_keep = f64::INFINITY;
            for k in &keep_outs {
                let margin = match k.kind {
                    KeepOutKind::NerveRoot(_) => safety.nerve_root_margin_mm,
                    _ => safety.canal_margin_mm,
                };
                let d = brute::distance_to_segment(&k.mesh, &tail, &m.tip_lps) - r - margin;
                assert!(!brute::contains_point(&k.mesh, &m.tip_lps));
                min_keep = min_keep.min(d);
                assert!(
                    d >= need_mm,
                    "{label} {} {}: {:?} slack {d}",
                    lp.level,
                    s.side,
                    k.kind
                );
            }
            let mut balloon_slack = f64::INFINITY;
            if let Some(b) = &b {
                let rb = b.diameter_mm * 0.5;
                assert!(brute::contains_point(&v.mesh, &b.proximal));
                assert!(brute::contains_point(&v.mesh, &b.distal));
                let d = brute::distance_to_segment(&v.mesh, &b.proximal, &b.distal)
                    - rb
                    - safety.cortex_margin_mm;
                balloon_slack = d;
                assert!(
                    d >= need_mm,
                    "{label} {} {}: balloon slack {d}",
                    lp.level,
                    s.side
                );
                for k in &keep_outs {
                    let d = brute::distance_to_segment(&k.mesh, &b.proximal, &b.distal) - rb;
                    assert!(d >= need_mm + safety.canal_margin_mm.min(safety.nerve_root_margin_mm));
                }
            }
            eprintln!(
                "{label} {} {}: slack beyond the margins (brute force): cortex {slack:.2} mm, keep-outs {min_keep:.2} mm, balloon {balloon_slack:.2} mm",
                lp.level, s.side
            );
        }
    }
    (feasible, refused)
}

#[test]
fn a_required_navigation_error_of_2_mm_is_kept_or_refused_with_the_reason() {
    let (input, _) = synth::spine(&[Level::L1, Level::L3, Level::L5], &Pose::identity(), true);
    let anatomy = prepare(input);
    let (feasible, refused) = check_required_error(&anatomy, "synthetic", 2.0);
    eprintln!("synthetic: {feasible} sides keep 2 mm, {refused} refused");
    assert_eq!(
        feasible + refused,
        6,
        "every side kept or refused with the reason"
    );
    // 0.5 mm: some sides can, and those are checked by brute force.
    let (feasible, refused) = check_required_error(&anatomy, "synthetic", 0.5);
    eprintln!("synthetic: {feasible} sides keep 0.5 mm, {refused} refused");
    assert!(feasible > 0);
    if let Some(dir) = common::shared_anatomy() {
        let anatomy = prepare(common::load_set(&dir, "mean-lumbar-l2-l5"));
        for need_mm in [2.0, 0.5] {
            let (feasible, refused) = check_required_error(&anatomy, "mean-lumbar-l2-l5", need_mm);
            eprintln!("mean-lumbar-l2-l5: {feasible} sides keep {need_mm} mm, {refused} refused");
            assert_eq!(feasible + refused, 8);
        }
    }
}

#[test]
fn a_required_navigation_error_is_refused_when_no_line_tolerates_it() {
    // 6 mm of translation: no lumbar pedicle has that much room around a 3.4 mm cannula.
    let (input, _) = synth::spine(&[Level::L3], &Pose::identity(), false);
    let anatomy = prepare(input);
    let mut safety = Safety::contract_default();
    safety.navigation_error_mm = Some(6.0);
    let request = PlanRequest::new(None, Instrument::contract_default(), safety).unwrap();
    let plan = plan(&anatomy, &request).unwrap();
    for s in &plan.levels[0].sides {
        assert!(!s.feasible);
        let r = &s.reasons[0];
        assert_eq!(r.code, ReasonCode::ErrorToleranceTooLow, "{:?}", s.reasons);
        assert!(r.value_mm.unwrap() > 0.0 && r.value_mm.unwrap() < 6.0);
        assert_eq!(r.limit_mm, Some(6.0));
    }
}

#[test]
fn required_navigation_error_plans_are_the_same_on_1_2_and_8_threads() {
    let (input, _) = synth::spine(&[Level::L2, Level::L4], &Pose::identity(), false);
    let anatomy = prepare(input);
    let mut safety = Safety::contract_default();
    safety.navigation_error_mm = Some(1.0);
    safety.navigation_error_deg = Some(1.0);
    let request = PlanRequest::new(None, Instrument::contract_default(), safety).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| serde_json::to_string(&plan(&anatomy, &request).unwrap()).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(8));
}

#[test]
fn bad_navigation_error_is_refused_naming_the_field() {
    let mut safety = Safety::contract_default();
    safety.navigation_error_deg = Some(f64::NAN);
    let e = PlanRequest::new(None, Instrument::contract_default(), safety).unwrap_err();
    assert!(e.to_string().contains("safety.navigation_error_deg"), "{e}");
    let mut safety = Safety::contract_default();
    safety.navigation_error_mm = Some(-1.0);
    let e = PlanRequest::new(None, Instrument::contract_default(), safety).unwrap_err();
    assert!(e.to_string().contains("safety.navigation_error_mm"), "{e}");
}

/// The keep-out margin of `k` (canal and forbidden: the canal margin; roots: theirs).
fn keep_out_margin(safety: &Safety, k: &kyphoplan_planner::keepout::KeepOut) -> f64 {
    match k.kind {
        KeepOutKind::NerveRoot(_) => safety.nerve_root_margin_mm,
        _ => safety.canal_margin_mm,
    }
}

/// The slow, obvious re-check of a perturbed trajectory (what `margin_violation` did before
/// issue 13's speed work): exact distances for the balloon's and the cannula's margins, then the
/// full `measure` of the moved line and its first margin code other than the cortex's.
fn margin_violation_oracle(
    ctx: &SideContext<'_>,
    m: &Measurement,
    balloon: Option<&BalloonFit>,
    motion: &Pose,
) -> Option<(ReasonCode, &'static str)> {
    let v = ctx.vertebra;
    let safety = ctx.safety;
    if let Some(b) = balloon {
        let (p, d) = (motion * b.proximal, motion * b.distal);
        let radius = b.diameter_mm * 0.5;
        if !v.bone.contains_point(&p)
            || !v.bone.contains_point(&d)
            || v.bone.distance_to_segment(&p, &d) - radius < safety.cortex_margin_mm
        {
            return Some((ReasonCode::CortexMarginViolated, "balloon"));
        }
        let f = &v.frame;
        let y = (f.lps_to_vertebra * p).y.max((f.lps_to_vertebra * d).y);
        if f.posterior_wall_y_mm - y - radius < safety.cortex_margin_mm {
            return Some((
                ReasonCode::CortexMarginViolated,
                "balloon at the posterior wall",
            ));
        }
        for k in &ctx.keep_outs {
            if k.distance_to_segment(&p, &d) - radius < keep_out_margin(safety, k) {
                let code = match k.kind {
                    KeepOutKind::Canal => ReasonCode::CanalMarginViolated,
                    KeepOutKind::NerveRoot(_) => ReasonCode::NerveRootMarginViolated,
                    KeepOutKind::Forbidden => ReasonCode::ForbiddenMarginViolated,
                };
                return Some((code, "balloon"));
            }
        }
    }
    let u = m.direction_lps.into_inner();
    let tip = motion * m.tip_lps;
    let from = motion * (m.tip_lps - u * 100.0);
    let t_tip = (m.tip_lps - m.bone_entry_lps).dot(&u);
    let start = motion * (m.bone_entry_lps + u * m.docking_zone_mm.min(t_tip));
    let r = ctx.instrument.cannula_radius_mm();
    let cortex = if v.bone.contains_point(&tip) {
        v.bone.distance_to_segment(&start, &tip) - r
    } else {
        -v.bone.distance_to_point(&tip) - r
    };
    if cortex < safety.cortex_margin_mm {
        return Some((ReasonCode::CortexMarginViolated, "cannula"));
    }
    measure(ctx, &from, &tip)
        .violations
        .iter()
        .find(|v| is_margin_violation(v.code) && v.code != ReasonCode::CortexMarginViolated)
        .map(|v| (v.code, "cannula"))
}

/// `measure`'s violation codes but the cortex's and the incidence's (which `margin_codes`
/// does not judge).
fn codes_but_docking(codes: impl Iterator<Item = ReasonCode>) -> Vec<ReasonCode> {
    codes
        .filter(|&c| {
            c != ReasonCode::CortexMarginViolated && c != ReasonCode::EntryIncidenceTooSteep
        })
        .collect()
}

/// Perturbations of `m`: the error model's Halton samples at 1, 2 and 4 times its sigmas.
fn perturbations(m: &Measurement, n: usize) -> Vec<Pose> {
    [1.0, 2.0, 4.0]
        .iter()
        .flat_map(|&scale| {
            (0..n).map(move |i| {
                let (t, w) = model_sample(i, scale, scale);
                perturbation(&m.bone_entry_lps, &t, &w)
            })
        })
        .collect()
}

/// Issue 13 (speed): the tolerance's re-check of a perturbed trajectory stops walking the BVH
/// at a margin's verdict and skips what `measure` decides under the docking zone; it must find
/// the same violation (code and part) as the slow re-check with exact distances and the full
/// `measure`, on every planned side (real and synthetic, balloon and cannula alone) under many
/// perturbations, and `margin_codes` must list `measure`'s codes.
#[test]
fn the_fast_margin_recheck_finds_what_the_full_measurement_finds() {
    let mut anatomies = vec![];
    for (levels, soft) in [
        (vec![Level::L1, Level::L3, Level::L5], false),
        (vec![Level::L2, Level::L4], true),
    ] {
        anatomies.push((
            format!("synthetic soft={soft}"),
            prepare(synth::spine(&levels, &Pose::identity(), soft).0),
        ));
    }
    if let Some(dir) = common::shared_anatomy() {
        for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
            anatomies.push((set.to_string(), prepare(common::load_set(&dir, set))));
        }
    } else {
        eprintln!("SKIPPED the real vertebrae: ../shared/anatomy not found");
        assert!(std::env::var("CI").is_err(), "CI needs ../shared/anatomy");
    }
    let (mut checked, mut violated) = (0usize, 0usize);
    for (label, anatomy) in &anatomies {
        let plan = plan(anatomy, &common::default_request()).unwrap();
        for lp in &plan.levels {
            let v = anatomy.vertebra(lp.level).unwrap();
            for s in &lp.sides {
                let ctx = SideContext {
                    anatomy,
                    vertebra: v,
                    keep_outs: anatomy.keep_outs(lp.level),
                    side: s.side,
                    instrument: &plan.instrument,
                    safety: &plan.safety,
                    route_rule: RouteRule::Transpedicular,
                };
                let Some((m, b)) = side_geometry(&ctx, s) else {
                    continue;
                };
                for balloon in [b.as_ref(), None] {
                    for p in perturbations(&m, 64) {
                        let fast = margin_violation(&ctx, &m, balloon, &p);
                        let slow = margin_violation_oracle(&ctx, &m, balloon, &p);
                        assert_eq!(fast, slow, "{label} {} {}", lp.level, s.side);
                        checked += 1;
                        violated += fast.is_some() as usize;
                        let u = m.direction_lps.into_inner();
                        let (from, tip) = (p * (m.tip_lps - u * 100.0), p * m.tip_lps);
                        assert_eq!(
                            codes_but_docking(margin_codes(&ctx, &from, &tip).into_iter()),
                            codes_but_docking(
                                measure(&ctx, &from, &tip).violations.iter().map(|v| v.code)
                            ),
                            "{label} {} {}",
                            lp.level,
                            s.side
                        );
                    }
                }
            }
        }
    }
    eprintln!("{checked} perturbed trajectories, {violated} violate a margin");
    // Both verdicts occur, so the comparison means something.
    assert!(violated > checked / 10 && violated < checked * 9 / 10);
}

/// The same comparison of `margin_codes` with `measure` on the extrapedicular route rule (rib
/// as bone, its own path rules), on lines through a synthetic T8 with ribs and pleura, aimed
/// from lateral points behind the rib at points of the body.
#[test]
fn margin_codes_match_measure_on_the_extrapedicular_route() {
    let options = synth::SpineOptions {
        with_soft_tissue: false,
        with_ribs_and_pleura: true,
    };
    let anatomy = prepare(synth::spine_with(&[Level::T8], &Pose::identity(), &options).0);
    let request = common::default_request();
    let v = anatomy.vertebra(Level::T8).unwrap();
    let mut codes_seen = std::collections::BTreeSet::new();
    for side in [Side::Left, Side::Right] {
        let base = SideContext {
            anatomy: &anatomy,
            vertebra: v,
            keep_outs: anatomy.keep_outs(Level::T8),
            side,
            instrument: request.instrument(),
            safety: request.safety(),
            route_rule: RouteRule::Transpedicular,
        };
        for ctx in [extrapedicular::context(&base), base] {
            let to_lps = v.frame.vertebra_to_lps();
            for i in 0..150 {
                let (a, b) = model_sample(i, 12.0, 0.0);
                let tip = to_lps * point([side.sign() * 6.0 + a.x, -4.0 + a.y, a.z * 0.5]);
                let from = to_lps * point([side.sign() * (40.0 + b.x), 55.0 + b.y, b.z]);
                let fast = margin_codes(&ctx, &from, &tip);
                codes_seen.extend(fast.iter().map(|c| format!("{c:?}")));
                assert_eq!(
                    codes_but_docking(fast.into_iter()),
                    codes_but_docking(measure(&ctx, &from, &tip).violations.iter().map(|v| v.code)),
                    "{side} {:?} line {i}",
                    ctx.route_rule
                );
            }
        }
    }
    eprintln!("codes seen: {codes_seen:?}");
    assert!(codes_seen.len() >= 3);
}

/// The rotation certificate's cone search against a slow oracle, on every transpedicular
/// planned side (synthetic, and real when `../shared/anatomy` is there): the certified rotation
/// is at least the per-point floor (the old bound, still valid); rotations about the bone entry
/// on a dense grid of the certified cone (8 angles up to the bound, 72 axes across the cannula)
/// never violate a margin by the slow exact re-check; and scanning beyond the bound in 5 %
/// steps finds the first violating angle, whose ratio to the certificate (an upper bound of how
/// loose it is) is printed for every side and asserted under 1.2 on most.
#[test]
fn rotation_certificate_is_sound_against_a_dense_oracle_and_at_least_the_floor() {
    let mut anatomies = vec![];
    for (levels, soft) in [
        (vec![Level::L1, Level::L3, Level::L5], false),
        (vec![Level::L2, Level::L4], true),
    ] {
        anatomies.push((
            format!("synthetic soft={soft}"),
            prepare(synth::spine(&levels, &Pose::identity(), soft).0),
        ));
    }
    if let Some(dir) = common::shared_anatomy() {
        for set in ["vhm-male-lumbar", "mean-lumbar-l2-l5"] {
            anatomies.push((set.to_string(), prepare(common::load_set(&dir, set))));
        }
    }
    let (mut sides, mut within_20, mut gained) = (0, 0, 0);
    let mut ratios = vec![];
    for (label, anatomy) in &anatomies {
        let plan = plan(anatomy, &common::default_request()).unwrap();
        for lp in &plan.levels {
            let v = anatomy.vertebra(lp.level).unwrap();
            for s in &lp.sides {
                let ctx = SideContext {
                    anatomy,
                    vertebra: v,
                    keep_outs: anatomy.keep_outs(lp.level),
                    side: s.side,
                    instrument: &plan.instrument,
                    safety: &plan.safety,
                    route_rule: RouteRule::Transpedicular,
                };
                let Some((m, b)) = side_geometry(&ctx, s) else {
                    continue;
                };
                let where_ = format!("{label} {} {}", lp.level, s.side);
                let cert = Profile::new(&ctx, &m, b.as_ref()).certificate();
                assert!(
                    cert.rotation_deg >= cert.rotation_floor_deg,
                    "{where_}: {cert:?}"
                );
                let u = m.direction_lps.into_inner();
                let x = u.cross(&Vector::z()).normalize();
                let y = u.cross(&x);
                let axis = |j: usize| {
                    let p = std::f64::consts::TAU * j as f64 / 72.0;
                    x * p.cos() + y * p.sin()
                };
                let theta = cert.rotation_deg.to_radians();
                let at = |angle: f64, j: usize| {
                    perturbation(&m.bone_entry_lps, &Vector::zeros(), &(axis(j) * angle))
                };
                for k in 1..=8 {
                    for j in 0..72 {
                        let motion = at(theta * k as f64 / 8.0, j);
                        let v = margin_violation_oracle(&ctx, &m, b.as_ref(), &motion);
                        assert!(
                            v.is_none(),
                            "{where_}: a rotation of {k}/8 of the certified {:.3} deg violates {v:?}",
                            cert.rotation_deg
                        );
                    }
                }
                let first = (1..=20).map(|i| 1.0 + 0.05 * i as f64).find(|f| {
                    (0..72).any(|j| {
                        margin_violation(&ctx, &m, b.as_ref(), &at(theta * f, j)).is_some()
                    })
                });
                eprintln!(
                    "{where_}: rotation {:.3} deg (floor {:.3}, {}); first violation on the dense grid at {}",
                    cert.rotation_deg,
                    cert.rotation_floor_deg,
                    cert.rotation_limited_by,
                    first.map_or("none up to 2x".to_string(), |f| format!("{f:.2} x"))
                );
                sides += 1;
                within_20 += first.is_some_and(|f| f <= 1.2 + 1e-9) as usize;
                gained += (cert.rotation_deg > cert.rotation_floor_deg * 1.001) as usize;
                ratios.push(cert.rotation_deg / cert.rotation_floor_deg);
            }
        }
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "{sides} sides: the cone search beats the floor on {gained} (median ratio {:.2}); violated within 20 % beyond the bound on the dense grid: {within_20}/{sides}",
        ratios[ratios.len() / 2]
    );
    assert!(sides > 0);
    assert!(2 * within_20 > sides, "rotation not tight on most sides");
}
