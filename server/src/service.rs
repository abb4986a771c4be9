//! The `kyphoplan.v1.PlanningService` implementation.
//!
//! CPU work (preparation, planning, evaluation) runs on a dedicated rayon pool; handlers spawn
//! onto it and await a oneshot. A planning run and a preparation poll a `Stop`: an
//! `AtomicBool` set when the call is cancelled (the response future or stream is dropped) and
//! the call's deadline (`grpc-timeout`), so neither keeps burning cores for a client that is
//! gone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kyphoplan_planner::anatomy::AnatomyInput;
use kyphoplan_planner::error::InputError;
use kyphoplan_planner::plan::LevelPlan;
use kyphoplan_planner::planning::{self, PlanControl, PlanError};
use kyphoplan_planner::prepare::{PrepareOptions, PreparedAnatomy};
use kyphoplan_proto::convert;
use kyphoplan_proto::pb;
use kyphoplan_proto::pb::planning_service_server::PlanningService;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::audit::{AuditEntry, AuditIds, AuditLog, Auditor};
use crate::auth::Principal;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::error::ServiceError;
use crate::labelmap::{self, Meshed};
use crate::store::Store;
use crate::upload::{SizeLimit, UploadAssembly};

/// Counters of the planning runs, for operators and tests.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Runs executing on the pool right now.
    pub plans_running: AtomicUsize,
    pub plans_completed: AtomicU64,
    /// Runs stopped because the client went away or the deadline passed.
    pub plans_cancelled: AtomicU64,
    pub anatomies_prepared: AtomicU64,
    /// Preparations executing on the pool right now (upload, inline anatomy, cache miss).
    pub prepares_running: AtomicUsize,
    /// Preparations stopped because the client went away or the deadline passed.
    pub prepares_cancelled: AtomicU64,
    /// Runs of the retention purge finished (with or without records to purge).
    pub purge_runs: AtomicU64,
    /// Plans and anatomies removed by the retention purge.
    pub records_purged: AtomicU64,
}

/// A small LRU of prepared anatomies.
struct PreparedCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (u64, Arc<PreparedAnatomy>)>,
}

impl PreparedCache {
    fn get(&mut self, id: &str) -> Option<Arc<PreparedAnatomy>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(id).map(|(used, p)| {
            *used = tick;
            p.clone()
        })
    }

    fn remove(&mut self, id: &str) {
        self.entries.remove(id);
    }

    fn insert(&mut self, id: String, prepared: Arc<PreparedAnatomy>) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&id) {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(id, (self.tick, prepared));
    }
}

struct Inner {
    config: Config,
    store: Box<dyn Store>,
    pool: rayon::ThreadPool,
    plan_slots: Arc<Semaphore>,
    /// Plans running on the pool at once: one per pool thread, granted first come, first
    /// served. Without it every admitted plan is on the pool together, and rayon's
    /// work-stealing (a thread waiting inside one plan picks up another) finishes them in no
    /// particular order, which stretches the tail latency.
    run_gate: Arc<Semaphore>,
    cache: Mutex<PreparedCache>,
    metrics: Arc<Metrics>,
    plan_counter: AtomicU64,
    /// Random per server process (the OS-seeded keys of std's hasher): with the time, counter
    /// and process id, it keeps plan ids unique across replicas writing one store.
    id_nonce: u64,
    /// Planning slots per principal (`--max-plans-per-client`), made on first use.
    client_slots: Mutex<HashMap<Principal, Arc<Semaphore>>>,
    clock: Arc<dyn Clock>,
    audit: Auditor,
}

/// Who may see a record: `None` without authentication (everything), else the principal.
type Owner = Option<Principal>;

fn owner_of<T>(request: &Request<T>) -> Owner {
    request.extensions().get::<Principal>().cloned()
}

fn owner_name(owner: &Owner) -> Option<&str> {
    owner.as_ref().map(Principal::name)
}

/// The slots a planning run holds, one of the server's and, with authentication, one of its
/// client's, and that client (who will own the plan). The slots free when the run ends.
struct PlanPermit {
    owner: Owner,
    _server: OwnedSemaphorePermit,
    _client: Option<OwnedSemaphorePermit>,
}

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Planning {
    inner: Arc<Inner>,
}

/// Sets the flag when dropped: held by the response future or stream of a call, so that the
/// planning run sees the client going away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// When a call's CPU work (preparation, planning) stops: the client went away (the flag of its
/// [`CancelOnDrop`]) or the call's deadline passed. Polled by the planner between steps.
#[derive(Clone)]
struct Stop {
    cancelled: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Stop {
    /// A stop for a call, and the guard that sets it when the call's future or stream is dropped.
    fn for_call(deadline: Option<Instant>) -> (Stop, CancelOnDrop) {
        let cancelled = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop(cancelled.clone());
        (
            Stop {
                cancelled,
                deadline,
            },
            guard,
        )
    }

    fn stopped(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Why the work stopped.
    fn error(&self) -> ServiceError {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            ServiceError::DeadlineExceeded
        } else {
            ServiceError::Cancelled
        }
    }
}

/// Tonic answers an expired `grpc-timeout` itself (as CANCELLED) when its timer fires; answer
/// DEADLINE_EXCEEDED a little earlier so the client gets the precise code. Tonic polls the
/// handler before its timer, and [`ReceivedAt`] is stamped before tonic starts that timer, so
/// with any lead the handler's deadline is always the first to be seen, however loaded the
/// machine (a stamp taken later, in the interceptor, lost this race under load in CI).
const DEADLINE_LEAD: Duration = Duration::from_millis(2);

/// When a call reached the server, stamped by [`StampArrival`].
#[derive(Clone, Copy, Debug)]
pub struct ReceivedAt(pub Instant);

/// A layer of the server builder (`Server::builder().layer`), so the service it wraps is called
/// synchronously from inside tonic's own `grpc-timeout` layer, just before tonic starts its
/// timer: the stamp is never later than tonic's start. (Services added with `add_service` are
/// only called when the router's future is first polled, which can be much later under load.)
#[derive(Clone, Copy, Debug, Default)]
pub struct StampArrival;

impl<S> tower_layer::Layer<S> for StampArrival {
    type Service = Stamped<S>;

