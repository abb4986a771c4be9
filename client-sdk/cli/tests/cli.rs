//! The `kyphoplan` command line: exit codes, messages, and identical plan JSON in-process and
//! through the server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kyphoplan_client::case::write_case;
use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::synth;

fn kyphoplan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kyphoplan"))
        .args(args)
        .output()
        .expect("run kyphoplan")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A case directory with one L4 vertebra.
fn l4_case(dir: &Path) -> PathBuf {
    let case = dir.join("case-l4");
    let (anatomy, _) = synth::spine(&[Level::L4], &Pose::identity(), false);
    write_case(&case, &anatomy, None).unwrap();
    case
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The in-process server on a free port, on a runtime of its own; stops when dropped.
struct Server {
    url: String,
    server: Option<kyphoplan_server::InProcessServer>,
    runtime: tokio::runtime::Runtime,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with(|_| {})
    }

    fn start_with(tweak: impl FnOnce(&mut kyphoplan_server::Config)) -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut config = kyphoplan_server::Config::with_data_dir(data.path());
        tweak(&mut config);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime
            .block_on(kyphoplan_server::InProcessServer::start(config))
            .unwrap();
        Server {
            url: server.url(),
            server: Some(server),
            runtime,
            _data: data,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self.runtime.block_on(server.shutdown());
        }
    }
}

#[test]
fn plan_in_process_and_through_the_server_write_identical_json() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    let local_json = dir.path().join("local.json");
    let remote_json = dir.path().join("remote.json");

    let local = kyphoplan(&["plan", s(&case), "--json", s(&local_json)]);
    assert_eq!(local.status.code(), Some(0), "{}", stderr(&local));
    let server = Server::start();
    let remote = kyphoplan(&[
        "plan",
        s(&case),
        "--server",
        &server.url,
        "--json",
        s(&remote_json),
    ]);
    assert_eq!(remote.status.code(), Some(0), "{}", stderr(&remote));

    let a = std::fs::read(&local_json).unwrap();
    let b = std::fs::read(&remote_json).unwrap();
    assert_eq!(a, b, "plan JSON differs between in-process and server");
    assert_eq!(stdout(&local), stdout(&remote));
    // The table shows each side of the level.
    let table = stdout(&local);
    assert!(table.contains("L4") && table.contains("left") && table.contains("right"));
    // The JSON is the contract's.
    let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
    assert_eq!(v["frame"], "LPS");
    assert_eq!(v["levels"][0]["level"], "L4");
    assert!(v.get("plan_id").is_none());
}

#[test]
fn evaluate_prints_a_verdict_and_exits_zero_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    let plan_json = dir.path().join("plan.json");
    let o = kyphoplan(&["plan", s(&case), "--json", s(&plan_json)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_json).unwrap()).unwrap();
    let side = plan["levels"][0]["sides"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["feasible"] == true)
        .expect("a feasible side")
        .clone();
    let xyz = |v: &serde_json::Value| {
        let a: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        a.join(",")
    };
    let entry = xyz(&side["trajectory"]["bone_entry_mm"]);
    let target = xyz(&side["trajectory"]["target_mm"]);
    let side_name = side["side"].as_str().unwrap().to_owned();
    let other = if side_name == "left" { "right" } else { "left" };

    let eval_json = dir.path().join("eval.json");
    let safe = kyphoplan(&[
        "evaluate",
        s(&case),
        "--level",
        "L4",
        "--side",
        &side_name,
        "--entry",
        &entry,
        "--target",
        &target,
        "--json",
        s(&eval_json),
    ]);
    assert_eq!(safe.status.code(), Some(0), "{}", stderr(&safe));
    assert!(stdout(&safe).contains("SAFE"), "{}", stdout(&safe));
    assert!(!stdout(&safe).contains("UNSAFE"), "{}", stdout(&safe));

    let unsafe_ = kyphoplan(&[
        "evaluate",
        s(&case),
        "--level",
        "L4",
        "--side",
        other,
        "--entry",
        &entry,
        "--target",
        &target,
    ]);
    assert_eq!(unsafe_.status.code(), Some(0), "{}", stderr(&unsafe_));
    assert!(stdout(&unsafe_).contains("UNSAFE"), "{}", stdout(&unsafe_));

    // Through the server: the same verdict and the same JSON.
    let server = Server::start();
    let remote_json = dir.path().join("eval-remote.json");
    let remote = kyphoplan(&[
        "evaluate",
        s(&case),
        "--level",
        "L4",
        "--side",
        &side_name,
        "--entry",
        &entry,
        "--target",
        &target,
        "--server",
        &server.url,
        "--json",
        s(&remote_json),
    ]);
    assert_eq!(remote.status.code(), Some(0), "{}", stderr(&remote));
    assert_eq!(stdout(&remote), stdout(&safe));
    assert_eq!(
        std::fs::read(&remote_json).unwrap(),
        std::fs::read(&eval_json).unwrap()
    );
}

