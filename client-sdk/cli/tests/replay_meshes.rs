//! `kyphoplan replay` on a fresh clone: the library's synthetic cases hold only case.toml and
//! expected.json (the meshes are generated, not committed), and used to fail with "cannot open
//! ... L1.stl". Replay now generates the missing meshes of the library's own cases first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kyphoplan_cli::cases;

fn kyphoplan(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kyphoplan"))
        .arg("replay")
        .args(args)
        .env_remove("CI")
        .output()
        .expect("kyphoplan runs")
}

/// A committed synthetic case copied as a fresh clone has it: case.toml and expected.json.
fn copy_committed(rel: &str, root: &Path) -> PathBuf {
    let from = cases::library_root().join(cases::SYNTHETIC_DIR).join(rel);
    let to = root.join(cases::SYNTHETIC_DIR).join(rel);
    std::fs::create_dir_all(&to).unwrap();
    for name in ["case.toml", "expected.json"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
    to
}

#[test]
fn replay_generates_the_missing_meshes_of_library_cases() {
    let root = tempfile::tempdir().unwrap();
    let l1 = copy_committed("mean-bone-only/L1", root.path());
    assert!(!l1.join("L1.stl").exists());

    let o = kyphoplan(&[root.path()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("generated the missing meshes of 1 synthetic cases")),
        "{stdout}"
    );
    assert!(l1.join("L1.stl").is_file());
    assert!(!stdout.contains("cannot open"), "{stdout}");

    // Present meshes are not generated again.
    let o = kyphoplan(&[root.path()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("generated"), "{stdout}");
}

#[test]
fn an_edited_library_case_is_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let l2 = copy_committed("mean-bone-only/L2", root.path());
    let toml = l2.join("case.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("L2 at mean", "L2 (edited) at mean")).unwrap();

    let o = kyphoplan(&[root.path()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{stdout}");
    assert!(!stdout.contains("generated"), "{stdout}");
    assert!(!l2.join("L2.stl").exists());
}
