//! Maintain the anatomy case library `tests/cases`:
//!
//! ```text
//! cargo run -p kyphoplan-tests --bin kyphoplan-cases -- generate [ROOT]   # meshes + case.toml
//! cargo run -p kyphoplan-tests --bin kyphoplan-cases -- bless [ROOT]      # generate, replay --bless
//! ```
//! ROOT defaults to the library in this repository. `bless` replays in-process and rewrites
//! every golden `expected.json` that changed, printing the differences first; review them with
//! `git diff tests/cases` before committing.

use std::path::PathBuf;
use std::process::ExitCode;

use kyphoplan_cli::replay::{self, Planner, ReplayOptions};
use kyphoplan_tests::cases;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("");
    let root = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(cases::library_root);
    if !matches!(command, "generate" | "bless") || args.len() > 2 {
        eprintln!("usage: kyphoplan-cases generate|bless [ROOT]");
        return ExitCode::from(2);
    }
    match cases::generate(&root) {
        Ok(dirs) => eprintln!(
            "generated {} synthetic cases under {}",
            dirs.len(),
            root.display()
        ),
        Err(e) => {
            eprintln!("kyphoplan-cases: {e}");
            return ExitCode::from(1);
        }
    }
    if command == "generate" {
        return ExitCode::SUCCESS;
    }
    let options = ReplayOptions {
        shared_root: cases::shared_root(),
        bless: true,
        skipped_is_failure: false,
        concurrency: 0,
    };
    let summary = match replay::replay(&root, Planner::InProcess, &options, &|_, _, _| {}) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kyphoplan-cases: {e}");
            return ExitCode::from(1);
        }
    };
    for line in summary.report_lines(&options) {
        println!("{line}");
    }
    if summary.failures(&options) > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}
