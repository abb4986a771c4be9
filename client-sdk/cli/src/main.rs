//! `kyphoplan`: the command line of CONTRACT.md section 2.
//!
//! Exit codes: 0 success (an infeasible side is an answer, not a failure); 1 the input was
//! refused (stderr names the file or field and why); 2 usage; 3 `replay` found a regression;
//! 4 the server could not be reached or failed (an addition to the contract).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Parser, Subcommand};
use kyphoplan_cli::{demo, report};
use kyphoplan_client::case::{self, Case};
use kyphoplan_client::{plan_json, Client, ClientError, Code};
use kyphoplan_planner::anatomy::{AnatomyInput, Level, Side};
use kyphoplan_planner::evaluate::RouteRule;
use kyphoplan_planner::plan::{Evaluation, LevelPlan, Plan};
use kyphoplan_planner::planning;
use kyphoplan_planner::prepare::{PrepareOptions, PreparedAnatomy};
use kyphoplan_planner::request::{Instrument, PlanRequest, Safety};
use kyphoplan_planner::synth;

#[derive(Parser)]
#[command(
    name = "kyphoplan",
    version,
    about = "Balloon kyphoplasty trajectory planning"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    security: Security,
}

/// How `--server` commands reach a server that asks for TLS or a token.
#[derive(clap::Args)]
struct Security {
    /// File whose first line is the bearer token for the server (or set KYPHOPLAN_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate: connect with TLS.
    #[arg(long, global = true, value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --client-key.
    #[arg(long, global = true, value_name = "PEM", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, global = true, value_name = "PEM", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host of the URL).
    #[arg(long, global = true, value_name = "NAME")]
    tls_domain: Option<String>,
}

static CONNECT_OPTIONS: std::sync::OnceLock<kyphoplan_client::ConnectOptions> =
    std::sync::OnceLock::new();

impl Security {
    fn options(self) -> Result<kyphoplan_client::ConnectOptions, Failure> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| Failure::Usage(format!("{}: cannot read: {e}", p.display())))
        };
        let token = match (&self.token_file, std::env::var("KYPHOPLAN_TOKEN")) {
            (Some(path), _) => Some(
                kyphoplan_client::ConnectOptions::read_token_file(path)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?,
            ),
            (None, Ok(t)) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            (None, _) => None,
        };
        Ok(kyphoplan_client::ConnectOptions {
            ca_cert_pem: self.ca_cert.as_deref().map(read).transpose()?,
            client_identity_pem: match (&self.client_cert, &self.client_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
            tls_domain: self.tls_domain,
            token,
        })
    }
}

/// The command line's TLS and token options, for every `--server` command.
fn connect_options() -> &'static kyphoplan_client::ConnectOptions {
    CONNECT_OPTIONS.get_or_init(Default::default)
}

/// Connect to a `--server` URL (or `URL,URL,...`: replicas, see `Client::connect_with`) with
/// the command line's TLS and token options.
async fn connect(url: &str) -> Result<Client, Failure> {
    Client::connect_with(url, connect_options())
        .await
        .map_err(|e| Failure::Server(e.to_string()))
}

/// What `plan` and `upload` read: a case directory, or a NIfTI label map.
#[derive(clap::Args)]
struct Source {
    #[arg(required_unless_present = "labelmap", conflicts_with = "labelmap")]
    case_dir: Option<PathBuf>,
    /// A NIfTI label map (.nii / .nii.gz) instead of a case directory.
    #[arg(long, value_name = "FILE")]
    labelmap: Option<PathBuf>,
    /// The label map's ids: totalsegmentator (v2 "total" task) or verse.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "totalsegmentator",
        requires = "labelmap"
    )]
    convention: String,
}

