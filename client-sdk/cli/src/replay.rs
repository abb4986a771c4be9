//! Regression replay of a library of anatomy cases (`kyphoplan replay`).
//!
//! Two parts:
//! - the comparator, [`compare`]: pure functions holding a re-made plan against its golden
//!   (`expected.json`) with [`Tolerances`], returning every [`Difference`] with its amount;
//! - the runner, [`replay`]: finds every case directory under a root (a directory holding
//!   `case.toml`, at any depth), plans the cases in parallel (rayon in-process, or concurrent
//!   RPCs through a server), compares, and with `bless` rewrites the golden files.
//!
//! What is compared: the case name and frame, the procedure and allowed approaches, the set of
//! levels and sides, each level's and side's approach, feasibility and the reason codes (as a
//! sorted list) exactly; bone entry, target, skin entry and balloon centre
//! within `position_mm`; medial and cranial angles and the balloon axis within `angle_deg`;
//! clearances within `clearance_mm`; balloon length and diameter exactly; balloon volume and
//! the level's cement estimate within `volume_fraction` (relative); the instrument and safety
//! settings exactly. Reason messages, `value_mm`, alternatives, frames, keep-out summaries and
//! `planner_version` are not compared.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kyphoplan_planner::anatomy::{Level, Side};
use kyphoplan_planner::plan::{Balloon, LevelPlan, Plan, ReasonCode, SidePlan, Trajectory};
use kyphoplan_planner::planning;
use kyphoplan_planner::prepare::{PrepareOptions, PreparedAnatomy};
use rayon::prelude::*;

use kyphoplan_client::case::{self, Case, CaseToml, ReadOptions, ReplayToml, CASE_FILE};
use kyphoplan_client::{plan_json, Client, ConnectOptions};

/// File name of the golden plan of a case.
pub const GOLDEN_FILE: &str = "expected.json";

/// Amounts below this are rounding, not movement, and are not reported at all.
const NOISE: f64 = 1e-9;

/// How far a re-made plan may move from its golden before it is a regression.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    /// Bone entry, target, skin entry, balloon centre: distance, mm.
    pub position_mm: f64,
    /// Medial and cranial angle, balloon axis direction, degrees.
    pub angle_deg: f64,
    /// Cannula clearances (cortex, canal, nerve root, forbidden), mm.
    pub clearance_mm: f64,
    /// Balloon volume and cement estimate, relative to the golden (0.05 = 5 %).
    pub volume_fraction: f64,
}

impl Tolerances {
    /// The defaults: 0.5 mm, 1 deg, 0.2 mm, 5 %.
    pub const DEFAULT: Tolerances = Tolerances {
        position_mm: 0.5,
        angle_deg: 1.0,
        clearance_mm: 0.2,
        volume_fraction: 0.05,
    };

    /// The defaults overridden by a case's `[replay]` table; every value must be finite and
    /// not negative.
    pub fn from_toml(t: Option<&ReplayToml>) -> Result<Tolerances, String> {
        let d = Tolerances::DEFAULT;
        let Some(t) = t else { return Ok(d) };
        let ReplayToml {
            position_tolerance_mm,
            angle_tolerance_deg,
            clearance_tolerance_mm,
            volume_tolerance_fraction,
        } = t.clone();
        let pick = |v: Option<f64>, default: f64, key: &str| -> Result<f64, String> {
            match v {
                None => Ok(default),
                Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
                Some(v) => Err(format!("replay.{key} = {v}: must be a finite number >= 0")),
            }
        };
        Ok(Tolerances {
            position_mm: pick(
                position_tolerance_mm,
                d.position_mm,
                "position_tolerance_mm",
            )?,
            angle_deg: pick(angle_tolerance_deg, d.angle_deg, "angle_tolerance_deg")?,
            clearance_mm: pick(
                clearance_tolerance_mm,
                d.clearance_mm,
                "clearance_tolerance_mm",
            )?,
            volume_fraction: pick(
                volume_tolerance_fraction,
                d.volume_fraction,
                "volume_tolerance_fraction",
            )?,
        })
    }
}

