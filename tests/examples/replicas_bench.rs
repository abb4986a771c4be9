//! The figures of BENCHMARKS.md, "Replicas on PostgreSQL" (issue 16): store latency per call,
//! redb vs PostgreSQL, then CreatePlan throughput and p99 with 1 and 2 in-process replicas on
//! one PostgreSQL database, each with one planner thread, driven by clients of all replicas.
//!
//! `KYPHOPLAN_TEST_POSTGRES=postgres://USER@HOST:PORT cargo run --release -p kyphoplan-tests
//! --example replicas_bench [SECONDS]` (a throw-away cluster: it makes a database in it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kyphoplan_client::Client;
use kyphoplan_planner::anatomy::Level;
use kyphoplan_planner::synth;
use kyphoplan_proto::convert;
use kyphoplan_server::pg_store::PgStore;
use kyphoplan_server::store::{RedbStore, Store};
use kyphoplan_tests::postgres::fresh_database;
use kyphoplan_tests::server::TestServer;
use prost::Message;

fn quantile(sorted_ms: &[f64], q: f64) -> f64 {
    sorted_ms[((sorted_ms.len() - 1) as f64 * q).round() as usize]
}

/// Median and p99 of `n` runs of `f`, ms.
fn time(n: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..n)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (quantile(&ms, 0.5), quantile(&ms, 0.99))
}

fn store_figures(name: &str, store: &dyn Store, plan: &[u8], anatomy: &[u8]) {
    let n = 300;
    let row = |call: &str, (p50, p99): (f64, f64), runs: usize| {
        println!("| {name} | {call} | {p50:.3} | {p99:.3} | {runs} |");
    };
    row(
        "put_plan",
        time(n, |i| {
            store
                .put_plan(&format!("p{i:05}"), plan, Some("bench"), i as u64, "a")
                .unwrap()
        }),
        n,
    );
    row(
        "plan",
        time(n, |i| {
            store
                .plan(&format!("p{i:05}"), Some("bench"))
                .unwrap()
                .unwrap();
        }),
        n,
    );
    row(
        "plans_after (page of 50)",
        time(n, |i| {
            store
                .plans_after(&format!("p{:05}", i % 200), 50, Some("bench"))
                .unwrap();
        }),
        n,
    );
    let m = 20;
    row(
        &format!("put_anatomy ({:.1} MB)", anatomy.len() as f64 / 1e6),
        time(m, |i| {
            store
                .put_anatomy(&format!("a{i}"), anatomy, b"meta", Some("bench"), 1)
                .unwrap()
        }),
        m,
    );
    row(
        "anatomy (the same)",
        time(m, |i| {
            store
                .anatomy(&format!("a{i}"), Some("bench"))
                .unwrap()
                .unwrap();
        }),
        m,
    );
}

async fn throughput(urls: &str, clients: usize, seconds: f64) -> (f64, f64, f64, usize) {
    let mut client = Client::connect(urls).await.unwrap();
    let anatomy = Arc::new(synth::demo_anatomy());
    let id = client
        .upload_anatomy_shared(anatomy)
        .await
        .unwrap()
        .anatomy_id;
    let request = Arc::new(kyphoplan_tests::default_request(Some(vec![Level::L3])));
    // Warm every replica's prepared-anatomy cache.
    for _ in 0..client.replicas() {
        client.create_plan(&id, &request).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (urls, id, request) = (urls.to_owned(), id.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&urls).await.unwrap();
            let mut ms = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                client.create_plan(&id, &request).await.unwrap();
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ms
        }));
    }
    let mut ms = Vec::new();
    for t in tasks {
        ms.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    (
        ms.len() as f64 / elapsed,
        quantile(&ms, 0.5),
        quantile(&ms, 0.99),
        ms.len(),
    )
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map_or(10.0, |s| s.parse().expect("SECONDS"));
    let Some(url) = fresh_database("replicas_bench") else {
        return;
    };
    let demo = synth::demo_anatomy();
    let anatomy = convert::anatomy_to_pb(&demo).encode_to_vec();
    let plan_bytes = {
        let prepared = kyphoplan_planner::prepare::PreparedAnatomy::prepare(
            demo.clone(),
            &kyphoplan_planner::prepare::PrepareOptions::standard(),
        )
        .unwrap();
        let plan = kyphoplan_planner::planning::plan(
            &prepared,
            &kyphoplan_tests::default_request(Some(vec![Level::L3])),
        )
        .unwrap();
        convert::plan_to_pb(&plan).encode_to_vec()
    };
    println!(
        "plan {} bytes, anatomy {} bytes",
        plan_bytes.len(),
        anatomy.len()
    );
    println!("| store | call | median ms | p99 ms | runs |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let dir = tempfile::tempdir().unwrap();
    store_figures(
        "redb",
        &RedbStore::open(dir.path()).unwrap(),
        &plan_bytes,
        &anatomy,
    );
    store_figures(
        "PostgreSQL",
        &PgStore::connect(&url).unwrap(),
        &plan_bytes,
        &anatomy,
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("| replicas | clients | plans/s | median ms | p99 ms | plans |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
        for replicas in [1, 2] {
            let db = fresh_database("replicas_bench_load").unwrap();
            let mut servers = Vec::new();
            for _ in 0..replicas {
                servers.push(
                    TestServer::start(|c| {
                        c.store = Some(db.clone());
                        c.planner_threads = 1;
                        c.max_concurrent_plans = 16;
                    })
                    .await,
                );
            }
            let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
            for clients in [2, 4] {
                let (rate, p50, p99, n) = throughput(&urls.join(","), clients, seconds).await;
                println!("| {replicas} | {clients} | {rate:.1} | {p50:.1} | {p99:.1} | {n} |");
            }
            for s in servers {
                s.shutdown().await;
            }
        }
    });
}
