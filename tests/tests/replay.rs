//! Regression replay of the anatomy case library `tests/cases` (issue: "Anatomy case library and
//! regression replay"): the synthetic meshes are regenerated first (only case.toml and
//! expected.json are committed), then every case is planned in-process and through an
//! in-process server and compared with its golden. The comparator itself is tested for
//! blindness: a shifted golden, a flipped feasibility and a changed reason code must fail.
//!
//! After an intended planner change: `cargo run -p kyphoplan-tests --bin kyphoplan-cases -- bless`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kyphoplan_cli::replay::{
    self, compare, has_regression, Outcome, Planner, ReplayOptions, Tolerances,
};
use kyphoplan_client::case::{self, ReadOptions};
use kyphoplan_planner::anatomy::PatientFrame;
use kyphoplan_planner::plan::{Plan, ReasonCode};
use kyphoplan_tests::cases;
use kyphoplan_tests::server::TestServer;

/// CI must not pass with the real anatomy silently missing.
fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn options(bless: bool) -> ReplayOptions {
    ReplayOptions {
        shared_root: cases::shared_root(),
        bless,
        skipped_is_failure: ci(),
        concurrency: 4,
    }
}

fn copy_without_meshes(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            copy_without_meshes(&path, &to.join(entry.file_name()));
        } else if path
            .extension()
            .is_none_or(|e| !e.eq_ignore_ascii_case("stl"))
        {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// The committed library copied (without any mesh lying around) to a scratch directory and its
/// synthetic meshes regenerated there: once per test run.
fn library() -> &'static Path {
    static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-library");
        let _ = std::fs::remove_dir_all(&dir);
        copy_without_meshes(&cases::library_root(), &dir);
        cases::generate(&dir).expect("the synthetic cases generate");
        dir
    })
}

fn print_and_count(summary: &replay::ReplaySummary, options: &ReplayOptions) -> usize {
    for line in summary.report_lines(options) {
        println!("{line}");
    }
    summary.failures(options)
}

/// Replay one part of the library (`synthetic` or `real`) in-process; the number of cases.
fn replay_in_process(part: &str) -> usize {
    let options = options(false);
    let summary = replay::replay(
        &library().join(part),
        Planner::InProcess,
        &options,
        &|_, _, _| {},
    )
    .unwrap();
    let failures = print_and_count(&summary, &options);
    assert_eq!(
        failures, 0,
        "regressions (after an intended change: cargo run -p kyphoplan-tests --bin kyphoplan-cases -- bless)"
    );
    summary.cases.len()
}

/// Replay one part of the library through an in-process server; the number of cases.
fn replay_through_the_server(part: &str) -> usize {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(TestServer::start(|_| {}));
    let url = server.url();
    let options = options(false);
    // The replay runs its own client runtime on this thread; the server runs on `runtime`.
    let connect = kyphoplan_client::ConnectOptions::default();
    let planner = Planner::Server {
        url: &url,
        connect: &connect,
    };
    let summary = replay::replay(&library().join(part), planner, &options, &|_, _, _| {});
    runtime.block_on(server.shutdown());
    let summary = summary.unwrap();
    let failures = print_and_count(&summary, &options);
    assert_eq!(failures, 0, "regressions through the server");
    summary.cases.len()
}

#[test]
fn synthetic_library_replays_in_process_without_regression() {
    let cases = replay_in_process("synthetic");
    assert!(cases >= 41, "{cases} cases");
}

#[test]
fn synthetic_library_replays_through_the_server_without_regression() {
    let cases = replay_through_the_server("synthetic");
    assert!(cases >= 41, "{cases} cases");
}

/// The real-anatomy cases read their meshes from `../shared/anatomy`: without it these tests are
/// ignored (and reported so), never passed; under CI=true a missing `../shared` fails the build.
#[test]
#[cfg_attr(
    not(shared_anatomy),
    ignore = "needs ../shared/anatomy next to the repository"
)]
fn real_library_replays_in_process_without_regression() {
    assert_eq!(replay_in_process("real"), 2);
}

#[test]
#[cfg_attr(
    not(shared_anatomy),
    ignore = "needs ../shared/anatomy next to the repository"
)]
fn real_library_replays_through_the_server_without_regression() {
    assert_eq!(replay_through_the_server("real"), 2);
}

