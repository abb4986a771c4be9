//! Typed async client of `kyphoplan.v1.PlanningService`: planner types in, planner types out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;
use kyphoplan_planner::anatomy::{AnatomyInput, Level, PatientFrame, Side};
use kyphoplan_planner::error::InputError;
use kyphoplan_planner::evaluate::RouteRule;
use kyphoplan_planner::plan::{Evaluation, LevelPlan, Plan};
use kyphoplan_planner::request::{Instrument, PlanRequest, Safety};
use kyphoplan_proto::convert;
use kyphoplan_proto::pb;
use kyphoplan_proto::pb::planning_service_client::PlanningServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Vertices per upload chunk (24 bytes each: under 1 MiB).
pub const VERTICES_PER_CHUNK: usize = 40_000;
/// Triangles per upload chunk (at most 15 bytes each: under 1 MiB).
pub const TRIANGLES_PER_CHUNK: usize = 60_000;
/// Bytes of a label map's file per upload chunk (1 MiB).
pub const LABEL_BYTES_PER_CHUNK: usize = 1 << 20;
/// Largest message the client accepts (the server's default limit).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// gRPC status codes (the numbers of `google.rpc.Code`), so that callers of the SDK need no
/// tonic. `Display` is the same text as tonic's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub fn description(self) -> &'static str {
        match self {
            Code::Ok => "The operation completed successfully",
            Code::Cancelled => "The operation was cancelled",
            Code::Unknown => "Unknown error",
            Code::InvalidArgument => "Client specified an invalid argument",
            Code::DeadlineExceeded => "Deadline expired before operation could complete",
            Code::NotFound => "Some requested entity was not found",
            Code::AlreadyExists => "Some entity that we attempted to create already exists",
            Code::PermissionDenied => {
                "The caller does not have permission to execute the specified operation"
            }
            Code::ResourceExhausted => "Some resource has been exhausted",
            Code::FailedPrecondition => {
                "The system is not in a state required for the operation's execution"
            }
            Code::Aborted => "The operation was aborted",
            Code::OutOfRange => "Operation was attempted past the valid range",
            Code::Unimplemented => "Operation is not implemented or not supported",
            Code::Internal => "Internal error",
            Code::Unavailable => "The service is currently unavailable",
            Code::DataLoss => "Unrecoverable data loss or corruption",
            Code::Unauthenticated => "The request does not have valid authentication credentials",
        }
    }

    fn from_tonic(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Ok => Code::Ok,
            tonic::Code::Cancelled => Code::Cancelled,
            tonic::Code::Unknown => Code::Unknown,
            tonic::Code::InvalidArgument => Code::InvalidArgument,
            tonic::Code::DeadlineExceeded => Code::DeadlineExceeded,
            tonic::Code::NotFound => Code::NotFound,
            tonic::Code::AlreadyExists => Code::AlreadyExists,
            tonic::Code::PermissionDenied => Code::PermissionDenied,
            tonic::Code::ResourceExhausted => Code::ResourceExhausted,
            tonic::Code::FailedPrecondition => Code::FailedPrecondition,
            tonic::Code::Aborted => Code::Aborted,
            tonic::Code::OutOfRange => Code::OutOfRange,
            tonic::Code::Unimplemented => Code::Unimplemented,
            tonic::Code::Internal => Code::Internal,
            tonic::Code::Unavailable => Code::Unavailable,
            tonic::Code::DataLoss => Code::DataLoss,
            tonic::Code::Unauthenticated => Code::Unauthenticated,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

/// One field the server refused (a `google.rpc.BadRequest` field violation): `field` is the
/// request field or structure name, `description` why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL, the TLS settings or the connection itself failed.
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    /// The server answered with an error status; `field_violations` are the fields it named
    /// (empty when it named none).
    #[error("{code}: {message}")]
    Status {
        code: Code,
        message: String,
        field_violations: Vec<FieldViolation>,
    },
    /// The server's answer does not convert to planner types.
    #[error("the server's answer is malformed: {0}")]
    Decode(#[from] InputError),
    #[error("the plan stream ended without a plan")]
    IncompleteStream,
    #[error("the token has characters that cannot be sent in a header (visible ASCII only)")]
    BadToken,
}

impl ClientError {
    /// The status code, when the server answered with an error status.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A status as typed data: the code, the message and the field violations decoded from its
/// `google.rpc.BadRequest` details.
fn status_error(status: tonic::Status) -> ClientError {
    use tonic_types::StatusExt;
    let field_violations = status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| FieldViolation {
                    field: v.field.clone(),
                    description: v.description.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    ClientError::Status {
        code: Code::from_tonic(status.code()),
        message: status.message().to_owned(),
        field_violations,
    }
}

/// A status of the generated client ([`Client::raw`]) as typed data (feature `grpc-raw`).
#[cfg(feature = "grpc-raw")]
impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        status_error(status)
    }
}

/// A server-made plan: its id and the planner plan (server metadata is not part of it).
#[derive(Clone, Debug)]
pub struct StoredPlan {
    pub plan_id: String,
    pub anatomy_id: String,
    pub create_time_unix_ms: u64,
    /// When the server purges the plan (its retention is on), ms since the Unix epoch.
    pub purge_time_unix_ms: Option<u64>,
    pub plan: Plan,
}

impl StoredPlan {
    fn from_pb(message: pb::Plan) -> Result<Self, ClientError> {
        let plan_id = message.plan_id.clone();
        let anatomy_id = message.anatomy_id.clone();
        let create_time_unix_ms = message.create_time_unix_ms;
        let purge_time_unix_ms = message.purge_time_unix_ms;
        Ok(StoredPlan {
            plan_id,
            anatomy_id,
            create_time_unix_ms,
            purge_time_unix_ms,
            plan: convert::plan_from_pb(message)?,
        })
    }
}

/// How to reach a server that asks for TLS and/or a bearer token. The default is plaintext
/// without a token (`http://` URLs).
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// PEM of the CA that signed the server's certificate; with it (or an `https://` URL) the
    /// connection uses TLS.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry (default: the URL's host).
    pub tls_domain: Option<String>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("ca_cert_pem", &self.ca_cert_pem.is_some())
            .field("client_identity_pem", &self.client_identity_pem.is_some())
            .field("tls_domain", &self.tls_domain)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ConnectOptions {
    /// Read a token file: its first non-blank line that is not a `#` comment, trimmed.
    pub fn read_token_file(path: &std::path::Path) -> std::io::Result<String> {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: no token in the file", path.display()),
                )
            })
    }
}

