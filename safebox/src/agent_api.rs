//! The protocol between Safebox and the agent inside a box, and a small client for it.
//!
//! The agent serves plain HTTP/1.1 on the box's network endpoint (trust comes from the
//! attestation document and from signed requests, not from the transport):
//! - `GET /attestation?nonce=HEX[&public_key=HEX][&user_data=HEX]` answers a Nitro attestation
//!   document (`application/cbor`) for that nonce, to anyone. The document always binds the
//!   agent's per-boot public key: a `public_key` other than that one is refused; caller data
//!   goes in `user_data`.
//! - `GET /health` answers `ok`.
//! - Link management (JSON), only when signed with the box's key ([`crate::box_key`]):
//!   `POST /links/{id}/peer` makes the agent fetch and verify its peer's document with its own
//!   fresh nonce ([`PeerRequest`] -> [`PeerResponse`]); `POST /links/{id}/establish` derives the
//!   link key once both sides verified ([`EstablishRequest`] -> [`EstablishResponse`]);
//!   `GET /links/{id}` answers the binding; `DELETE /links/{id}` drops the key. A link id is
//!   established once: verifying or establishing an id that exists or existed is refused (a
//!   changed link is a new link).
//!
//! The workload inside the box reaches its link keys through the agent's Unix socket, never
//! through the network: `POST /links/{id}/seal` and `/open` encrypt and decrypt a message
//! under the link's key, `GET /links/{id}` answers its binding.
//!
//! The client speaks just enough HTTP/1.1 for this over TCP or a Unix socket (one request per
//! connection, bounded response size, timeouts), so the core needs no HTTP stack.
//!
//! # Boot configuration
//! An agent inside a booted disk (a box of a `"uki"` image) cannot be given arguments: its
//! command line is part of the measured image. It learns what differs per box from a
//! [`BootConfig`], a JSON object read at boot: under QEMU (the local backend) from the
//! firmware configuration file [`FW_CFG_CONFIG`] that the host hands over with `-fw_cfg`
//! (with the box's simulated signing leaf in [`FW_CFG_ATTESTATION`]), on EC2 from the
//! instance's user data (IMDSv2). Keys other than `safebox_*` are ignored, so user data may
//! carry other tools' settings; an unknown `safebox_*` key is refused (a misspelt setting
//! must not pass unnoticed).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::box_key::BoxKey;

/// Largest response body accepted.
const MAX_RESPONSE: u64 = 256 * 1024;

/// Why talking to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The endpoint is not `http://HOST:PORT`.
    #[error("{0:?} is not an agent endpoint; expected http://HOST:PORT")]
    Endpoint(String),
    /// Connecting, sending or receiving failed.
    #[error("the agent at {endpoint} did not answer: {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The agent answered with an error status.
    #[error("the agent at {endpoint} answered {status}: {body}")]
    Status {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// Its message.
        body: String,
    },
}

/// Asks an agent to verify its link peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerRequest {
    /// The peer agent's endpoint.
    pub peer_endpoint: String,
    /// PCR index to the value the peer's document must show (hex).
    pub expected_pcrs: BTreeMap<u32, String>,
    /// The oldest the peer's document may be.
    pub max_age_ms: u64,
}

/// What the agent verified about its peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerResponse {
    /// The peer's document, base64, for the caller to verify too.
    pub peer_document: String,
    /// The nonce the agent sent, hex.
    pub nonce: String,
    /// SHA-256 of the peer's document, hex.
    pub peer_document_sha256: String,
}

/// Asks an agent to derive the link key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EstablishRequest {
    /// Which side this agent is: `a` or `b`.
    pub side: String,
    /// SHA-256 of side A's document (the one side B verified).
    pub a_document_sha256: String,
    /// SHA-256 of side B's document (the one side A verified).
    pub b_document_sha256: String,
}

/// A link as an agent holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EstablishResponse {
    /// The link's binding, hex.
    pub binding_sha256: String,
}

