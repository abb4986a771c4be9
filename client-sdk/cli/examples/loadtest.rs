//! Load test: N concurrent clients send CreatePlan and EvaluateTrajectory calls to a server on
//! loopback (started in-process unless `--server URL`), bounded by a call count and a time limit;
//! reports latency p50/p99 per call, errors by status code, and the server's RSS before and
//! after. `--cancel-probes N` also measures how long a plan whose client cancelled, or whose
//! deadline (`grpc-timeout`) passed, keeps the planner's CPU (in-process server only: cancel or
//! deadline to `plans_running == 0`).
//!
//! ```text
//! cargo run --release -p kyphoplan-cli --example loadtest -- --clients 32 --calls 4000
//! cargo run --release -p kyphoplan-cli --example loadtest -- --max-concurrent-plans 2
//! cargo run --release -p kyphoplan-cli --example loadtest -- --server http://127.0.0.1:50051 --server-pid PID
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
    /// Use the server at URL instead of one started in-process (or the replicas URL,URL,...:
    /// each client spreads its calls over them).
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
    let _server;
    let (url, pid) = match &args.server {
        Some(url) => (url.clone(), args.server_pid),
        None => {
            let data = tempfile::tempdir()?;
            let mut config = kyphoplan_server::Config::with_data_dir(data.path());
            config.max_concurrent_plans = args.max_concurrent_plans;
            let server =
                kyphoplan_server::InProcessServer::start_with_metrics(config, metrics.clone())
                    .await?;
            let url = server.url();
            _data = data;
            _server = server;
            (url, None)
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
                    Err(ClientError::Status { code, .. }) => {
                        *t.errors.entry(format!("{code:?}")).or_default() += 1
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
        cancel_probes(&mut setup, &metrics, &request, args.cancel_probes).await?;
    }
    Ok(())
}

/// Time from `since` until no planning run is left on the pool (polled every 200 us).
async fn until_released(metrics: &kyphoplan_server::Metrics, since: Instant) -> Duration {
    while metrics.plans_running.load(Ordering::SeqCst) > 0
        && since.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    since.elapsed()
}

fn print_probe(what: &str, samples: &mut [Duration], stopped: u64) {
    samples.sort();
    println!(
        "{what:<34} n={} p50={:.1} ms max={:.1} ms (runs stopped by the server: {stopped})",
        samples.len(),
        percentile(samples, 0.5).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

/// `--cancel-probes N`: how long a planning run keeps the planner's CPU once its client is gone.
/// N StreamPlan calls cancelled after their first level (time from dropping the stream); N
/// CreatePlan calls whose `grpc-timeout` passes mid-plan, at 20 % .. 80 % of an uncancelled
/// plan (time from the deadline); N CreatePlan calls with an inline anatomy cancelled during its
/// preparation (time from dropping the call). Until the work has left the pool
/// (`plans_running == 0`, and `prepares_running == 0` for the last).
async fn cancel_probes(
    setup: &mut Client,
    metrics: &kyphoplan_server::Metrics,
    request: &PlanRequest,
    probes: usize,
) -> anyhow::Result<()> {
    let demo = synth::demo_anatomy();
    let demo_id = setup.upload_anatomy(&demo).await?.anatomy_id;
    let message = || {
        convert::create_plan_request_to_pb(
            pb::create_plan_request::Anatomy::AnatomyId(demo_id.clone()),
            request,
        )
    };
    // One uncancelled plan: how long the deadlines below may be.
    let t0 = Instant::now();
    let levels = setup
        .raw()
        .clone()
        .create_plan(message())
        .await?
        .into_inner()
        .levels
        .len();
    let full = t0.elapsed();
    println!(
        "cancel probes: demo anatomy ({} levels), uncancelled plan {:.1} ms",
        levels,
        full.as_secs_f64() * 1e3
    );

    let stopped_before = metrics.plans_cancelled.load(Ordering::SeqCst);
    let mut samples = Vec::new();
    for _ in 0..probes {
        let mut raw = setup.raw().clone();
        let mut stream = raw.stream_plan(message()).await?.into_inner();
        let _first = stream.next().await;
        // Cancel: drop the stream (RST_STREAM); time until the run leaves the pool.
        let t0 = Instant::now();
        drop(stream);
        drop(raw);
        samples.push(until_released(metrics, t0).await);
    }
    let stopped = metrics.plans_cancelled.load(Ordering::SeqCst) - stopped_before;
    print_probe("cancel -> planner run returned:", &mut samples, stopped);

    let stopped_before = metrics.plans_cancelled.load(Ordering::SeqCst);
    let mut samples = Vec::new();
    let mut codes = BTreeMap::<String, usize>::new();
    for i in 0..probes {
        let fraction = 0.2 + 0.6 * i as f64 / (probes.max(2) - 1) as f64;
        let timeout = full.mul_f64(fraction);
        let mut call = tonic::Request::new(message());
        call.set_timeout(timeout);
        let sent = Instant::now();
        let r = setup.raw().clone().create_plan(call).await;
        *codes
            .entry(match &r {
                Ok(_) => "ok".to_owned(),
                Err(s) => format!("{:?}", s.code()),
            })
            .or_default() += 1;
        // The server's deadline is no earlier than this one (it starts on receipt).
        let deadline = sent + timeout;
        if Instant::now() < deadline {
            tokio::time::sleep_until(deadline.into()).await;
        }
        samples.push(until_released(metrics, deadline).await);
    }
    let stopped = metrics.plans_cancelled.load(Ordering::SeqCst) - stopped_before;
    print_probe("deadline -> planner run returned:", &mut samples, stopped);
    println!("deadline probes answered: {codes:?}");

    // CreatePlan with an inline anatomy (renamed per probe: never cached) cancelled 0 .. 80 ms
    // into its preparation.
    let stopped_before = metrics.prepares_cancelled.load(Ordering::SeqCst);
    let mut samples = Vec::new();
    for i in 0..probes {
        let mut anatomy = demo.clone();
        anatomy.name = format!("cancel probe {i}");
        let message = convert::create_plan_request_to_pb(
            pb::create_plan_request::Anatomy::InlineAnatomy(convert::anatomy_to_pb(&anatomy)),
            request,
        );
        let mut raw = setup.raw().clone();
        let call = tokio::spawn(async move { raw.create_plan(message).await });
        let wait = Instant::now();
        while metrics.prepares_running.load(Ordering::SeqCst) == 0
            && wait.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(20 * (i % 5) as u64)).await;
        let t0 = Instant::now();
        call.abort();
        let _ = call.await;
        while metrics.prepares_running.load(Ordering::SeqCst) > 0
            && t0.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples.push(until_released(metrics, t0).await);
    }
    let stopped = metrics.prepares_cancelled.load(Ordering::SeqCst) - stopped_before;
    print_probe("cancel in preparation -> released:", &mut samples, stopped);
    Ok(())
}