/// Whether a call failed because its replica could not be reached or went away (so another
/// replica may answer it): UNAVAILABLE, or a connection broken mid-call, which tonic reports as
/// UNKNOWN with the transport's error as its source (a status the server sent has none).
fn replica_lost(status: &tonic::Status) -> bool {
    use std::error::Error;
    match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown => status.source().is_some(),
        _ => false,
    }
}

/// A fresh idempotency key for one logical CreatePlan/StreamPlan call (sent again, the same,
/// on each retry of it): 128 bits from std's OS-seeded hasher keys over the time, a counter
/// and the process id, as 32 hex digits.
fn new_request_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = (
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::process::id(),
    );
    let (a, b) = (RandomState::new(), RandomState::new());
    format!("{:016x}{:016x}", a.hash_one(seed), b.hash_one(seed))
}

/// A client of one server, or of several replicas of one service (on one shared store): then
/// calls go to the replicas in turn (round-robin, one HTTP/2 connection each, so that calls
/// spread however many a connection carries), and a call refused as UNAVAILABLE (the replica
/// is down, unreachable or shutting down, or its store is; or the connection broke mid-call) is
/// tried once on each other replica
/// before the error is returned. Every call is retried so but a plan's stream
/// ([`Client::stream_plan`] retries only the call that opens it). A plan call carries an
/// idempotency key (`request_id`), one per call and the same on each retry: a plan stored by a
/// replica whose answer was lost is the answer of the retry, not stored twice.
#[derive(Clone)]
pub struct Client {
    /// The first replica's client ([`Client::raw`], feature `grpc-raw`).
    #[cfg(feature = "grpc-raw")]
    inner: PlanningServiceClient<Channel>,
    /// One client per replica, in the order given.
    replicas: Arc<[PlanningServiceClient<Channel>]>,
    /// The replica of the next call (modulo their number), shared by the clones.
    next: Arc<std::sync::atomic::AtomicUsize>,
    /// `Bearer TOKEN`, marked sensitive (hyper/h2 never print it).
    authorization: Option<MetadataValue<Ascii>>,
}

