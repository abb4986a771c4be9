//! The PostgreSQL of the tests: `KYPHOPLAN_TEST_POSTGRES` names a throw-away cluster
//! (`postgres://USER@HOST:PORT`, no database: `.ci/run` starts one and sets it), in which each
//! test makes a database of its own. Without it (and without `CI=true`) the tests that need it
//! are ignored (`cfg(test_postgres)`, set by the build script); if one is run anyway it says it
//! was skipped. Under `CI=true` they run and fail without a cluster.

use std::str::FromStr;

/// The variable naming the tests' cluster.
pub const ENV: &str = "KYPHOPLAN_TEST_POSTGRES";

/// The cluster's URL (without a database), or `None` after saying the test `what` is skipped.
/// Panics under `CI=true` without one.
pub fn cluster(what: &str) -> Option<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.is_empty() => Some(url.trim_end_matches('/').to_owned()),
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{ENV} is not set: under CI=true the PostgreSQL tests must run \
             (.ci/run starts a throw-away cluster and sets it)"
        ),
        _ => {
            eprintln!("SKIPPED: {what}: no PostgreSQL ({ENV} not set; .ci/run starts one)");
            None
        }
    }
}

/// Run `sql` on a connection of its own to `url` (from a thread of its own: callable from
/// async code); the first column of the first row, as i64, if any.
fn run_sql(url: &str, sql: &str) -> Option<i64> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let config = tokio_postgres::Config::from_str(&url).expect("the cluster URL parses");
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("cannot reach the tests' PostgreSQL at {url}: {e}"));
            tokio::spawn(connection);
            let rows = client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
                _ => None,
            })
        })
    })
    .join()
    .expect("running SQL on the tests' PostgreSQL")
}

/// End every other connection to the database of `url` (what a database restart does to a
/// replica's pool); how many were ended.
pub fn terminate_connections(url: &str) -> i64 {
    run_sql(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .unwrap_or(0)
}

/// A new empty database for `test` in the tests' cluster; its URL. `None` (skipped) without a
/// cluster. Callable from async code (it works on a thread of its own).
pub fn fresh_database(test: &str) -> Option<String> {
    let base = cluster(test)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tag: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let name = format!("kp_{tag}_{}_{}", std::process::id(), nanos % 1_000_000_000);
    run_sql(
        &format!("{base}/postgres"),
        &format!("CREATE DATABASE \"{name}\""),
    );
    Some(format!("{base}/{name}"))
}