/// The port the agent of a booted box listens on, inside the box.
pub const AGENT_PORT: u16 = 8443;
/// The firmware configuration file holding a QEMU box's [`BootConfig`] (QEMU `-fw_cfg name=`).
pub const FW_CFG_CONFIG: &str = "opt/safebox/config.json";
/// The firmware configuration file holding a QEMU box's simulated signing leaf (the PEM bundle
/// of `safebox::attest::simulated::SimulatedLeaf::to_pem`).
pub const FW_CFG_ATTESTATION: &str = "opt/safebox/attestation.pem";

/// What a booted box's agent is told at boot, as JSON:
/// `{"safebox_box_key": HEX, "safebox_listen": "0.0.0.0:8443", "safebox_module_id": ID}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// `safebox_box_key`: the public half of the box key (64 hex digits); management requests
    /// must be signed with its private half ([`crate::box_key`]).
    pub box_key: String,
    /// `safebox_listen` (optional): where the agent listens, default `0.0.0.0:8443`.
    pub listen: Option<String>,
    /// `safebox_module_id` (optional): the module id of a simulated box's documents (a
    /// NitroTPM sets its own).
    pub module_id: Option<String>,
}

impl BootConfig {
    /// The JSON text of this configuration.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut map = serde_json::Map::new();
        map.insert("safebox_box_key".into(), self.box_key.clone().into());
        if let Some(listen) = &self.listen {
            map.insert("safebox_listen".into(), listen.clone().into());
        }
        if let Some(module_id) = &self.module_id {
            map.insert("safebox_module_id".into(), module_id.clone().into());
        }
        serde_json::Value::Object(map).to_string()
    }

    /// Reads a configuration from `bytes`; `source` names where they came from, for messages.
    ///
    /// # Errors
    /// A [`BootConfigError`] naming the source, the field and what to write instead.
    pub fn parse(bytes: &[u8], source: &str) -> Result<Self, BootConfigError> {
        let origin = || source.to_owned();
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| BootConfigError::NotAnObject {
            origin: origin(),
            detail: format!(" ({e})"),
        })?;
        let serde_json::Value::Object(map) = value else {
            return Err(BootConfigError::NotAnObject {
                origin: origin(),
                detail: String::new(),
            });
        };
        let text = |key: &'static str| -> Result<Option<String>, BootConfigError> {
            match map.get(key) {
                None => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(BootConfigError::NotAString { origin: origin(), key }),
            }
        };
        if let Some(key) = map
            .keys()
            .find(|key| key.starts_with("safebox_") && !BOOT_CONFIG_KEYS.contains(&key.as_str()))
        {
            return Err(BootConfigError::UnknownSetting {
                origin: origin(),
                key: key.clone(),
            });
        }
        let box_key = text("safebox_box_key")?.ok_or_else(|| BootConfigError::NoBoxKey { origin: origin() })?;
        if box_key.len() != 64 || !box_key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BootConfigError::BoxKeyNotHex { origin: origin() });
        }
        let listen = text("safebox_listen")?;
        if let Some(listen) = &listen {
            listen
                .parse::<std::net::SocketAddr>()
                .map_err(|_| BootConfigError::ListenNotAddress {
                    origin: origin(),
                    listen: listen.clone(),
                })?;
        }
        let module_id = text("safebox_module_id")?;
        if module_id.as_ref().is_some_and(|m| m.is_empty() || m.len() > 256) {
            return Err(BootConfigError::ModuleIdLength { origin: origin() });
        }
        Ok(Self {
            box_key: box_key.to_ascii_lowercase(),
            listen,
            module_id,
        })
    }
}

/// The settings a boot configuration may hold.
const BOOT_CONFIG_KEYS: [&str; 3] = ["safebox_box_key", "safebox_listen", "safebox_module_id"];