/// The upload chunks of an anatomy, made lazily (a large mesh is not copied twice): the header,
/// then each structure's mesh in chunks.
pub fn upload_chunks(
    anatomy: Arc<AnatomyInput>,
) -> impl futures::Stream<Item = pb::UploadAnatomyChunk> {
    let header = {
        let data = &*anatomy;
        pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::Header(pb::AnatomyHeader {
                name: data.name.clone(),
                frame: convert::frame_to_pb(data.frame) as i32,
                structures: data
                    .structures
                    .iter()
                    .map(|s| convert::descriptor_to_pb(&s.name, &s.role))
                    .collect(),
                labelmap: None,
            })),
        }
    };
    // (structure, vertex range, triangle range) per chunk.
    let mut plan = Vec::new();
    for (i, s) in anatomy.structures.iter().enumerate() {
        let nv = s.mesh.vertices_mm.len();
        let nt = s.mesh.triangles.len();
        let chunks = nv
            .div_ceil(VERTICES_PER_CHUNK)
            .max(nt.div_ceil(TRIANGLES_PER_CHUNK))
            .max(1);
        for c in 0..chunks {
            let v = (c * VERTICES_PER_CHUNK).min(nv)..((c + 1) * VERTICES_PER_CHUNK).min(nv);
            let t = (c * TRIANGLES_PER_CHUNK).min(nt)..((c + 1) * TRIANGLES_PER_CHUNK).min(nt);
            plan.push((i, v, t));
        }
    }
    let meshes = futures::stream::iter(plan).map(move |(i, v, t)| {
        let mesh = &anatomy.structures[i].mesh;
        pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::Mesh(pb::MeshChunk {
                structure_index: i as u32,
                vertices_mm: mesh.vertices_mm[v]
                    .iter()
                    .flat_map(|p| [p.x, p.y, p.z])
                    .collect(),
                triangles: mesh.triangles[t].iter().flatten().copied().collect(),
            })),
        }
    });
    futures::stream::once(async move { header }).chain(meshes)
}

/// A NIfTI label map to upload as it is: the server reads its header, meshes each label
/// (vertebrae, canal, forbidden labels) and stores the file's bytes, content addressed like a
/// mesh upload. The SDK does not parse it.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelMapUpload {
    /// The anatomy's name (plans report it as the case name).
    pub name: String,
    /// The frame the plans of this anatomy report in (the meshes are made in it).
    pub frame: PatientFrame,
    /// The file's name, e.g. "seg.nii.gz": names the map in the server's messages.
    pub file_name: String,
    /// The bytes of the `.nii` or `.nii.gz` file.
    pub nifti: Vec<u8>,
    /// How to read the label ids.
    pub convention: pb::LabelConvention,
    /// Per-id meanings over the convention's ("vertebra:L3", "spinal_canal", "forbidden",
    /// "rib:T5:left", "rib", "lung", "pleura", "ignore"); for `Table` the only ones.
    pub labels: BTreeMap<u16, String>,
}

