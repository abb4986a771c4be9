//! The PostgreSQL store's database restarted under load (issue 16): its own test binary, as the
//! restart takes the tests' whole cluster down (the tests of this binary take turns). Clients
//! plan without pause through a replica; the database is restarted (`pg_ctl restart -m fast`,
//! as `.ci/run` started it: the variables `KYPHOPLAN_TEST_PG_CTL`, `KYPHOPLAN_TEST_PG_DATA`,
//! `KYPHOPLAN_TEST_PG_USER`). Meanwhile every failed call is UNAVAILABLE (never INTERNAL, never a
//! panic); after it the replica plans again on new connections, and every acknowledged plan is
//! there. And gRPC health: NOT_SERVING while the database is stopped, SERVING once it is back.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kyphoplan_client::{ClientError, Code};
use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::math::Pose;
use kyphoplan_planner::synth;
use kyphoplan_tests::default_request;
use kyphoplan_tests::postgres::fresh_database;
use kyphoplan_tests::server::TestServer;
use tonic_health::pb::health_check_response::ServingStatus;

/// The tests of this binary stop or restart the whole cluster: one at a time.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `pg_ctl -D DATA ARGS` as the cluster's user; false without the variables.
fn pg_ctl(args: &[&str]) -> bool {
    let (Ok(pg_ctl), Ok(data)) = (
        std::env::var("KYPHOPLAN_TEST_PG_CTL"),
        std::env::var("KYPHOPLAN_TEST_PG_DATA"),
    ) else {
        return false;
    };
    let user = std::env::var("KYPHOPLAN_TEST_PG_USER").unwrap_or_default();
    let mut command = if user.is_empty() || std::env::var("USER").as_deref() == Ok(&user) {
        Command::new(&pg_ctl)
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", &user, "--", &pg_ctl]);
        c
    };
    let status = command
        .args(["-D", &data])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("pg_ctl runs");
    assert!(status.success(), "pg_ctl {args:?} failed");
    true
}

/// `pg_ctl -m fast -w restart`; false without the variables.
fn restart_database() -> bool {
    pg_ctl(&["-m", "fast", "-w", "restart"])
}

/// `pg_ctl -m fast -w stop`; the options it ran with (`postmaster.opts`, for [`start_database`]).
fn stop_database() -> String {
    let data = std::env::var("KYPHOPLAN_TEST_PG_DATA").expect("KYPHOPLAN_TEST_PG_DATA");
    let opts = std::fs::read_to_string(std::path::Path::new(&data).join("postmaster.opts"))
        .expect("the cluster's postmaster.opts");
    assert!(pg_ctl(&["-m", "fast", "-w", "stop"]));
    // The server's path, then its quoted arguments: pg_ctl passes `-o` to a shell.
    opts.trim()
        .split_once(' ')
        .map(|(_, args)| args.to_owned())
        .unwrap_or_default()
}

/// `pg_ctl -w start` with the options of [`stop_database`], logging beside the data directory.
fn start_database(options: &str) {
    let data = std::env::var("KYPHOPLAN_TEST_PG_DATA").expect("KYPHOPLAN_TEST_PG_DATA");
    let log = std::path::Path::new(&data).with_file_name("restart.log");
    assert!(pg_ctl(&[
        "-w",
        "-l",
        &log.to_string_lossy(),
        "-o",
        options,
        "start"
    ]));
}

/// Whether .ci/run started the tests' cluster (and can be stopped); says SKIPPED otherwise,
/// panics under CI=true.
fn cluster_controllable() -> bool {
    if std::env::var("KYPHOPLAN_TEST_PG_CTL").is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "KYPHOPLAN_TEST_PG_CTL is not set: .ci/run sets it with the cluster it starts"
    );
    eprintln!("SKIPPED: the tests' cluster was not started by .ci/run (no KYPHOPLAN_TEST_PG_CTL)");
    false
}