    fn layer(&self, inner: S) -> Stamped<S> {
        Stamped { inner }
    }
}

/// A service whose requests carry [`ReceivedAt`]; made by [`StampArrival`].
#[derive(Clone, Debug)]
pub struct Stamped<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for Stamped<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(ReceivedAt(Instant::now()));
        self.inner.call(request)
    }
}

/// The call's deadline from its `grpc-timeout` header, counted from when the call arrived
/// ([`ReceivedAt`]), as tonic's own timer is: a handler that starts late under load must not
/// count from its own start, or tonic's timer fires first.
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let received = request
        .extensions()
        .get::<ReceivedAt>()
        .map_or_else(Instant::now, |r| r.0);
    received.checked_add(d.saturating_sub(DEADLINE_LEAD))
}

const DAY_MS: u64 = 24 * 3600 * 1000;

/// One call being served, for its audit line.
struct Call {
    method: &'static str,
    owner: Owner,
    started: Instant,
}

impl Call {
    fn of<T>(request: &Request<T>, method: &'static str) -> Call {
        Call {
            method,
            owner: owner_of(request),
            started: Instant::now(),
        }
    }
}

fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, ServiceError> {
    M::decode(bytes)
        .map_err(|e| ServiceError::Internal(format!("stored {what} does not decode: {e}")))
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// The resolved anatomy of a request.
struct Resolved {
    id: String,
    prepared: Arc<PreparedAnatomy>,
}

impl Planning {
    /// The service on the system clock, auditing to `config.audit_log` if set.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Self, ServiceError> {
        Planning::with_clock(config, metrics, Arc::new(SystemClock))
    }

    /// [`Planning::new`] with another clock (record times, retention, audit times).
    pub fn with_clock(
        config: Config,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServiceError> {
        let audit = match &config.audit_log {
            None => None,
            Some(path) => Some(Arc::new(
                AuditLog::open(path, config.audit_log_max_bytes, clock.clone()).map_err(|e| {
                    ServiceError::Storage(format!(
                        "cannot open the audit log {}: {e}",
                        path.display()
                    ))
                })?,
            )),
        };
        let store = crate::store::open(&config)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.planner_threads)
            .thread_name(|i| format!("planner-{i}"))
            .build()
            .map_err(|e| ServiceError::Internal(format!("cannot start the planner pool: {e}")))?;
        let run_gate = Arc::new(Semaphore::new(pool.current_num_threads().max(1)));
        Ok(Planning {
            inner: Arc::new(Inner {
                plan_slots: Arc::new(Semaphore::new(config.max_concurrent_plans.max(1))),
                run_gate,
                cache: Mutex::new(PreparedCache {
                    capacity: config.prepared_cache_entries,
                    tick: 0,
                    entries: HashMap::new(),
                }),
                config,
                store,
                pool,
                metrics,
                plan_counter: AtomicU64::new(0),
                id_nonce: std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8),
                client_slots: Mutex::new(HashMap::new()),
                clock,
                audit,
            }),
        })
    }

    /// The audit log, if the service keeps one (shared with the authenticator).
    pub fn auditor(&self) -> Auditor {
        self.inner.audit.clone()
    }

    fn now_unix_ms(&self) -> u64 {
        self.inner.clock.now_unix_ms()
    }

    /// When a record created at `create_time_unix_ms` is purged, with retention on.
    fn purge_time(&self, create_time_unix_ms: u64) -> Option<u64> {
        self.inner
            .config
            .retention_days
            .map(|days| create_time_unix_ms.saturating_add(u64::from(days) * DAY_MS))
    }

    /// Answer a call: log a failure, audit the call (with the records it touched), convert.
    fn finish<T>(
        &self,
        call: Call,
        ids: AuditIds,
        r: Result<T, ServiceError>,
    ) -> Result<Response<T>, Status> {
        let r = respond(call.method, r);
        self.audit(
            &call,
            &ids,
            r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok),
        );
        r
    }

    fn audit(&self, call: &Call, ids: &AuditIds, outcome: tonic::Code) {
        if let Some(audit) = &self.inner.audit {
            audit.record(&AuditEntry {
                principal: owner_name(&call.owner),
                method: call.method,
                ids,
                outcome,
                duration: call.started.elapsed(),
            });
        }
    }

    /// Compact the store after a delete or purge so that the deleted bytes leave the data
    /// directory. A failure is logged; the delete itself has been committed.
    async fn compact(&self) {
        let started = Instant::now();
        match self.blocking(|s| s.compact()).await {
            Ok(()) => info!(ms = started.elapsed().as_millis() as u64, "store compacted"),
            Err(e) => tracing::error!(error = %e, "store compaction failed"),
        }
    }

    /// Purge the records older than the retention (if on) as of the clock's now: one store
    /// transaction, then compaction. Logged and audited (method `Purge`) when it removed
    /// something or failed.
    pub async fn purge_expired(&self) -> Result<crate::store::Purged, ServiceError> {
        let Some(days) = self.inner.config.retention_days else {
            return Ok(crate::store::Purged::default());
        };
        let call = Call {
            method: "Purge",
            owner: None,
            started: Instant::now(),
        };
        let cutoff = self.now_unix_ms().saturating_sub(u64::from(days) * DAY_MS);
        let r = self.blocking(move |s| s.purge_before(cutoff)).await;
        match &r {
            Ok(purged) if purged.is_empty() => {}
            Ok(purged) => {
                {
                    let mut cache = self.inner.cache.lock().expect("cache lock");
                    for id in &purged.anatomy_ids {
                        cache.remove(id);
                    }
                }
                self.compact().await;
                let n = (purged.plan_ids.len() + purged.anatomy_ids.len()) as u64;
                self.inner
                    .metrics
                    .records_purged
                    .fetch_add(n, Ordering::Relaxed);
                info!(
                    retention_days = days,
                    cutoff_unix_ms = cutoff,
                    plans = purged.plan_ids.len(),
                    anatomies = purged.anatomy_ids.len(),
                    "retention purge"
                );
                let ids = AuditIds {
                    plan_ids: purged.plan_ids.clone(),
                    anatomy_ids: purged.anatomy_ids.clone(),
                };
                self.audit(&call, &ids, tonic::Code::Ok);
            }
            Err(e) => {
                tracing::error!(error = %e, "retention purge failed");
                let code = Status::from(ServiceError::Internal(String::new())).code();
                self.audit(&call, &AuditIds::default(), code);
            }
        }
        self.inner
            .metrics
            .purge_runs
            .fetch_add(1, Ordering::Relaxed);
        r
    }

    /// With retention on, the background purge: at once, then every `--retention-check-secs`.
    pub fn spawn_retention(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.config.retention_days?;
        let service = self.clone();
        let every = Duration::from_secs(self.inner.config.retention_check_secs.max(1));
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let _ = service.purge_expired().await;
            }
        }))
    }

    /// Keep gRPC health true to the store: every `--health-check-ms` ask it whether it answers
    /// ([`Store::check`]); while it does not, the server ("") and the planning service are
    /// NOT_SERVING (a load balancer then sends calls to the other replicas), SERVING again once
    /// it does. Changes are logged.
    ///
    /// The loop ends, after the check in flight, when `stop` changes or its sender is dropped;
    /// awaiting the handle then means the store is no longer held by it (a restart on the same
    /// data directory can open it again).
    pub fn spawn_health_checks(
        &self,
        reporter: tonic_health::server::HealthReporter,
        mut stop: tokio::sync::watch::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        use tonic::server::NamedService;
        use tonic_health::ServingStatus;
        const PLANNING: &str =
            <pb::planning_service_server::PlanningServiceServer<Planning> as NamedService>::NAME;
        let service = self.clone();
        let every = Duration::from_millis(self.inner.config.health_check_ms.max(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut serving = true;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.changed() => return,
                }
                let checked = service.blocking(|s| s.check()).await;
                if checked.is_ok() == serving {
                    continue;
                }
                serving = checked.is_ok();
                let status = match checked {
                    Ok(()) => {
                        info!("the store answers again: SERVING");
                        ServingStatus::Serving
                    }
                    Err(e) => {
                        warn!(error = %e, "the store does not answer: NOT_SERVING");
                        ServingStatus::NotServing
                    }
                };
                for name in ["", PLANNING] {
                    reporter.set_service_status(name, status).await;
                }
            }
        })
    }

    /// Run CPU work on the planner pool and await it. A panic becomes an internal error (rayon
    /// would otherwise abort the process).
    async fn on_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.inner.pool.spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = tx.send(result);
        });
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(panic)) => Err(ServiceError::Internal(format!(
                "the planner panicked: {}",
                panic_message(panic)
            ))),
            Err(_) => Err(ServiceError::Unavailable(
                "the planner pool shut down".into(),
            )),
        }
    }

    /// Run short interactive work (one trajectory evaluation, well under a millisecond) on the
    /// runtime's blocking threads instead of the planner pool: a surgeon dragging a trajectory
    /// does not wait behind the screening batches of running plans. A panic becomes an
    /// internal error.
    async fn interactive<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let run = move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        match tokio::task::spawn_blocking(run).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(panic)) => Err(ServiceError::Internal(format!(
                "the planner panicked: {}",
                panic_message(panic)
            ))),
            Err(e) => Err(ServiceError::Internal(format!(
                "evaluation task failed: {e}"
            ))),
        }
    }

    /// Run a blocking store call off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(inner.store.as_ref()))
            .await
            .map_err(|e| ServiceError::Internal(format!("store task failed: {e}")))?
    }

    /// A stored record by id, decoded: `NOT_FOUND` when the store has none for this owner.
    async fn fetch<M: Message + Default>(
        &self,
        kind: &'static str,
        id: String,
        lookup: impl FnOnce(&dyn Store, &str) -> Result<Option<Vec<u8>>, ServiceError> + Send + 'static,
    ) -> Result<M, ServiceError> {
        let key = id.clone();
        let bytes = self
            .blocking(move |s| lookup(s, &key))
            .await?
            .ok_or(ServiceError::NotFound { kind, id })?;
        decode(&bytes, kind)
    }

    fn cached(&self, id: &str) -> Option<Arc<PreparedAnatomy>> {
        self.inner.cache.lock().expect("cache lock").get(id)
    }

    fn cache(&self, id: &str, prepared: Arc<PreparedAnatomy>) {
        self.inner
            .cache
            .lock()
            .expect("cache lock")
            .insert(id.to_owned(), prepared);
    }

    fn size_limit(&self) -> SizeLimit {
        SizeLimit {
            max_triangles: self.inner.config.max_triangles,
            max_label_voxels: self.inner.config.max_label_voxels,
        }
    }

    /// Validate and prepare an anatomy on the pool; `make` (decoding, meshing a label map) runs
    /// there too. Stops between preparation steps once `stop` says so.
    async fn prepare_with(
        &self,
        make: impl FnOnce() -> Result<AnatomyInput, ServiceError> + Send + 'static,
        stop: &Stop,
    ) -> Result<Arc<PreparedAnatomy>, ServiceError> {
        let metrics = self.inner.metrics.clone();
        let work_stop = stop.clone();
        let prepared = self
            .on_pool(move || -> Result<PreparedAnatomy, ServiceError> {
                let input = make()?;
                metrics.prepares_running.fetch_add(1, Ordering::SeqCst);
                let result =
                    PreparedAnatomy::prepare_with(input, &PrepareOptions::standard(), &|| {
                        work_stop.stopped()
                    });
                if matches!(result, Err(PlanError::Cancelled)) {
                    metrics.prepares_cancelled.fetch_add(1, Ordering::Relaxed);
                }
                metrics.prepares_running.fetch_sub(1, Ordering::SeqCst);
                match result {
                    Ok(p) => Ok(p),
                    Err(PlanError::Input(e)) => Err(e.into()),
                    Err(PlanError::Cancelled) => Err(work_stop.error()),
                }
            })
            .await??;
        self.inner
            .metrics
            .anatomies_prepared
            .fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(prepared))
    }

    /// The metadata of an anatomy's meshes before preparation (a label map's structures, levels
    /// and fixes are filled in after).
    fn anatomy_meta(id: &str, data: &pb::AnatomyData) -> pb::Anatomy {
        let pb::AnatomyData {
            name,
            frame,
            structures,
            labelmap: _,
        } = data;
        let summaries: Vec<pb::StructureSummary> = structures
            .iter()
            .map(|s| {
                let pb::Structure { descriptor, mesh } = s;
                let (v, t) = mesh
                    .as_ref()
                    .map_or((0, 0), |m| (m.vertices_mm.len() / 3, m.triangles.len() / 3));
                pb::StructureSummary {
                    descriptor: descriptor.clone(),
                    vertex_count: v as u64,
                    triangle_count: t as u64,
                    label: None,
                }
            })
            .collect();
        pb::Anatomy {
            anatomy_id: id.to_owned(),
            name: name.clone(),
            frame: *frame,
            total_vertex_count: summaries.iter().map(|s| s.vertex_count).sum(),
            total_triangle_count: summaries.iter().map(|s| s.triangle_count).sum(),
            structures: summaries,
            levels: Vec::new(),
            mesh_fixes: Vec::new(),
            labelmap: None,
        }
    }

    /// The planner's anatomy of an anatomy message, its label map meshed (on the pool).
    fn meshed(
        limit: SizeLimit,
        data: pb::AnatomyData,
    ) -> impl FnOnce() -> Result<Meshed, ServiceError> + Send + 'static {
        move || labelmap::anatomy_input(data, &limit)
    }

    /// Fill in what preparation found.
    fn complete_meta(meta: &mut pb::Anatomy, prepared: &PreparedAnatomy) {
        meta.levels = prepared
            .levels()
            .into_iter()
            .map(|l| convert::level_to_pb(l) as i32)
            .collect();
        meta.mesh_fixes = prepared
            .mesh_fixes()
            .iter()
            .map(convert::structure_notice_to_pb)
            .collect();
    }

    /// Store (once) and cache a complete anatomy; return its metadata.
    async fn admit_anatomy(
        &self,
        data: pb::AnatomyData,
        owner: Owner,
        stop: &Stop,
    ) -> Result<pb::Anatomy, ServiceError> {
        // Encoding and hashing hundreds of megabytes is CPU work: on the pool.
        let (data, encoded, id) = self
            .on_pool(move || {
                let encoded = data.encode_to_vec();
                let id = convert::anatomy_id_of_bytes(&encoded);
                (data, encoded, id)
            })
            .await?;
        let lookup = id.clone();
        if let Some(meta) = self
            .blocking(move |s| s.anatomy_meta(&lookup, None))
            .await?
        {
            let (key, o, now) = (id.clone(), owner.clone(), self.now_unix_ms());
            // Deleted since the look-up: store it again below.
            if self
                .blocking(move |s| s.reupload_anatomy(&key, owner_name(&o), now))
                .await?
            {
                info!(anatomy_id = %id, "anatomy already stored");
                return decode(&meta, "anatomy metadata");
            }
        }
        let mut meta = Self::anatomy_meta(&id, &data);
        // A label map is meshed before anything is stored: a refused one leaves no record.
        let meshed = self
            .on_pool(Self::meshed(self.size_limit(), data))
            .await??;
        labelmap::complete_meta(&mut meta, &meshed);
        let input = meshed.input;
        let prepared = self.prepare_with(move || Ok(input), stop).await?;
        Self::complete_meta(&mut meta, &prepared);
        let meta_bytes = meta.encode_to_vec();
        let (key, now) = (id.clone(), self.now_unix_ms());
        self.blocking(move |s| s.put_anatomy(&key, &encoded, &meta_bytes, owner_name(&owner), now))
            .await?;
        self.cache(&id, prepared);
        info!(anatomy_id = %id, name = %meta.name, triangles = meta.total_triangle_count, "anatomy stored");
        Ok(meta)
    }

    /// The prepared anatomy of a stored id: from the cache, or prepared again from the store.
    async fn stored_anatomy(
        &self,
        id: String,
        owner: Owner,
        stop: &Stop,
    ) -> Result<Resolved, ServiceError> {
        if id.is_empty() {
            return Err(
                InputError::invalid("anatomy_id", "\"\"", "an anatomy id is required").into(),
            );
        }
        let not_found = || ServiceError::NotFound {
            kind: "anatomy",
            id: id.clone(),
        };
        if owner.is_some() {
            // The cache is shared: ask the store whose anatomy this is first.
            let (key, o) = (id.clone(), owner.clone());
            if !self
                .blocking(move |s| s.owns_anatomy(&key, owner_name(&o)))
                .await?
            {
                return Err(not_found());
            }
        }
        if let Some(prepared) = self.cached(&id) {
            return Ok(Resolved { id, prepared });
        }
        let key = id.clone();
        let bytes = self
            .blocking(move |s| s.anatomy(&key, owner_name(&owner)))
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                kind: "anatomy",
                id: id.clone(),
            })?;
        let limit = self.size_limit();
        let prepared = self
            .prepare_with(
                move || {
                    let data = decode::<pb::AnatomyData>(&bytes, "anatomy")?;
                    Ok(labelmap::anatomy_input(data, &limit)?.input)
                },
                stop,
            )
            .await?;
        self.cache(&id, prepared.clone());
        Ok(Resolved { id, prepared })
    }

    async fn inline_anatomy(
        &self,
        data: pb::AnatomyData,
        stop: &Stop,
    ) -> Result<Resolved, ServiceError> {
        self.size_limit().check_anatomy(&data)?;
        let (data, id) = self
            .on_pool(move || {
                let id = convert::anatomy_id(&data);
                (data, id)
            })
            .await?;
        if let Some(prepared) = self.cached(&id) {
            return Ok(Resolved { id, prepared });
        }
        let mesh = Self::meshed(self.size_limit(), data);
        let prepared = self.prepare_with(move || Ok(mesh()?.input), stop).await?;
        self.cache(&id, prepared.clone());
        Ok(Resolved { id, prepared })
    }

    async fn resolve_plan_anatomy(
        &self,
        anatomy: Option<pb::create_plan_request::Anatomy>,
        owner: Owner,
        stop: &Stop,
    ) -> Result<Resolved, ServiceError> {
        match anatomy {
            None => {
                Err(
                    InputError::invalid("anatomy", "unset", "give anatomy_id or inline_anatomy")
                        .into(),
                )
            }
            Some(pb::create_plan_request::Anatomy::AnatomyId(id)) => {
                self.stored_anatomy(id, owner, stop).await
            }
            Some(pb::create_plan_request::Anatomy::InlineAnatomy(data)) => {
                self.inline_anatomy(data, stop).await
            }
        }
    }

    fn new_plan_id(&self) -> String {
        let n = self.inner.plan_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut h = Sha256::new();
        h.update(nanos.to_le_bytes());
        h.update(n.to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(self.inner.id_nonce.to_le_bytes());
        let digest = h.finalize();
        // Time first: ids sort by creation time.
        format!("{:012x}{}", self.now_unix_ms(), hex::encode(&digest[..8]))
    }

    /// A planning slot of the client (with authentication and a per-client limit) and one of
    /// the server, or RESOURCE_EXHAUSTED at once: calls are shed, not queued.
    fn acquire_plan_slot(&self, owner: &Owner) -> Result<PlanPermit, ServiceError> {
        let per_client = self.inner.config.max_plans_per_client;
        let client =
            match owner {
                Some(p) if per_client > 0 => {
                    let slots = self
                        .inner
                        .client_slots
                        .lock()
                        .expect("client slots lock")
                        .entry(p.clone())
                        .or_insert_with(|| Arc::new(Semaphore::new(per_client)))
                        .clone();
                    Some(slots.try_acquire_owned().map_err(|_| {
                        ServiceError::ResourceExhausted {
                            what: "concurrent plans of this client",
                            detail: format!(
                                "'{}' already runs {per_client} plans; retry later",
                                p.name()
                            ),
                        }
                    })?)
                }
                _ => None,
            };
        let server = self
            .inner
            .plan_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServiceError::ResourceExhausted {
                what: "concurrent plans",
                detail: format!(
                    "all {} planning slots are busy; retry later",
                    self.inner.config.max_concurrent_plans.max(1)
                ),
            })?;
        Ok(PlanPermit {
            owner: owner.clone(),
            _server: server,
            _client: client,
        })
    }

    /// Run a plan on the pool and store it (under the client's `request_id`, if any: when a
    /// plan is stored for that key already, that plan is the answer). `on_level` is called
    /// from pool threads.
    async fn run_plan(
        &self,
        resolved: &Resolved,
        request: kyphoplan_planner::PlanRequest,
        stop: &Stop,
        permit: PlanPermit,
        request_id: Option<String>,
        on_level: impl Fn(&LevelPlan, usize, usize) + Send + Sync + 'static,
    ) -> Result<pb::Plan, ServiceError> {
        let owner = permit.owner.clone();
        let prepared = resolved.prepared.clone();
        let metrics = self.inner.metrics.clone();
        let work_stop = stop.clone();
        // Waits its turn (FIFO); a call dropped or timed out while waiting leaves the queue.
        let turn = self
            .inner
            .run_gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Unavailable("the planner pool shut down".into()))?;
        let result = self
            .on_pool(move || {
                let _turn = turn;
                let _permit = permit;
                metrics.plans_running.fetch_add(1, Ordering::SeqCst);
                let control = PlanControl {
                    cancelled: &|| work_stop.stopped(),
                    on_level: &on_level,
                };
                let result = planning::plan_with(&prepared, &request, &control);
                match &result {
                    Ok(_) => metrics.plans_completed.fetch_add(1, Ordering::Relaxed),
                    Err(PlanError::Cancelled) => {
                        metrics.plans_cancelled.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(PlanError::Input(_)) => 0,
                };
                metrics.plans_running.fetch_sub(1, Ordering::SeqCst);
                result
            })
            .await?;
        let plan = match result {
            Ok(plan) => plan,
            Err(PlanError::Input(e)) => return Err(e.into()),
            Err(PlanError::Cancelled) => return Err(stop.error()),
        };
        let mut message = convert::plan_to_pb(&plan);
        message.plan_id = self.new_plan_id();
        message.anatomy_id = resolved.id.clone();
        message.create_time_unix_ms = self.now_unix_ms();
        let bytes = message.encode_to_vec();
        message.purge_time_unix_ms = self.purge_time(message.create_time_unix_ms);
        let (key, created, anatomy) = (
            message.plan_id.clone(),
            message.create_time_unix_ms,
            message.anatomy_id.clone(),
        );
        // The answer goes out only after the commit (durable): an acknowledged plan survives a
        // crash.
        let Some(request_id) = request_id else {
            self.blocking(move |s| s.put_plan(&key, &bytes, owner_name(&owner), created, &anatomy))
                .await?;
            info!(plan_id = %message.plan_id, anatomy_id = %resolved.id, levels = message.levels.len(), "plan stored");
            return Ok(message);
        };
        let o = owner.clone();
        let stored_id = self
            .blocking(move |s| {
                s.put_plan_for_request(&key, &bytes, owner_name(&o), created, &anatomy, &request_id)
            })
            .await?;
        if stored_id == message.plan_id {
            info!(plan_id = %message.plan_id, anatomy_id = %resolved.id, levels = message.levels.len(), "plan stored");
            return Ok(message);
        }
        // The same request was stored first elsewhere (a retry, another replica): its plan.
        info!(plan_id = %stored_id, "plan of the same request stored before; this run's dropped");
        self.stored_plan(stored_id, owner).await
    }

    /// A stored plan as GetPlan answers it.
    async fn stored_plan(&self, plan_id: String, owner: Owner) -> Result<pb::Plan, ServiceError> {
        let mut plan: pb::Plan = self
            .fetch("plan", plan_id, move |s, id| s.plan(id, owner_name(&owner)))
            .await?;
        plan.purge_time_unix_ms = self.purge_time(plan.create_time_unix_ms);
        Ok(plan)
    }

    /// The plan stored before for the caller's `request_id`, if any (a CreatePlan retried).
    async fn plan_of_request(
        &self,
        owner: &Owner,
        request_id: &Option<String>,
    ) -> Result<Option<pb::Plan>, ServiceError> {
        let Some(key) = request_id.clone() else {
            return Ok(None);
        };
        let o = owner.clone();
        let Some(plan_id) = self
            .blocking(move |s| s.plan_for_request(owner_name(&o), &key))
            .await?
        else {
            return Ok(None);
        };
        info!(%plan_id, "plan of the same request stored before: answered again");
        self.stored_plan(plan_id, owner.clone()).await.map(Some)
    }

    async fn upload(
        &self,
        mut chunks: Streaming<pb::UploadAnatomyChunk>,
        owner: Owner,
        stop: &Stop,
    ) -> Result<pb::Anatomy, ServiceError> {
        let mut assembly = UploadAssembly::new(self.size_limit());
        while let Some(received) = chunks.next().await {
            assembly.push(received)?;
        }
        let data = assembly.finish()?;
        self.admit_anatomy(data, owner, stop).await
    }
}

