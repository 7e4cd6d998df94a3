//! # safebox-agent
//!
//! The process inside a box. It serves attestation documents for the box over HTTP
//! (`safebox::agent_api` describes the protocol) and holds a per-boot P-384 key pair whose
//! public key goes into every document's `public_key` (callers cannot choose another: only
//! `user_data` is theirs), so peers can bind a shared key to what the box proved it runs.
//!
//! Two listeners:
//! - the network listener (`--listen`) serves attestation to anyone, and link management
//!   (verify a peer, establish, status, drop) only to requests signed with the box key it was
//!   started with (`--box-key`, see `safebox::box_key`); a link id is established once;
//! - the workload socket (`--workload-socket`), a Unix socket inside the box (mode 0600), is
//!   the only way to use a link's key (seal, open): the key never crosses the network.
//!
//! Where documents come from:
//! - in a Nitro Enclave, the NSM device (`--nsm-device /dev/nsm`): enclave documents;
//! - for an EIF box on the local backend, the software NSM (`--eif FILE --nsm-dir DIR`) with
//!   the PCRs of the EIF the box was started from;
//! - in a box booted from a disk (a `"uki"` image), its TPM (`--nsm tpm`): NitroTPM documents
//!   (`nitrotpm_pcrs`). Its settings (box key, listen address) come from a boot configuration
//!   named by `--boot-config` ([`boot`]): `fw-cfg` under QEMU on the local backend, where the
//!   agent reads the PCRs the firmware measured from the kernel (`--tpm-pcrs`, default
//!   `/sys/class/tpm/tpm0/pcr-sha384`) and signs with the box's leaf of the local simulated
//!   root, which the host handed over; `ec2` on EC2, where the NitroTPM itself issues the
//!   document through its vendor command on `--tpm-device` (default `/dev/tpmrm0`, see
//!   [`nitrotpm`]; this path cannot run outside EC2 and is tested only up to the vendor
//!   command).
//!
//! `safebox-agent ssh-host-key PATH` makes a development box's SSH host key at boot
//! ([`ssh_host_key`]).

// Handlers refuse with a ready HTTP response (`Result<_, Response>`, axum's idiom); boxing it
// would buy nothing on these cold paths.
#![allow(clippy::result_large_err)]

pub mod boot;
pub mod nitrotpm;
pub mod nsm;
pub mod ssh_host_key;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use p384::elliptic_curve::sec1::ToEncodedPoint as _;
use safebox::agent_api::{AgentClient, EstablishRequest, EstablishResponse, PeerRequest, PeerResponse};
use safebox::attest::chain::TrustRoot;
use safebox::attest::verify::{verify, Policy};
use safebox::box_key::{RequestVerifier, AUTH_HEADER};
use safebox::link::{LinkKey, LinkSides};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use nsm::Nsm;

/// How the agent was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Written with `http://ADDRESS` once listening (atomically), for whoever started the agent.
    pub endpoint_file: Option<PathBuf>,
    /// The attestation source.
    pub nsm: NsmSource,
    /// The public half of the box key (64 hex digits) that management requests must be signed
    /// with; without one, the agent accepts no management request.
    pub box_key: Option<String>,
    /// Where the workload reaches its link keys (a Unix socket inside the box).
    pub workload_socket: Option<PathBuf>,
}

/// Where documents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsmSource {
    /// The NSM device (`/dev/nsm`).
    Device(PathBuf),
    /// The software NSM in `dir`, for a box booted from `eif`.
    Simulated {
        /// The EIF the box runs.
        eif: PathBuf,
        /// The simulated hierarchy's folder.
        dir: PathBuf,
        /// The module id to report.
        module_id: String,
    },
    /// The TPM of a box booted from a disk (`--nsm tpm`), configured at boot.
    Tpm {
        /// Where the box key and listen address come from: it also decides the signer (QEMU's
        /// firmware configuration brings a simulated leaf; EC2 has the NitroTPM).
        boot: boot::BootSource,
        /// The kernel's SHA-384 PCR folder (simulated signing).
        pcrs_dir: PathBuf,
        /// The TPM device (NitroTPM).
        device: PathBuf,
    },
}

/// How many issued documents the agent remembers (to recognise its own in a link).
const ISSUED_MEMORY: usize = 256;
/// How long the agent waits for a peer agent.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// A peer verified for a link not yet established.
struct VerifiedPeer {
    document_sha256: String,
    public_key: Vec<u8>,
}