/// Why a boot configuration was refused; `origin` names where it came from.
#[derive(Debug, thiserror::Error)]
pub enum BootConfigError {
    /// Not JSON, or JSON but not an object.
    #[error("{origin} is not a JSON object{detail}; write {{\"safebox_box_key\": \"<64 hex digits>\"}}")]
    NotAnObject {
        /// Where the bytes came from.
        origin: String,
        /// The JSON parser's complaint, in parentheses, if it had one.
        detail: String,
    },
    /// A setting that must be a string is not.
    #[error("{origin}: {key} is not a string")]
    NotAString {
        /// Where the bytes came from.
        origin: String,
        /// The setting.
        key: &'static str,
    },
    /// A `safebox_` setting this agent does not know.
    #[error("{origin} has an unknown setting {key:?}; the known ones are safebox_box_key, safebox_listen and safebox_module_id")]
    UnknownSetting {
        /// Where the bytes came from.
        origin: String,
        /// The setting.
        key: String,
    },
    /// No box key: the box would accept no management request.
    #[error("{origin} has no safebox_box_key: the box would accept no management request; give the box key's public half (64 hex digits)")]
    NoBoxKey {
        /// Where the bytes came from.
        origin: String,
    },
    /// The box key is not 64 hex digits.
    #[error("{origin}: safebox_box_key is not 64 hex digits")]
    BoxKeyNotHex {
        /// Where the bytes came from.
        origin: String,
    },
    /// `safebox_listen` is not a socket address.
    #[error("{origin}: safebox_listen {listen:?} is not an address like 0.0.0.0:{AGENT_PORT}")]
    ListenNotAddress {
        /// Where the bytes came from.
        origin: String,
        /// What it said.
        listen: String,
    },
    /// `safebox_module_id` is empty or too long.
    #[error("{origin}: safebox_module_id must be 1 to 256 characters")]
    ModuleIdLength {
        /// Where the bytes came from.
        origin: String,
    },
}

/// How a client reaches its agent.
#[derive(Debug, Clone)]
enum Transport {
    /// The network endpoint, `HOST:PORT`.
    Tcp(String),
    /// The in-box workload socket.
    Unix(PathBuf),
}

/// A client for one agent.
#[derive(Debug, Clone)]
pub struct AgentClient {
    endpoint: String,
    transport: Transport,
    timeout: Duration,
    /// The box key and the agent's per-boot public key (hex): requests are signed for it.
    signer: Option<(BoxKey, String)>,
}

