//! `kyphoplan bench`: end-to-end timings of the planner and the server on this machine.
//!
//! Every figure is the median (with min, max and the number of repetitions) of a fixed number
//! of repetitions, cut short by a time budget so that the whole command stays under about a
//! minute in release mode. The figures:
//!
//! - the built-in anatomy (`synth::demo_anatomy`, L1-L5): per-vertebra bilateral plans, warm
//!   (anatomy already prepared) and cold (a one-vertebra anatomy prepared, then planned), the
//!   five-level plan from raw meshes, the exact evaluation of one planned trajectory, the
//!   prepared memory and the process's peak resident memory;
//! - thoracic levels of the built-in mean spine with ribs and pleura (issue 15), prepared:
//!   T8 with the default approach, T8 and T5 with the extrapedicular fallback chain
//!   (`--thoracic-only`: these alone);
//! - the same on the real meshes of `../shared/anatomy` when present (VHM L1-L5 for the
//!   five levels, the mean L3 for the per-vertebra figures);
//! - the server, in-process on 127.0.0.1:0: warm CreatePlan calls for one level from 1, 4 and
//!   16 concurrent clients, plans per second and latency percentiles;
//! - the exact segment-to-mesh clearance query against parry's built-in capsule-vs-TriMesh
//!   distance on the same candidate segments;
//! - a NIfTI label map end to end (issue 14): a generated lumbar map of 512 x 512 x 300 voxels
//!   (L1-L5 from `synth` and their canal, TotalSegmentator ids, 0.7 x 0.7 x 1.0 mm) from the
//!   bytes of its `.nii.gz` to a verified five-level bilateral plan: read, mesh, prepare, plan,
//!   and the whole (`--quick`: 256 x 256 x 150 voxels of 1.4 x 1.4 x 2.0 mm).

use std::path::{Path, PathBuf};
#[cfg(feature = "server")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use kyphoplan_planner::anatomy::{AnatomyInput, Level, PatientFrame, Role, Structure};
use kyphoplan_planner::clearance::parry_builtin::{comparison_segments, ParryMesh};
use kyphoplan_planner::plan::Plan;
use kyphoplan_planner::planning;
use kyphoplan_planner::prepare::{PrepareOptions, PreparedAnatomy};
use kyphoplan_planner::request::{Instrument, PlanRequest, Safety};
use kyphoplan_planner::synth;
use serde::Serialize;

#[cfg(feature = "server")]
use kyphoplan_client::Client;

/// What `kyphoplan bench` runs.
#[derive(Clone, Debug, Default)]
pub struct BenchOptions {
    /// One repetition per figure and short server runs (for tests; the figures are noisy).
    pub quick: bool,
    /// The `shared/anatomy` directory with `vhm-male-lumbar/` and `mean-lumbar-l2-l5/`, or
    /// `None` to benchmark the built-in anatomy only.
    pub shared_anatomy: Option<PathBuf>,
    /// Only the label-map figures.
    pub labelmap_only: bool,
    /// Only the thoracic figures (T8 default approach, T8 and T5 with the extrapedicular
    /// fallbacks).
    pub thoracic_only: bool,
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Repetitions (samples) behind the median.
    pub n: usize,
    pub unit: String,
}

/// The machine the figures were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    /// `/proc/loadavg` (1, 5 and 15 minutes) when the run started.
    pub load_average: String,
    pub profile: String,
}

/// What `kyphoplan bench` prints and writes as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// UTC, ISO 8601.
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    /// The real meshes' directory, or `None` when it was absent.
    pub shared_anatomy: Option<String>,
    pub notes: Vec<String>,
    pub figures: Vec<Figure>,
}

impl BenchReport {
    /// The figure called `name`.
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }
}

/// `../shared/anatomy` relative to the current directory, else relative to the repository
/// root this binary was built from.
pub fn default_shared_anatomy() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("../shared/anatomy"),
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/anatomy"
        )),
    ];
    candidates
        .into_iter()
        .find(|d| d.join("vhm-male-lumbar").is_dir() && d.join("mean-lumbar-l2-l5").is_dir())
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
}