/// An established link: its key never leaves this process.
struct Link {
    key: LinkKey,
    binding_sha256: String,
}

/// The agent's state.
pub struct Agent {
    nsm: Nsm,
    /// The per-boot key pair; its public half is bound into documents.
    boot_key: p384::SecretKey,
    /// The root peers' documents must chain to.
    peer_root: TrustRoot,
    /// Checks that management requests are signed with the box key.
    requests: Mutex<RequestVerifier>,
    issued: Mutex<VecDeque<String>>,
    peers: Mutex<HashMap<String, VerifiedPeer>>,
    links: Mutex<HashMap<String, Link>>,
    /// Ids of links that were established, including dropped ones: an id is used once.
    used_ids: Mutex<HashSet<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

impl Agent {
    /// The per-boot public key, uncompressed SEC1.
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.boot_key.public_key().to_encoded_point(false).as_bytes().to_vec()
    }

    /// Refuses (401) a management request not signed with the box key for this agent.
    fn authorize(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
        let path = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
        let header = headers.get(AUTH_HEADER).and_then(|v| v.to_str().ok());
        lock(&self.requests)
            .check(
                header,
                &hex::encode(self.public_key()),
                method.as_str(),
                &path,
                body,
                now_ms(),
            )
            .map_err(|e| refused(StatusCode::UNAUTHORIZED, e.to_string()))
    }