impl AgentClient {
    /// A client for the agent at `endpoint` (`http://HOST:PORT`).
    ///
    /// # Errors
    /// [`AgentError::Endpoint`] for anything else.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, AgentError> {
        let host_port = endpoint
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/') && rest.contains(':'))
            .ok_or_else(|| AgentError::Endpoint(endpoint.to_owned()))?;
        Ok(Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            transport: Transport::Tcp(host_port.to_owned()),
            timeout,
            signer: None,
        })
    }

    /// A client for the agent's workload socket at `path` (inside the box).
    #[must_use]
    pub fn workload(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        let path = path.into();
        Self {
            endpoint: format!("unix:{}", path.display()),
            transport: Transport::Unix(path),
            timeout,
            signer: None,
        }
    }

    /// The same client, signing every request with `key` for the agent whose per-boot public
    /// key (as its attestation documents bind it) is `agent_key_hex`.
    #[must_use]
    pub fn signed(mut self, key: BoxKey, agent_key_hex: &str) -> Self {
        self.signer = Some((key, agent_key_hex.to_ascii_lowercase()));
        self
    }

    /// The endpoint.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An attestation document for `nonce`, optionally binding `public_key` and `user_data`.
    ///
    /// # Errors
    /// An [`AgentError`].
    pub fn attestation(
        &self,
        nonce: &[u8],
        public_key: Option<&[u8]>,
        user_data: Option<&[u8]>,
    ) -> Result<Vec<u8>, AgentError> {
        let mut path = format!("/attestation?nonce={}", hex::encode(nonce));
        if let Some(key) = public_key {
            path.push_str(&format!("&public_key={}", hex::encode(key)));
        }
        if let Some(data) = user_data {
            path.push_str(&format!("&user_data={}", hex::encode(data)));
        }
        self.request("GET", &path, None)
    }

    /// Whether the agent answers `/health`.
    ///
    /// # Errors
    /// An [`AgentError`].
    pub fn health(&self) -> Result<(), AgentError> {
        self.request("GET", "/health", None).map(|_| ())
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, AgentError> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let answer = self.send(method, path, body.as_deref(), "application/json")?;
        serde_json::from_slice(&answer).map_err(|e| AgentError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: format!("the answer is not the expected JSON ({e})"),
        })
    }

    /// Asks the agent to fetch and verify its peer's document for link `id`.
    ///
    /// # Errors
    /// An [`AgentError`], including the agent's refusal to trust the peer.
    pub fn link_peer(&self, id: &str, request: &PeerRequest) -> Result<PeerResponse, AgentError> {
        self.json("POST", &format!("/links/{id}/peer"), Some(request))
    }

    /// Asks the agent to derive the key of link `id`.
    ///
    /// # Errors
    /// An [`AgentError`].
    pub fn link_establish(&self, id: &str, request: &EstablishRequest) -> Result<EstablishResponse, AgentError> {
        self.json("POST", &format!("/links/{id}/establish"), Some(request))
    }

    /// The binding of link `id`, or `None` if the agent holds no such link.
    ///
    /// # Errors
    /// An [`AgentError`] other than "no such link".
    pub fn link_status(&self, id: &str) -> Result<Option<EstablishResponse>, AgentError> {
        match self.json::<EstablishResponse>("GET", &format!("/links/{id}"), None::<&()>) {
            Ok(link) => Ok(Some(link)),
            Err(AgentError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Drops link `id`'s key.
    ///
    /// # Errors
    /// An [`AgentError`].
    pub fn link_delete(&self, id: &str) -> Result<(), AgentError> {
        self.request("DELETE", &format!("/links/{id}"), None).map(|_| ())
    }

    /// Seals `message` under link `id`'s key (a workload client, inside the box).
    ///
    /// # Errors
    /// An [`AgentError`].
    pub fn link_seal(&self, id: &str, message: &[u8]) -> Result<Vec<u8>, AgentError> {
        self.request("POST", &format!("/links/{id}/seal"), Some(message))
    }

    /// Opens a message sealed under link `id`'s key (a workload client, inside the box).
    ///
    /// # Errors
    /// An [`AgentError`] when it does not open.
    pub fn link_open(&self, id: &str, sealed: &[u8]) -> Result<Vec<u8>, AgentError> {
        self.request("POST", &format!("/links/{id}/open"), Some(sealed))
    }

    /// Sends one request and returns the body of a 2xx answer.
    ///
    /// # Errors
    /// An [`AgentError`].
    pub fn request(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, AgentError> {
        self.send(method, path, body, "application/octet-stream")
    }

    fn send(&self, method: &str, path: &str, body: Option<&[u8]>, content_type: &str) -> Result<Vec<u8>, AgentError> {
        let unreachable = |reason: String| AgentError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let body = body.unwrap_or_default();
        let (mut stream, host): (Box<dyn ReadWrite>, &str) = match &self.transport {
            Transport::Tcp(host_port) => {
                let address = host_port
                    .to_socket_addrs()
                    .map_err(|e| unreachable(e.to_string()))?
                    .next()
                    .ok_or_else(|| unreachable("the host has no address".into()))?;
                let stream =
                    TcpStream::connect_timeout(&address, self.timeout).map_err(|e| unreachable(e.to_string()))?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .map_err(|e| unreachable(e.to_string()))?;
                let _ = stream.set_nodelay(true);
                (Box::new(stream), host_port)
            }
            Transport::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(|e| unreachable(e.to_string()))?;
                stream
                    .set_read_timeout(Some(self.timeout))
                    .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
                    .map_err(|e| unreachable(e.to_string()))?;
                (Box::new(stream), "localhost")
            }
        };
        let authorization = self.signer.as_ref().map_or_else(String::new, |(key, agent)| {
            let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            format!("Authorization: {}\r\n", key.authorize(agent, method, path, body, now))
        });
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{authorization}\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .map_err(|e| unreachable(e.to_string()))?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE + 4096)
            .read_to_end(&mut response)
            .map_err(|e| unreachable(e.to_string()))?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| unreachable("the answer is not HTTP".into()))?;
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let mut body = response[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unreachable("the answer has no status".into()))?;
        let length = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(length) = length {
            if body.len() < length {
                return Err(unreachable(format!(
                    "the answer was cut short ({} of {length} bytes)",
                    body.len()
                )));
            }
            body.truncate(length);
        }
        if body.len() as u64 > MAX_RESPONSE {
            return Err(unreachable(format!("the answer is larger than {MAX_RESPONSE} bytes")));
        }
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(AgentError::Status {
                endpoint: self.endpoint.clone(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(500).collect(),
            })
        }
    }
}