#[test]
fn unknown_key_in_case_toml_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    let toml = case.join("case.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}\n[safety]\ncanal_margin = 2.0\n")).unwrap();
    let o = kyphoplan(&["plan", s(&case)]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("canal_margin"), "{e}");
    assert!(e.contains("case.toml"), "{e}");
}

#[test]
fn bad_values_in_case_toml_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    let toml = case.join("case.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{text}\n[safety]\ncanal_margin_mm = -2.0\n")).unwrap();
    let o = kyphoplan(&["plan", s(&case)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("safety.canal_margin_mm"),
        "{}",
        stderr(&o)
    );

    std::fs::write(&toml, text.replace("frame = \"LPS\"", "frame = \"XYZ\"")).unwrap();
    let o = kyphoplan(&["plan", s(&case)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("frame"), "{}", stderr(&o));
}

#[test]
fn mesh_paths_must_stay_inside_the_case_directory() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    let toml = case.join("case.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::copy(case.join("L4.stl"), dir.path().join("outside.stl")).unwrap();

    for mesh in ["../outside.stl", s(&dir.path().join("outside.stl"))] {
        std::fs::write(
            &toml,
            text.replace("mesh = \"L4.stl\"", &format!("mesh = {mesh:?}")),
        )
        .unwrap();
        let o = kyphoplan(&["plan", s(&case)]);
        assert_eq!(o.status.code(), Some(1), "{mesh}");
        assert!(stderr(&o).contains("structure[0].mesh"), "{}", stderr(&o));
    }

    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.path().join("outside.stl"), case.join("link.stl")).unwrap();
        std::fs::write(
            &toml,
            text.replace("mesh = \"L4.stl\"", "mesh = \"link.stl\""),
        )
        .unwrap();
        let o = kyphoplan(&["plan", s(&case)]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("outside the case directory"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn a_malformed_mesh_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    std::fs::write(case.join("L4.stl"), b"solid broken\nfacet nonsense").unwrap();
    let o = kyphoplan(&["plan", s(&case)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("L4.stl"), "{}", stderr(&o));
}

#[test]
fn a_missing_case_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = kyphoplan(&["plan", s(&dir.path().join("nope"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}

#[test]
fn usage_errors_and_unimplemented_commands_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    for args in [
        vec!["plan"],
        vec!["frobnicate"],
        vec!["plan", s(&case), "--no-such-flag"],
        vec![
            "evaluate",
            s(&case),
            "--level",
            "L4",
            "--side",
            "up",
            "--entry",
            "0,0,0",
            "--target",
            "1,1,1",
        ],
        vec![
            "evaluate",
            s(&case),
            "--level",
            "L4",
            "--side",
            "left",
            "--entry",
            "0,0",
            "--target",
            "1,1,1",
        ],
        vec![
            "evaluate",
            s(&case),
            "--level",
            "Q9",
            "--side",
            "left",
            "--entry",
            "0,0,0",
            "--target",
            "1,1,1",
        ],
        vec!["replay", s(dir.path()), "--bogus"],
        vec!["bench", "--bogus"],
    ] {
        let o = kyphoplan(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn bench_quick_prints_the_table_and_writes_the_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let o = kyphoplan(&["bench", "--quick", "--json", s(&json)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("nproc"), "{table}");
    assert!(table.contains("demo/plan_warm/L3"), "{table}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["date"].as_str().unwrap().len() >= 10);
    assert!(report["machine"]["nproc"].as_u64().unwrap() >= 1);
    let figures = report["figures"].as_array().unwrap();
    let value = |name: &str| -> f64 {
        let f = figures
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("figure {name} missing from {report:#}"));
        assert!(f["n"].as_u64().unwrap() >= 1, "{name}: {f}");
        assert!(!f["unit"].as_str().unwrap().is_empty(), "{name}: {f}");
        f["median"].as_f64().unwrap()
    };
    let mut positive = vec![
        "demo/prepared_memory".to_string(),
        "demo/evaluate".into(),
        "demo/five_levels_from_raw".into(),
        "demo/peak_rss_vmhwm".into(),
        "demo/clearance_exact_segment_distance".into(),
        "demo/clearance_parry_capsule_distance".into(),
        "demo/clearance_speedup_over_parry".into(),
        "server/upload_demo_anatomy".into(),
        "server/first_plan_L3_prepares".into(),
    ];
    for level in ["L1", "L2", "L3", "L4", "L5"] {
        positive.push(format!("demo/plan_warm/{level}"));
        positive.push(format!("demo/plan_cold/{level}"));
    }
    for thoracic in ["T8", "T8_fallbacks", "T5_fallbacks"] {
        positive.push(format!("demo/plan_warm/{thoracic}"));
    }
    for clients in [1, 4, 16] {
        positive.push(format!("server/clients_{clients}/throughput"));
        positive.push(format!("server/clients_{clients}/latency_p50"));
        positive.push(format!("server/clients_{clients}/latency_p99"));
        // No call is shed: the bench's server admits 16 concurrent plans.
        assert_eq!(value(&format!("server/clients_{clients}/shed_calls")), 0.0);
    }
    for name in &positive {
        let v = value(name);
        assert!(v.is_finite() && v > 0.0, "{name} = {v}");
    }
}

#[test]
fn plan_writes_slicer_markups_pictures_scene_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    let (mrk, pics, glb, html) = (
        dir.path().join("plan.mrk.json"),
        dir.path().join("pics"),
        dir.path().join("scene.glb"),
        dir.path().join("report.html"),
    );
    let o = kyphoplan(&[
        "plan",
        s(&case),
        "--slicer",
        s(&mrk),
        "--pictures",
        s(&pics),
        "--scene",
        s(&glb),
        "--report",
        s(&html),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let markups: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mrk).unwrap()).unwrap();
    assert!(markups["@schema"]
        .as_str()
        .unwrap()
        .contains("markups-schema-v1.0"));
    assert!(!markups["markups"].as_array().unwrap().is_empty());
    assert!(pics.join("overview.png").is_file() && pics.join("L4.png").is_file());
    assert_eq!(&std::fs::read(&glb).unwrap()[..4], b"glTF");
    let report = std::fs::read_to_string(&html).unwrap();
    assert!(report.contains("case.toml") && report.contains("data:image/png;base64,"));
}

#[test]
fn replay_exits_three_without_golden_or_on_a_regression_and_bless_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("library");
    let case = l4_case(&root);
    let golden = case.join("expected.json");
    let o = kyphoplan(&["replay", s(&root)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("no golden (run --bless)"),
        "{}",
        stdout(&o)
    );
    let o = kyphoplan(&["replay", s(&root), "--bless"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(golden.is_file());
    let server = Server::start();
    for extra in [vec![], vec!["--server", server.url.as_str()]] {
        let mut args = vec!["replay", s(&root)];
        args.extend(extra.iter().copied());
        let o = kyphoplan(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("L4 left   unchanged"), "{}", stdout(&o));
    }
    // A golden whose target sits 2 mm away: a regression, named with its amount.
    let text = std::fs::read_to_string(&golden).unwrap();
    let mut plan: serde_json::Value = serde_json::from_str(&text).unwrap();
    let target = &mut plan["levels"][0]["sides"][0]["trajectory"]["target_mm"][2];
    *target = serde_json::json!(target.as_f64().unwrap() + 2.0);
    std::fs::write(&golden, serde_json::to_string_pretty(&plan).unwrap()).unwrap();
    let o = kyphoplan(&["replay", s(&root), "--server", &server.url]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("REGRESSION: target moved 2.00 mm"),
        "{}",
        stdout(&o)
    );
    let o = kyphoplan(&["replay", s(&dir.path().join("nowhere"))]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

/// `replay --server` uses the command line's connection options (here --token-file) like the
/// other `--server` commands.
#[test]
fn replay_through_a_server_that_asks_for_a_token_uses_the_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("library");
    l4_case(&root);
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "erin:replay-test-token-0123456789abcdef\n").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "replay-test-token-0123456789abcdef\n").unwrap();
    let server = Server::start_with(|c| c.token_file = Some(tokens.clone()));
    let replay = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kyphoplan"))
            .args(["replay", s(&root), "--bless", "--server", &server.url])
            .args(extra)
            .env_remove("KYPHOPLAN_TOKEN")
            .output()
            .expect("run kyphoplan")
    };
    let o = replay(&["--token-file", s(&token)]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        root.join("case-l4").join("expected.json").is_file(),
        "{}",
        stdout(&o)
    );
    // Without the token nothing is planned.
    let o = replay(&[]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("1 errors"), "{}", stdout(&o));
}

#[test]
fn demo_writes_a_plan_and_a_case_that_plans_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = kyphoplan(&["demo", "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = stdout(&o);
    for level in ["L1", "L2", "L3", "L4", "L5"] {
        assert!(table.contains(level), "{table}");
    }
    assert!(table.contains(s(&out.join("plan.json"))), "{table}");
    let demo_plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("plan.json")).unwrap()).unwrap();
    assert_eq!(demo_plan["levels"].as_array().unwrap().len(), 5);

    // The written case directory re-plans: same levels and same feasibility.
    let json = dir.path().join("replanned.json");
    let o = kyphoplan(&["plan", s(&out), "--json", s(&json)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let replanned: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let feasible = |p: &serde_json::Value| -> Vec<bool> {
        p["levels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| {
                l["sides"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["feasible"] == true)
            })
            .collect()
    };
    assert_eq!(feasible(&replanned), feasible(&demo_plan));
}

#[test]
fn refusals_exit_one_in_process_and_through_the_server_and_an_absent_server_exits_four() {
    let dir = tempfile::tempdir().unwrap();
    let case = l4_case(dir.path());
    let args = |server: Option<&str>| {
        let mut a = vec![
            "evaluate".to_owned(),
            s(&case).to_owned(),
            "--level".into(),
            "L1".into(),
            "--side".into(),
            "left".into(),
            "--entry".into(),
            "-20,30,0".into(),
            "--target".into(),
            "0,-10,0".into(),
        ];
        if let Some(url) = server {
            a.push("--server".into());
            a.push(url.into());
        }
        a
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        kyphoplan(&refs)
    };
    // L1 is not in the case.
    let local = run(args(None));
    assert_eq!(local.status.code(), Some(1), "{}", stderr(&local));
    assert!(stderr(&local).contains("L1"), "{}", stderr(&local));
    let server = Server::start();
    let remote = run(args(Some(&server.url)));
    assert_eq!(remote.status.code(), Some(1), "{}", stderr(&remote));
    assert!(stderr(&remote).contains("L1"), "{}", stderr(&remote));
    drop(server);

    // Nothing listens on port 1.
    let o = kyphoplan(&["plan", s(&case), "--server", "http://127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("127.0.0.1:1"), "{}", stderr(&o));
}

#[test]
fn delete_removes_a_plan_then_an_anatomy_and_says_when_nothing_is_left() {
    let server = Server::start();
    let (anatomy_id, plan_id) = server.runtime.block_on(async {
        let mut client = kyphoplan_client::Client::connect(&server.url)
            .await
            .unwrap();
        let anatomy = synth::spine(&[Level::L3], &Pose::identity(), false).0;
        let id = client.upload_anatomy(&anatomy).await.unwrap().anatomy_id;
        let request = kyphoplan_planner::request::PlanRequest::new(
            None,
            kyphoplan_planner::request::Instrument::contract_default(),
            kyphoplan_planner::request::Safety::contract_default(),
        )
        .unwrap();
        let plan = client.create_plan(&id, &request).await.unwrap();
        (id, plan.plan_id)
    });
    let url = server.url.as_str();

    // Usage: exactly one of --plan, --anatomy; --cascade only with --anatomy.
    for args in [
        vec!["delete", "--server", url],
        vec!["delete", "--server", url, "--plan", "p", "--anatomy", "a"],
        vec!["delete", "--server", url, "--plan", "p", "--cascade"],
    ] {
        assert_eq!(kyphoplan(&args).status.code(), Some(2), "{args:?}");
    }

    let o = kyphoplan(&["delete", "--server", url, "--anatomy", &anatomy_id]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 plan(s)"), "{}", stderr(&o));

    let o = kyphoplan(&["delete", "--server", url, "--plan", &plan_id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("deleted plan {plan_id}\n"));
    let o = kyphoplan(&["delete", "--server", url, "--plan", &plan_id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to delete"), "{}", stdout(&o));

    let o = kyphoplan(&[
        "delete",
        "--server",
        url,
        "--anatomy",
        &anatomy_id,
        "--cascade",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("deleted anatomy {anatomy_id}\n"));
    let o = kyphoplan(&["delete", "--server", url, "--anatomy", &anatomy_id]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to delete"), "{}", stdout(&o));
}