/// One thing that differs between the golden and the re-made plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// The level and side it belongs to (`None`: the whole plan, or the whole level).
    pub level: Option<Level>,
    pub side: Option<Side>,
    /// What moved: "target", "medial angle", "feasible", "reasons", ...
    pub what: String,
    /// How: "moved 0.62 mm", "true -> false", `"[] -> [PEDICLE_CORRIDOR_TOO_NARROW]"`.
    pub detail: String,
    /// The amount (mm, deg or fraction), when the difference is a number.
    pub amount: Option<f64>,
    /// Beyond tolerance (or not a number that may move at all).
    pub regression: bool,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.what, self.detail)
    }
}

struct Differ<'a> {
    tol: &'a Tolerances,
    level: Option<Level>,
    side: Option<Side>,
    out: Vec<Difference>,
}

impl Differ<'_> {
    fn push(&mut self, what: &str, detail: String, amount: Option<f64>, regression: bool) {
        self.out.push(Difference {
            level: self.level,
            side: self.side,
            what: what.to_owned(),
            detail,
            amount,
            regression,
        });
    }

    /// Something planned (or present) on one side of the comparison only; `absent` is the word
    /// for the missing side.
    fn presence(&mut self, what: &str, expected: bool, actual: bool, absent: &str) {
        let word = |present: bool| if present { "planned" } else { absent };
        self.push(
            what,
            format!("{} -> {}", word(expected), word(actual)),
            None,
            true,
        );
    }

    /// Something that must not change at all.
    fn exact<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, expected: &T, actual: &T) {
        if expected != actual {
            self.push(what, format!("{expected:?} -> {actual:?}"), None, true);
        }
    }

    /// A number that must not change (balloon sizes come from discrete choices).
    fn exact_number(&mut self, what: &str, unit: &str, expected: f64, actual: f64) {
        let d = (actual - expected).abs();
        if d > NOISE || d.is_nan() {
            self.push(
                what,
                format!("{expected} -> {actual} {unit} (must not change)"),
                Some(d),
                true,
            );
        }
    }

    fn amount(&mut self, what: &str, unit: &str, verb: &str, amount: f64, tolerance: f64) {
        if amount > NOISE || amount.is_nan() {
            let regression = amount > tolerance || amount.is_nan();
            let detail = if regression {
                format!("{verb} {amount:.2} {unit} (tolerance {tolerance} {unit})")
            } else {
                format!("{verb} {amount:.2} {unit}")
            };
            self.push(what, detail, Some(amount), regression);
        }
    }

    fn position(&mut self, what: &str, expected: &[f64; 3], actual: &[f64; 3]) {
        let d = distance(expected, actual);
        self.amount(what, "mm", "moved", d, self.tol.position_mm);
    }

    fn angle(&mut self, what: &str, expected: f64, actual: f64) {
        self.amount(
            what,
            "deg",
            "changed by",
            (actual - expected).abs(),
            self.tol.angle_deg,
        );
    }

    fn clearance(&mut self, what: &str, expected: f64, actual: f64) {
        self.amount(
            what,
            "mm",
            &format!("{expected:.2} -> {actual:.2}, changed by"),
            (actual - expected).abs(),
            self.tol.clearance_mm,
        );
    }

    fn volume(&mut self, what: &str, expected: f64, actual: f64) {
        let fraction = if expected.abs() > NOISE {
            (actual - expected).abs() / expected.abs()
        } else if (actual - expected).abs() > NOISE {
            f64::INFINITY
        } else {
            0.0
        };
        if fraction > NOISE || fraction.is_nan() {
            let regression = fraction > self.tol.volume_fraction || fraction.is_nan();
            let percent = 100.0 * fraction;
            let mut detail = format!("{expected:.2} -> {actual:.2} ml ({percent:.1} %");
            if regression {
                detail.push_str(&format!(
                    ", tolerance {} %",
                    100.0 * self.tol.volume_fraction
                ));
            }
            detail.push(')');
            self.push(what, detail, Some(fraction), regression);
        }
    }
}

