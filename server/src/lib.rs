//! kyphoplan gRPC planning server: the `kyphoplan.v1.PlanningService`, gRPC health and
//! reflection (v1 and v1alpha), an embedded redb store, and a rayon pool for planning.
//!
//! Embedders serve on a listener of their own with [`serve`]. Tests, `kyphoplan bench` and the
//! load test start it in-process on a loopback port with [`InProcessServer`], the one fixture
//! for that.
//!
//! Security (all optional, see `--help`): TLS or mutual TLS (rustls), bearer tokens from a token
//! file checked on every call of the planning and reflection services (health stays open for
//! orchestration), records visible only to the principal that made them, and per-client
//! planning slots.

pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod in_process;
pub mod labelmap;
pub mod pg_store;
pub mod service;
pub mod store;
pub mod upload;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use error::ServiceError;
pub use in_process::InProcessServer;
pub use service::{Metrics, Planning};

use anyhow::Context;
use kyphoplan_proto::pb::planning_service_server::PlanningServiceServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use auth::{Authenticator, Tokens};

/// The TLS configuration of `config`, if it asks for TLS.
pub fn tls_config(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        if config.tls_client_ca.is_some() {
            anyhow::bail!("--tls-client-ca needs --tls-cert and --tls-key");
        }
        return Ok(None);
    };
    let read = |p: &std::path::PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read(cert, "TLS certificate")?,
        read(key, "TLS key")?,
    ));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
    }
    Ok(Some(tls))
}

/// The authenticator of `config`: the token file's tokens, or none (every call let through).
pub fn authenticator(config: &Config) -> anyhow::Result<Authenticator> {
    match &config.token_file {
        None => Ok(Authenticator::new(None)),
        Some(path) => Ok(Authenticator::new(Some(Tokens::load(path)?))),
    }
}

/// Serve on `listener` until `shutdown` completes (in-flight calls are given a graceful end).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_with_metrics(config, Arc::new(Metrics::default()), listener, shutdown).await
}

/// [`serve`], with counters the caller can watch (e.g. that a cancelled plan stopped).
pub async fn serve_with_metrics(
    config: Config,
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let clock: Arc<dyn clock::Clock> = Arc::new(clock::SystemClock);
    serve_until(config, metrics, clock, listener, shutdown, || {}).await
}

/// [`serve_with_metrics`], calling `on_serving` once everything that can fail before serving
/// (TLS files, token file, store) has been set up and the listener is about to be served.
async fn serve_until(
    config: Config,
    metrics: Arc<Metrics>,
    clock: Arc<dyn clock::Clock>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    on_serving: impl FnOnce() + Send,
) -> anyhow::Result<()> {
    let max_message = config.max_message_bytes;
    let data_dir = config.data_dir.clone();
    let tls = tls_config(&config)?;
    let mut auth = authenticator(&config)?;
    let mtls = config.tls_client_ca.is_some();
    if auth.enabled() && tls.is_none() && !listener.local_addr()?.ip().is_loopback() {
        tracing::warn!(
            "bearer tokens are checked but TLS is off: tokens cross the network in clear text"
        );
    }
    let authenticated = auth.enabled();
    let planning = Planning::with_clock(config, metrics, clock)?;
    auth = auth.with_audit(planning.auditor());
    // Dropped (aborted) when serving ends.
    let retention = planning.spawn_retention().map(AbortOnDrop);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PlanningServiceServer<Planning>>()
        .await;
    // SERVING while the store answers; stopped and awaited when serving ends (dropping the
    // sender on an early return stops it too).
    let (stop_health_checks, stop) = tokio::sync::watch::channel(());
    let health_checks = planning.spawn_health_checks(health_reporter, stop);
    // Tagged with the method outside the authenticator, so that refused calls are audited.
    let service = audit::TagMethod::new(InterceptedService::new(
        PlanningServiceServer::new(planning)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
        auth.clone(),
    ));

    let reflection_v1 = InterceptedService::new(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kyphoplan_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?,
        auth.clone(),
    );
    let reflection_v1alpha = InterceptedService::new(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kyphoplan_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?,
        auth,
    );

    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        data_dir = %data_dir.display(),
        tls = tls.is_some(),
        mutual_tls = mtls,
        authenticated,
        "kyphoplan-server listening"
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    // Connections made from here on wait in the listener's backlog until the first poll below.
    on_serving();
    builder
        .layer(service::StampArrival)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        // TCP_NODELAY: without it, small responses wait for the peer's delayed ACK (tens of
        // milliseconds per call on loopback). A listener passed in gets none of the builder's
        // TCP settings, so they are set here.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    drop(retention);
    drop(stop_health_checks);
    // The check in flight finishes first: afterwards nothing of this server holds the store.
    let _ = health_checks.await;
    tracing::info!("kyphoplan-server stopped");
    Ok(())
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
