//! Load test: N concurrent clients send CreatePlan and EvaluateTrajectory calls to a server on
//! loopback (started in-process unless `--server URL`), bounded by a call count and a time limit;
//! reports latency p50/p99 per call, errors by status code, and the server's RSS before and
//! after. `--cancel-probes N` also measures how long a cancelled plan keeps a planner thread
//! (in-process server only: cancel to `plans_running == 0`).
//!
//! ```text
//! cargo run --release -p kyphoplan-client --example loadtest -- --clients 32 --calls 4000
//! cargo run --release -p kyphoplan-client --example loadtest -- --max-concurrent-plans 2
//! cargo run --release -p kyphoplan-client --example loadtest -- --server http://127.0.0.1:50051 --server-pid PID
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use kyphoplan_client::{Client, ClientError, ConnectOptions};
use kyphoplan_planner::anatomy::{Level, Side};
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::request::{Instrument, PlanRequest, Safety};
use kyphoplan_planner::synth;
use kyphoplan_proto::{convert, pb};

#[derive(Parser)]
struct Args {
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Calls in all (plans and evaluations alternate per client).
    #[arg(long, default_value_t = 4000)]
    calls: usize,
    /// Stop after this many seconds even if calls remain.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Use the server at URL instead of one started in-process.
    #[arg(long)]
    server: Option<String>,
    /// PID of the `--server` process, to read its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bearer token for `--server`.
    #[arg(long, env = "KYPHOPLAN_TOKEN")]
    token: Option<String>,
    /// `--max-concurrent-plans` of the in-process server.
    #[arg(long, default_value_t = kyphoplan_server::config::DEFAULT_MAX_CONCURRENT_PLANS)]
    max_concurrent_plans: usize,
    /// Cancelled-plan probes to run after the load (in-process server only).
    #[arg(long, default_value_t = 0)]
    cancel_probes: usize,
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[derive(Default)]
struct Tally {
    plan: Vec<Duration>,
    evaluate: Vec<Duration>,
    errors: BTreeMap<String, usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let metrics = Arc::new(kyphoplan_server::Metrics::default());
    let _data;
    let (url, pid) = match &args.server {
        Some(url) => (url.clone(), args.server_pid),
        None => {
            let data = tempfile::tempdir()?;
            let mut config = kyphoplan_server::Config::with_data_dir(data.path());
            config.max_concurrent_plans = args.max_concurrent_plans;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let m = metrics.clone();
            tokio::spawn(kyphoplan_server::serve_with_metrics(
                config,
                m,
                listener,
                std::future::pending(),
            ));
            _data = data;
            (format!("http://{addr}"), None)
        }
    };
    let options = ConnectOptions {
        token: args.token.clone(),
        ..Default::default()
    };
    let mut setup = Client::connect_with(&url, &options).await?;
    let anatomy = synth::spine(&[Level::L3], &Pose::identity(), false).0;
    let anatomy_id = setup.upload_anatomy(&anatomy).await?.anatomy_id;
    let request = PlanRequest::new(
        None,
        Instrument::contract_default(),
        Safety::contract_default(),
    )?;
    let first = setup.create_plan(&anatomy_id, &request).await?;
    let (entry, target) = first.plan.levels[0]
        .sides
        .iter()
        .find_map(|s| {
            s.trajectory
                .as_ref()
                .map(|t| (t.bone_entry_mm, t.target_mm))
        })
        .unwrap_or(([20.0, 40.0, 0.0], [0.0, 0.0, 0.0]));
    // Warm-up done: the baseline RSS includes the prepared anatomy and the runtime.
    let rss_before = rss_kib(pid);

    let remaining = Arc::new(AtomicUsize::new(args.calls));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop_at = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut client = Client::connect_with(&url, &options).await?;
        let (remaining, tally) = (remaining.clone(), tally.clone());
        let (id, request) = (anatomy_id.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = c;
            while Instant::now() < stop_at
                && remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                    .is_ok()
            {
                let t0 = Instant::now();
                let plan = n % 2 == 0;
                let r = if plan {
                    client.create_plan(&id, &request).await.map(|_| ())
                } else {
                    client
                        .evaluate(
                            &id,
                            Level::L3,
                            Side::Left,
                            entry,
                            target,
                            &Instrument::contract_default(),
                            &Safety::contract_default(),
                        )
                        .await
                        .map(|_| ())
                };
                let dt = t0.elapsed();
                let mut t = tally.lock().unwrap();
                match r {
                    Ok(()) if plan => t.plan.push(dt),
                    Ok(()) => t.evaluate.push(dt),
                    Err(ClientError::Status(s)) => {
                        *t.errors.entry(format!("{:?}", s.code())).or_default() += 1
                    }
                    Err(e) => *t.errors.entry(format!("client: {e}")).or_default() += 1,
                }
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let wall = started.elapsed();
    let rss_after = rss_kib(pid);
    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    t.plan.sort();
    t.evaluate.sort();
    let ok = t.plan.len() + t.evaluate.len();
    let errors: usize = t.errors.values().sum();
    println!(
        "{} clients, {} calls in {:.1} s ({:.0} calls/s), {} ok, {} refused or failed",
        args.clients,
        ok + errors,
        wall.as_secs_f64(),
        (ok + errors) as f64 / wall.as_secs_f64(),
        ok,
        errors
    );
    for (name, v) in [("CreatePlan", &t.plan), ("EvaluateTrajectory", &t.evaluate)] {
        println!(
            "{name:<20} n={:<6} p50={:>8.1} ms  p99={:>8.1} ms  max={:>8.1} ms",
            v.len(),
            percentile(v, 0.5).as_secs_f64() * 1e3,
            percentile(v, 0.99).as_secs_f64() * 1e3,
            v.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
    for (code, n) in &t.errors {
        println!("error {code:<20} {n}");
    }
    let who = if pid.is_some() || args.server.is_none() {
        "server"
    } else {
        "(no --server-pid: this process)"
    };
    match (rss_before, rss_after) {
        (Some(b), Some(a)) => println!(
            "{who} RSS before {:.1} MiB, after {:.1} MiB ({:+.1} MiB)",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            (a as f64 - b as f64) / 1024.0
        ),
        _ => println!("RSS: unavailable"),
    }

    if args.cancel_probes > 0 && args.server.is_none() {
        let demo = synth::demo_anatomy();
        let demo_id = setup.upload_anatomy(&demo).await?.anatomy_id;
        let mut samples = Vec::new();
        for _ in 0..args.cancel_probes {
            let message = convert::create_plan_request_to_pb(
                pb::create_plan_request::Anatomy::AnatomyId(demo_id.clone()),
                &request,
            );
            let mut raw = setup.raw().clone();
            let mut stream = raw.stream_plan(message).await?.into_inner();
            let _first = stream.next().await;
            // Cancel: drop the stream (RST_STREAM); time until the run leaves the pool.
            let t0 = Instant::now();
            drop(stream);
            drop(raw);
            while metrics.plans_running.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_micros(200)).await;
                if t0.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
            samples.push(t0.elapsed());
        }
        samples.sort();
        println!(
            "cancel -> planner run returned: n={} p50={:.1} ms max={:.1} ms",
            samples.len(),
            percentile(&samples, 0.5).as_secs_f64() * 1e3,
            samples.last().unwrap().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
