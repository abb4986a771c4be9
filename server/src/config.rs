//! Server configuration: flags, each with an environment variable, and defaults that work on a
//! laptop.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Largest gRPC message, bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most triangles of one anatomy.
pub const DEFAULT_MAX_TRIANGLES: u64 = 8_000_000;
/// Most voxels of one uploaded label map (512 x 512 x 512).
pub const DEFAULT_MAX_LABEL_VOXELS: u64 = 512 * 512 * 512;
/// Planning runs at the same time.
pub const DEFAULT_MAX_CONCURRENT_PLANS: usize = 4;
/// Planning runs at the same time per authenticated client.
pub const DEFAULT_MAX_PLANS_PER_CLIENT: usize = 2;
/// Prepared anatomies kept in memory.
pub const DEFAULT_PREPARED_CACHE_ENTRIES: usize = 8;
/// Seconds between two runs of the retention purge.
pub const DEFAULT_RETENTION_CHECK_SECS: u64 = 3600;
/// Milliseconds between two checks of the store by the health service.
pub const DEFAULT_HEALTH_CHECK_MS: u64 = 1000;
/// Size at which the audit log is rotated, bytes.
pub const DEFAULT_AUDIT_LOG_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// `kyphoplan-server` flags. Every flag can also be given by the environment variable named.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "kyphoplan-server",
    version,
    about = "kyphoplan gRPC planning server"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "KYPHOPLAN_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "KYPHOPLAN_DATA_DIR", default_value = "./kyphoplan-data")]
    pub data_dir: PathBuf,
    /// Keep records in this PostgreSQL database (`postgres://USER:PASSWORD@HOST:PORT/DB`)
    /// instead of the data directory: several replicas on one database serve the same plans
    /// and anatomies. Its schema is created (or migrated) at start.
    #[arg(
        long,
        env = "KYPHOPLAN_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub store: Option<String>,
    /// Largest gRPC message accepted or sent, bytes (uploads are chunked below it).
    #[arg(long, env = "KYPHOPLAN_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Most triangles of one uploaded (or inline) anatomy, all meshes together. Vertices are
    /// limited to three times this number.
    #[arg(long, env = "KYPHOPLAN_MAX_TRIANGLES", default_value_t = DEFAULT_MAX_TRIANGLES)]
    pub max_triangles: u64,
    /// Most voxels of one uploaded (or inline) NIfTI label map; its file may hold at most 8
    /// bytes a voxel plus 1 MiB. Its meshes count against `--max-triangles`.
    #[arg(long, env = "KYPHOPLAN_MAX_LABEL_VOXELS", default_value_t = DEFAULT_MAX_LABEL_VOXELS)]
    pub max_label_voxels: u64,
    /// Planning runs at the same time; further CreatePlan/StreamPlan calls get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "KYPHOPLAN_MAX_CONCURRENT_PLANS", default_value_t = DEFAULT_MAX_CONCURRENT_PLANS)]
    pub max_concurrent_plans: usize,
    /// Threads of the planner's rayon pool (0: one per core).
    #[arg(long, env = "KYPHOPLAN_PLANNER_THREADS", default_value_t = 0)]
    pub planner_threads: usize,
    /// Prepared anatomies kept in memory (least recently used are dropped; they are prepared
    /// again from the store when needed).
    #[arg(long, env = "KYPHOPLAN_PREPARED_CACHE", default_value_t = DEFAULT_PREPARED_CACHE_ENTRIES)]
    pub prepared_cache_entries: usize,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "KYPHOPLAN_LOG_JSON")]
    pub log_json: bool,
    /// Serve TLS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(
        long,
        env = "KYPHOPLAN_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(
        long,
        env = "KYPHOPLAN_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients with a certificate signed by this CA (PEM). Needs
    /// `--tls-cert`.
    #[arg(
        long,
        env = "KYPHOPLAN_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Require `authorization: Bearer TOKEN` on every call but health: one token a line,
    /// `NAME:TOKEN` or `TOKEN` (named by a hash prefix), `#` comments. Plans and anatomies are
    /// visible only to the name that made them.
    #[arg(long, env = "KYPHOPLAN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Planning runs at the same time per authenticated client (0: only the server-wide
    /// `--max-concurrent-plans`); further calls get RESOURCE_EXHAUSTED.
    #[arg(long, env = "KYPHOPLAN_MAX_PLANS_PER_CLIENT", default_value_t = DEFAULT_MAX_PLANS_PER_CLIENT)]
    pub max_plans_per_client: usize,
    /// Purge plans created, and anatomies last uploaded, more than this many days ago (a
    /// background task, at start and every `--retention-check-secs`; purges are logged and
    /// audited). Unset: records are kept until deleted.
    #[arg(long, env = "KYPHOPLAN_RETENTION_DAYS", value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: Option<u32>,
    /// Seconds between two runs of the retention purge.
    #[arg(long, env = "KYPHOPLAN_RETENTION_CHECK_SECS", default_value_t = DEFAULT_RETENTION_CHECK_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_check_secs: u64,
    /// Append one JSON line per call that touches a record (and per purge) to this file,
    /// fsync'd line by line; see the README for the fields.
    #[arg(long, env = "KYPHOPLAN_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit log when a line would take it past this size: FILE becomes FILE.1,
    /// FILE.1 FILE.2 ... up to FILE.5 (0: never rotate).
    #[arg(long, env = "KYPHOPLAN_AUDIT_LOG_MAX_BYTES", default_value_t = DEFAULT_AUDIT_LOG_MAX_BYTES)]
    pub audit_log_max_bytes: u64,
    /// Milliseconds between two checks that the store answers: while it does not (a
    /// PostgreSQL store unreachable), gRPC health reports NOT_SERVING, so that a load balancer
    /// sends the calls to other replicas; SERVING again once it answers.
    #[arg(long, env = "KYPHOPLAN_HEALTH_CHECK_MS", default_value_t = DEFAULT_HEALTH_CHECK_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub health_check_ms: u64,
}

impl Config {
    /// The documented defaults with another data directory (for tests and embedding). Unlike
    /// parsing, this reads no environment variable.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: data_dir.into(),
            store: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_triangles: DEFAULT_MAX_TRIANGLES,
            max_label_voxels: DEFAULT_MAX_LABEL_VOXELS,
            max_concurrent_plans: DEFAULT_MAX_CONCURRENT_PLANS,
            planner_threads: 0,
            prepared_cache_entries: DEFAULT_PREPARED_CACHE_ENTRIES,
            log_json: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            token_file: None,
            max_plans_per_client: DEFAULT_MAX_PLANS_PER_CLIENT,
            retention_days: None,
            retention_check_secs: DEFAULT_RETENTION_CHECK_SECS,
            audit_log: None,
            audit_log_max_bytes: DEFAULT_AUDIT_LOG_MAX_BYTES,
            health_check_ms: DEFAULT_HEALTH_CHECK_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_literal_defaults_are_the_flag_defaults() {
        let parsed = Config::try_parse_from(["kyphoplan-server", "--data-dir", "x"]).unwrap();
        let literal = Config::with_data_dir("x");
        // Only comparable when no KYPHOPLAN_* variable is set in the test environment (but the
        // tests' own KYPHOPLAN_TEST_*, which .ci/run sets and no flag reads).
        if std::env::vars()
            .all(|(k, _)| !k.starts_with("KYPHOPLAN_") || k.starts_with("KYPHOPLAN_TEST_"))
        {
            assert_eq!(format!("{parsed:?}"), format!("{literal:?}"));
        }
    }
}