/// Longest `request_id` of a CreatePlanRequest, characters.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// A CreatePlanRequest's `request_id`: `None` when empty; refused (naming the field) when over
/// [`MAX_REQUEST_ID_CHARS`] or not visible ASCII.
fn checked_request_id(request_id: String) -> Result<Option<String>, ServiceError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.len() > MAX_REQUEST_ID_CHARS || !request_id.bytes().all(|b| b.is_ascii_graphic())
    {
        let shown: String = request_id.chars().take(40).collect();
        return Err(InputError::invalid(
            "request_id",
            format!("{shown:?}"),
            format!("at most {MAX_REQUEST_ID_CHARS} visible ASCII characters"),
        )
        .into());
    }
    Ok(Some(request_id))
}

/// Logs a refused or failed call.
fn log_error(rpc: &str, e: &ServiceError) {
    match e {
        ServiceError::Input(_)
        | ServiceError::NotFound { .. }
        | ServiceError::AnatomyHasPlans { .. } => info!(rpc, error = %e, "refused"),
        ServiceError::Cancelled | ServiceError::DeadlineExceeded => {
            info!(rpc, error = %e, "stopped")
        }
        ServiceError::ResourceExhausted { .. } => warn!(rpc, error = %e, "limit reached"),
        ServiceError::Storage(_)
        | ServiceError::StorageFull(_)
        | ServiceError::Unavailable(_)
        | ServiceError::Internal(_) => {
            tracing::error!(rpc, error = %e, "failed")
        }
    }
}

