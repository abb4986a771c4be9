//! Replays the fuzz seed corpus and the crash reproducers (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the fuzz target bodies on stable Rust, so that every
//! `cargo test --workspace` runs them: a loader or validator that panics again fails here.

use std::path::{Path, PathBuf};

use kyphoplan_client::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_regression_runs_clean() {
    let mut failures = Vec::new();
    for &(name, body) in TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(name));
        assert!(!seeds.is_empty(), "no seeds in fuzz/corpus/{name}");
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for file in seeds.iter().chain(&regressions) {
            let data = std::fs::read(file).expect("read corpus file");
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                failures.push(format!("{name}: {}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "panicked on:\n{}", failures.join("\n"));
}

#[test]
fn every_target_has_a_fuzz_binary_and_back() {
    let on_disk: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect();
    let mut listed: Vec<String> = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    let mut on_disk_sorted = on_disk.clone();
    listed.sort();
    on_disk_sorted.sort();
    assert_eq!(listed, on_disk_sorted);
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &listed {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
