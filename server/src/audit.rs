//! The audit trail (`--audit-log FILE`): one JSON line per call that touches a record (upload,
//! get, list, plan, evaluate, delete) and per retention purge, refused calls included.
//!
//! A line holds the time, the principal's name (never a token), the method, the ids of the
//! records, the outcome (a gRPC code name) and the duration; never mesh data, coordinates or
//! request contents:
//!
//! ```json
//! {"time_unix_ms":1767225600000,"principal":"alice","method":"GetPlan","plan_ids":["..."],"anatomy_ids":[],"outcome":"OK","duration_ms":0.41}
//! ```
//!
//! The file is opened for appending; every line is written with one `write` and `fsync`'d
//! before the call's answer goes out (a batch of one line). When a line would take the file
//! past `--audit-log-max-bytes`, the file is rotated first: FILE.(n) becomes FILE.(n+1) (up to
//! [`AUDIT_LOG_KEEP`] old files; the oldest is dropped) and FILE becomes FILE.1.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Code;

use crate::clock::Clock;

/// Rotated audit files kept (FILE.1 .. FILE.5).
pub const AUDIT_LOG_KEEP: usize = 5;

/// The records a call touched.
#[derive(Clone, Debug, Default)]
pub struct AuditIds {
    pub plan_ids: Vec<String>,
    pub anatomy_ids: Vec<String>,
}

impl AuditIds {
    pub fn plan(id: impl Into<String>) -> Self {
        AuditIds {
            plan_ids: vec![id.into()],
            anatomy_ids: Vec::new(),
        }
    }

    pub fn anatomy(id: impl Into<String>) -> Self {
        AuditIds {
            plan_ids: Vec::new(),
            anatomy_ids: vec![id.into()],
        }
    }
}

/// One audited call (its time is the audit log's clock when it is recorded).
pub struct AuditEntry<'a> {
    /// `None`: no authentication, or the call was refused before a principal was known.
    pub principal: Option<&'a str>,
    pub method: &'a str,
    pub ids: &'a AuditIds,
    pub outcome: Code,
    pub duration: Duration,
}

/// The gRPC name of a status code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl AuditEntry<'_> {
    /// The JSON line (without the newline).
    pub fn to_json(&self, time_unix_ms: u64) -> String {
        serde_json::json!({
            "time_unix_ms": time_unix_ms,
            "principal": self.principal,
            "method": self.method,
            "plan_ids": self.ids.plan_ids,
            "anatomy_ids": self.ids.anatomy_ids,
            "outcome": code_name(self.outcome),
            "duration_ms": self.duration.as_secs_f64() * 1e3,
        })
        .to_string()
    }
}

struct Open {
    file: File,
    len: u64,
}

/// The append-only audit file with size rotation.
pub struct AuditLog {
    clock: Arc<dyn Clock>,
    path: PathBuf,
    max_bytes: u64,
    open: Mutex<Open>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

fn open_append(path: &Path) -> std::io::Result<Open> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let len = file.metadata()?.len();
    Ok(Open { file, len })
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl AuditLog {
    /// Open (or create) `path` for appending; rotate when a line would take it past `max_bytes`
    /// (0: never rotate).
    pub fn open(path: &Path, max_bytes: u64, clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(AuditLog {
            clock,
            path: path.to_owned(),
            max_bytes,
            open: Mutex::new(open_append(path)?),
        })
    }

    /// Append and fsync one line. A failure is logged (the call itself is not failed: the
    /// record was already read or written).
    pub fn record(&self, entry: &AuditEntry<'_>) {
        let mut line = entry.to_json(self.clock.now_unix_ms());
        line.push('\n');
        if let Err(e) = self.append(line.as_bytes()) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if self.max_bytes > 0 && open.len > 0 && open.len + line.len() as u64 > self.max_bytes {
            for n in (1..AUDIT_LOG_KEEP).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
            *open = open_append(&self.path)?;
        }
        open.file.write_all(line)?;
        open.file.sync_data()?;
        open.len += line.len() as u64;
        Ok(())
    }
}

/// The audit log of a server, if it keeps one.
pub type Auditor = Option<Arc<AuditLog>>;

/// The gRPC method of a call (`GetPlan`), put in the request's extensions by [`TagMethod`], so
/// that a call refused before its handler (no valid token) is audited with its method.
#[derive(Clone, Debug)]
pub struct CalledMethod(pub Arc<str>);

/// Wraps a gRPC service and tags each request with its [`CalledMethod`].
#[derive(Clone, Debug)]
pub struct TagMethod<S> {
    inner: S,
}

impl<S> TagMethod<S> {
    pub fn new(inner: S) -> Self {
        TagMethod { inner }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for TagMethod<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method: Arc<str> = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .into();
        request.extensions_mut().insert(CalledMethod(method));
        self.inner.call(request)
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for TagMethod<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ids: &AuditIds) -> AuditEntry<'_> {
        AuditEntry {
            principal: Some("alice"),
            method: "GetPlan",
            ids,
            outcome: Code::NotFound,
            duration: Duration::from_micros(1500),
        }
    }

    #[test]
    fn a_line_has_every_field() {
        let ids = AuditIds::plan("p1");
        let v: serde_json::Value = serde_json::from_str(&entry(&ids).to_json(5)).unwrap();
        assert_eq!(v["time_unix_ms"], 5);
        assert_eq!(v["principal"], "alice");
        assert_eq!(v["method"], "GetPlan");
        assert_eq!(v["plan_ids"], serde_json::json!(["p1"]));
        assert_eq!(v["anatomy_ids"], serde_json::json!([]));
        assert_eq!(v["outcome"], "NOT_FOUND");
        assert!((v["duration_ms"].as_f64().unwrap() - 1.5).abs() < 1e-9);
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let ids = AuditIds::plan("p1");
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::ManualClock::new(1_000));
        let line_len = entry(&ids).to_json(1_000).len() as u64 + 1;
        // Two lines a file.
        let log = AuditLog::open(&path, 2 * line_len, clock.clone()).unwrap();
        for _ in 0..20 {
            log.record(&entry(&ids));
        }
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&path), 2);
        for n in 1..=AUDIT_LOG_KEEP {
            assert_eq!(lines(&rotated(&path, n)), 2, "file .{n}");
        }
        assert!(!rotated(&path, AUDIT_LOG_KEEP + 1).exists());
        // Reopening appends.
        drop(log);
        let log = AuditLog::open(&path, 0, clock).unwrap();
        log.record(&entry(&ids));
        assert_eq!(lines(&path), 3);
    }
}
