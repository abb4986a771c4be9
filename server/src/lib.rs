//! kyphoplan gRPC planning server: the `kyphoplan.v1.PlanningService`, gRPC health and
//! reflection (v1 and v1alpha), an embedded redb store, and a rayon pool for planning.
//!
//! Tests and embedders start it in-process with [`serve`] on a listener of their own.

pub mod config;
pub mod error;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;
pub use error::ServiceError;
pub use service::{Metrics, Planning};

use kyphoplan_proto::pb::planning_service_server::PlanningServiceServer;
use tokio_stream::wrappers::TcpListenerStream;

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
    let max_message = config.max_message_bytes;
    let data_dir = config.data_dir.clone();
    let planning = Planning::new(config, metrics)?;
    let service = PlanningServiceServer::new(planning)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PlanningServiceServer<Planning>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kyphoplan_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kyphoplan_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %data_dir.display(), "kyphoplan-server listening");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    tracing::info!("kyphoplan-server stopped");
    Ok(())
}