fn distance(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Angle between two directions, degrees.
fn angle_between_deg(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 0.0 } else { 180.0 };
    }
    // atan2 of cross and dot is accurate for tiny angles (acos is not).
    let cross = [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ];
    let c = cross.iter().map(|x| x * x).sum::<f64>().sqrt();
    c.atan2(dot).to_degrees()
}

/// The reason codes of a side, sorted, as in the plan JSON (`PEDICLE_CORRIDOR_TOO_NARROW`).
fn reason_codes(side: &SidePlan) -> Vec<String> {
    let mut codes: Vec<ReasonCode> = side.reasons.iter().map(|r| r.code).collect();
    codes.sort();
    codes.iter().map(code_name).collect()
}

fn code_name(code: &ReasonCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{code:?}"),
    }
}

fn compare_trajectory(d: &mut Differ, e: &Trajectory, a: &Trajectory) {
    d.position("bone entry", &e.bone_entry_mm, &a.bone_entry_mm);
    d.position("target", &e.target_mm, &a.target_mm);
    match (&e.skin_entry_mm, &a.skin_entry_mm) {
        (Some(se), Some(sa)) => d.position("skin entry", se, sa),
        (None, None) => {}
        (se, sa) => d.exact("skin entry", se, sa),
    }
    d.exact_number(
        "cannula diameter",
        "mm",
        e.cannula_outer_diameter_mm,
        a.cannula_outer_diameter_mm,
    );
    d.exact("route", &e.route, &a.route);
    d.angle("medial angle", e.medial_angle_deg, a.medial_angle_deg);
    d.angle("cranial angle", e.cranial_angle_deg, a.cranial_angle_deg);
    let (ce, ca) = (&e.clearance_mm, &a.clearance_mm);
    d.clearance("cortex clearance", ce.cortex, ca.cortex);
    d.clearance("canal clearance", ce.canal, ca.canal);
    d.clearance("nerve-root clearance", ce.nerve_root, ca.nerve_root);
    match (ce.forbidden, ca.forbidden) {
        (Some(fe), Some(fa)) => d.clearance("forbidden clearance", fe, fa),
        (None, None) => {}
        (fe, fa) => d.exact("forbidden clearance", &fe, &fa),
    }
}

fn compare_balloon(d: &mut Differ, e: &Balloon, a: &Balloon) {
    d.position("balloon centre", &e.center_mm, &a.center_mm);
    d.amount(
        "balloon axis",
        "deg",
        "turned",
        angle_between_deg(&e.axis, &a.axis),
        d.tol.angle_deg,
    );
    d.exact_number("balloon length", "mm", e.length_mm, a.length_mm);
    d.exact_number("balloon diameter", "mm", e.diameter_mm, a.diameter_mm);
    d.volume("balloon volume", e.volume_ml, a.volume_ml);
}

fn compare_side(d: &mut Differ, e: &SidePlan, a: &SidePlan) {
    d.exact("feasible", &e.feasible, &a.feasible);
    d.exact("approach", &e.approach, &a.approach);
    d.exact("reasons", &reason_codes(e), &reason_codes(a));
    // What the side tried (issue 15): each candidate's route, cannula, verdict and reasons.
    let tried = |s: &SidePlan| -> Vec<String> {
        s.attempts
            .iter()
            .map(|t| {
                let codes: Vec<String> =
                    t.reasons.iter().map(|r| format!("{:?}", r.code)).collect();
                format!(
                    "{:?} {} mm {} [{}]",
                    t.route,
                    t.cannula_outer_diameter_mm,
                    if t.feasible { "feasible" } else { "infeasible" },
                    codes.join(",")
                )
            })
            .collect()
    };
    d.exact("attempts", &tried(e), &tried(a));
    match (&e.trajectory, &a.trajectory) {
        (Some(te), Some(ta)) => compare_trajectory(d, te, ta),
        (None, None) => {}
        (te, ta) => d.presence("trajectory", te.is_some(), ta.is_some(), "none"),
    }
    match (&e.balloon, &a.balloon) {
        (Some(be), Some(ba)) => compare_balloon(d, be, ba),
        (None, None) => {}
        (be, ba) => d.presence("balloon", be.is_some(), ba.is_some(), "none"),
    }
}

