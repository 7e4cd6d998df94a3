//! # safebox-agent
//!
//! The process inside a box. It serves attestation documents for the box over HTTP
//! (`safebox::agent_api` describes the protocol) and holds a per-boot P-384 key pair whose
//! public key goes into every document's `public_key`, so peers can bind a shared key to what
//! the box proved it runs.
//!
//! On a Nitro enclave it asks the NSM device (`--nsm device`); on the local backend it uses
//! the software NSM (`--nsm-dir DIR`) with the PCRs of the EIF the box was started from.

pub mod nsm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use p384::elliptic_curve::sec1::ToEncodedPoint as _;
use serde::Deserialize;

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
}

/// The agent's state.
pub struct Agent {
    nsm: Nsm,
    /// The per-boot key pair; its public half is bound into documents.
    boot_key: p384::SecretKey,
}

impl Agent {
    /// The per-boot public key, uncompressed SEC1.
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.boot_key.public_key().to_encoded_point(false).as_bytes().to_vec()
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

fn hex_param(name: &str, value: Option<&String>) -> Result<Option<Vec<u8>>, Response> {
    value
        .map(|v| hex::decode(v).map_err(|_| bad_request(format!("{name} is not hex"))))
        .transpose()
        .and_then(|v| match v {
            Some(bytes) if bytes.len() > safebox::attest::document::MAX_OPTIONAL_FIELD => Err(bad_request(format!(
                "{name} is longer than {} bytes",
                safebox::attest::document::MAX_OPTIONAL_FIELD
            ))),
            other => Ok(other),
        })
}

async fn attestation(State(agent): State<Arc<Agent>>, Query(query): Query<AttestationQuery>) -> Response {
    let parsed = (|| {
        Ok::<_, Response>((
            hex_param("nonce", query.nonce.as_ref())?,
            hex_param("public_key", query.public_key.as_ref())?,
            hex_param("user_data", query.user_data.as_ref())?,
        ))
    })();
    let (nonce, public_key, user_data) = match parsed {
        Ok(parts) => parts,
        Err(response) => return response,
    };
    let public_key = public_key.or_else(|| Some(agent.public_key()));
    let worker = Arc::clone(&agent);
    match tokio::task::spawn_blocking(move || worker.nsm.attest(nonce, public_key, user_data)).await {
        Ok(Ok(document)) => ([(header::CONTENT_TYPE, "application/cbor")], document).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The agent's HTTP routes.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/attestation", get(attestation))
        .route("/health", get(|| async { "ok" }))
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
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let nsm = match &config.nsm {
        NsmSource::Device(path) => Nsm::Device(path.clone()),
        NsmSource::Simulated { eif, dir, module_id } => {
            Nsm::simulated(eif, dir, module_id.clone()).map_err(AgentError::Start)?
        }
    };
    let agent = Arc::new(Agent {
        nsm,
        boot_key: p384::SecretKey::random(&mut rand::rngs::OsRng),
    });
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
    axum::serve(listener, router(agent))
        .await
        .map_err(|e| AgentError::Start(e.to_string()))
}

/// Parses command-line arguments (after the program name) into a configuration.
///
/// `--listen ADDR` (default 127.0.0.1:8443), `--endpoint-file FILE`, and either
/// `--nsm-device PATH` or `--eif FILE --nsm-dir DIR --module-id ID`.
///
/// # Errors
/// A usage message.
pub fn parse_args(args: &[String]) -> Result<AgentConfig, String> {
    let mut listen = "127.0.0.1:8443".to_owned();
    let (mut endpoint_file, mut device, mut eif, mut dir, mut module_id) = (None, None, None, None, None);
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        let mut value = || iter.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--endpoint-file" => endpoint_file = Some(PathBuf::from(value()?)),
            "--nsm-device" => device = Some(PathBuf::from(value()?)),
            "--eif" => eif = Some(PathBuf::from(value()?)),
            "--nsm-dir" => dir = Some(PathBuf::from(value()?)),
            "--module-id" => module_id = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let nsm = match (device, eif, dir) {
        (Some(path), None, None) => NsmSource::Device(path),
        (None, Some(eif), Some(dir)) => NsmSource::Simulated {
            eif,
            dir,
            module_id: module_id.unwrap_or_else(|| "i-local-enc".to_owned()),
        },
        _ => return Err("give either --nsm-device PATH, or --eif FILE --nsm-dir DIR for the software NSM".into()),
    };
    Ok(AgentConfig {
        listen: listen
            .parse()
            .map_err(|_| format!("--listen {listen:?} is not an address like 127.0.0.1:8443"))?,
        endpoint_file,
        nsm,
    })
}

/// The command-line entry point shared by `safebox-agent` and the provider's `agent` mode.
#[must_use]
pub fn main_with_args(args: &[String]) -> std::process::ExitCode {
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
