//! [`InProcessServer`]: the server on a loopback port of this process, served by a task of the
//! caller's tokio runtime. The one way the tests, `kyphoplan bench` and the load test start a
//! server in-process.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::{Config, Metrics};

/// How long [`InProcessServer::start`] waits for the server to serve.
const START_WAIT: Duration = Duration::from_secs(20);
/// How long [`InProcessServer::shutdown`] waits for the server to end its calls and stop.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

/// The server on `127.0.0.1` at a free port, in this process.
///
/// [`start`](Self::start) returns once the server serves (token file, TLS files and store
/// loaded): a client may connect at once. [`shutdown`](Self::shutdown) stops it gracefully and
/// returns how it ended. Dropping it signals the same shutdown without waiting for it; the task
/// then ends on its runtime, or with the runtime.
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use kyphoplan_server::{Config, InProcessServer};
/// let data = std::env::temp_dir().join("kyphoplan-example");
/// let server = InProcessServer::start(Config::with_data_dir(data)).await?;
/// println!("serving at {}", server.url());
/// server.shutdown().await
/// # }
/// ```
#[derive(Debug)]
pub struct InProcessServer {
    addr: SocketAddr,
    tls: bool,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessServer {
    /// Serve `config` on `127.0.0.1:0` (`config.listen` is not used) with fresh [`Metrics`].
    /// Fails with the server's own error if it stops before serving (e.g. an unreadable TLS
    /// key), or if it does not serve within 20 s. Must be called within a tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<InProcessServer> {
        InProcessServer::start_with_metrics(config, Arc::new(Metrics::default())).await
    }

    /// [`start`](Self::start), counting into `metrics` (e.g. to see that a cancelled plan
    /// stopped).
    pub async fn start_with_metrics(
        config: Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<InProcessServer> {
        InProcessServer::start_with_clock(config, metrics, Arc::new(SystemClock)).await
    }

    /// [`start_with_metrics`](Self::start_with_metrics) on another clock (e.g. a
    /// [`crate::clock::ManualClock`], to drive retention without waiting days).
    pub async fn start_with_clock(
        config: Config,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<InProcessServer> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let tls = config.tls_cert.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let (serving, is_serving) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve_until(
            config,
            metrics.clone(),
            clock,
            listener,
            async {
                let _ = stopped.await;
            },
            move || {
                let _ = serving.send(());
            },
        ));
        let mut server = InProcessServer {
            addr,
            tls,
            metrics,
            stop: Some(stop),
            task: Some(task),
        };
        match tokio::time::timeout(START_WAIT, is_serving).await {
            Ok(Ok(())) => Ok(server),
            // The task ended before serving: its result says why.
            Ok(Err(_)) => Err(match server.join().await {
                Err(e) => e.context("the in-process server did not start"),
                Ok(()) => anyhow!("the in-process server stopped before serving"),
            }),
            Err(_) => {
                if let Some(task) = server.task.take() {
                    task.abort();
                }
                Err(anyhow!(
                    "the in-process server did not serve within {} s",
                    START_WAIT.as_secs()
                ))
            }
        }
    }

    /// The address it listens on (`127.0.0.1`, the port it was given).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` when the config serves TLS, else `http://127.0.0.1:PORT`. A TLS
    /// client names the certificate's host itself (e.g. `localhost`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stop accepting, let the calls in flight end, and return how the server ended: its own
    /// error, or an error if it panicked or has not stopped within 20 s (it is then aborted).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.signal_stop();
        self.join().await
    }

    fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server's task (bounded).
    async fn join(&mut self) -> anyhow::Result<()> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(SHUTDOWN_WAIT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(anyhow!("the in-process server's task failed: {e}")),
            Err(_) => {
                abort.abort();
                Err(anyhow!(
                    "the in-process server did not stop within {} s",
                    SHUTDOWN_WAIT.as_secs()
                ))
            }
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        self.signal_stop();
    }
}