fn compare_level(d: &mut Differ, e: &LevelPlan, a: &LevelPlan) {
    d.exact("approach", &e.approach, &a.approach);
    match (e.cement_volume_estimate_ml, a.cement_volume_estimate_ml) {
        (Some(ve), Some(va)) => d.volume("cement estimate", ve, va),
        (None, None) => {}
        (ve, va) => d.exact("cement estimate", &ve, &va),
    }
    for side in Side::BOTH {
        d.side = Some(side);
        let se = e.sides.iter().find(|s| s.side == side);
        let sa = a.sides.iter().find(|s| s.side == side);
        match (se, sa) {
            (Some(se), Some(sa)) => compare_side(d, se, sa),
            (None, None) => {}
            (se, sa) => d.presence("side", se.is_some(), sa.is_some(), "absent"),
        }
    }
    d.side = None;
}

/// Every difference of `actual` from `expected` (the golden), with its amount; those beyond
/// `tol` (and every change of something that must not change) are marked as regressions.
pub fn compare(expected: &Plan, actual: &Plan, tol: &Tolerances) -> Vec<Difference> {
    let mut d = Differ {
        tol,
        level: None,
        side: None,
        out: Vec::new(),
    };
    d.exact("case name", &expected.case, &actual.case);
    d.exact("frame", &expected.frame, &actual.frame);
    d.exact("instrument", &expected.instrument, &actual.instrument);
    d.exact("safety", &expected.safety, &actual.safety);
    d.exact("procedure", &expected.procedure, &actual.procedure);
    d.exact("approaches", &expected.approaches, &actual.approaches);
    d.exact(
        "cannula alternatives",
        &expected.cannula_alternatives_mm,
        &actual.cannula_alternatives_mm,
    );
    let mut levels: Vec<Level> = expected
        .levels
        .iter()
        .chain(&actual.levels)
        .map(|l| l.level)
        .collect();
    levels.sort();
    levels.dedup();
    for level in levels {
        d.level = Some(level);
        let le = expected.levels.iter().find(|l| l.level == level);
        let la = actual.levels.iter().find(|l| l.level == level);
        match (le, la) {
            (Some(le), Some(la)) => compare_level(&mut d, le, la),
            (le, la) => d.presence("level", le.is_some(), la.is_some(), "absent"),
        }
    }
    d.out
}

/// Whether any difference is a regression.
pub fn has_regression(differences: &[Difference]) -> bool {
    differences.iter().any(|d| d.regression)
}

// ---------------------------------------------------------------------------------------------
// The runner.

/// Every case directory under `root` (a directory holding `case.toml`; `root` itself may be
/// one), sorted. Case directories are not searched further; hidden directories and symlinked
/// directories are not followed.
pub fn find_cases(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        if dir.join(CASE_FILE).is_file() {
            out.push(dir);
            continue;
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if !hidden && entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The default shared data directory of a case library: `../shared` next to the repository
/// that holds `cases_root` (the nearest ancestor with `.git`), when it exists.
pub fn default_shared_root(cases_root: &Path) -> Option<PathBuf> {
    let root = cases_root.canonicalize().ok()?;
    let repo = root.ancestors().find(|a| a.join(".git").exists())?;
    let shared = repo.parent()?.join("shared");
    shared.is_dir().then_some(shared)
}

/// How to plan the cases.
#[derive(Clone, Copy, Debug)]
pub enum Planner<'a> {
    /// In this process, cases in parallel on rayon.
    InProcess,
    /// Through the gRPC server at `url`, several RPCs at a time, connecting with `connect` (TLS,
    /// client certificate, bearer token) like every other `--server` command.
    Server {
        url: &'a str,
        connect: &'a ConnectOptions,
    },
}

#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Where `mesh_root = "shared:..."` is resolved (`None`: such cases are skipped).
    pub shared_root: Option<PathBuf>,
    /// Rewrite the golden files (after the differences are reported).
    pub bless: bool,
    /// A skipped case (shared anatomy missing) is a failure (CI).
    pub skipped_is_failure: bool,
    /// RPCs in flight at once with [`Planner::Server`] (0: 4).
    pub concurrency: usize,
}

