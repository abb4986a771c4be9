//! Build script shared by the packages whose tests read the outside test data
//! (`kyphoplan-planner` and, through `build = "../planner/build.rs"`, `kyphoplan-tests`).
//!
//! It sets `cfg(shared_anatomy)` when `../shared/anatomy` lies next to the repository. Tests that
//! need those meshes carry `#[cfg_attr(not(shared_anatomy), ignore = "...")]`, so a clone
//! without the data reports them as *ignored*, never as passed. Under `CI=true` a missing
//! directory fails the build with a message saying where it was looked for.
//!
//! It sets `cfg(test_postgres)` when `KYPHOPLAN_TEST_POSTGRES` names the tests' PostgreSQL
//! cluster (`.ci/run` starts one) or when `CI=true` (where those tests must run, and fail with a
//! clear message without a cluster). Tests that need the cluster carry
//! `#[cfg_attr(not(test_postgres), ignore = "...")]`: without one they are ignored, not passed.
//!
//! It sets `cfg(test_small_fs)` when `KYPHOPLAN_TEST_SMALL_FS` names the small file system the
//! full-store tests fill (`.ci/run` mounts one as root) or when `CI=true`, likewise.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shared_anatomy)");
    println!("cargo::rustc-check-cfg=cfg(test_postgres)");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rustc-check-cfg=cfg(test_small_fs)");
    println!("cargo::rerun-if-env-changed=KYPHOPLAN_TEST_POSTGRES");
    println!("cargo::rerun-if-env-changed=KYPHOPLAN_TEST_SMALL_FS");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci || std::env::var("KYPHOPLAN_TEST_POSTGRES").is_ok_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=test_postgres");
    }
    if ci || std::env::var("KYPHOPLAN_TEST_SMALL_FS").is_ok_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=test_small_fs");
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // Every package using this script sits one level below the workspace root.
    let anatomy = manifest.join("../../shared/anatomy");
    if anatomy.is_dir() {
        println!("cargo::rustc-cfg=shared_anatomy");
        // Re-run when the data changes or goes away (a missing path re-runs the script).
        println!("cargo::rerun-if-changed={}", anatomy.display());
        return;
    }
    // Without the data there is no path to watch: cargo then re-runs this script whenever a
    // file of the package changes, which is enough to notice the data once it is laid beside.
    if ci {
        eprintln!(
            "error: the outside test data {} is missing; under CI=true the tests that read it \
             must run (lay ../shared beside the repository, or unset CI to have them ignored)",
            anatomy.display()
        );
        std::process::exit(1);
    }
    println!(
        "cargo::warning=../shared/anatomy not found next to the repository: the tests that \
         read real vertebrae are ignored (reported as such, not as passed)"
    );
}