#[derive(Subcommand)]
enum Command {
    /// Plan every level of the built-in anatomy and write the results (a case directory with
    /// plan.json) into DIR.
    Demo {
        #[arg(long, value_name = "DIR", default_value = "kyphoplan-demo")]
        out: PathBuf,
        /// Levels of the built-in mean spine to plan, `FROM-TO` (e.g. `T5-L5`) or one level
        /// (default: L1-L5). Thoracic levels come with their ribs and pleura, and the
        /// extrapedicular approach is allowed after the bilateral one, with the cannula
        /// alternatives 3.05 mm (11 G) and 2.4 mm (13 G, too small for a balloon).
        #[arg(long, value_name = "FROM-TO")]
        levels: Option<String>,
        /// With --levels: bone only (no ribs or pleura) and the default approaches.
        #[arg(long, requires = "levels")]
        bone_only: bool,
        /// With --levels: print only the README's approach table (each level planned bone
        /// only at default settings, and with ribs and pleura and the extrapedicular approach);
        /// nothing is written.
        #[arg(long, requires = "levels", conflicts_with = "bone_only")]
        approach_table: bool,
    },
    /// Plan a case directory, or a NIfTI label map (--labelmap; planned in frame LPS with the
    /// contract's instrument and safety).
    Plan {
        #[command(flatten)]
        source: Source,
        /// Levels to plan from the label map (comma separated, e.g. L1,L2); default: every
        /// complete vertebra.
        #[arg(long, value_name = "LEVELS", value_delimiter = ',', value_parser = parse_level, requires = "labelmap")]
        levels: Option<Vec<Level>>,
        /// Write the anatomy's meshes (binary STL, case frame) with a case.toml naming them into
        /// DIR, e.g. to check label-map meshes in 3D Slicer.
        #[arg(long, value_name = "DIR")]
        export_meshes: Option<PathBuf>,
        /// Plan through the gRPC server at URL (e.g. http://127.0.0.1:50051); a label map is
        /// uploaded as it is and meshed on the server. Several replicas of one service:
        /// URL,URL,... (calls spread over them, retried on another when one is down).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Write the plan JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write the plan as 3D Slicer markups JSON (.mrk.json) to FILE.
        #[arg(long, value_name = "FILE")]
        slicer: Option<PathBuf>,
        /// Write PNG pictures (an axial section, AP and lateral views per level, an overview)
        /// into DIR.
        #[arg(long, value_name = "DIR")]
        pictures: Option<PathBuf>,
        /// Write a 3D scene (bone, cannulas, balloons, derived canal) as binary glTF to FILE.
        #[arg(long, value_name = "FILE")]
        scene: Option<PathBuf>,
        /// Write a self-contained HTML plan report (pictures, measurements, settings, input
        /// checksums) to FILE.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
    /// Measure one trajectory of a case against the safety constraints.
    Evaluate {
        case_dir: PathBuf,
        #[arg(long, value_parser = parse_level)]
        level: Level,
        #[arg(long, value_parser = parse_side)]
        side: Side,
        /// Entry point X,Y,Z in the case frame, mm.
        #[arg(long, value_parser = parse_point, allow_hyphen_values = true)]
        entry: [f64; 3],
        /// Target (tip) X,Y,Z in the case frame, mm.
        #[arg(long, value_parser = parse_point, allow_hyphen_values = true)]
        target: [f64; 3],
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Write the evaluation JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// The route rule the trajectory is held to: `transpedicular` (through the pedicle) or
        /// `extrapedicular` (beside it, docking on the rib head-neck; needs the level's rib and
        /// a pleura mesh).
        #[arg(long, value_name = "ROUTE", default_value = "transpedicular", value_parser = parse_route)]
        route: RouteRule,
    },
    /// Re-plan every case under CASES_ROOT (any directory with case.toml) and compare with its
    /// expected.json; exit 3 on a regression.
    Replay {
        cases_root: PathBuf,
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// Rewrite expected.json of every case after showing the differences.
        #[arg(long)]
        bless: bool,
        /// Shared data directory for cases with `mesh_root = "shared:..."` (default: `shared`
        /// next to the repository holding CASES_ROOT).
        #[arg(long, value_name = "DIR", env = "KYPHOPLAN_SHARED")]
        shared: Option<PathBuf>,
    },
    /// Delete a plan, or an anatomy (with --cascade also its plans), from the server, for good.
    /// Deleting what is already gone succeeds (and says so).
    #[command(group(clap::ArgGroup::new("record").required(true).args(["plan", "anatomy"])))]
    Delete {
        #[arg(long, value_name = "URL")]
        server: String,
        /// Id of the plan to delete.
        #[arg(long, value_name = "ID")]
        plan: Option<String>,
        /// Id of the anatomy to delete.
        #[arg(long, value_name = "ID")]
        anatomy: Option<String>,
        /// With --anatomy: delete its plans too (without, an anatomy with plans is refused).
        #[arg(long, requires = "anatomy")]
        cascade: bool,
    },
    /// Upload a case directory's meshes, or a NIfTI label map as it is (meshed on the server),
    /// to the server; print the anatomy id and the structures the server found (for a label
    /// map: label ids, voxels, pieces left out, vertebrae refused as cut by the scan).
    Upload {
        #[command(flatten)]
        source: Source,
        #[arg(long, value_name = "URL")]
        server: String,
    },
    /// Time the planner and the server on this machine (built-in anatomy, the real meshes of
    /// ../shared/anatomy when present, server throughput, exact clearance vs parry).
    Bench {
        /// Write the report as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// One repetition per figure and short server runs, without the real meshes (for
        /// tests; the figures are noisy).
        #[arg(long)]
        quick: bool,
        /// Only the label-map figures (read, mesh, prepare, plan of a generated lumbar map).
        #[arg(long)]
        labelmap_only: bool,
        /// Only the thoracic figures (T8 with the default approach, T8 and T5 with the
        /// extrapedicular fallbacks; built-in levels with ribs and pleura, prepared).
        #[arg(long, conflicts_with = "labelmap_only")]
        thoracic_only: bool,
    },
}

fn parse_level(s: &str) -> Result<Level, String> {
    Level::from_str(s)
}

fn parse_route(s: &str) -> Result<RouteRule, String> {
    match s {
        "transpedicular" => Ok(RouteRule::Transpedicular),
        "extrapedicular" => Ok(RouteRule::Extrapedicular),
        _ => Err(format!(
            "unknown route {s:?} (transpedicular or extrapedicular)"
        )),
    }
}

fn parse_side(s: &str) -> Result<Side, String> {
    Side::from_str(s)
}

fn parse_point(s: &str) -> Result<[f64; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err(format!("expected X,Y,Z (three numbers in mm), got '{s}'"));
    }
    let mut p = [0.0; 3];
    for (v, part) in p.iter_mut().zip(&parts) {
        *v = part
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("'{part}' is not a finite number"))?;
    }
    Ok(p)
}