/// What happened to one case.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Planned and compared with its golden.
    Compared {
        expected: Box<Plan>,
        actual: Box<Plan>,
        differences: Vec<Difference>,
    },
    /// Planned; the case has no `expected.json`.
    NoGolden { actual: Box<Plan> },
    /// Not planned: its shared anatomy is not available.
    Skipped { reason: String },
    /// Refused or failed (case.toml, meshes, golden unreadable, planning or server error).
    Error { reason: String },
}

#[derive(Clone, Debug)]
pub struct CaseReport {
    pub dir: PathBuf,
    /// The directory relative to the cases root, for printing.
    pub name: String,
    pub outcome: Outcome,
    pub seconds: f64,
}

impl CaseReport {
    /// Whether this case fails the replay (with `bless`, differences and missing goldens are
    /// accepted: they are rewritten).
    pub fn failed(&self, options: &ReplayOptions) -> bool {
        match &self.outcome {
            Outcome::Compared { differences, .. } => has_regression(differences) && !options.bless,
            Outcome::NoGolden { .. } => !options.bless,
            Outcome::Skipped { .. } => options.skipped_is_failure,
            Outcome::Error { .. } => true,
        }
    }

    /// The lines printed for this case: one per level and side, or one for the whole case.
    pub fn lines(&self, options: &ReplayOptions) -> Vec<String> {
        let name = &self.name;
        match &self.outcome {
            Outcome::Skipped { reason } => {
                let tag = if options.skipped_is_failure {
                    "FAIL "
                } else {
                    "SKIP "
                };
                vec![format!("{tag} {name}: SKIPPED ({reason})")]
            }
            Outcome::Error { reason } => vec![format!("FAIL  {name}: error: {reason}")],
            Outcome::NoGolden { actual } => {
                let tag = if options.bless { "NEW  " } else { "FAIL " };
                let levels: Vec<String> = actual
                    .levels
                    .iter()
                    .map(|l| {
                        let sides: Vec<String> = l
                            .sides
                            .iter()
                            .map(|s| {
                                if s.feasible {
                                    format!("{} feasible", s.side)
                                } else {
                                    format!("{} infeasible [{}]", s.side, reason_codes(s).join(","))
                                }
                            })
                            .collect();
                        format!("{} {}", l.level, sides.join(", "))
                    })
                    .collect();
                vec![format!(
                    "{tag} {name}: no golden (run --bless); planned {}",
                    levels.join("; ")
                )]
            }
            Outcome::Compared {
                expected,
                actual,
                differences,
            } => {
                let mut lines = Vec::new();
                let whole: Vec<&Difference> =
                    differences.iter().filter(|d| d.level.is_none()).collect();
                if !whole.is_empty() {
                    lines.push(line_of(name, "", &whole));
                }
                let mut keys: Vec<(Level, Option<Side>)> = Vec::new();
                for l in expected.levels.iter().chain(&actual.levels) {
                    if !keys.contains(&(l.level, None)) {
                        keys.push((l.level, None));
                    }
                    for s in &l.sides {
                        if !keys.contains(&(l.level, Some(s.side))) {
                            keys.push((l.level, Some(s.side)));
                        }
                    }
                }
                keys.sort();
                for (level, side) in keys {
                    let here: Vec<&Difference> = differences
                        .iter()
                        .filter(|d| d.level == Some(level) && d.side == side)
                        .collect();
                    // A level line only when something of the whole level moved.
                    if side.is_none() && here.is_empty() {
                        continue;
                    }
                    let label = match side {
                        Some(s) => format!("{level} {:<5}", s.to_string()),
                        None => format!("{level} level"),
                    };
                    lines.push(line_of(name, &label, &here));
                }
                lines
            }
        }
    }
}