    /// Refuses (409) a link id that is or was established: a changed link is a new link.
    fn fresh_link_id(&self, id: &str) -> Result<(), Response> {
        if lock(&self.used_ids).contains(id) {
            return Err(refused(
                StatusCode::CONFLICT,
                format!("link {id} was established already; a link's peer and expectations never change: make a new link instead"),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct AttestationQuery {
    nonce: Option<String>,
    public_key: Option<String>,
    user_data: Option<String>,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message).into_response()
}

/// A hex query parameter, or why it is refused.
fn hex_param(name: &str, value: Option<&String>) -> Result<Option<Vec<u8>>, String> {
    let Some(value) = value else { return Ok(None) };
    let bytes = hex::decode(value).map_err(|_| format!("{name} is not hex"))?;
    if bytes.len() > safebox::attest::document::MAX_OPTIONAL_FIELD {
        return Err(format!(
            "{name} is longer than {} bytes",
            safebox::attest::document::MAX_OPTIONAL_FIELD
        ));
    }
    Ok(Some(bytes))
}

async fn attestation(State(agent): State<Arc<Agent>>, Query(query): Query<AttestationQuery>) -> Response {
    let parsed = (|| {
        Ok::<_, String>((
            hex_param("nonce", query.nonce.as_ref())?,
            hex_param("public_key", query.public_key.as_ref())?,
            hex_param("user_data", query.user_data.as_ref())?,
        ))
    })();
    let (nonce, public_key, user_data) = match parsed {
        Ok(parts) => parts,
        Err(message) => return bad_request(message),
    };
    // Documents always bind this boot's own key: a document of this box binding a key of the
    // caller's choosing would let whoever holds that key pose as this box to a peer.
    let own_key = agent.public_key();
    if public_key.as_ref().is_some_and(|key| *key != own_key) {
        return bad_request(
            "this agent binds its own per-boot public key into every document; pass caller data in user_data instead"
                .into(),
        );
    }
    let public_key = Some(own_key);
    let worker = Arc::clone(&agent);
    match tokio::task::spawn_blocking(move || worker.nsm.attest(nonce, public_key, user_data)).await {
        Ok(Ok(document)) => {
            let mut issued = lock(&agent.issued);
            if issued.len() >= ISSUED_MEMORY {
                issued.pop_front();
            }
            issued.push_back(hex::encode(Sha256::digest(&document)));
            ([(header::CONTENT_TYPE, "application/cbor")], document).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn refused(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

/// A signed JSON request's body, or the refusal.
fn signed_json<T: serde::de::DeserializeOwned>(
    agent: &Agent,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, Response> {
    agent.authorize(method, uri, headers, body)?;
    serde_json::from_slice(body).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("the request is not the expected JSON: {e}"),
        )
    })
}

/// Fetches the peer's document with a fresh nonce and verifies it before anything else.
async fn link_peer(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: PeerRequest = match signed_json(&agent, &method, &uri, &headers, &body) {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    if let Err(refusal) = agent.fresh_link_id(&id) {
        return refusal;
    }
    if request.expected_pcrs.is_empty() {
        return refused(
            StatusCode::BAD_REQUEST,
            "no PCRs are expected of the peer, so any box would pass; name the peer's expected PCRs",
        );
    }
    let worker = Arc::clone(&agent);
    let checked = tokio::task::spawn_blocking(move || -> Result<(PeerResponse, VerifiedPeer), String> {
        let client = AgentClient::new(&request.peer_endpoint, PEER_TIMEOUT).map_err(|e| e.to_string())?;
        let nonce: [u8; 32] = rand::random();
        let document = client.attestation(&nonce, None, None).map_err(|e| e.to_string())?;
        let expected = request
            .expected_pcrs
            .iter()
            .map(|(i, v)| {
                hex::decode(v)
                    .map(|b| (*i, b))
                    .map_err(|_| format!("expected PCR{i} is not hex"))
            })
            .collect::<Result<_, _>>()?;
        let policy = Policy {
            root: &worker.peer_root,
            at_ms: now_ms(),
            expected_pcrs: expected,
            nonce: Some(nonce.to_vec()),
            max_age_ms: Some(request.max_age_ms),
            allow_debug: false,
            kind: None,
        };
        let verified =
            verify(&document, &policy, None).map_err(|e| format!("the peer's attestation does not verify: {e}"))?;
        let public_key = verified
            .document
            .public_key
            .clone()
            .ok_or("the peer's document binds no public key")?;
        Ok((
            PeerResponse {
                peer_document: base64::engine::general_purpose::STANDARD.encode(&document),
                nonce: hex::encode(nonce),
                peer_document_sha256: verified.document_sha256.clone(),
            },
            VerifiedPeer {
                document_sha256: verified.document_sha256,
                public_key,
            },
        ))
    })
    .await;
    match checked {
        Ok(Ok((response, peer))) => {
            lock(&agent.peers).insert(id, peer);
            Json(response).into_response()
        }
        Ok(Err(reason)) => refused(StatusCode::FORBIDDEN, reason),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Derives the link key, once this side verified its peer and the caller names the two
/// documents: the peer's (which this agent verified) and this agent's own (which it issued).
async fn link_establish(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: EstablishRequest = match signed_json(&agent, &method, &uri, &headers, &body) {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    if let Err(refusal) = agent.fresh_link_id(&id) {
        return refusal;
    }
    let Some(peer) = lock(&agent.peers).remove(&id) else {
        return refused(
            StatusCode::CONFLICT,
            format!("link {id}: the peer has not been verified here"),
        );
    };
    let (own_digest, peer_digest) = match request.side.as_str() {
        "a" => (&request.a_document_sha256, &request.b_document_sha256),
        "b" => (&request.b_document_sha256, &request.a_document_sha256),
        other => return refused(StatusCode::BAD_REQUEST, format!("side {other:?} is not a or b")),
    };
    if *peer_digest != peer.document_sha256 {
        return refused(
            StatusCode::FORBIDDEN,
            format!("link {id}: the peer document named is not the one this agent verified"),
        );
    }
    if !lock(&agent.issued).contains(own_digest) {
        return refused(
            StatusCode::FORBIDDEN,
            format!("link {id}: this agent did not issue the document named as its own"),
        );
    }
    let own_key = hex::encode(agent.public_key());
    let peer_key = hex::encode(&peer.public_key);
    let (a_public_key, b_public_key) = if request.side == "a" {
        (own_key, peer_key)
    } else {
        (peer_key, own_key)
    };
    let sides = LinkSides {
        a_document_sha256: request.a_document_sha256.clone(),
        b_document_sha256: request.b_document_sha256.clone(),
        a_public_key,
        b_public_key,
    };
    match LinkKey::derive(&agent.boot_key, &peer.public_key, &sides, &id) {
        Ok(key) => {
            let binding_sha256 = sides.binding_sha256();
            lock(&agent.used_ids).insert(id.clone());
            lock(&agent.links).insert(
                id,
                Link {
                    key,
                    binding_sha256: binding_sha256.clone(),
                },
            );
            Json(EstablishResponse { binding_sha256 }).into_response()
        }
        Err(e) => refused(StatusCode::FORBIDDEN, e.to_string()),
    }
}

async fn link_status(State(agent): State<Arc<Agent>>, Path(id): Path<String>) -> Response {
    match lock(&agent.links).get(&id) {
        Some(link) => Json(EstablishResponse {
            binding_sha256: link.binding_sha256.clone(),
        })
        .into_response(),
        None => refused(StatusCode::NOT_FOUND, format!("no link {id}")),
    }
}

/// The binding of a link, for its controller (signed).
async fn signed_link_status(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = agent.authorize(&method, &uri, &headers, b"") {
        return refusal;
    }
    link_status(State(agent), Path(id)).await
}

async fn link_delete(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = agent.authorize(&method, &uri, &headers, b"") {
        return refusal;
    }
    lock(&agent.links).remove(&id);
    lock(&agent.peers).remove(&id);
    StatusCode::NO_CONTENT.into_response()
}

async fn link_seal(State(agent): State<Arc<Agent>>, Path(id): Path<String>, body: Bytes) -> Response {
    match lock(&agent.links).get(&id) {
        Some(link) => link.key.seal(&body).into_response(),
        None => refused(StatusCode::NOT_FOUND, format!("no link {id}")),
    }
}

async fn link_open(State(agent): State<Arc<Agent>>, Path(id): Path<String>, body: Bytes) -> Response {
    match lock(&agent.links).get(&id).map(|link| link.key.open(&body)) {
        Some(Ok(plain)) => plain.into_response(),
        Some(Err(e)) => refused(StatusCode::BAD_REQUEST, e.to_string()),
        None => refused(StatusCode::NOT_FOUND, format!("no link {id}")),
    }
}

/// The routes of the network listener: attestation for anyone, link management for requests
/// signed with the box key. No route here touches a link's key.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/attestation", get(attestation))
        .route("/health", get(|| async { "ok" }))
        .route("/links/{id}", get(signed_link_status).delete(link_delete))
        .route("/links/{id}/peer", post(link_peer))
        .route("/links/{id}/establish", post(link_establish))
        .with_state(agent)
}

/// The routes of the workload socket, inside the box: the link keys' only users.
pub fn workload_router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/links/{id}", get(link_status))
        .route("/links/{id}/seal", post(link_seal))
        .route("/links/{id}/open", post(link_open))
        .with_state(agent)
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Starting failed.
    #[error("{0}")]
    Start(String),
}

/// Runs the agent until the process is stopped.
///
/// # Errors
/// [`AgentError`] when it cannot start.
pub async fn run(mut config: AgentConfig) -> Result<(), AgentError> {
    let (nsm, peer_root) = match &config.nsm {
        NsmSource::Device(path) => (Nsm::Device(path.clone()), TrustRoot::aws()),
        NsmSource::Simulated { eif, dir, module_id } => {
            // Peers on the local backend are attested by the same simulated root.
            let root = safebox::attest::simulated::SimulatedNitro::open_or_create(dir)
                .map_err(|e| AgentError::Start(e.to_string()))?
                .trust_root()
                .map_err(|e| AgentError::Start(e.to_string()))?;
            (
                Nsm::simulated(eif, dir, module_id.clone()).map_err(AgentError::Start)?,
                root,
            )
        }
        NsmSource::Tpm { boot, pcrs_dir, device } => {
            let source = boot.clone();
            let loaded = tokio::task::spawn_blocking(move || boot::load(&source))
                .await
                .map_err(|e| AgentError::Start(e.to_string()))?
                .map_err(AgentError::Start)?;
            let listen = loaded.config.listen.as_deref().unwrap_or(DEFAULT_BOX_LISTEN);
            config.listen = listen.parse().map_err(|_| {
                AgentError::Start(format!(
                    "the boot configuration's listen address {listen:?} is not an address"
                ))
            })?;
            config.box_key = Some(loaded.config.box_key.clone());
            match loaded.leaf {
                Some(leaf) => {
                    // Fail at boot, not at the first request, when the PCRs cannot be read.
                    nsm::read_tpm_pcrs(pcrs_dir).map_err(AgentError::Start)?;
                    let root = leaf.trust_root().map_err(|e| AgentError::Start(e.to_string()))?;
                    let module_id = loaded
                        .config
                        .module_id
                        .clone()
                        .unwrap_or_else(|| "i-local-tpm".to_owned());
                    eprintln!("safebox-agent: NitroTPM documents of {module_id}, signed with a SIMULATED leaf (local backend)");
                    (
                        Nsm::TpmSimulated {
                            leaf: Box::new(leaf),
                            pcrs_dir: pcrs_dir.clone(),
                            module_id,
                        },
                        root,
                    )
                }
                None => {
                    eprintln!("safebox-agent: NitroTPM documents from {}", device.display());
                    (Nsm::NitroTpm(device.clone()), TrustRoot::aws())
                }
            }
        }
    };
    let agent = Arc::new(Agent {
        nsm,
        boot_key: p384::SecretKey::random(&mut rand::rngs::OsRng),
        peer_root,
        requests: Mutex::new(
            RequestVerifier::new(config.box_key.as_deref()).map_err(|e| AgentError::Start(e.to_string()))?,
        ),
        issued: Mutex::new(VecDeque::new()),
        peers: Mutex::new(HashMap::new()),
        links: Mutex::new(HashMap::new()),
        used_ids: Mutex::new(HashSet::new()),
    });
    let workload = match &config.workload_socket {
        Some(path) => Some(workload_listener(path)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| AgentError::Start(format!("listening on {}: {e}", config.listen)))?;
    let address = listener.local_addr().map_err(|e| AgentError::Start(e.to_string()))?;
    if let Some(path) = &config.endpoint_file {
        let staging = path.with_extension("tmp");
        std::fs::write(&staging, format!("http://{address}"))
            .and_then(|()| std::fs::rename(&staging, path))
            .map_err(|e| AgentError::Start(format!("writing {}: {e}", path.display())))?;
    }
    eprintln!("safebox-agent: serving on http://{address}");
    let network = axum::serve(listener, router(Arc::clone(&agent)));
    match workload {
        Some(socket) => {
            let inside = axum::serve(socket, workload_router(agent));
            tokio::select! {
                served = network => served,
                served = inside => served,
            }
        }
        None => network.await,
    }
    .map_err(|e| AgentError::Start(e.to_string()))
}

/// Binds the workload socket at `path`, readable and writable by this user only.
fn workload_listener(path: &std::path::Path) -> Result<tokio::net::UnixListener, AgentError> {
    use std::os::unix::fs::PermissionsExt as _;
    let start = |what: &str, e: std::io::Error| AgentError::Start(format!("{what} {}: {e}", path.display()));
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(start("removing the old socket", e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| start("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| start("protecting", e))?;
    eprintln!("safebox-agent: workload socket {}", path.display());
    Ok(listener)
}

/// Where a booted box's agent listens unless its boot configuration says otherwise: every
/// interface, port [`safebox::agent_api::AGENT_PORT`] (the host forwards to it).
const DEFAULT_BOX_LISTEN: &str = "0.0.0.0:8443";

/// Parses command-line arguments (after the program name) into a configuration.
///
/// `--listen ADDR` (default 127.0.0.1:8443), `--endpoint-file FILE`, `--box-key HEX`,
/// `--workload-socket PATH`, and one attestation source: `--nsm-device PATH`, or
/// `--eif FILE --nsm-dir DIR --module-id ID`, or `--nsm tpm --boot-config fw-cfg|ec2` (with
/// `--tpm-pcrs DIR`, `--tpm-device PATH`, `--fw-cfg-dir DIR`, `--imds HOST:PORT` to point
/// elsewhere than the defaults). A booted box's box key and listen address come from its boot
/// configuration, so `--nsm tpm` refuses `--box-key` and `--listen`.
///
/// # Errors
/// A usage message.
pub fn parse_args(args: &[String]) -> Result<AgentConfig, String> {
    let mut listen = None;
    let (mut endpoint_file, mut device, mut eif, mut dir, mut module_id) = (None, None, None, None, None);
    let (mut box_key, mut workload_socket) = (None, None);
    let (mut mode, mut boot_config, mut tpm_pcrs, mut tpm_device, mut fw_cfg_dir, mut imds) =
        (None, None, None, None, None, None);
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?),
            "--endpoint-file" => endpoint_file = Some(PathBuf::from(value()?)),
            "--nsm-device" => device = Some(PathBuf::from(value()?)),
            "--eif" => eif = Some(PathBuf::from(value()?)),
            "--nsm-dir" => dir = Some(PathBuf::from(value()?)),
            "--module-id" => module_id = Some(value()?),
            "--box-key" => box_key = Some(value()?),
            "--workload-socket" => workload_socket = Some(PathBuf::from(value()?)),
            "--nsm" => mode = Some(value()?),
            "--boot-config" => boot_config = Some(value()?),
            "--tpm-pcrs" => tpm_pcrs = Some(PathBuf::from(value()?)),
            "--tpm-device" => tpm_device = Some(PathBuf::from(value()?)),
            "--fw-cfg-dir" => fw_cfg_dir = Some(PathBuf::from(value()?)),
            "--imds" => imds = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let tpm_only = tpm_pcrs.is_some() || tpm_device.is_some() || fw_cfg_dir.is_some() || imds.is_some();
    let nsm = match (mode.as_deref(), device, eif, dir) {
        (Some("tpm"), None, None, None) => {
            if box_key.is_some() || listen.is_some() {
                return Err("--nsm tpm takes the box key and listen address from the boot configuration; remove --box-key and --listen".into());
            }
            let boot = match boot_config.as_deref() {
                Some("fw-cfg") if imds.is_none() => boot::BootSource::FwCfg(fw_cfg_dir.unwrap_or_else(|| PathBuf::from(boot::FW_CFG_DIR))),
                Some("ec2") if fw_cfg_dir.is_none() => boot::BootSource::Ec2(imds.unwrap_or_else(|| boot::EC2_IMDS.to_owned())),
                Some(source @ ("fw-cfg" | "ec2")) => {
                    return Err(format!("--boot-config {source} does not read --{}", if source == "ec2" { "fw-cfg-dir" } else { "imds" }))
                }
                Some(other) => return Err(format!("--boot-config {other:?} is not fw-cfg (QEMU, local backend) or ec2 (EC2 user data)")),
                None => return Err("--nsm tpm needs --boot-config fw-cfg (QEMU, local backend) or --boot-config ec2 (EC2 user data)".into()),
            };
            NsmSource::Tpm {
                boot,
                pcrs_dir: tpm_pcrs.unwrap_or_else(|| PathBuf::from(nsm::SYSFS_PCRS)),
                device: tpm_device.unwrap_or_else(nitrotpm::default_device),
            }
        }
        (Some(other), ..) if other != "tpm" => return Err(format!("--nsm {other:?}: the only mode is tpm")),
        (Some(_), ..) => return Err("--nsm tpm cannot be combined with --nsm-device, --eif or --nsm-dir".into()),
        (None, Some(path), None, None) => NsmSource::Device(path),
        (None, None, Some(eif), Some(dir)) => NsmSource::Simulated {
            eif,
            dir,
            module_id: module_id.unwrap_or_else(|| "i-local-enc".to_owned()),
        },
        _ => return Err("give either --nsm-device PATH, or --eif FILE --nsm-dir DIR for the software NSM, or --nsm tpm --boot-config fw-cfg|ec2 in a booted box".into()),
    };
    if !matches!(nsm, NsmSource::Tpm { .. }) && (tpm_only || boot_config.is_some()) {
        return Err("--boot-config, --tpm-pcrs, --tpm-device, --fw-cfg-dir and --imds belong to --nsm tpm".into());
    }
    let listen = listen.unwrap_or_else(|| "127.0.0.1:8443".to_owned());
    Ok(AgentConfig {
        listen: listen
            .parse()
            .map_err(|_| format!("--listen {listen:?} is not an address like 127.0.0.1:8443"))?,
        endpoint_file,
        nsm,
        box_key,
        workload_socket,
    })
}

/// The command-line entry point shared by `safebox-agent` and the provider's `agent` mode.
#[must_use]
pub fn main_with_args(args: &[String]) -> std::process::ExitCode {
    if args.first().map(String::as_str) == Some("ssh-host-key") {
        let [_, path] = args else {
            eprintln!("safebox-agent: usage: safebox-agent ssh-host-key PATH");
            return std::process::ExitCode::from(2);
        };
        return match ssh_host_key::ensure(std::path::Path::new(path)) {
            Ok(line) => {
                println!("{line}");
                std::process::ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("safebox-agent: {message}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match parse_args(args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("safebox-agent: {message}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("safebox-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("safebox-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