#[test]
fn committed_case_files_match_the_generator() {
    let root = cases::library_root();
    let generated = library().join(cases::SYNTHETIC_DIR);
    let committed_root = root.join(cases::SYNTHETIC_DIR);
    let mut generated_dirs = replay::find_cases(&generated).unwrap();
    let mut committed_dirs = replay::find_cases(&committed_root).unwrap();
    for d in generated_dirs.iter_mut() {
        *d = d.strip_prefix(&generated).unwrap().to_owned();
    }
    for d in committed_dirs.iter_mut() {
        *d = d.strip_prefix(&committed_root).unwrap().to_owned();
    }
    assert_eq!(
        generated_dirs, committed_dirs,
        "tests/cases/synthetic holds exactly the generated cases (kyphoplan-cases generate)"
    );
    for rel in &committed_dirs {
        let a = std::fs::read_to_string(generated.join(rel).join("case.toml")).unwrap();
        let b = std::fs::read_to_string(committed_root.join(rel).join("case.toml")).unwrap();
        assert_eq!(
            a,
            b,
            "{}: committed case.toml differs from the generator's",
            rel.display()
        );
    }
    for dir in replay::find_cases(&root).unwrap() {
        assert!(
            dir.join(replay::GOLDEN_FILE).is_file(),
            "{}: no golden",
            dir.display()
        );
        let text = std::fs::read_to_string(dir.join("case.toml")).unwrap();
        let toml = case::parse_case_toml(&text).unwrap();
        assert!(
            toml.description
                .as_deref()
                .is_some_and(|d| !d.trim().is_empty()),
            "{}: no description",
            dir.display()
        );
    }
}

#[test]
fn generation_is_deterministic() {
    let all = cases::synthetic_cases();
    for c in all
        .iter()
        .filter(|c| c.dir.contains("borderline") || c.dir.contains("skin"))
    {
        assert_eq!(c.anatomy(), c.anatomy(), "{}", c.dir);
    }
}