/// A connection to an agent, over either transport.
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

#[cfg(test)]
mod tests {

    #[test]
    fn boot_configs_round_trip_and_refuse_what_would_pass_unnoticed() {
        let key = "ab".repeat(32);
        let config = BootConfig {
            box_key: key.clone(),
            listen: Some("0.0.0.0:8443".into()),
            module_id: Some("local-box-tpm".into()),
        };
        assert_eq!(
            BootConfig::parse(config.to_json().as_bytes(), "fw_cfg").unwrap(),
            config
        );
        // Other tools' settings in EC2 user data are left alone.
        let user_data = format!(
            r#"{{"safebox_box_key": "{}", "cloud_init": {{"x": 1}}}}"#,
            key.to_uppercase()
        );
        let parsed = BootConfig::parse(user_data.as_bytes(), "user data").unwrap();
        assert_eq!((parsed.box_key, parsed.listen), (key.clone(), None));
        for (text, complaint) in [
            ("#!/bin/sh".to_owned(), "user data is not a JSON object"),
            ("[1]".to_owned(), "not a JSON object"),
            ("{}".to_owned(), "has no safebox_box_key"),
            (r#"{"safebox_box_key": "abc"}"#.to_owned(), "not 64 hex digits"),
            (
                format!(r#"{{"safebox_box_key": "{key}", "safebox_lisen": "x"}}"#),
                "unknown setting \"safebox_lisen\"",
            ),
            (
                format!(r#"{{"safebox_box_key": "{key}", "safebox_listen": "8443"}}"#),
                "not an address",
            ),
            (
                format!(r#"{{"safebox_box_key": "{key}", "safebox_module_id": 7}}"#),
                "safebox_module_id is not a string",
            ),
        ] {
            let err = BootConfig::parse(text.as_bytes(), "user data").unwrap_err().to_string();
            assert!(err.contains(complaint), "{text}: {err}");
        }
    }
    use super::*;

    #[test]
    fn endpoints_are_http_host_port() {
        assert!(AgentClient::new("http://127.0.0.1:8443", Duration::from_secs(1)).is_ok());
        assert!(AgentClient::new("http://10.0.0.5:8443/", Duration::from_secs(1)).is_ok());
        for bad in [
            "https://x:1",
            "127.0.0.1:80",
            "http://",
            "http://host/path",
            "http://host",
        ] {
            assert!(AgentClient::new(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_a_content_length_answer_and_reports_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for answer in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"[..],
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 4\r\n\r\nnope",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(answer).unwrap();
            }
        });
        let client = AgentClient::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).unwrap();
        assert_eq!(client.request("GET", "/x", None).unwrap(), b"abc");
        let err = client.request("GET", "/x", None).unwrap_err();
        assert!(matches!(err, AgentError::Status { status: 400, .. }), "{err}");
        server.join().unwrap();
    }
}