fn respond<T>(rpc: &str, r: Result<T, ServiceError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(|e| {
        log_error(rpc, &e);
        Status::from(e)
    })
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::PlanProgress, Status>> + Send>>;

/// The anatomy id a request names, if it names a stored one (for the audit line).
fn requested_anatomy(anatomy: &Option<pb::create_plan_request::Anatomy>) -> AuditIds {
    match anatomy {
        Some(pb::create_plan_request::Anatomy::AnatomyId(id)) => AuditIds::anatomy(id.clone()),
        _ => AuditIds::default(),
    }
}

/// The audit ids of a finished plan: its id and its anatomy's.
fn plan_ids(plan: &pb::Plan) -> AuditIds {
    AuditIds {
        plan_ids: vec![plan.plan_id.clone()],
        anatomy_ids: vec![plan.anatomy_id.clone()],
    }
}

#[tonic::async_trait]
impl PlanningService for Planning {
    async fn upload_anatomy(
        &self,
        request: Request<Streaming<pb::UploadAnatomyChunk>>,
    ) -> Result<Response<pb::Anatomy>, Status> {
        let call = Call::of(&request, "UploadAnatomy");
        let (stop, _guard) = Stop::for_call(deadline_of(&request));
        let r = self
            .upload(request.into_inner(), call.owner.clone(), &stop)
            .await;
        let ids = r
            .as_ref()
            .map(|a| AuditIds::anatomy(a.anatomy_id.clone()))
            .unwrap_or_default();
        self.finish(call, ids, r)
    }

    async fn get_anatomy(
        &self,
        request: Request<pb::GetAnatomyRequest>,
    ) -> Result<Response<pb::Anatomy>, Status> {
        let call = Call::of(&request, "GetAnatomy");
        let owner = call.owner.clone();
        let pb::GetAnatomyRequest { anatomy_id } = request.into_inner();
        let ids = AuditIds::anatomy(anatomy_id.clone());
        let r = self
            .fetch("anatomy", anatomy_id, move |s, id| {
                s.anatomy_meta(id, owner_name(&owner))
            })
            .await;
        self.finish(call, ids, r)
    }

    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let call = Call::of(&request, "CreatePlan");
        let deadline = deadline_of(&request);
        let owner = call.owner.clone();
        let pb::CreatePlanRequest {
            anatomy,
            levels,
            instrument,
            safety,
            procedure,
            approaches,
            cannula_alternatives_mm,
            request_id,
        } = request.into_inner();
        let requested = requested_anatomy(&anatomy);
        let (stop, _guard) = Stop::for_call(deadline);
        let work = async {
            let plan_request =
                convert::plan_request_from_pb(&levels, instrument, safety, procedure, &approaches)
                    .and_then(|r| {
                        convert::with_cannula_alternatives(r, &cannula_alternatives_mm)
                    })?;
            let request_id = checked_request_id(request_id)?;
            // A retry of a call whose plan was stored: that plan, without planning again.
            if let Some(plan) = self.plan_of_request(&owner, &request_id).await? {
                return Ok(plan);
            }
            let resolved = self
                .resolve_plan_anatomy(anatomy, owner.clone(), &stop)
                .await?;
            let permit = self.acquire_plan_slot(&owner)?;
            self.run_plan(
                &resolved,
                plan_request,
                &stop,
                permit,
                request_id,
                |_, _, _| {},
            )
            .await
        };
        let r = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), work).await {
                Ok(r) => r,
                Err(_) => Err(ServiceError::DeadlineExceeded),
            },
            None => work.await,
        };
        let ids = r.as_ref().map_or(requested, plan_ids);
        self.finish(call, ids, r)
    }

    type StreamPlanStream = ProgressStream;

    async fn stream_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<Self::StreamPlanStream>, Status> {
        let call = Call::of(&request, "StreamPlan");
        let deadline = deadline_of(&request);
        let owner = call.owner.clone();
        let pb::CreatePlanRequest {
            anatomy,
            levels,
            instrument,
            safety,
            procedure,
            approaches,
            cannula_alternatives_mm,
            request_id,
        } = request.into_inner();
        let requested = requested_anatomy(&anatomy);
        // Set up (and maybe prepare) under the guard: a client gone during setup stops it too.
        let (stop, guard) = Stop::for_call(deadline);
        let setup = async {
            let plan_request =
                convert::plan_request_from_pb(&levels, instrument, safety, procedure, &approaches)
                    .and_then(|r| {
                        convert::with_cannula_alternatives(r, &cannula_alternatives_mm)
                    })?;
            let request_id = checked_request_id(request_id)?;
            let resolved = self
                .resolve_plan_anatomy(anatomy, owner.clone(), &stop)
                .await?;
            let permit = self.acquire_plan_slot(&owner)?;
            Ok::<_, ServiceError>((plan_request, request_id, resolved, permit))
        };
        let (plan_request, request_id, resolved, permit) = match setup.await {
            Ok(r) => r,
            Err(e) => {
                return self
                    .finish(call, requested, Err::<(), _>(e))
                    .map(|_| unreachable!("an error stays an error"))
            }
        };
        let (tx, rx) = mpsc::unbounded_channel::<Result<pb::PlanProgress, Status>>();
        let service = self.clone();
        tokio::spawn(async move {
            let level_tx = tx.clone();
            let on_level = move |level: &LevelPlan, done: usize, total: usize| {
                let _ = level_tx.send(Ok(pb::PlanProgress {
                    levels_done: done as u32,
                    levels_total: total as u32,
                    event: Some(pb::plan_progress::Event::Level(convert::level_plan_to_pb(
                        level,
                    ))),
                }));
            };
            let r = service
                .run_plan(&resolved, plan_request, &stop, permit, request_id, on_level)
                .await;
            let ids = r.as_ref().map_or(requested, plan_ids);
            let message = service.finish(call, ids, r).map(|plan| {
                let plan = plan.into_inner();
                pb::PlanProgress {
                    levels_done: plan.levels.len() as u32,
                    levels_total: plan.levels.len() as u32,
                    event: Some(pb::plan_progress::Event::Plan(plan)),
                }
            });
            let _ = tx.send(message);
        });
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |m| {
            // The guard lives as long as the stream: dropping the stream (client cancelled or
            // went away) stops the planning run.
            let _ = &guard;
            m
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn evaluate_trajectory(
        &self,
        request: Request<pb::EvaluateTrajectoryRequest>,
    ) -> Result<Response<pb::Evaluation>, Status> {
        let call = Call::of(&request, "EvaluateTrajectory");
        let owner = call.owner.clone();
        let (stop, _guard) = Stop::for_call(deadline_of(&request));
        let request = request.into_inner();
        let ids = match &request.anatomy {
            Some(pb::evaluate_trajectory_request::Anatomy::AnatomyId(id)) => {
                AuditIds::anatomy(id.clone())
            }
            _ => AuditIds::default(),
        };
        let r = async {
            let (
                anatomy,
                convert::EvaluateParams {
                    level,
                    side,
                    entry_mm,
                    target_mm,
                    instrument,
                    safety,
                    route_rule,
                },
            ) = convert::evaluate_request_from_pb(request)?;
            let anatomy = anatomy.map(|a| match a {
                pb::evaluate_trajectory_request::Anatomy::AnatomyId(id) => {
                    pb::create_plan_request::Anatomy::AnatomyId(id)
                }
                pb::evaluate_trajectory_request::Anatomy::InlineAnatomy(d) => {
                    pb::create_plan_request::Anatomy::InlineAnatomy(d)
                }
            });
            let resolved = self.resolve_plan_anatomy(anatomy, owner, &stop).await?;
            let prepared = resolved.prepared.clone();
            let evaluation = self
                .interactive(move || {
                    planning::evaluate_with_route(
                        &prepared,
                        level,
                        side,
                        entry_mm,
                        target_mm,
                        &instrument,
                        &safety,
                        route_rule,
                    )
                })
                .await??;
            Ok(convert::evaluation_to_pb(&evaluation))
        }
        .await;
        self.finish(call, ids, r)
    }

    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let call = Call::of(&request, "GetPlan");
        let owner = call.owner.clone();
        let pb::GetPlanRequest { plan_id } = request.into_inner();
        let ids = AuditIds::plan(plan_id.clone());
        let r = async {
            if plan_id.is_empty() {
                return Err(InputError::invalid("plan_id", "\"\"", "a plan id is required").into());
            }
            self.stored_plan(plan_id, owner).await
        }
        .await;
        self.finish(call, ids, r)
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let call = Call::of(&request, "ListPlans");
        let owner = call.owner.clone();
        let pb::ListPlansRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let limit = match page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let r = async {
            let (rows, more) = self
                .blocking(move |s| s.plans_after(&page_token, limit, owner_name(&owner)))
                .await?;
            let next_page_token = if more {
                rows.last().map(|(k, _)| k.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            let plans = rows
                .iter()
                .map(|(_, bytes)| {
                    let plan: pb::Plan = decode(bytes, "plan")?;
                    Ok(pb::PlanSummary {
                        plan_id: plan.plan_id,
                        anatomy_id: plan.anatomy_id,
                        case_name: plan.case_name,
                        levels: plan.levels.iter().map(|l| l.level).collect(),
                        create_time_unix_ms: plan.create_time_unix_ms,
                        purge_time_unix_ms: self.purge_time(plan.create_time_unix_ms),
                    })
                })
                .collect::<Result<Vec<_>, ServiceError>>()?;
            Ok(pb::ListPlansResponse {
                plans,
                next_page_token,
            })
        }
        .await;
        let ids = r
            .as_ref()
            .map(|list| AuditIds {
                plan_ids: list.plans.iter().map(|p| p.plan_id.clone()).collect(),
                anatomy_ids: Vec::new(),
            })
            .unwrap_or_default();
        self.finish(call, ids, r)
    }

    async fn delete_plan(
        &self,
        request: Request<pb::DeletePlanRequest>,
    ) -> Result<Response<pb::DeletePlanResponse>, Status> {
        let call = Call::of(&request, "DeletePlan");
        let owner = call.owner.clone();
        let pb::DeletePlanRequest { plan_id } = request.into_inner();
        let ids = AuditIds::plan(plan_id.clone());
        let r = async {
            if plan_id.is_empty() {
                return Err(InputError::invalid("plan_id", "\"\"", "a plan id is required").into());
            }
            let key = plan_id.clone();
            let deleted = self
                .blocking(move |s| s.delete_plan(&key, owner_name(&owner)))
                .await?;
            if !deleted {
                return Err(ServiceError::NotFound {
                    kind: "plan",
                    id: plan_id,
                });
            }
            info!(plan_id = %plan_id, "plan deleted");
            self.compact().await;
            Ok(pb::DeletePlanResponse {})
        }
        .await;
        self.finish(call, ids, r)
    }

    async fn delete_anatomy(
        &self,
        request: Request<pb::DeleteAnatomyRequest>,
    ) -> Result<Response<pb::DeleteAnatomyResponse>, Status> {
        let call = Call::of(&request, "DeleteAnatomy");
        let owner = call.owner.clone();
        let pb::DeleteAnatomyRequest {
            anatomy_id,
            cascade,
        } = request.into_inner();
        let mut ids = AuditIds::anatomy(anatomy_id.clone());
        let r = async {
            if anatomy_id.is_empty() {
                return Err(
                    InputError::invalid("anatomy_id", "\"\"", "an anatomy id is required").into(),
                );
            }
            let key = anatomy_id.clone();
            let deletion = self
                .blocking(move |s| s.delete_anatomy(&key, owner_name(&owner), cascade))
                .await?
                .ok_or_else(|| ServiceError::NotFound {
                    kind: "anatomy",
                    id: anatomy_id.clone(),
                })?;
            if deletion.data_removed {
                self.inner
                    .cache
                    .lock()
                    .expect("cache lock")
                    .remove(&anatomy_id);
            }
            info!(
                anatomy_id = %anatomy_id,
                plans = deletion.plan_ids.len(),
                data_removed = deletion.data_removed,
                "anatomy deleted"
            );
            self.compact().await;
            Ok(pb::DeleteAnatomyResponse {
                deleted_plan_ids: deletion.plan_ids,
                data_removed: deletion.data_removed,
            })
        }
        .await;
        if let Ok(response) = &r {
            ids.plan_ids = response.deleted_plan_ids.clone();
        }
        self.finish(call, ids, r)
    }
}