fn golden(rel: &str) -> Plan {
    let path = cases::library_root().join(rel).join(replay::GOLDEN_FILE);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn first_feasible_side(plan: &mut Plan) -> &mut kyphoplan_planner::plan::SidePlan {
    plan.levels
        .iter_mut()
        .flat_map(|l| l.sides.iter_mut())
        .find(|s| s.feasible)
        .expect("a feasible side")
}

#[test]
fn comparator_flags_a_target_shifted_by_2_mm() {
    let expected = golden("synthetic/mean-soft-tissue/L3");
    let mut actual = expected.clone();
    first_feasible_side(&mut actual)
        .trajectory
        .as_mut()
        .unwrap()
        .target_mm[2] += 2.0;
    let diffs = compare(&expected, &actual, &Tolerances::DEFAULT);
    assert!(has_regression(&diffs), "{diffs:?}");
    let d = diffs.iter().find(|d| d.what == "target").unwrap();
    assert!(
        d.regression && (d.amount.unwrap() - 2.0).abs() < 1e-9,
        "{d:?}"
    );
}

#[test]
fn comparator_accepts_a_shift_below_tolerance() {
    let expected = golden("synthetic/mean-soft-tissue/L3");
    let mut actual = expected.clone();
    let side = first_feasible_side(&mut actual);
    let t = side.trajectory.as_mut().unwrap();
    t.target_mm[0] += 0.3;
    t.medial_angle_deg += 0.5;
    t.clearance_mm.canal -= 0.1;
    let b = side.balloon.as_mut().unwrap();
    b.volume_ml *= 1.03;
    let diffs = compare(&expected, &actual, &Tolerances::DEFAULT);
    assert!(!has_regression(&diffs), "{diffs:?}");
    // Reported with their amounts all the same.
    assert_eq!(diffs.len(), 4, "{diffs:?}");
    let target = diffs.iter().find(|d| d.what == "target").unwrap();
    assert!((target.amount.unwrap() - 0.3).abs() < 1e-9);
    // And a tighter per-case tolerance makes the same shift a regression.
    let tight = Tolerances {
        position_mm: 0.1,
        ..Tolerances::DEFAULT
    };
    assert!(has_regression(&compare(&expected, &actual, &tight)));
}

#[test]
fn comparator_flags_flipped_feasibility() {
    let expected = golden("synthetic/mean-soft-tissue/L3");
    let mut actual = expected.clone();
    let side = first_feasible_side(&mut actual);
    side.feasible = false;
    side.trajectory = None;
    side.balloon = None;
    let diffs = compare(&expected, &actual, &Tolerances::DEFAULT);
    assert!(
        diffs.iter().any(|d| d.what == "feasible" && d.regression),
        "{diffs:?}"
    );
}

#[test]
fn comparator_flags_a_changed_reason_code() {
    let expected = golden("synthetic/narrow-pedicles/both-L3-4.4mm");
    let side = &expected.levels[0].sides[0];
    assert!(!side.feasible);
    assert_eq!(side.reasons[0].code, ReasonCode::PedicleCorridorTooNarrow);
    let mut actual = expected.clone();
    actual.levels[0].sides[0].reasons[0].code = ReasonCode::CanalTooClose;
    let diffs = compare(&expected, &actual, &Tolerances::DEFAULT);
    assert!(
        diffs.iter().any(|d| d.what == "reasons" && d.regression),
        "{diffs:?}"
    );
    // The message and measured value are not part of the comparison.
    let mut reworded = expected.clone();
    reworded.levels[0].sides[0].reasons[0]
        .message
        .push_str(" (reworded)");
    assert!(compare(&expected, &reworded, &Tolerances::DEFAULT).is_empty());
}

#[test]
fn comparator_flags_a_changed_balloon_size() {
    let expected = golden("synthetic/fracture/L1-wedge-40pct");
    let mut actual = expected.clone();
    first_feasible_side(&mut actual)
        .balloon
        .as_mut()
        .unwrap()
        .length_mm += 5.0;
    assert!(has_regression(&compare(
        &expected,
        &actual,
        &Tolerances::DEFAULT
    )));
}

/// The whole runner, end to end, on one regenerated case with a tampered golden, a missing
/// golden, and --bless.
#[test]
fn replay_fails_on_a_tampered_or_missing_golden_and_bless_fixes_it() {
    let scratch = tempfile::tempdir().unwrap();
    let rel = "synthetic/mean-bone-only/L3";
    let dir = scratch.path().join("L3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(library().join(rel).join("case.toml"), dir.join("case.toml")).unwrap();
    std::fs::copy(library().join(rel).join("L3.stl"), dir.join("L3.stl")).unwrap();
    let mut tampered = golden(rel);
    first_feasible_side(&mut tampered)
        .trajectory
        .as_mut()
        .unwrap()
        .bone_entry_mm[1] -= 2.0;
    std::fs::write(
        dir.join(replay::GOLDEN_FILE),
        kyphoplan_client::plan_json(&tampered),
    )
    .unwrap();
    let no_golden = scratch.path().join("copy-without-golden");
    std::fs::create_dir_all(&no_golden).unwrap();
    std::fs::copy(dir.join("case.toml"), no_golden.join("case.toml")).unwrap();
    std::fs::copy(dir.join("L3.stl"), no_golden.join("L3.stl")).unwrap();

    let plain = ReplayOptions {
        shared_root: None,
        bless: false,
        skipped_is_failure: false,
        concurrency: 0,
    };
    let summary =
        replay::replay(scratch.path(), Planner::InProcess, &plain, &|_, _, _| {}).unwrap();
    assert_eq!(summary.failures(&plain), 2);
    let lines: Vec<String> = summary.cases.iter().flat_map(|c| c.lines(&plain)).collect();
    println!("{}", lines.join("\n"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("REGRESSION: bone entry moved 2.00 mm")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("no golden (run --bless)")),
        "{lines:?}"
    );

    let bless = ReplayOptions {
        bless: true,
        ..plain.clone()
    };
    let blessed =
        replay::replay(scratch.path(), Planner::InProcess, &bless, &|_, _, _| {}).unwrap();
    assert_eq!(blessed.failures(&bless), 0);
    assert_eq!(blessed.blessed.len(), 2);
    let again = replay::replay(scratch.path(), Planner::InProcess, &plain, &|_, _, _| {}).unwrap();
    assert_eq!(again.failures(&plain), 0);
    assert!(again.cases.iter().all(
        |c| matches!(&c.outcome, Outcome::Compared { differences, .. } if differences.is_empty())
    ));
}

/// Points and directions of an RAS plan in LPS: x and y negated.
fn ras_plan_as_lps(mut plan: Plan) -> Plan {
    let flip = |p: &mut [f64; 3]| {
        p[0] = -p[0];
        p[1] = -p[1];
    };
    plan.frame = PatientFrame::Lps;
    for level in &mut plan.levels {
        for side in &mut level.sides {
            if let Some(t) = &mut side.trajectory {
                flip(&mut t.bone_entry_mm);
                flip(&mut t.target_mm);
                flip(&mut t.direction);
                if let Some(s) = &mut t.skin_entry_mm {
                    flip(s);
                }
            }
            if let Some(b) = &mut side.balloon {
                flip(&mut b.center_mm);
                flip(&mut b.axis);
            }
        }
    }
    plan
}

#[test]
fn ras_and_lps_goldens_are_the_same_plan() {
    let lps = golden("synthetic/frames/L4-lps");
    let ras = golden("synthetic/frames/L4-ras");
    assert_eq!(ras.frame, PatientFrame::Ras);
    let tight = Tolerances {
        position_mm: 1e-6,
        angle_deg: 1e-6,
        clearance_mm: 1e-6,
        volume_fraction: 1e-9,
    };
    let diffs = compare(&lps, &ras_plan_as_lps(ras), &tight);
    assert!(!has_regression(&diffs), "{diffs:?}");
}

#[test]
fn shared_mesh_root_keeps_meshes_confined() {
    let shared = tempfile::tempdir().unwrap();
    let set = shared.path().join("anatomy/set");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(shared.path().join("anatomy/outside.stl"), b"").unwrap();
    let case_dir = tempfile::tempdir().unwrap();
    let write = |mesh_root: &str, mesh: &str| {
        std::fs::write(
            case_dir.path().join("case.toml"),
            format!(
                "name = \"x\"\nframe = \"LPS\"\nmesh_root = \"{mesh_root}\"\n[[structure]]\nrole = \"vertebra\"\nlevel = \"L1\"\nmesh = \"{mesh}\"\n"
            ),
        )
        .unwrap();
    };
    let with_shared = ReadOptions {
        shared_root: Some(shared.path().to_owned()),
    };
    let refused = |opts: &ReadOptions, needle: &str| {
        let e = case::read_case_with(case_dir.path(), opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    };
    write("shared:anatomy/set", "../outside.stl");
    refused(&with_shared, "leads outside");
    write("shared:anatomy/../anatomy/set", "L1.stl");
    refused(&with_shared, "without '..'");
    write("shared:/etc", "passwd");
    refused(&with_shared, "without '..'");
    write("anatomy/set", "L1.stl");
    refused(&with_shared, "must start with");
    write("shared:anatomy/set", "L1.stl");
    refused(&ReadOptions::default(), "no shared data directory");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/", shared.path().join("escape")).unwrap();
        write("shared:escape/etc", "passwd");
        refused(&with_shared, "not a directory inside");
    }
    // The [replay] and description extensions are accepted; other unknown keys still refused.
    let ok = "name = \"x\"\ndescription = \"d\"\nframe = \"LPS\"\n[replay]\nposition_tolerance_mm = 1.0\nangle_tolerance_deg = 2.0\nclearance_tolerance_mm = 0.3\nvolume_tolerance_fraction = 0.1\n";
    assert!(case::parse_case_toml(ok).is_ok());
    assert!(case::parse_case_toml(&format!("{ok}bogus = 1\n")).is_err());
}

#[test]
fn missing_shared_anatomy_is_skipped_and_fails_under_ci() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("real");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("case.toml"),
        "name = \"r\"\nframe = \"LPS\"\nmesh_root = \"shared:anatomy/nowhere\"\n[[structure]]\nrole = \"vertebra\"\nlevel = \"L1\"\nmesh = \"L1.stl\"\n",
    )
    .unwrap();
    let mut opts = ReplayOptions {
        shared_root: Some(root.path().join("no-shared")),
        ..ReplayOptions::default()
    };
    let s = replay::replay(root.path(), Planner::InProcess, &opts, &|_, _, _| {}).unwrap();
    assert!(matches!(s.cases[0].outcome, Outcome::Skipped { .. }));
    assert!(s.cases[0].lines(&opts)[0].contains("SKIPPED"));
    assert_eq!(s.failures(&opts), 0);
    opts.skipped_is_failure = true;
    assert_eq!(s.failures(&opts), 1);
}