fn line_of(name: &str, label: &str, differences: &[&Difference]) -> String {
    let regressions: Vec<String> = differences
        .iter()
        .filter(|d| d.regression)
        .map(|d| d.to_string())
        .collect();
    let moved: Vec<String> = differences
        .iter()
        .filter(|d| !d.regression)
        .map(|d| d.to_string())
        .collect();
    let mut text = if !regressions.is_empty() {
        format!(
            "FAIL  {name} {label}  REGRESSION: {}",
            regressions.join("; ")
        )
    } else if !moved.is_empty() {
        format!("ok    {name} {label}  moved within tolerance")
    } else {
        format!("ok    {name} {label}  unchanged")
    };
    if !moved.is_empty() {
        let sep = if regressions.is_empty() {
            ": "
        } else {
            "; within tolerance: "
        };
        text.push_str(sep);
        text.push_str(&moved.join("; "));
    }
    text
}

/// The result of a replay.
#[derive(Clone, Debug)]
pub struct ReplaySummary {
    pub cases: Vec<CaseReport>,
    /// Golden files written by `bless`.
    pub blessed: Vec<PathBuf>,
    pub seconds: f64,
}

impl ReplaySummary {
    /// The report as the CLI prints it: one line per case and side, one per blessed golden,
    /// then the summary line.
    pub fn report_lines(&self, options: &ReplayOptions) -> Vec<String> {
        let mut lines: Vec<String> = self.cases.iter().flat_map(|c| c.lines(options)).collect();
        lines.extend(
            self.blessed
                .iter()
                .map(|p| format!("blessed {}", p.display())),
        );
        lines.push(self.summary_line(options));
        lines
    }

    pub fn failures(&self, options: &ReplayOptions) -> usize {
        self.cases.iter().filter(|c| c.failed(options)).count()
    }

    /// The summary line.
    pub fn summary_line(&self, options: &ReplayOptions) -> String {
        let count =
            |f: &dyn Fn(&Outcome) -> bool| self.cases.iter().filter(|c| f(&c.outcome)).count();
        let unchanged = count(
            &|o| matches!(o, Outcome::Compared { differences, .. } if differences.is_empty()),
        );
        let moved = count(
            &|o| matches!(o, Outcome::Compared { differences, .. } if !differences.is_empty() && !has_regression(differences)),
        );
        let regressed = count(
            &|o| matches!(o, Outcome::Compared { differences, .. } if has_regression(differences)),
        );
        let no_golden = count(&|o| matches!(o, Outcome::NoGolden { .. }));
        let skipped = count(&|o| matches!(o, Outcome::Skipped { .. }));
        let errors = count(&|o| matches!(o, Outcome::Error { .. }));
        let mut text = format!(
            "replay: {} cases: {unchanged} unchanged, {moved} moved within tolerance, {regressed} regressed, {no_golden} without golden, {skipped} skipped, {errors} errors ({:.1} s)",
            self.cases.len(),
            self.seconds
        );
        if options.bless {
            text.push_str(&format!("; blessed {} golden files", self.blessed.len()));
        } else if self.failures(options) > 0 {
            text.push_str(&format!("; {} FAILED", self.failures(options)));
        }
        text
    }
}

/// A case read and ready to plan.
struct Job {
    dir: PathBuf,
    name: String,
    case: Case,
    tolerances: Tolerances,
    golden: Option<Plan>,
}