/// The server's health ("" and the planning service), polled until both are `want` (120 s).
async fn await_health(url: &str, want: ServingStatus) -> Duration {
    let started = Instant::now();
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    loop {
        let mut all = true;
        for service in ["", "kyphoplan.v1.PlanningService"] {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            all &= status == want as i32;
        }
        if all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "health did not become {want:?} in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: KYPHOPLAN_TEST_POSTGRES (.ci/run starts a throw-away cluster)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_database_is_down() {
    // Before the database is made: the other test may have the cluster down.
    let _turn = CLUSTER.lock().await;
    let Some(url) = fresh_database("health_while_the_database_is_down") else {
        return;
    };
    if !cluster_controllable() {
        return;
    }
    let server = TestServer::start(|c| {
        c.store = Some(url.clone());
        c.health_check_ms = 50;
    })
    .await;
    await_health(&server.url(), ServingStatus::Serving).await;
    let options = tokio::task::spawn_blocking(stop_database).await.unwrap();
    let took = await_health(&server.url(), ServingStatus::NotServing).await;
    eprintln!("NOT_SERVING {took:?} after the database stopped");
    // What the load balancer is spared: a call now would fail UNAVAILABLE.
    let mut client = server.client().await;
    let anatomy = synth::spine(&[Level::L2], &Pose::identity(), false).0;
    assert_eq!(
        client.upload_anatomy(&anatomy).await.unwrap_err().code(),
        Some(Code::Unavailable)
    );
    tokio::task::spawn_blocking(move || start_database(&options))
        .await
        .unwrap();
    let took = await_health(&server.url(), ServingStatus::Serving).await;
    eprintln!("SERVING {took:?} after the database started");
    client.upload_anatomy(&anatomy).await.unwrap();
    server.shutdown().await;
}

#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: KYPHOPLAN_TEST_POSTGRES (.ci/run starts a throw-away cluster)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restarted_under_load_answers_unavailable_then_serves_again() {
    // Before the database is made: the other test may have the cluster down.
    let _turn = CLUSTER.lock().await;
    let Some(url) = fresh_database("a_database_restarted_under_load") else {
        return;
    };
    if !cluster_controllable() {
        return;
    }
    let server = TestServer::start(|c| c.store = Some(url.clone())).await;
    let mut client = server.client().await;
    let anatomy = synth::spine(&[Level::L2], &Pose::identity(), false).0;
    let anatomy_id = client.upload_anatomy(&anatomy).await.unwrap().anatomy_id;

    let acked: Arc<Mutex<Vec<kyphoplan_client::StoredPlan>>> = Arc::default();
    let failures: Arc<Mutex<Vec<ClientError>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let mut client = server.client().await;
        let (acked, failures, stop, id) = (
            acked.clone(),
            failures.clone(),
            stop.clone(),
            anatomy_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.create_plan(&id, &default_request(None)).await {
                    Ok(plan) => acked.lock().unwrap().push(plan),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "no progress in 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restart = Instant::now();
    tokio::task::spawn_blocking(restart_database).await.unwrap();
    eprintln!("restarted in {:?}", restart.elapsed());
    let after_restart = acked.lock().unwrap().len();
    // Plans are made again after the restart.
    while acked.lock().unwrap().len() < after_restart + 3 {
        assert!(
            Instant::now() < deadline,
            "no plan acknowledged after the restart: {:?}",
            failures.lock().unwrap().last().map(ToString::to_string)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "planning again {:?} after the restart began",
        restart.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    for failure in failures.lock().unwrap().iter() {
        assert_eq!(
            failure.code(),
            Some(Code::Unavailable),
            "a call failed otherwise than UNAVAILABLE: {failure}"
        );
    }
    let acked = acked.lock().unwrap().clone();
    for plan in &acked {
        let got = client.get_plan(&plan.plan_id).await.unwrap();
        assert_eq!(got.plan, plan.plan, "plan {} changed", plan.plan_id);
    }
    {
        let failures = failures.lock().unwrap();
        eprintln!(
            "{} plans acknowledged, {} calls UNAVAILABLE during the restart \
             (first: {:?}, last: {:?})",
            acked.len(),
            failures.len(),
            failures.first().map(ToString::to_string),
            failures.last().map(ToString::to_string),
        );
    }
    server.shutdown().await;
}