/// Why a command failed, and its exit code.
enum Failure {
    /// 3: `replay` found a regression (the report is already printed).
    Regression(String),
    /// 1: the input was refused.
    Input(String),
    /// 2: usage (clap reports its own; also an unreadable token file or a refused token).
    Usage(String),
    /// 4: the server could not be reached or failed.
    Server(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Input(_) => 1,
            Failure::Regression(_) => 3,
            Failure::Usage(_) => 2,
            Failure::Server(_) => 4,
        }
    }
    fn message(&self) -> &str {
        match self {
            Failure::Input(m) | Failure::Usage(m) | Failure::Server(m) | Failure::Regression(m) => {
                m
            }
        }
    }
}

fn from_client(e: ClientError, what: &str) -> Failure {
    match e {
        ClientError::Status {
            code,
            message,
            field_violations,
        } => {
            let mut message = format!("{what}: {message}");
            for v in field_violations {
                message.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
            match code {
                Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::ResourceExhausted => Failure::Input(message),
                Code::Unauthenticated => Failure::Usage(format!(
                    "{message} (give --token-file FILE or set KYPHOPLAN_TOKEN)"
                )),
                _ => Failure::Server(format!("server error ({code}): {message}")),
            }
        }
        other => Failure::Server(format!("{what}: {other}")),
    }
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of stdout goes away (`| head`).
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // the one unsafe call of the client crates: no safe API resets SIGPIPE
    // SAFETY: setting a signal's disposition to the default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("kyphoplan: {}", f.message());
            ExitCode::from(f.code())
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let _ = CONNECT_OPTIONS.set(cli.security.options()?);
    match cli.command {
        Command::Demo {
            out,
            levels,
            bone_only,
            approach_table,
        } => match levels.as_deref() {
            Some(text) if approach_table => {
                let levels = demo_levels(text)?;
                print!("{}", demo::approach_table(&levels).map_err(Failure::Input)?);
                Ok(())
            }
            levels => demo(&out, levels, bone_only),
        },
        Command::Plan {
            source:
                Source {
                    case_dir,
                    labelmap,
                    convention,
                },
            levels,
            export_meshes,
            server,
            json,
            slicer,
            pictures,
            scene,
            report,
        } => {
            let exports = Exports {
                slicer,
                pictures,
                scene,
                report,
            };
            if let (Some(file), Some(url)) = (&labelmap, &server) {
                return plan_labelmap_via_server(
                    url,
                    file,
                    &convention,
                    levels,
                    json.as_deref(),
                    export_meshes.as_deref(),
                    &exports,
                );
            }
            let case = match (&case_dir, &labelmap) {
                (_, Some(file)) => case::labelmap_case(file, &convention, levels)
                    .map_err(|e| Failure::Input(e.to_string()))?,
                (Some(dir), None) => read_case(dir)?,
                (None, None) => return Err(Failure::Usage("a CASE_DIR or --labelmap FILE".into())),
            };
            plan_case(
                case,
                server.as_deref(),
                json.as_deref(),
                export_meshes.as_deref(),
                &exports,
            )
        }
        Command::Evaluate {
            case_dir,
            level,
            side,
            entry,
            target,
            server,
            json,
            route,
        } => evaluate_case(
            &case_dir,
            level,
            side,
            (entry, target, route),
            server.as_deref(),
            json.as_deref(),
        ),
        Command::Replay {
            cases_root,
            server,
            bless,
            shared,
        } => replay_cases(&cases_root, server.as_deref(), bless, shared),
        Command::Delete {
            server,
            plan,
            anatomy,
            cascade,
        } => delete(&server, plan.as_deref(), anatomy.as_deref(), cascade),
        Command::Upload {
            source:
                Source {
                    case_dir,
                    labelmap,
                    convention,
                },
            server,
        } => upload(
            &server,
            case_dir.as_deref(),
            labelmap.as_deref(),
            &convention,
        ),
        Command::Bench {
            json,
            quick,
            labelmap_only,
            thoracic_only,
        } => {
            use kyphoplan_cli::bench;
            let options = bench::BenchOptions {
                quick,
                shared_anatomy: bench::default_shared_anatomy(),
                labelmap_only,
                thoracic_only,
            };
            let report =
                bench::run(&options).map_err(|e| Failure::Server(format!("bench: {e}")))?;
            print!("{}", bench::table(&report));
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).expect("a report serialises");
                write_file(&path, &text)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

fn read_case(dir: &Path) -> Result<Case, Failure> {
    case::read_case(dir).map_err(|e| Failure::Input(e.to_string()))
}

fn prepare(anatomy: AnatomyInput, where_: &Path) -> Result<PreparedAnatomy, Failure> {
    PreparedAnatomy::prepare(anatomy, &PrepareOptions::standard())
        .map_err(|e| Failure::Input(format!("{}: {e}", where_.display())))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Server(format!("cannot start the async runtime: {e}")))
}

/// A progress bar on stderr when it is a terminal (stdout stays the table alone).
fn progress() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("planning {bar:30} {pos}/{len} levels {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

fn tick(bar: &Option<indicatif::ProgressBar>, level: Level, done: usize, total: usize) {
    if let Some(bar) = bar {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(level.to_string());
    }
}

fn plan_in_process(
    anatomy: AnatomyInput,
    request: &PlanRequest,
    where_: &Path,
) -> Result<Plan, Failure> {
    let prepared = prepare(anatomy, where_)?;
    let bar = progress();
    let on_level = |l: &LevelPlan, done: usize, total: usize| tick(&bar, l.level, done, total);
    let control = planning::PlanControl {
        cancelled: &|| false,
        on_level: &on_level,
    };
    let result = planning::plan_with(&prepared, request, &control);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(plan) => Ok(plan),
        Err(planning::PlanError::Input(e)) => {
            Err(Failure::Input(format!("{}: {e}", where_.display())))
        }
        Err(planning::PlanError::Cancelled) => {
            Err(Failure::Server("planning was cancelled".into()))
        }
    }
}

/// What `plan --server` uploads: meshes, or a label map's bytes (meshed by the server).
enum Upload {
    Meshes(AnatomyInput),
    LabelMap(kyphoplan_client::LabelMapUpload),
}

fn plan_via_server(url: &str, upload: Upload, request: &PlanRequest) -> Result<Plan, Failure> {
    runtime()?.block_on(async {
        let mut client = connect(url).await?;
        let stored = match upload {
            Upload::Meshes(anatomy) => {
                client
                    .upload_anatomy_shared(std::sync::Arc::new(anatomy))
                    .await
            }
            Upload::LabelMap(labels) => client.upload_labelmap(std::sync::Arc::new(labels)).await,
        }
        .map_err(|e| from_client(e, "upload refused"))?;
        // The server's notices on the label map (refused vertebrae, pieces left out, ...).
        for n in stored.labelmap.iter().flat_map(|l| &l.notices) {
            eprintln!("notice: {n}");
        }
        let bar = progress();
        let plan = client
            .stream_plan(&stored.anatomy_id, request, |l, done, total| {
                tick(&bar, l.level, done, total)
            })
            .await;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let plan = plan.map_err(|e| from_client(e, "plan refused"))?;
        eprintln!(
            "anatomy {} and plan {} stored on {url}",
            stored.anatomy_id, plan.plan_id
        );
        Ok(plan.plan)
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text)
        .map_err(|e| Failure::Input(format!("{}: cannot write: {e}", path.display())))
}

/// What `plan` writes besides the table and the JSON.
struct Exports {
    slicer: Option<PathBuf>,
    pictures: Option<PathBuf>,
    scene: Option<PathBuf>,
    report: Option<PathBuf>,
}

impl Exports {
    fn need_anatomy(&self) -> bool {
        self.pictures.is_some() || self.scene.is_some() || self.report.is_some()
    }
}

fn plan_case(
    case: Case,
    server: Option<&str>,
    json: Option<&Path>,
    export_meshes: Option<&Path>,
    exports: &Exports,
) -> Result<(), Failure> {
    let Case {
        dir,
        anatomy,
        request,
        notices,
    } = case;
    for n in &notices {
        eprintln!("notice: {n}");
    }
    if let Some(out) = export_meshes {
        case::write_case(out, &anatomy, request.levels())
            .map_err(|e| Failure::Input(e.to_string()))?;
        eprintln!(
            "wrote {} meshes (STL, frame {}) into {}",
            anatomy.structures.len(),
            anatomy.frame.name(),
            out.display()
        );
    }
    // The pictures, scene and report draw the bone: keep it when they are asked for.
    let for_exports = exports.need_anatomy().then(|| anatomy.clone());
    let plan = match server {
        None => plan_in_process(anatomy, &request, &dir)?,
        Some(url) => plan_via_server(url, Upload::Meshes(anatomy), &request)?,
    };
    print!("{}", report::plan_table(&plan));
    if let Some(path) = json {
        write_file(path, &plan_json(&plan))?;
        eprintln!("wrote {}", path.display());
    }
    write_exports(&plan, for_exports, &dir, exports)
}

/// `plan --labelmap FILE --server URL`: the file's bytes go to the server as they are, which
/// meshes them and plans by the anatomy id (the client meshes nothing, unless --export-meshes
/// or the pictures, scene or report need the meshes here).
fn plan_labelmap_via_server(
    url: &str,
    file: &Path,
    convention: &str,
    levels: Option<Vec<Level>>,
    json: Option<&Path>,
    export_meshes: Option<&Path>,
    exports: &Exports,
) -> Result<(), Failure> {
    let named = kyphoplan_client::LabelMapUpload::convention_named(convention)
        .map_err(|e| Failure::Usage(format!("--convention: {e}")))?;
    let upload = kyphoplan_client::LabelMapUpload::read(file, named).map_err(Failure::Input)?;
    let request = PlanRequest::new(
        levels.clone(),
        Instrument::contract_default(),
        Safety::contract_default(),
    )
    .map_err(|e| Failure::Usage(e.to_string()))?;
    let local = if export_meshes.is_some() || exports.need_anatomy() {
        let case = case::labelmap_case(file, convention, levels)
            .map_err(|e| Failure::Input(e.to_string()))?;
        if let Some(out) = export_meshes {
            case::write_case(out, &case.anatomy, case.request.levels())
                .map_err(|e| Failure::Input(e.to_string()))?;
            eprintln!(
                "wrote {} meshes (STL, frame {}) into {}",
                case.anatomy.structures.len(),
                case.anatomy.frame.name(),
                out.display()
            );
        }
        Some(case.anatomy)
    } else {
        None
    };
    let plan = plan_via_server(url, Upload::LabelMap(upload), &request)?;
    print!("{}", report::plan_table(&plan));
    if let Some(path) = json {
        write_file(path, &plan_json(&plan))?;
        eprintln!("wrote {}", path.display());
    }
    let dir = file.parent().map(Path::to_owned).unwrap_or_default();
    write_exports(
        &plan,
        local.filter(|_| exports.need_anatomy()),
        &dir,
        exports,
    )
}

fn export_failure(e: kyphoplan_cli::export::ExportError) -> Failure {
    Failure::Input(e.to_string())
}

fn write_exports(
    plan: &Plan,
    anatomy: Option<AnatomyInput>,
    case_dir: &Path,
    exports: &Exports,
) -> Result<(), Failure> {
    use kyphoplan_cli::export;
    if let Some(path) = &exports.slicer {
        export::slicer::write_markups(plan, path).map_err(export_failure)?;
        eprintln!("wrote {}", path.display());
    }
    let Some(anatomy) = anatomy else {
        return Ok(());
    };
    let prepared = prepare(anatomy, case_dir)?;
    if let Some(path) = &exports.scene {
        export::gltf::write_glb(plan, &prepared, path).map_err(export_failure)?;
        eprintln!("wrote {}", path.display());
    }
    let mut pictures = Vec::new();
    if let Some(dir) = &exports.pictures {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::Input(format!("{}: cannot create: {e}", dir.display())))?;
        pictures =
            export::pictures::write_pictures(plan, &prepared, dir).map_err(export_failure)?;
        eprintln!("wrote {} pictures into {}", pictures.len(), dir.display());
    }
    if let Some(path) = &exports.report {
        if pictures.is_empty() {
            // The report embeds the pictures: draw them next to it.
            let dir = path.with_extension("pictures");
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::Input(format!("{}: cannot create: {e}", dir.display())))?;
            pictures =
                export::pictures::write_pictures(plan, &prepared, &dir).map_err(export_failure)?;
        }
        let inputs = input_checksums(case_dir)?;
        export::report::write_report(plan, &prepared, &pictures, &inputs, path)
            .map_err(export_failure)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// SHA-256 of case.toml and of every mesh file it names, for the report's traceability.
fn input_checksums(case_dir: &Path) -> Result<Vec<(String, String)>, Failure> {
    use sha2::Digest;
    let toml_path = case_dir.join("case.toml");
    let text = std::fs::read_to_string(&toml_path)
        .map_err(|e| Failure::Input(format!("{}: {e}", toml_path.display())))?;
    let parsed = case::parse_case_toml(&text)
        .map_err(|e| Failure::Input(format!("{}: {e}", toml_path.display())))?;
    let mut names = vec!["case.toml".to_string()];
    names.extend(parsed.structures.iter().map(|s| s.mesh.clone()));
    let mut out = Vec::new();
    for name in names {
        let path = case_dir.join(&name);
        let bytes =
            std::fs::read(&path).map_err(|e| Failure::Input(format!("{}: {e}", path.display())))?;
        out.push((name, hex::encode(sha2::Sha256::digest(&bytes))));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn evaluate_case(
    dir: &Path,
    level: Level,
    side: Side,
    (entry, target, route): ([f64; 3], [f64; 3], RouteRule),
    server: Option<&str>,
    json: Option<&Path>,
) -> Result<(), Failure> {
    let Case {
        dir,
        anatomy,
        request,
        ..
    } = read_case(dir)?;
    let instrument: Instrument = request.instrument().clone();
    let safety: Safety = request.safety().clone();
    let evaluation: Evaluation = match server {
        None => {
            let prepared = prepare(anatomy, &dir)?;
            planning::evaluate_with_route(
                &prepared,
                level,
                side,
                entry,
                target,
                &instrument,
                &safety,
                route,
            )
            .map_err(|e| Failure::Input(format!("{}: {e}", dir.display())))?
        }
        Some(url) => runtime()?.block_on(async {
            let mut client = connect(url).await?;
            let stored = client
                .upload_anatomy_shared(std::sync::Arc::new(anatomy))
                .await
                .map_err(|e| from_client(e, "upload refused"))?;
            client
                .evaluate_with_route(
                    &stored.anatomy_id,
                    level,
                    side,
                    entry,
                    target,
                    &instrument,
                    &safety,
                    route,
                )
                .await
                .map_err(|e| from_client(e, "evaluation refused"))
        })?,
    };
    print!("{}", report::evaluation_report(&evaluation));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&evaluation).expect("an evaluation serialises");
        write_file(path, &text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The levels of `--levels`: `FROM-TO` (inclusive, cranial to caudal) or one level.
fn demo_levels(text: &str) -> Result<Vec<Level>, Failure> {
    let bad = |e: String| Failure::Usage(format!("--levels {text:?}: {e}"));
    let (from, to) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let from = Level::from_str(from).map_err(|e| bad(e.to_string()))?;
    let to = Level::from_str(to).map_err(|e| bad(e.to_string()))?;
    let levels: Vec<Level> = synth::ALL_MEAN_LEVELS
        .iter()
        .copied()
        .filter(|l| *l >= from && *l <= to)
        .collect();
    if levels.is_empty() {
        return Err(bad(
            "no built-in level in that range (T1-L5, cranial first)".into(),
        ));
    }
    Ok(levels)
}

fn demo(out: &Path, levels: Option<&str>, bone_only: bool) -> Result<(), Failure> {
    let (anatomy, request) = match levels {
        None => (synth::demo_anatomy(), demo::request(false)),
        Some(text) => {
            let levels = demo_levels(text)?;
            let thoracic = levels.iter().any(|l| *l <= Level::T12) && !bone_only;
            (demo::anatomy(&levels, !bone_only), demo::request(thoracic))
        }
    };
    let request = request.map_err(Failure::Input)?;
    // The output directory is itself a case directory: `kyphoplan plan DIR` re-plans it, with
    // the same procedure, approaches and cannula alternatives.
    case::write_case_for(out, &anatomy, None, Some(&request))
        .map_err(|e| Failure::Input(e.to_string()))?;
    let plan = plan_in_process(anatomy, &request, Path::new("demo anatomy"))?;
    print!("{}", report::plan_table(&plan));
    let json_path = out.join("plan.json");
    write_file(&json_path, &plan_json(&plan))?;
    println!();
    println!(
        "wrote {} and the case directory {} (case.toml + STL meshes)",
        json_path.display(),
        out.display()
    );
    println!("re-plan it with: kyphoplan plan {}", out.display());
    Ok(())
}

/// `kyphoplan delete`: one plan or one anatomy (clap makes sure exactly one is given).
fn delete(
    url: &str,
    plan: Option<&str>,
    anatomy: Option<&str>,
    cascade: bool,
) -> Result<(), Failure> {
    if cascade && anatomy.is_none() {
        return Err(Failure::Usage("--cascade goes with --anatomy".into()));
    }
    runtime()?.block_on(async {
        let mut client = connect(url).await?;
        if let Some(id) = plan {
            let deleted = client
                .delete_plan(id)
                .await
                .map_err(|e| from_client(e, "delete"))?;
            if deleted {
                println!("deleted plan {id}");
            } else {
                println!("plan {id}: nothing to delete (already deleted, or not yours)");
            }
        }
        if let Some(id) = anatomy {
            match client
                .delete_anatomy(id, cascade)
                .await
                .map_err(|e| from_client(e, "delete"))?
            {
                None => println!("anatomy {id}: nothing to delete (already deleted, or not yours)"),
                Some(r) => {
                    for plan in &r.deleted_plan_ids {
                        println!("deleted plan {plan}");
                    }
                    if r.data_removed {
                        println!("deleted anatomy {id}");
                    } else {
                        println!("deleted your ownership of anatomy {id} (other owners keep it)");
                    }
                }
            }
        }
        Ok(())
    })
}

/// `kyphoplan upload`: a case's meshes, or a label map's bytes (meshed by the server).
fn upload(
    url: &str,
    case_dir: Option<&Path>,
    labelmap: Option<&Path>,
    convention: &str,
) -> Result<(), Failure> {
    enum What {
        Meshes(AnatomyInput),
        LabelMap(kyphoplan_client::LabelMapUpload),
    }
    let what = match (case_dir, labelmap) {
        (_, Some(file)) => {
            let convention = kyphoplan_client::LabelMapUpload::convention_named(convention)
                .map_err(|e| Failure::Usage(format!("--convention: {e}")))?;
            What::LabelMap(
                kyphoplan_client::LabelMapUpload::read(file, convention).map_err(Failure::Input)?,
            )
        }
        (Some(dir), None) => What::Meshes(read_case(dir)?.anatomy),
        (None, None) => return Err(Failure::Usage("a CASE_DIR or --labelmap FILE".into())),
    };
    runtime()?.block_on(async {
        let mut client = connect(url).await?;
        let stored = match what {
            What::Meshes(anatomy) => {
                client
                    .upload_anatomy_shared(std::sync::Arc::new(anatomy))
                    .await
            }
            What::LabelMap(upload) => client.upload_labelmap(std::sync::Arc::new(upload)).await,
        }
        .map_err(|e| from_client(e, "upload refused"))?;
        print!("{}", report::anatomy_table(&stored));
        Ok(())
    })
}

/// `kyphoplan replay`: exit 3 when any case regressed, has no golden (without --bless), could
/// not be planned, or (under `CI=true`) was skipped.
fn replay_cases(
    root: &Path,
    server: Option<&str>,
    bless: bool,
    shared: Option<PathBuf>,
) -> Result<(), Failure> {
    use kyphoplan_cli::replay::{self, Planner, ReplayOptions};
    use std::io::IsTerminal;
    if !root.is_dir() {
        return Err(Failure::Input(format!(
            "{}: no such directory",
            root.display()
        )));
    }
    // A fresh clone holds the synthetic cases' case.toml and golden only: make their meshes.
    if let Ok(dirs) = replay::find_cases(root) {
        match kyphoplan_cli::cases::generate_missing_meshes(&dirs) {
            Ok(generated) if generated.is_empty() => {}
            Ok(generated) => println!(
                "generated the missing meshes of {} synthetic cases of the library \
                 (deterministic: kyphoplan_cli::cases)",
                generated.len()
            ),
            Err(e) => eprintln!("kyphoplan: cannot generate the synthetic meshes: {e}"),
        }
    }
    let options = ReplayOptions {
        shared_root: shared.or_else(|| replay::default_shared_root(root)),
        bless,
        skipped_is_failure: std::env::var("CI").is_ok_and(|v| v == "true"),
        concurrency: 0,
    };
    let planner = match server {
        None => Planner::InProcess,
        Some(url) => Planner::Server {
            url,
            connect: connect_options(),
        },
    };
    // A bar on a terminal once the library is more than a few cases.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::hidden();
        bar.set_style(
            indicatif::ProgressStyle::with_template("replay {bar:30} {pos}/{len} cases {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let on_case = |c: &replay::CaseReport, done: usize, total: usize| {
        if let Some(bar) = &bar {
            if total > 4 && bar.is_hidden() {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(c.name.clone());
        }
    };
    let summary = replay::replay(root, planner, &options, &on_case);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = summary.map_err(|e| match server {
        Some(_) => Failure::Server(e),
        None => Failure::Input(e),
    })?;
    for line in summary.report_lines(&options) {
        println!("{line}");
    }
    match summary.failures(&options) {
        0 => Ok(()),
        n => Err(Failure::Regression(format!(
            "replay: {n} of {} cases failed",
            summary.cases.len()
        ))),
    }
}