impl LabelMapUpload {
    /// A label map file, named after it (without `.nii` / `.nii.gz`), frame LPS, no table
    /// entries. The error names the file.
    pub fn read(path: &Path, convention: pb::LabelConvention) -> Result<Self, String> {
        let nifti =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "labelmap.nii".into());
        let name = file_name
            .trim_end_matches(".gz")
            .trim_end_matches(".nii")
            .to_owned();
        Ok(LabelMapUpload {
            name,
            frame: PatientFrame::Lps,
            file_name,
            nifti,
            convention,
            labels: BTreeMap::new(),
        })
    }

    /// A convention by its name in case.toml: "totalsegmentator", "verse" or "table".
    pub fn convention_named(name: &str) -> Result<pb::LabelConvention, String> {
        match name.to_ascii_lowercase().as_str() {
            "totalsegmentator" => Ok(pb::LabelConvention::Totalsegmentator),
            "verse" => Ok(pb::LabelConvention::Verse),
            "table" => Ok(pb::LabelConvention::Table),
            _ => Err(format!(
                "unknown label convention {name:?} (expected \"totalsegmentator\", \"verse\" or \"table\")"
            )),
        }
    }
}

/// The upload chunks of a label map: the header (with `labelmap`, no meshes), then the file's
/// bytes in chunks of [`LABEL_BYTES_PER_CHUNK`].
pub fn label_upload_chunks(
    upload: Arc<LabelMapUpload>,
) -> impl futures::Stream<Item = pb::UploadAnatomyChunk> {
    let header = pb::UploadAnatomyChunk {
        chunk: Some(pb::upload_anatomy_chunk::Chunk::Header(pb::AnatomyHeader {
            name: upload.name.clone(),
            frame: convert::frame_to_pb(upload.frame) as i32,
            structures: Vec::new(),
            labelmap: Some(pb::LabelMapHeader {
                file_name: upload.file_name.clone(),
                convention: upload.convention as i32,
                labels: upload
                    .labels
                    .iter()
                    .map(|(label, meaning)| pb::LabelOverride {
                        label: u32::from(*label),
                        meaning: meaning.clone(),
                    })
                    .collect(),
            }),
        })),
    };
    let chunks = upload.nifti.len().div_ceil(LABEL_BYTES_PER_CHUNK);
    let volume = futures::stream::iter(0..chunks).map(move |c| {
        let n = upload.nifti.len();
        let range = c * LABEL_BYTES_PER_CHUNK..((c + 1) * LABEL_BYTES_PER_CHUNK).min(n);
        pb::UploadAnatomyChunk {
            chunk: Some(pb::upload_anatomy_chunk::Chunk::LabelVolume(
                pb::LabelVolumeChunk {
                    data: upload.nifti[range].to_vec(),
                },
            )),
        }
    });
    futures::stream::once(async move { header }).chain(volume)
}

impl Client {
    /// Connect to `url` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connect to `url` with TLS and/or a bearer token. `url` may list several replicas of one
    /// service, separated by commas (`http://a:50051,http://b:50051`): calls are spread over
    /// them and retried on another when one is down (see [`Client`]). A replica down at
    /// connect time is connected to later; the connect fails only when none answers.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self, ClientError> {
        let urls: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if urls.len() <= 1 {
            let (channel, authorization) = Self::channel(url.trim(), options, true).await?;
            return Ok(Self::with_channels(vec![channel], authorization));
        }
        let mut channels = Vec::with_capacity(urls.len());
        let mut authorization = None;
        let mut first_error = None;
        let mut down = 0;
        for u in &urls {
            match Self::channel(u, options, true).await {
                Ok((channel, auth)) => {
                    channels.push(channel);
                    authorization = auth;
                }
                Err(e @ ClientError::Connect { .. }) => {
                    down += 1;
                    first_error.get_or_insert(e);
                    let (channel, auth) = Self::channel(u, options, false).await?;
                    channels.push(channel);
                    authorization = auth;
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) if down == urls.len() => Err(e),
            _ => Ok(Self::with_channels(channels, authorization)),
        }
    }