/// Read a case, its tolerances and its golden; `Err` is the outcome instead of planning.
fn read_job(dir: &Path, root: &Path, options: &ReplayOptions) -> Result<Job, Outcome> {
    let error = |reason: String| Outcome::Error { reason };
    let file = dir.join(CASE_FILE);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| error(format!("{}: cannot read: {e}", file.display())))?;
    let toml: CaseToml =
        case::parse_case_toml(&text).map_err(|e| error(format!("{}: {e}", file.display())))?;
    if let Some(mesh_root) = &toml.mesh_root {
        let sub = case::shared_subdir(mesh_root)
            .map_err(|e| error(format!("{}: {e}", file.display())))?;
        match &options.shared_root {
            None => {
                return Err(Outcome::Skipped {
                    reason: format!("{mesh_root}: no shared data directory (--shared DIR)"),
                })
            }
            Some(shared) if !shared.join(&sub).is_dir() => {
                return Err(Outcome::Skipped {
                    reason: format!("{mesh_root}: {} not found", shared.join(&sub).display()),
                })
            }
            Some(_) => {}
        }
    }
    let tolerances = Tolerances::from_toml(toml.replay.as_ref())
        .map_err(|e| error(format!("{}: {e}", file.display())))?;
    let read = ReadOptions {
        shared_root: options.shared_root.clone(),
    };
    let case = case::read_case_with(dir, &read).map_err(|e| error(e.to_string()))?;
    let golden_path = dir.join(GOLDEN_FILE);
    let golden = if golden_path.is_file() {
        let text = std::fs::read_to_string(&golden_path)
            .map_err(|e| error(format!("{}: cannot read: {e}", golden_path.display())))?;
        Some(serde_json::from_str::<Plan>(&text).map_err(|e| {
            error(format!(
                "{}: not a plan ({e}); re-bless it",
                golden_path.display()
            ))
        })?)
    } else {
        None
    };
    Ok(Job {
        dir: dir.to_owned(),
        name: display_name(dir, root),
        case,
        tolerances,
        golden,
    })
}

fn display_name(dir: &Path, root: &Path) -> String {
    match dir.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        Ok(rel) => rel.display().to_string(),
        Err(_) => dir.display().to_string(),
    }
}

fn plan_in_process(case: Case) -> Result<Plan, String> {
    let Case {
        dir,
        anatomy,
        request,
        notices: _,
    } = case;
    let prepared = PreparedAnatomy::prepare(anatomy, &PrepareOptions::standard())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    planning::plan(&prepared, &request).map_err(|e| format!("{}: {e}", dir.display()))
}

async fn plan_via_server(client: &mut Client, case: Case) -> Result<Plan, String> {
    let Case {
        dir,
        anatomy,
        request,
        notices: _,
    } = case;
    let stored = client
        .upload_anatomy_shared(Arc::new(anatomy))
        .await
        .map_err(|e| format!("{}: upload refused: {e}", dir.display()))?;
    let plan = client
        .create_plan(&stored.anatomy_id, &request)
        .await
        .map_err(|e| format!("{}: plan refused: {e}", dir.display()))?;
    Ok(plan.plan)
}