/// Repetitions and time budgets.
struct Budget {
    warm_reps: usize,
    cold_reps: usize,
    five_reps: usize,
    eval_reps: usize,
    clearance_candidates: usize,
    exact_passes: usize,
    parry_passes: usize,
    /// Per figure (one level's warm plans, say): stop repeating after this long.
    per_figure: Duration,
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    server_clients: Vec<usize>,
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    server_duration: Duration,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                warm_reps: 1,
                cold_reps: 1,
                five_reps: 1,
                eval_reps: 5,
                clearance_candidates: 32,
                exact_passes: 2,
                parry_passes: 1,
                per_figure: Duration::from_millis(200),
                server_clients: vec![1, 4, 16],
                server_duration: Duration::from_millis(400),
            }
        } else {
            Budget {
                warm_reps: 15,
                cold_reps: 7,
                five_reps: 3,
                eval_reps: 200,
                clearance_candidates: 256,
                exact_passes: 50,
                parry_passes: 5,
                per_figure: Duration::from_millis(1500),
                server_clients: vec![1, 4, 16],
                server_duration: Duration::from_secs(3),
            }
        }
    }
}

/// Run `f` `reps` times (at least once), stopping early once `budget` has passed; the
/// durations in seconds.
fn repeat(reps: usize, budget: Duration, mut f: impl FnMut()) -> Vec<f64> {
    let start = Instant::now();
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f();
        out.push(t.elapsed().as_secs_f64());
        if start.elapsed() >= budget {
            break;
        }
    }
    out
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn median_of(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// The `q` quantile (nearest rank) of sorted samples.
#[cfg(feature = "server")]
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A figure from samples, each multiplied by `scale` (e.g. 1e3 for seconds to ms).
fn figure(name: impl Into<String>, samples: Vec<f64>, scale: f64, unit: &str) -> Figure {
    let s = sorted(samples.into_iter().map(|x| x * scale).collect());
    Figure {
        name: name.into(),
        median: median_of(&s),
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
        n: s.len(),
        unit: unit.into(),
    }
}

/// A single value (memory, a ratio, a throughput).
fn single(name: impl Into<String>, value: f64, n: usize, unit: &str) -> Figure {
    Figure {
        name: name.into(),
        median: value,
        min: value,
        max: value,
        n,
        unit: unit.into(),
    }
}

fn request(levels: Option<Vec<Level>>) -> PlanRequest {
    PlanRequest::new(
        levels,
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .expect("the contract defaults are a valid request")
}

/// `VmHWM` (peak resident set) of this process, bytes.
fn peak_rss_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        load_average,
        profile: if cfg!(debug_assertions) {
            "debug".into()
        } else {
            "release".into()
        },
    }
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The anatomy with only the vertebra of `level` (a one-vertebra case).
fn one_vertebra(input: &AnatomyInput, level: Level) -> AnatomyInput {
    AnatomyInput {
        name: format!("{}-{level}", input.name),
        frame: input.frame,
        structures: input
            .structures
            .iter()
            .filter(|s| matches!(s.role, Role::Vertebra { level: l } if l == level))
            .cloned()
            .collect(),
    }
}

fn prepare(input: AnatomyInput) -> Result<PreparedAnatomy, String> {
    PreparedAnatomy::prepare(input, &PrepareOptions::standard()).map_err(|e| e.to_string())
}

fn plan(anatomy: &PreparedAnatomy, req: &PlanRequest) -> Result<Plan, String> {
    planning::plan(anatomy, req).map_err(|e| e.to_string())
}

/// The seconds of each warm plan of `req` on `prepared` (the budget's repetitions), or the
/// planner's error.
fn plan_warm(
    prepared: &PreparedAnatomy,
    req: &PlanRequest,
    budget: &Budget,
) -> Result<Vec<f64>, String> {
    let mut failed = None;
    let warm = repeat(budget.warm_reps, budget.per_figure, || {
        if let Err(e) = plan(prepared, req) {
            failed = Some(e);
        }
    });
    failed.map_or(Ok(warm), Err)
}

/// The per-vertebra, five-level, evaluation and memory figures of one anatomy.
///
/// `five`: the anatomy planned whole from raw meshes; `per_vertebra`: the anatomy whose levels
/// get the warm and cold per-vertebra figures (the same as `five` for the built-in one).
fn anatomy_figures(
    prefix: &str,
    five: &AnatomyInput,
    per_vertebra: &AnatomyInput,
    budget: &Budget,
    out: &mut Vec<Figure>,
) -> Result<(), String> {
    let prepared = prepare(per_vertebra.clone())?;
    let levels = prepared.levels();
    out.push(single(
        format!("{prefix}/prepared_memory"),
        prepared.memory_bytes() as f64 / 1e6,
        1,
        "MB",
    ));
    for &level in &levels {
        let req = request(Some(vec![level]));
        let warm =
            plan_warm(&prepared, &req, budget).map_err(|e| format!("{prefix} {level}: {e}"))?;
        out.push(figure(
            format!("{prefix}/plan_warm/{level}"),
            warm,
            1e3,
            "ms",
        ));
        let single_input = one_vertebra(per_vertebra, level);
        let mut failed = None;
        let cold = repeat(budget.cold_reps, budget.per_figure, || {
            let r = prepare(single_input.clone()).and_then(|a| plan(&a, &req));
            if let Err(e) = r {
                failed = Some(e);
            }
        });
        if let Some(e) = failed.take() {
            return Err(format!("{prefix} {level} (cold): {e}"));
        }
        out.push(figure(
            format!("{prefix}/plan_cold/{level}"),
            cold,
            1e3,
            "ms",
        ));
    }

    // Evaluation of one planned trajectory (the first level with a feasible side).
    let req = request(None);
    let full = plan(&prepared, &req)?;
    let planned = full.levels.iter().find_map(|l| {
        l.sides
            .iter()
            .find_map(|s| s.trajectory.as_ref().map(|t| (l.level, s.side, t.clone())))
    });
    if let Some((level, side, t)) = planned {
        let mut failed = None;
        let evals = repeat(budget.eval_reps, budget.per_figure, || {
            if let Err(e) = planning::evaluate(
                &prepared,
                level,
                side,
                t.bone_entry_mm,
                t.target_mm,
                req.instrument(),
                req.safety(),
            ) {
                failed = Some(e.to_string());
            }
        });
        if let Some(e) = failed.take() {
            return Err(format!("{prefix} evaluate: {e}"));
        }
        out.push(figure(format!("{prefix}/evaluate"), evals, 1e6, "µs"));
    }
    drop(prepared);

    let mut failed = None;
    let five_times = repeat(budget.five_reps, budget.per_figure * 3, || {
        if let Err(e) = prepare(five.clone()).and_then(|a| plan(&a, &req)) {
            failed = Some(e);
        }
    });
    if let Some(e) = failed.take() {
        return Err(format!("{prefix} five levels: {e}"));
    }
    out.push(figure(
        format!("{prefix}/five_levels_from_raw"),
        five_times,
        1e3,
        "ms",
    ));
    if let Some(peak) = peak_rss_bytes() {
        out.push(single(
            format!("{prefix}/peak_rss_vmhwm"),
            peak / 1e6,
            1,
            "MB",
        ));
    }
    Ok(())
}

/// The thoracic figures (issue 15): one prepared level of the built-in mean spine with its ribs
/// and pleura, planned warm. `demo/plan_warm/T8`: the default request (bilateral
/// transpedicular, then unipedicular; a 3.4 mm cannula). `demo/plan_warm/T8_fallbacks` and
/// `demo/plan_warm/T5_fallbacks`: the demo's thoracic request ([`crate::demo::request`]:
/// bilateral transpedicular, extrapedicular, unipedicular, with the 3.05 mm and 2.4 mm
/// alternatives), every side's chain searched until a candidate is safe (at T5 the pedicles
/// take no cannula: both sides end extrapedicular).
fn thoracic_figures(budget: &Budget, out: &mut Vec<Figure>) -> Result<(), String> {
    let fallbacks = crate::demo::request(true)?;
    for (level, name, req) in [
        (Level::T8, "T8", request(None)),
        (Level::T8, "T8_fallbacks", fallbacks.clone()),
        (Level::T5, "T5_fallbacks", fallbacks.clone()),
    ] {
        let prepared = prepare(crate::demo::anatomy(&[level], true))?;
        let warm = plan_warm(&prepared, &req, budget).map_err(|e| format!("demo {name}: {e}"))?;
        out.push(figure(format!("demo/plan_warm/{name}"), warm, 1e3, "ms"));
    }
    Ok(())
}

/// The exact clearance query against parry's capsule-vs-TriMesh distance on `count` segments:
/// the planned cannula axes of the vertebra (10 mm behind the bone entry to the tip), both
/// ends moved by up to 4 mm (seeded).
fn clearance_figures(
    prefix: &str,
    input: &AnatomyInput,
    level: Level,
    budget: &Budget,
    out: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let prepared = prepare(one_vertebra(input, level))?;
    let req = request(None);
    let planned = plan(&prepared, &req)?;
    let segments = comparison_segments(&planned, budget.clearance_candidates);
    if segments.is_empty() {
        return Err(format!("{prefix} {level}: no side was planned"));
    }
    let vertebra = prepared
        .vertebra(level)
        .ok_or_else(|| format!("{prefix}: no prepared {level}"))?;
    let r = req.instrument().cannula_radius_mm();
    let parry = ParryMesh::new(&vertebra.mesh);

    let mut worst = 0.0f64;
    for (a, b) in &segments {
        let ours = (vertebra.bone.distance_to_segment(a, b) - r).max(0.0);
        worst = worst.max((ours - parry.capsule_distance(a, b, r)).abs());
    }
    notes.push(format!(
        "clearance ({prefix} {level}, {} triangles): {} candidate segments; exact distance minus \
         the cannula radius agrees with parry's capsule distance to {worst:.1e} mm (largest \
         difference)",
        vertebra.mesh.triangles.len(),
        segments.len()
    ));
    let n = segments.len() as f64;
    let mut sink = 0.0;
    let exact = repeat(budget.exact_passes, budget.per_figure, || {
        for (a, b) in &segments {
            sink += std::hint::black_box(vertebra.bone.distance_to_segment(a, b) - r);
        }
    });
    let theirs = repeat(budget.parry_passes, budget.per_figure * 2, || {
        for (a, b) in &segments {
            sink += std::hint::black_box(parry.capsule_distance(a, b, r));
        }
    });
    std::hint::black_box(sink);
    let exact = figure(
        format!("{prefix}/clearance_exact_segment_distance"),
        exact,
        1e6 / n,
        "µs/query",
    );
    let theirs = figure(
        format!("{prefix}/clearance_parry_capsule_distance"),
        theirs,
        1e6 / n,
        "µs/query",
    );
    let ratio = theirs.median / exact.median;
    out.push(exact);
    out.push(theirs);
    out.push(single(
        format!("{prefix}/clearance_speedup_over_parry"),
        ratio,
        1,
        "x",
    ));
    Ok(())
}

/// The real meshes: VHM L1-L5 and the mean L3.
fn load_real(dir: &Path) -> Result<(AnatomyInput, AnatomyInput), String> {
    let load = |p: PathBuf| kyphoplan_client::mesh_io::load_stl(&p).map_err(|e| e.to_string());
    let mut structures = Vec::new();
    for level in [Level::L1, Level::L2, Level::L3, Level::L4, Level::L5] {
        structures.push(Structure {
            name: format!("{level}.stl"),
            role: Role::Vertebra { level },
            mesh: load(dir.join(format!("vhm-male-lumbar/{level}.stl")))?,
        });
    }
    let vhm = AnatomyInput {
        name: "vhm-male-lumbar".into(),
        frame: PatientFrame::Lps,
        structures,
    };
    let mean_l3 = AnatomyInput {
        name: "mean-lumbar".into(),
        frame: PatientFrame::Lps,
        structures: vec![Structure {
            name: "L3.stl".into(),
            role: Role::Vertebra { level: Level::L3 },
            mesh: load(dir.join("mean-lumbar-l2-l5/L3.stl"))?,
        }],
    };
    Ok((vhm, mean_l3))
}

/// Server throughput: warm CreatePlan calls of one level from `clients` concurrent clients.
#[cfg(feature = "server")]
fn server_figures(
    budget: &Budget,
    out: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let max_clients = budget.server_clients.iter().copied().max().unwrap_or(1);
    let data = tempfile::tempdir().map_err(|e| format!("temporary data directory: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("async runtime: {e}"))?;
    let mut config = kyphoplan_server::Config::with_data_dir(data.path());
    config.max_concurrent_plans = max_clients.max(16);
    let concurrent = config.max_concurrent_plans;
    rt.block_on(async move {
        let server = kyphoplan_server::InProcessServer::start(config)
            .await
            .map_err(|e| format!("in-process server: {e:#}"))?;
        let result = drive_server(&server.url(), budget, out).await;
        let _ = server.shutdown().await;
        result
    })?;
    notes.push(format!(
        "server: in-process on 127.0.0.1:0, max concurrent plans {concurrent}, planner threads \
         one per core; warm CreatePlan of the built-in L3 (both sides), {:.1} s per client count",
        budget.server_duration.as_secs_f64()
    ));
    Ok(())
}

#[cfg(feature = "server")]
async fn drive_server(url: &str, budget: &Budget, out: &mut Vec<Figure>) -> Result<(), String> {
    let mut client = Client::connect(url).await.map_err(|e| e.to_string())?;
    let anatomy = Arc::new(synth::demo_anatomy());
    let t = Instant::now();
    let stored = client
        .upload_anatomy_shared(anatomy)
        .await
        .map_err(|e| format!("upload: {e}"))?;
    out.push(single(
        "server/upload_demo_anatomy",
        t.elapsed().as_secs_f64() * 1e3,
        1,
        "ms",
    ));
    let req = Arc::new(request(Some(vec![Level::L3])));
    // The first plan prepares the anatomy (then cached): measured apart.
    let t = Instant::now();
    client
        .create_plan(&stored.anatomy_id, &req)
        .await
        .map_err(|e| format!("first plan: {e}"))?;
    out.push(single(
        "server/first_plan_L3_prepares",
        t.elapsed().as_secs_f64() * 1e3,
        1,
        "ms",
    ));
    let id: Arc<str> = stored.anatomy_id.into();
    for &clients in &budget.server_clients {
        let start = Instant::now();
        let deadline = start + budget.server_duration;
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (url, id, req) = (url.to_owned(), id.clone(), req.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = Client::connect(&url).await.map_err(|e| e.to_string())?;
                let (mut latencies, mut shed) = (Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match client.create_plan(&id, &req).await {
                        Ok(_) => latencies.push(t.elapsed().as_secs_f64()),
                        Err(e) if e.code() == Some(kyphoplan_client::Code::ResourceExhausted) => {
                            shed += 1
                        }
                        Err(e) => return Err(format!("CreatePlan: {e}")),
                    }
                }
                Ok::<_, String>((latencies, shed))
            }));
        }
        let (mut latencies, mut shed) = (Vec::new(), 0);
        for task in tasks {
            let (l, s) = task.await.map_err(|e| e.to_string())??;
            latencies.extend(l);
            shed += s;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let done = latencies.len();
        let prefix = format!("server/clients_{clients}");
        out.push(single(
            format!("{prefix}/throughput"),
            done as f64 / elapsed,
            done,
            "plans/s",
        ));
        let s = sorted(latencies.iter().map(|x| x * 1e3).collect());
        out.push(figure(
            format!("{prefix}/latency_p50"),
            latencies,
            1e3,
            "ms",
        ));
        out.push(single(
            format!("{prefix}/latency_p99"),
            quantile(&s, 0.99),
            done,
            "ms",
        ));
        out.push(single(
            format!("{prefix}/shed_calls"),
            shed as f64,
            done + shed,
            "calls",
        ));
    }
    Ok(())
}

/// Run every figure; progress goes to stderr.
pub fn run(options: &BenchOptions) -> Result<BenchReport, String> {
    let budget = Budget::new(options.quick);
    let machine = machine();
    let date = utc_now();
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    // A single section, on request: its figures only.
    let only = if options.labelmap_only {
        eprintln!("bench: label map (generated lumbar L1-L5) only");
        labelmap_figures(&budget, options.quick, &mut figures, &mut notes)?;
        Some("--labelmap-only: only the label-map figures")
    } else if options.thoracic_only {
        eprintln!("bench: built-in thoracic levels (T5, T8 with ribs and pleura) only");
        thoracic_figures(&budget, &mut figures)?;
        Some("--thoracic-only: only the thoracic figures")
    } else {
        None
    };
    if let Some(note) = only {
        notes.push(note.into());
        return Ok(BenchReport {
            date,
            machine,
            quick: options.quick,
            shared_anatomy: None,
            notes,
            figures,
        });
    }

    eprintln!("bench: built-in anatomy (synthetic L1-L5)");
    let demo = synth::demo_anatomy();
    anatomy_figures("demo", &demo, &demo, &budget, &mut figures)?;
    eprintln!("bench: built-in thoracic levels (T5, T8 with ribs and pleura)");
    thoracic_figures(&budget, &mut figures)?;
    clearance_figures("demo", &demo, Level::L3, &budget, &mut figures, &mut notes)?;

    let shared = if options.quick {
        notes.push("--quick: the real meshes of ../shared/anatomy were not benchmarked".into());
        None
    } else {
        options.shared_anatomy.clone()
    };
    match &shared {
        Some(dir) => {
            eprintln!("bench: real meshes in {}", dir.display());
            let (vhm, mean_l3) = load_real(dir)?;
            anatomy_figures("real", &vhm, &mean_l3, &budget, &mut figures)?;
            clearance_figures(
                "real",
                &mean_l3,
                Level::L3,
                &budget,
                &mut figures,
                &mut notes,
            )?;
            notes.push(format!(
                "real: five levels = vhm-male-lumbar L1-L5, per vertebra / evaluate / memory = \
                 mean-lumbar-l2-l5/L3.stl ({})",
                dir.display()
            ));
        }
        None if !options.quick => notes.push(
            "real meshes ABSENT: ../shared/anatomy not found (relative to the current directory \
             or the repository root); only the built-in anatomy was benchmarked"
                .into(),
        ),
        None => {}
    }

    eprintln!("bench: label map (generated lumbar L1-L5)");
    labelmap_figures(&budget, options.quick, &mut figures, &mut notes)?;

    #[cfg(feature = "server")]
    {
        eprintln!("bench: server throughput");
        server_figures(&budget, &mut figures, &mut notes)?;
    }
    #[cfg(not(feature = "server"))]
    {
        let skipped = "server figures SKIPPED: this kyphoplan was built without the `server` \
                       feature (no in-process server)";
        eprintln!("bench: {skipped}");
        notes.push(skipped.into());
    }
    notes.push(
        "peak_rss_vmhwm is the process's VmHWM after that section (cumulative over the run)".into(),
    );

    Ok(BenchReport {
        date,
        machine,
        quick: options.quick,
        shared_anatomy: shared.map(|d| d.display().to_string()),
        notes,
        figures,
    })
}

/// The label-map figures (see the module documentation).
fn labelmap_figures(
    budget: &Budget,
    quick: bool,
    out: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    use kyphoplan_planner::labelmap::{self, Convention, LabelTable};
    use std::io::Write;
    let (dims, spacing_mm) = if quick {
        ([256, 256, 150], [1.4, 1.4, 2.0])
    } else {
        ([512, 512, 300], [0.7, 0.7, 1.0])
    };
    let lumbar = [Level::L1, Level::L2, Level::L3, Level::L4, Level::L5];
    let (volume, _) = crate::cases::synthetic_label_map(&lumbar, spacing_mm, dims);
    let nii = labelmap::encode_nifti_labels(&volume);
    drop(volume);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&nii).map_err(|e| e.to_string())?;
    let gz = gz.finish().map_err(|e| e.to_string())?;
    let read_nii = repeat(budget.five_reps, budget.per_figure, || {
        let _ = labelmap::parse_nifti_labels("lumbar.nii", &nii);
    });
    let nii_bytes = nii.len();
    drop(nii);
    // Peak memory of the label-map path alone: reset the peak resident set (Linux
    // `clear_refs` 5) now that only the .nii.gz bytes are held.
    let peak_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let table = LabelTable::builtin(Convention::TotalSegmentator);
    let req = request(None);
    let (mut read, mut mesh, mut prep, mut plans, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last: Option<(Plan, usize)> = None;
    let mut failed = None;
    let start = Instant::now();
    for _ in 0..budget.five_reps.max(1) {
        let t0 = Instant::now();
        let result = (|| -> Result<(Plan, usize), String> {
            let v =
                labelmap::parse_nifti_labels("lumbar.nii.gz", &gz).map_err(|e| e.to_string())?;
            let t1 = Instant::now();
            let lm = labelmap::anatomy_from_labels("lumbar", &v, &table, None)
                .map_err(|e| e.to_string())?;
            drop(v);
            let triangles = lm
                .anatomy
                .structures
                .iter()
                .map(|s| s.mesh.triangles.len())
                .sum();
            let t2 = Instant::now();
            let prepared = prepare(lm.anatomy)?;
            let t3 = Instant::now();
            let p = plan(&prepared, &req)?;
            let t4 = Instant::now();
            read.push((t1 - t0).as_secs_f64());
            mesh.push((t2 - t1).as_secs_f64());
            prep.push((t3 - t2).as_secs_f64());
            plans.push((t4 - t3).as_secs_f64());
            total.push((t4 - t0).as_secs_f64());
            Ok((p, triangles))
        })();
        match result {
            Ok(r) => last = Some(r),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        if start.elapsed() >= budget.per_figure * 4 {
            break;
        }
    }
    if let Some(e) = failed {
        return Err(format!("label map bench: {e}"));
    }
    let p = "labelmap";
    out.push(figure(format!("{p}/read_nii_gz"), read, 1e3, "ms"));
    out.push(figure(format!("{p}/read_nii"), read_nii, 1e3, "ms"));
    out.push(figure(format!("{p}/mesh"), mesh, 1e3, "ms"));
    out.push(figure(format!("{p}/prepare"), prep, 1e3, "ms"));
    out.push(figure(format!("{p}/plan_five_levels"), plans, 1e3, "ms"));
    out.push(figure(format!("{p}/end_to_end"), total, 1e3, "ms"));
    if let Some((plan, triangles)) = &last {
        let levels = plan.levels.len();
        let feasible = plan
            .levels
            .iter()
            .flat_map(|l| &l.sides)
            .filter(|s| s.feasible)
            .count();
        out.push(single(
            format!("{p}/mesh_triangles"),
            *triangles as f64,
            1,
            "triangles",
        ));
        out.push(single(
            format!("{p}/feasible_sides"),
            feasible as f64,
            1,
            "sides",
        ));
        notes.push(format!(
            "labelmap: {} x {} x {} voxels of {} x {} x {} mm ({:.1} MB .nii, {:.2} MB .nii.gz), \
             {levels} levels planned, {feasible} of {} sides feasible; end_to_end = read_nii_gz + \
             mesh + prepare + plan_five_levels",
            dims[0],
            dims[1],
            dims[2],
            spacing_mm[0],
            spacing_mm[1],
            spacing_mm[2],
            nii_bytes as f64 / 1e6,
            gz.len() as f64 / 1e6,
            2 * levels
        ));
    }
    if let Some(rss) = peak_rss_bytes().filter(|_| peak_reset) {
        out.push(single(format!("{p}/peak_rss_vmhwm"), rss / 1e6, 1, "MB"));
        notes.push(
            "labelmap/peak_rss_vmhwm: the peak resident set from read to plan (reset before \
             with /proc/self/clear_refs), the process's other memory included"
                .into(),
        );
    }
    Ok(())
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The readable table of a report.
pub fn table(report: &BenchReport) -> String {
    let m = &report.machine;
    let mut s = format!(
        "kyphoplan bench  {}  nproc {}  \"{}\"  load {}  {} build{}\n",
        report.date,
        m.nproc,
        m.cpu_model,
        m.load_average,
        m.profile,
        if report.quick { "  (--quick)" } else { "" }
    );
    match &report.shared_anatomy {
        Some(d) => s.push_str(&format!("real meshes: {d}\n")),
        None if report.quick => s.push_str("real meshes: not benchmarked (--quick)\n"),
        None => s.push_str("real meshes: ABSENT (../shared/anatomy not found)\n"),
    }
    s.push('\n');
    let width = report
        .figures
        .iter()
        .map(|f| f.name.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    s.push_str(&format!(
        "{:<width$}  {:>10}  {:>10}  {:>10}  {:>6}  unit\n",
        "figure", "median", "min", "max", "n"
    ));
    for f in &report.figures {
        s.push_str(&format!(
            "{:<width$}  {:>10}  {:>10}  {:>10}  {:>6}  {}\n",
            f.name,
            fmt_value(f.median),
            fmt_value(f.min),
            fmt_value(f.max),
            f.n,
            f.unit
        ));
    }
    if !report.notes.is_empty() {
        s.push('\n');
        for n in &report.notes {
            s.push_str(&format!("- {n}\n"));
        }
    }
    s
}