    /// The channel to one replica (connected now, or lazily when `eager` is false) and the
    /// authorization header of `options`.
    async fn channel(
        url: &str,
        options: &ConnectOptions,
        eager: bool,
    ) -> Result<(Channel, Option<MetadataValue<Ascii>>), ClientError> {
        let connect_err = |source: tonic::transport::Error| ClientError::Connect {
            url: url.to_owned(),
            message: source.to_string(),
        };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(connect_err)?;
        let ConnectOptions {
            ca_cert_pem,
            client_identity_pem,
            tls_domain,
            token,
        } = options;
        if ca_cert_pem.is_some() || client_identity_pem.is_some() || url.starts_with("https:") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = ca_cert_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = client_identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(connect_err)?;
        }
        let authorization = match token {
            None => None,
            Some(t) => {
                let mut v: MetadataValue<Ascii> = format!("Bearer {}", t.trim())
                    .parse()
                    .map_err(|_| ClientError::BadToken)?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let channel = if eager {
            endpoint.connect().await.map_err(connect_err)?
        } else {
            endpoint.connect_lazy()
        };
        Ok((channel, authorization))
    }

    fn with_channels(channels: Vec<Channel>, authorization: Option<MetadataValue<Ascii>>) -> Self {
        let replicas: Arc<[PlanningServiceClient<Channel>]> = channels
            .into_iter()
            .map(|channel| {
                PlanningServiceClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            })
            .collect();
        Client {
            #[cfg(feature = "grpc-raw")]
            inner: replicas[0].clone(),
            replicas,
            next: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            authorization,
        }
    }

    /// How many replicas this client spreads its calls over.
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// Make a call on the next replica; on UNAVAILABLE, on each other replica in turn.
    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, tonic::Status>
    where
        F: FnMut(PlanningServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.replicas.len();
        let mut last = None;
        for _ in 0..n {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n;
            match f(self.replicas[i].clone()).await {
                Err(status) if replica_lost(&status) => last = Some(status),
                r => return r.map(tonic::Response::into_inner),
            }
        }
        Err(last.unwrap_or_else(|| tonic::Status::unavailable("no replica")))
    }

    /// A request carrying this client's bearer token, if it has one.
    fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(v) = &self.authorization {
            request.metadata_mut().insert("authorization", v.clone());
        }
        request
    }

    /// A client on a channel made elsewhere (feature `grpc-raw`).
    #[cfg(feature = "grpc-raw")]
    pub fn from_channel(channel: Channel) -> Self {
        Self::with_channels(vec![channel], None)
    }

    /// The generated client, for calls this wrapper does not cover (wrap their messages in
    /// [`Client::request`] to send the token; `ClientError::from(status)` types its errors).
    /// With [`Client::from_channel`] and [`Client::request`], the one door to tonic types,
    /// behind the feature `grpc-raw`.
    #[cfg(feature = "grpc-raw")]
    pub fn raw(&mut self) -> &mut PlanningServiceClient<Channel> {
        &mut self.inner
    }