fn finish(
    name: String,
    dir: PathBuf,
    golden: Option<Plan>,
    tolerances: &Tolerances,
    planned: Result<Plan, String>,
    started: Instant,
) -> CaseReport {
    let outcome = match (planned, golden) {
        (Err(reason), _) => Outcome::Error { reason },
        (Ok(actual), None) => Outcome::NoGolden {
            actual: Box::new(actual),
        },
        (Ok(actual), Some(expected)) => Outcome::Compared {
            differences: compare(&expected, &actual, tolerances),
            expected: Box::new(expected),
            actual: Box::new(actual),
        },
    };
    CaseReport {
        dir,
        name,
        outcome,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Replay every case under `root`: read, plan, compare; with `options.bless`, write
/// `expected.json` of every planned case whose golden is missing or differs in any way.
/// `on_case(report, done, total)` is called as cases finish (from any thread). `Err` when the
/// root cannot be searched, holds no case, or the server cannot be reached.
pub fn replay(
    root: &Path,
    planner: Planner,
    options: &ReplayOptions,
    on_case: &(dyn Fn(&CaseReport, usize, usize) + Sync),
) -> Result<ReplaySummary, String> {
    let started = Instant::now();
    let dirs = find_cases(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if dirs.is_empty() {
        return Err(format!(
            "{}: no case directory (a directory with {CASE_FILE}) found",
            root.display()
        ));
    }
    let total = dirs.len();
    let done = AtomicUsize::new(0);
    let report = |r: CaseReport| {
        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
        on_case(&r, n, total);
        r
    };
    let mut cases: Vec<CaseReport> = match planner {
        Planner::InProcess => dirs
            .par_iter()
            .map(|dir| {
                let t0 = Instant::now();
                let r = match read_job(dir, root, options) {
                    Err(outcome) => CaseReport {
                        dir: dir.clone(),
                        name: display_name(dir, root),
                        outcome,
                        seconds: t0.elapsed().as_secs_f64(),
                    },
                    Ok(job) => {
                        let Job {
                            dir,
                            name,
                            case,
                            tolerances,
                            golden,
                        } = job;
                        let planned = plan_in_process(case);
                        finish(name, dir, golden, &tolerances, planned, t0)
                    }
                };
                report(r)
            })
            .collect(),
        Planner::Server { url, connect } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))?;
            runtime.block_on(async {
                use futures::StreamExt;
                let client = Client::connect_with(url, connect)
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                let concurrency = if options.concurrency == 0 {
                    4
                } else {
                    options.concurrency
                };
                let reports = futures::stream::iter(dirs.iter().cloned())
                    .map(|dir| {
                        let mut client = client.clone();
                        let report = &report;
                        async move {
                            let t0 = Instant::now();
                            let read = {
                                let (dir, root, options) =
                                    (dir.clone(), root.to_owned(), options.clone());
                                tokio::task::spawn_blocking(move || read_job(&dir, &root, &options))
                                    .await
                                    .unwrap_or_else(|e| {
                                        Err(Outcome::Error {
                                            reason: format!("reading the case panicked: {e}"),
                                        })
                                    })
                            };
                            let r = match read {
                                Err(outcome) => CaseReport {
                                    name: display_name(&dir, root),
                                    dir,
                                    outcome,
                                    seconds: t0.elapsed().as_secs_f64(),
                                },
                                Ok(job) => {
                                    let Job {
                                        dir,
                                        name,
                                        case,
                                        tolerances,
                                        golden,
                                    } = job;
                                    let planned = plan_via_server(&mut client, case).await;
                                    finish(name, dir, golden, &tolerances, planned, t0)
                                }
                            };
                            report(r)
                        }
                    })
                    .buffer_unordered(concurrency)
                    .collect::<Vec<_>>()
                    .await;
                Ok::<_, String>(reports)
            })?
        }
    };
    cases.sort_by(|a, b| a.dir.cmp(&b.dir));
    let mut blessed = Vec::new();
    if options.bless {
        for c in &cases {
            let actual = match &c.outcome {
                Outcome::Compared { actual, .. } | Outcome::NoGolden { actual } => actual,
                Outcome::Skipped { .. } | Outcome::Error { .. } => continue,
            };
            let path = c.dir.join(GOLDEN_FILE);
            let text = format!("{}\n", plan_json(actual));
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&path, text)
                    .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
                blessed.push(path);
            }
        }
    }
    Ok(ReplaySummary {
        cases,
        blessed,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_default_and_override() {
        assert_eq!(Tolerances::from_toml(None).unwrap(), Tolerances::DEFAULT);
        let t = Tolerances::from_toml(Some(&ReplayToml {
            position_tolerance_mm: Some(1.0),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(t.position_mm, 1.0);
        assert_eq!(t.angle_deg, 1.0);
        assert!(Tolerances::from_toml(Some(&ReplayToml {
            angle_tolerance_deg: Some(-1.0),
            ..Default::default()
        }))
        .is_err());
    }

    #[test]
    fn small_angles_are_accurate() {
        let a = [0.0, 0.0, 1.0];
        let t = 0.001_f64.to_radians();
        let b = [t.sin(), 0.0, t.cos()];
        assert!((angle_between_deg(&a, &b) - 0.001).abs() < 1e-9);
        assert_eq!(angle_between_deg(&a, &a), 0.0);
    }
}
