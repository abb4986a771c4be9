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
/// async code); the first column of the first row, as i64, if any. Panics on an error.
pub fn run_sql(url: &str, sql: &str) -> Option<i64> {
    first_column(url, sql).first().and_then(|v| v.parse().ok())
}

/// The first column of every row `sql` returns (as text), run as [`run_sql`] runs it.
fn first_column(url: &str, sql: &str) -> Vec<String> {
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
            rows.iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect()
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
    Some(create_database(&base, test))
}

/// The variable naming a tablespace of the tests' cluster on a small file system of its own
/// (`.ci/run` mounts an 8 MiB tmpfs for it): the full-store tests fill it.
pub const SMALL_TABLESPACE_ENV: &str = "KYPHOPLAN_TEST_PG_SMALL_TABLESPACE";

/// A new empty database for `test` whose tables go to the small tablespace (its
/// `default_tablespace`; catalogs and WAL stay on the cluster's disk); its URL and the
/// tablespace's name. `None` after saying the test is skipped without a cluster or without the
/// tablespace; panics under `CI=true` without them.
pub fn fresh_database_on_small_tablespace(test: &str) -> Option<(String, String)> {
    let base = cluster(test)?;
    let tablespace = match std::env::var(SMALL_TABLESPACE_ENV) {
        Ok(t) if !t.is_empty() => t,
        _ if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "{SMALL_TABLESPACE_ENV} is not set: under CI=true the full-store tests must run \
             (.ci/run, as root, makes the tablespace on a small tmpfs)"
        ),
        _ => {
            eprintln!(
                "SKIPPED: {test}: no tablespace on a small file system ({SMALL_TABLESPACE_ENV} \
                 not set; .ci/run makes one when run as root)"
            );
            return None;
        }
    };
    // An earlier run that failed before dropping its database left it in the small
    // tablespace: drop those first, or there is no room.
    let prefix = database_prefix(test);
    let admin = format!("{base}/postgres");
    for stale in first_column(
        &admin,
        &format!("SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}')"),
    ) {
        run_sql(&admin, &format!("DROP DATABASE \"{stale}\" WITH (FORCE)"));
    }
    let url = create_database(&base, test);
    let name = url.rsplit('/').next().expect("a database name");
    run_sql(
        &format!("{base}/postgres"),
        &format!("ALTER DATABASE \"{name}\" SET default_tablespace = \"{tablespace}\""),
    );
    Some((url, tablespace))
}

/// Drop the database of `url` (ending its connections first).
pub fn drop_database(url: &str) {
    let (base, name) = url.rsplit_once('/').expect("a database URL");
    run_sql(
        &format!("{base}/postgres"),
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    );
}

/// Create a database named after `test` in the cluster `base`; its URL.
fn create_database(base: &str, test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!(
        "{}{}_{}",
        database_prefix(test),
        std::process::id(),
        nanos % 1_000_000_000
    );
    run_sql(
        &format!("{base}/postgres"),
        &format!("CREATE DATABASE \"{name}\""),
    );
    format!("{base}/{name}")
}

/// How the names of `test`'s databases begin: `kp_`, the test's name (lower case, 30
/// characters at most, `_` for the rest), `_`.
fn database_prefix(test: &str) -> String {
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
    format!("kp_{tag}_")
}