    /// A request carrying this client's bearer token, if it has one (feature `grpc-raw`).
    #[cfg(feature = "grpc-raw")]
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.authorized(message)
    }

    /// Upload an anatomy in chunks; returns its metadata (with the content-addressed id).
    pub async fn upload_anatomy(
        &mut self,
        anatomy: &AnatomyInput,
    ) -> Result<pb::Anatomy, ClientError> {
        self.upload_anatomy_shared(Arc::new(anatomy.clone())).await
    }

    /// [`Client::upload_anatomy`] without copying the anatomy.
    pub async fn upload_anatomy_shared(
        &mut self,
        anatomy: Arc<AnatomyInput>,
    ) -> Result<pb::Anatomy, ClientError> {
        // Content-addressed: uploading again (on another replica) stores nothing twice.
        self.call(|mut c| {
            let r = self.authorized(upload_chunks(anatomy.clone()));
            async move { c.upload_anatomy(r).await }
        })
        .await
        .map_err(status_error)
    }

    /// Upload a NIfTI label map, meshed on the server; returns the anatomy's metadata: its
    /// content-addressed id, the structures found (with their label ids, voxels and pieces
    /// left out) and the vertebrae refused as cut by the scan (`labelmap.refused`).
    pub async fn upload_labelmap(
        &mut self,
        upload: Arc<LabelMapUpload>,
    ) -> Result<pb::Anatomy, ClientError> {
        self.call(|mut c| {
            let r = self.authorized(label_upload_chunks(upload.clone()));
            async move { c.upload_anatomy(r).await }
        })
        .await
        .map_err(status_error)
    }

    pub async fn get_anatomy(&mut self, anatomy_id: &str) -> Result<pb::Anatomy, ClientError> {
        let message = pb::GetAnatomyRequest {
            anatomy_id: anatomy_id.to_owned(),
        };
        self.call(|mut c| {
            let r = self.authorized(message.clone());
            async move { c.get_anatomy(r).await }
        })
        .await
        .map_err(status_error)
    }

    /// Plan a stored anatomy.
    pub async fn create_plan(
        &mut self,
        anatomy_id: &str,
        request: &PlanRequest,
    ) -> Result<StoredPlan, ClientError> {
        let message = pb::CreatePlanRequest {
            request_id: new_request_id(),
            ..convert::create_plan_request_to_pb(
                pb::create_plan_request::Anatomy::AnatomyId(anatomy_id.to_owned()),
                request,
            )
        };
        StoredPlan::from_pb(
            self.call(|mut c| {
                let r = self.authorized(message.clone());
                async move { c.create_plan(r).await }
            })
            .await
            .map_err(status_error)?,
        )
    }

    /// Plan an anatomy sent inline (small cases).
    pub async fn create_plan_inline(
        &mut self,
        anatomy: &AnatomyInput,
        request: &PlanRequest,
    ) -> Result<StoredPlan, ClientError> {
        let message = pb::CreatePlanRequest {
            request_id: new_request_id(),
            ..convert::create_plan_request_to_pb(
                pb::create_plan_request::Anatomy::InlineAnatomy(convert::anatomy_to_pb(anatomy)),
                request,
            )
        };
        StoredPlan::from_pb(
            self.call(|mut c| {
                let r = self.authorized(message.clone());
                async move { c.create_plan(r).await }
            })
            .await
            .map_err(status_error)?,
        )
    }

    /// Plan a stored anatomy, calling `on_level(level, done, total)` as levels finish.
    pub async fn stream_plan(
        &mut self,
        anatomy_id: &str,
        request: &PlanRequest,
        mut on_level: impl FnMut(&LevelPlan, usize, usize),
    ) -> Result<StoredPlan, ClientError> {
        let message = pb::CreatePlanRequest {
            request_id: new_request_id(),
            ..convert::create_plan_request_to_pb(
                pb::create_plan_request::Anatomy::AnatomyId(anatomy_id.to_owned()),
                request,
            )
        };
        let mut stream = self
            .call(|mut c| {
                let r = self.authorized(message.clone());
                async move { c.stream_plan(r).await }
            })
            .await
            .map_err(status_error)?;
        while let Some(progress) = stream.next().await {
            let pb::PlanProgress {
                levels_done,
                levels_total,
                event,
            } = progress.map_err(status_error)?;
            match event {
                Some(pb::plan_progress::Event::Level(level)) => {
                    let level = convert::level_plan_from_pb(level, "level")?;
                    on_level(&level, levels_done as usize, levels_total as usize);
                }
                Some(pb::plan_progress::Event::Plan(plan)) => return StoredPlan::from_pb(plan),
                None => {}
            }
        }
        Err(ClientError::IncompleteStream)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn evaluate(
        &mut self,
        anatomy_id: &str,
        level: Level,
        side: Side,
        entry_mm: [f64; 3],
        target_mm: [f64; 3],
        instrument: &Instrument,
        safety: &Safety,
    ) -> Result<Evaluation, ClientError> {
        self.evaluate_with_route(
            anatomy_id,
            level,
            side,
            entry_mm,
            target_mm,
            instrument,
            safety,
            RouteRule::Transpedicular,
        )
        .await
    }

    /// [`Client::evaluate`] under the route rule the trajectory claims (the request's `route`):
    /// [`RouteRule::Extrapedicular`] holds it to the extrapedicular rule (docking on the rib
    /// head-neck, beside the pedicle), as `planning::evaluate_with_route` does.
    #[allow(clippy::too_many_arguments)]
    pub async fn evaluate_with_route(
        &mut self,
        anatomy_id: &str,
        level: Level,
        side: Side,
        entry_mm: [f64; 3],
        target_mm: [f64; 3],
        instrument: &Instrument,
        safety: &Safety,
        route_rule: RouteRule,
    ) -> Result<Evaluation, ClientError> {
        let message = pb::EvaluateTrajectoryRequest {
            anatomy: Some(pb::evaluate_trajectory_request::Anatomy::AnatomyId(
                anatomy_id.to_owned(),
            )),
            level: convert::level_to_pb(level) as i32,
            side: convert::side_to_pb(side) as i32,
            entry_mm: Some(convert::point_to_pb(entry_mm)),
            target_mm: Some(convert::point_to_pb(target_mm)),
            instrument: Some(convert::instrument_options_to_pb(instrument)),
            safety: Some(convert::safety_options_to_pb(safety)),
            route: convert::route_rule_to_pb(route_rule) as i32,
        };
        let e = self
            .call(|mut c| {
                let r = self.authorized(message.clone());
                async move { c.evaluate_trajectory(r).await }
            })
            .await
            .map_err(status_error)?;
        Ok(convert::evaluation_from_pb(e)?)
    }

    pub async fn get_plan(&mut self, plan_id: &str) -> Result<StoredPlan, ClientError> {
        let message = pb::GetPlanRequest {
            plan_id: plan_id.to_owned(),
        };
        StoredPlan::from_pb(
            self.call(|mut c| {
                let r = self.authorized(message.clone());
                async move { c.get_plan(r).await }
            })
            .await
            .map_err(status_error)?,
        )
    }

    /// Delete a stored plan of this client's principal. `Ok(false)`: there is no such plan to
    /// delete (already deleted, purged, never existed, or someone else's: the server answers
    /// NOT_FOUND alike), so a repeated delete is not an error.
    pub async fn delete_plan(&mut self, plan_id: &str) -> Result<bool, ClientError> {
        let message = pb::DeletePlanRequest {
            plan_id: plan_id.to_owned(),
        };
        let answer = self
            .call(|mut c| {
                let r = self.authorized(message.clone());
                async move { c.delete_plan(r).await }
            })
            .await;
        match answer {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(status_error(status)),
        }
    }

    /// Delete a stored anatomy of this client's principal; with `cascade` its plans of this
    /// principal too (without, such plans make it fail with `Code::FailedPrecondition`).
    /// `Ok(None)`: there is no such anatomy to delete (as for [`Client::delete_plan`]).
    pub async fn delete_anatomy(
        &mut self,
        anatomy_id: &str,
        cascade: bool,
    ) -> Result<Option<pb::DeleteAnatomyResponse>, ClientError> {
        let message = pb::DeleteAnatomyRequest {
            anatomy_id: anatomy_id.to_owned(),
            cascade,
        };
        let answer = self
            .call(|mut c| {
                let r = self.authorized(message.clone());
                async move { c.delete_anatomy(r).await }
            })
            .await;
        match answer {
            Ok(response) => Ok(Some(response)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status_error(status)),
        }
    }

    /// One page of this principal's stored plans (`page_token`: empty for the first page).
    pub async fn list_plans(
        &mut self,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListPlansResponse, ClientError> {
        let message = pb::ListPlansRequest {
            page_size,
            page_token: page_token.to_owned(),
        };
        self.call(|mut c| {
            let r = self.authorized(message.clone());
            async move { c.list_plans(r).await }
        })
        .await
        .map_err(status_error)
    }
}
