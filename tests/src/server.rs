//! The server of the end-to-end tests: the in-process fixture ([`InProcessServer`]) with 2
//! planner threads, on a temporary data directory of its own or a given one, and the clients
//! the tests talk to it with.

use std::ops::Deref;
use std::path::Path;

use kyphoplan_client::Client;
use kyphoplan_proto::pb;
use kyphoplan_server::{Config, InProcessServer};

/// The generated client, with 64 MiB message limits (hostile and large messages get through to
/// the server, which decides).
pub type RawClient = pb::planning_service_client::PlanningServiceClient<tonic::transport::Channel>;

/// An [`InProcessServer`] (which it derefs to: `addr()`, `url()`, `metrics()`) and its data
/// directory when it owns one. Dropping it stops the server; [`shutdown`](Self::shutdown)
/// also checks that it stopped without error.
pub struct TestServer {
    server: InProcessServer,
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    /// On a temporary data directory of its own, removed when the server is dropped.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data = tempfile::tempdir().expect("a temporary data directory");
        let mut server = TestServer::start_in(data.path(), tweak).await;
        server._data = Some(data);
        server
    }

    /// On `data_dir` (e.g. to start again on the same store): the documented defaults with 2
    /// planner threads, then `tweak`.
    pub async fn start_in(data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::with_data_dir(data_dir);
        config.planner_threads = 2;
        tweak(&mut config);
        TestServer {
            server: InProcessServer::start(config)
                .await
                .expect("the in-process server starts"),
            _data: None,
        }
    }

    /// The SDK's client, connected without TLS or token.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await.unwrap()
    }

    /// The generated client, connected without TLS or token.
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.url())
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Stop the server; panics unless it stops within the fixture's bound and without error.
    pub async fn shutdown(self) {
        let TestServer { server, _data } = self;
        server
            .shutdown()
            .await
            .expect("the server stops in time, without error");
    }
}

impl Deref for TestServer {
    type Target = InProcessServer;

    fn deref(&self) -> &InProcessServer {
        &self.server
    }
}
