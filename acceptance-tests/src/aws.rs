//! # AWS test doubles: moto and a recording, fault-injecting proxy
//!
//! The AWS backend's tests run the official AWS SDK against [`Moto`], the `moto` emulator
//! (`moto[server]`, installed into `.venv` by `scripts/setup`). moto silently drops request
//! fields it does not model, so the tests put a [`Proxy`] between the SDK and moto: it
//! forwards every request verbatim, records what was actually sent ([`Recorded`]), and can
//! answer chosen operations itself with a [`Fault`] (throttling, 5xx, a dropped connection) or
//! delay them, to show that retries converge and that interrupted runs recover.
//!
//! The proxy changes one thing in moto's answers: the root element of S3's
//! `GetBucketVersioning` ([`as_s3_answers`]), which moto 5.2.5 names after the operation where
//! S3 (and so the SDK's parser) uses `VersioningConfiguration`.
//!
//! moto serves every service on one port and routes a request by the service in its SigV4
//! credential scope (`Credential=AKID/DATE/REGION/SERVICE/aws4_request`), not by the `Host`
//! header; the proxy reads the same scope to tell services apart. Everything stays on
//! loopback: the proxy only listens on, and both only talk to, `127.0.0.1`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// How long [`Moto::start`] waits for the server to answer.
const MOTO_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`request`] waits for a whole exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets fixed test credentials in this process's environment (so in every command it runs),
/// and keeps the SDKs away from the instance metadata service and from endpoints configured
/// outside the test.
pub fn test_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        for name in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ] {
            std::env::remove_var(name);
        }
    });
}

/// A moto server on a free loopback port, killed (with its whole process group) on drop.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Child,
    /// Set once the child has been reaped, so its pid is no longer ours to signal.
    reaped: bool,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts `$SAFEBOX_MOTO_SERVER`, else `<repo>/.venv/bin/moto_server`, on a free port and
    /// waits until it answers `GET /moto-api/`. Panics with the server's log tail if it exits
    /// or does not answer within 30 s.
    #[must_use]
    pub fn start() -> Self {
        let server = std::env::var_os("SAFEBOX_MOTO_SERVER").map_or_else(
            || {
                let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
                root.join(".venv/bin/moto_server")
            },
            PathBuf::from,
        );
        // The port is free when picked but may be taken before moto binds it: retry then.
        for _ in 0..3 {
            let port = free_port();
            let log = tempfile::Builder::new()
                .prefix("moto-")
                .suffix(".log")
                .tempfile()
                .expect("moto log file");
            let child = Command::new(&server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(log.reopen().expect("moto log file"))
                .stderr(log.reopen().expect("moto log file"))
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}. Run scripts/setup first.", server.display()));
            let mut moto = Self {
                endpoint: format!("http://127.0.0.1:{port}"),
                child,
                reaped: false,
                log,
            };
            let deadline = Instant::now() + MOTO_START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = moto.child.try_wait() {
                    moto.reaped = true;
                    let tail = moto.log_tail();
                    if tail.contains("Address already in use") {
                        break;
                    }
                    panic!("moto_server exited with {status} before answering; log tail:\n{tail}");
                }
                if request("GET", &format!("{}/moto-api/", moto.endpoint), &[], Vec::new())
                    .is_ok_and(|r| r.status == 200)
                {
                    return moto;
                }
                assert!(
                    Instant::now() < deadline,
                    "moto_server did not answer on {} within {MOTO_START_TIMEOUT:?}; log tail:\n{}",
                    moto.endpoint,
                    moto.log_tail()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto_server could not bind a free port in 3 attempts");
    }

    /// The server's process id (for CPU accounting in benchmarks).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything moto tracks, by service and model: `GET /moto-api/data.json`.
    #[must_use]
    pub fn state(&self) -> Value {
        let response = self.api("GET", "data.json");
        serde_json::from_slice(&response.body).expect("moto data.json is JSON")
    }

    /// Forgets every resource in every service: `POST /moto-api/reset`.
    pub fn reset(&self) {
        self.api("POST", "reset");
    }

    /// The last 40 lines of the server's log, for failure messages.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn api(&self, method: &str, path: &str) -> HttpResponse {
        let url = format!("{}/moto-api/{path}", self.endpoint);
        let response = request(method, &url, &[], Vec::new()).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        assert_eq!(
            response.status,
            200,
            "{method} {url}: {}\nmoto log tail:\n{}",
            String::from_utf8_lossy(&response.body),
            self.log_tail()
        );
        response
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if !self.reaped {
            let group = i32::try_from(self.child.id()).expect("pid fits in i32");
            // SAFETY: signals the process group this Moto spawned, whose leader is not yet reaped.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// A response to [`request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Sends one HTTP/1.1 request to `url` (`http://HOST:PORT/PATH?QUERY`) on a fresh connection
/// and waits for the whole response. Blocking, and usable from sync and async tests alike (it
/// runs on its own thread). `Host` is set from the URL unless `headers` has one.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> io::Result<HttpResponse> {
    let (authority, path) = split_url(url)?;
    let mut builder = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", authority);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from(body.into()))).map_err(invalid)?;
    let authority = authority.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let response = tokio::time::timeout(REQUEST_TIMEOUT, send(&authority, request))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response in time"))??;
            Ok(HttpResponse {
                status: response.status().as_u16(),
                headers: header_pairs(response.headers()),
                body: response.into_body().to_vec(),
            })
        })
    })
    .join()
    .expect("request thread")
}

/// `http://AUTHORITY/PATH` split into the authority and the path (with query; `/` if empty).
fn split_url(url: &str) -> io::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid(format!("{url}: only http:// URLs are supported")))?;
    Ok(match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    })
}

/// Sends `request` as is on a new connection to `authority` and collects the response.
async fn send(authority: &str, request: Request<Full<Bytes>>) -> io::Result<Response<Bytes>> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(other)?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(other)?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(other)?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// moto 5.2.5 answers S3's `GetBucketVersioning` with the root element
/// `GetBucketVersioningResponse` (its generic serializer names every root after the
/// operation); S3's API reference gives `VersioningConfiguration`, and the SDK refuses any
/// other root. The body is otherwise S3's, so only the root's name is put right; every other
/// answer passes unchanged.
fn as_s3_answers(operation: &str, response: Response<Bytes>) -> Response<Bytes> {
    const MOTO: &str = "GetBucketVersioningResponse";
    const S3: &str = "VersioningConfiguration";
    let text = std::str::from_utf8(response.body()).unwrap_or_default();
    if operation != "GetBucketVersioning" || !text.contains(&format!("<{MOTO}")) {
        return response;
    }
    let body = Bytes::from(text.replacen(&format!("<{MOTO}"), &format!("<{S3}"), 1).replacen(
        &format!("</{MOTO}>"),
        &format!("</{S3}>"),
        1,
    ));
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(hyper::header::CONTENT_LENGTH, body.len().into());
    Response::from_parts(parts, body)
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A request as the proxy saw it, and how it was answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Arrival order, from 0.
    pub seq: u64,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    /// Header names (lower case) and values, as the client sent them.
    pub headers: Vec<(String, String)>,
    /// The whole body (decoded from chunked transfer if it was chunked).
    pub body: Vec<u8>,
    /// The SigV4 signing name from the credential scope (`ec2`, `ebs`, `kms`), or empty.
    pub service: String,
    /// The operation (`RunInstances`, `CreateKey`, `PutSnapshotBlock`, `PutObject`), or empty
    /// if unknown.
    pub operation: String,
    /// The status the client got; 0 if the connection was dropped instead.
    pub status: u16,
    /// Whether the proxy answered itself with a [`Fault`] instead of forwarding.
    pub injected: bool,
}

impl Recorded {
    fn new(method: &str, path: &str, headers: Vec<(String, String)>, body: Vec<u8>) -> Self {
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let credential = find_header(&headers, "authorization")
            .and_then(|auth| auth.split("Credential=").nth(1))
            .map(|c| c.split([',', ' ']).next().unwrap_or_default().to_owned())
            .or_else(|| {
                form_decode(query.as_bytes())
                    .into_iter()
                    .find(|(k, _)| k == "X-Amz-Credential")
                    .map(|(_, v)| v)
            })
            .unwrap_or_default();
        let scope: Vec<&str> = credential.split('/').collect();
        let service = match scope.as_slice() {
            [.., service, "aws4_request"] => (*service).to_owned(),
            _ => String::new(),
        };
        let mut recorded = Self {
            seq: 0,
            method: method.to_owned(),
            path: path.to_owned(),
            headers,
            body,
            service,
            operation: String::new(),
            status: 0,
            injected: false,
        };
        recorded.operation = recorded.find_operation(query);
        recorded
    }

    /// The operation: the `X-Amz-Target` suffix (JSON protocols), the `Action` parameter
    /// (query protocol), or the REST APIs' (EBS direct, S3) method, path and query.
    fn find_operation(&self, query: &str) -> String {
        if self.service == "s3" {
            return self.s3_operation(query).to_owned();
        }
        if let Some(target) = self.header("x-amz-target") {
            return target.rsplit('.').next().unwrap_or(target).to_owned();
        }
        if let Some(action) = self.form_value("Action") {
            return action;
        }
        if let Some((_, action)) = form_decode(query.as_bytes()).into_iter().find(|(k, _)| k == "Action") {
            return action;
        }
        if self.service != "ebs" {
            return String::new();
        }
        let route = self.path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = route.trim_matches('/').split('/').collect();
        match (self.method.as_str(), segments.as_slice()) {
            ("POST", ["snapshots"]) => "StartSnapshot",
            ("POST", ["snapshots", "completion", _]) => "CompleteSnapshot",
            ("PUT", ["snapshots", _, "blocks", _]) => "PutSnapshotBlock",
            ("GET", ["snapshots", _, "blocks", _]) => "GetSnapshotBlock",
            ("GET", ["snapshots", _, "blocks"]) => "ListSnapshotBlocks",
            ("GET", ["snapshots", _, "changedblocks"]) => "ListChangedBlocks",
            _ => "",
        }
        .to_owned()
    }

    /// The S3 operation of a path-style request (`/BUCKET/KEY?QUERY`), named as IAM names it
    /// (`s3:PutObject` is `PutObject`).
    fn s3_operation(&self, query: &str) -> &'static str {
        let route = self.path.split('?').next().unwrap_or_default();
        let has_key = route
            .trim_start_matches('/')
            .split_once('/')
            .is_some_and(|(_, key)| !key.is_empty());
        let params: Vec<String> = form_decode(query.as_bytes()).into_iter().map(|(k, _)| k).collect();
        let has = |name: &str| params.iter().any(|p| p == name);
        match (self.method.as_str(), has_key) {
            ("GET", false) if has("versioning") => "GetBucketVersioning",
            ("PUT", false) if has("versioning") => "PutBucketVersioning",
            ("GET", false) if has("object-lock") => "GetObjectLockConfiguration",
            ("PUT", false) if has("object-lock") => "PutObjectLockConfiguration",
            ("GET", false) if has("versions") => "ListObjectVersions",
            ("GET", false) if has("list-type") => "ListObjectsV2",
            ("GET", false) => "ListObjects",
            ("HEAD", false) => "HeadBucket",
            ("PUT", false) => "CreateBucket",
            ("DELETE", false) => "DeleteBucket",
            ("POST", false) if has("delete") => "DeleteObjects",
            ("PUT", true) if has("retention") => "PutObjectRetention",
            ("GET", true) if has("retention") => "GetObjectRetention",
            ("PUT", true) if self.header("x-amz-copy-source").is_some() => "CopyObject",
            ("PUT", true) => "PutObject",
            ("GET", true) => "GetObject",
            ("HEAD", true) => "HeadObject",
            ("DELETE", true) => "DeleteObject",
            _ => "",
        }
    }

    /// The target's path without its query, `%XX` escapes decoded: an S3 request's
    /// `/bucket/key` as the key is written (the SDK escapes `:` in `sha256:…`).
    #[must_use]
    pub fn decoded_path(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        percent_decode(path.replace('+', "%2B").as_bytes())
    }

    /// Whether the upstream answered with a 2xx status. Mind that successes are not all 200:
    /// EBS answers `StartSnapshot` and `PutSnapshotBlock` with 201, `CompleteSnapshot` with 202.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        !self.injected && (200..300).contains(&self.status)
    }

    /// The body decoded as `application/x-www-form-urlencoded` (the EC2 query protocol),
    /// e.g. `("EnclaveOptions.Enabled", "true")`; empty for other content types.
    #[must_use]
    pub fn form(&self) -> Vec<(String, String)> {
        match self.header("content-type") {
            Some(ct) if ct.starts_with("application/x-www-form-urlencoded") => form_decode(&self.body),
            _ => Vec::new(),
        }
    }

    /// The first value of form parameter `key`.
    #[must_use]
    pub fn form_value(&self, key: &str) -> Option<String> {
        self.form().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The body as JSON (KMS, EBS), if it is JSON.
    #[must_use]
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The record as one JSON object, as the proxy's `--record` log writes it. The body is
    /// included as text unless it is an EBS block or not UTF-8.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let headers: Vec<Value> = self.headers.iter().map(|(n, v)| json!([n, v])).collect();
        let mut record = json!({
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "service": self.service,
            "operation": self.operation,
            "status": self.status,
            "injected": self.injected,
            "body_len": self.body.len(),
            "headers": headers,
        });
        if self.operation != "PutSnapshotBlock" {
            if let Ok(text) = std::str::from_utf8(&self.body) {
                record["body"] = Value::from(text);
            }
        }
        record
    }
}

/// `part` with `%XX` escapes and `+` (a space) decoded, as in a form.
fn percent_decode(part: &[u8]) -> String {
    let mut out = Vec::with_capacity(part.len());
    let mut i = 0;
    while i < part.len() {
        match part[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < part.len() => {
                match std::str::from_utf8(&part[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `application/x-www-form-urlencoded` pairs.
fn form_decode(input: &[u8]) -> Vec<(String, String)> {
    let decode = percent_decode;
    input
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut kv = pair.splitn(2, |&b| b == b'=');
            let key = decode(kv.next().unwrap_or_default());
            (key, decode(kv.next().unwrap_or_default()))
        })
        .collect()
}

/// How the proxy answers an injected request, in the error format of the request's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Throttling: EC2 `503 RequestLimitExceeded`, KMS `400 ThrottlingException`, EBS
    /// `429 ThrottlingException`, S3 `503 SlowDown`.
    Throttle,
    /// An internal error: EC2 `500 InternalError`, KMS `500 KMSInternalException`, EBS
    /// `500 InternalServerException`, S3 `500 InternalError`.
    ServerError,
    /// Any error, in the service's format.
    Error {
        /// The HTTP status.
        status: u16,
        /// The error code, e.g. `InvalidParameterValue`.
        code: String,
        /// The message.
        message: String,
    },
    /// Close the connection without answering.
    Disconnect,
}

impl Fault {
    /// Parses the standalone proxy's names: `throttle`, `server-error`, `disconnect`, or
    /// `STATUS/CODE` (e.g. `400/InvalidParameterValue`).
    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "throttle" => Self::Throttle,
            "server-error" => Self::ServerError,
            "disconnect" => Self::Disconnect,
            _ => {
                let (status, code) = name.split_once('/').ok_or_else(|| {
                    format!("unknown fault {name:?}: throttle, server-error, disconnect or STATUS/CODE")
                })?;
                Self::Error {
                    status: status.parse().map_err(|_| format!("bad status in fault {name:?}"))?,
                    code: code.to_owned(),
                    message: "Injected by the test proxy.".to_owned(),
                }
            }
        })
    }

    /// The response for a request to `service`, or `None` to drop the connection.
    fn response(&self, service: &str) -> Option<Response<Full<Bytes>>> {
        let (status, code, message) = match (self, service) {
            (Self::Disconnect, _) => return None,
            (Self::Error { status, code, message }, _) => (*status, code.as_str(), message.as_str()),
            (Self::Throttle, "ec2") => (503, "RequestLimitExceeded", "Request limit exceeded."),
            (Self::Throttle, "ebs") => (429, "ThrottlingException", "Rate exceeded"),
            (Self::Throttle, "s3") => (503, "SlowDown", "Please reduce your request rate."),
            (Self::ServerError, "s3") => (
                500,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
            (Self::Throttle, _) => (400, "ThrottlingException", "Rate exceeded"),
            (Self::ServerError, "ec2") => (500, "InternalError", "An internal error has occurred."),
            (Self::ServerError, "kms") => (500, "KMSInternalException", "An internal error has occurred."),
            (Self::ServerError, _) => (500, "InternalServerException", "An internal error has occurred."),
        };
        let builder = Response::builder()
            .status(status)
            .header("x-amzn-requestid", "injected");
        let response = if service == "ec2" {
            builder.header("content-type", "text/xml;charset=UTF-8").body(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>injected</RequestID></Response>"
            ))
        } else if service == "s3" {
            builder.header("content-type", "application/xml").body(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>injected</RequestId></Error>"
            ))
        } else {
            let content_type = if service == "kms" {
                "application/x-amz-json-1.1"
            } else {
                "application/json"
            };
            builder
                .header("content-type", content_type)
                .header("x-amzn-errortype", code)
                .body(json!({"__type": code, "message": message}).to_string())
        };
        Some(
            response
                .expect("fault response")
                .map(|body| Full::new(Bytes::from(body))),
        )
    }
}

/// A recording, fault-injecting HTTP/1.1 proxy in front of an upstream such as [`Moto`].
///
/// Forwards every request verbatim (method, target, headers including `Host` and
/// `Authorization`, body) on a fresh upstream connection and returns the upstream's response
/// verbatim but for [`as_s3_answers`]; only `Expect` is not forwarded, since the proxy has
/// already read the body. Runs
/// on its own thread and runtime, so it works from sync and async tests; stops on drop.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// `HOST:PORT` of the upstream.
    upstream: String,
    state: Mutex<State>,
    log: Option<Mutex<File>>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    records: Vec<Recorded>,
    faults: Vec<(String, usize, Fault)>,
    delays: HashMap<String, Duration>,
    arrivals: HashMap<String, usize>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream` (`http://127.0.0.1:PORT`).
    #[must_use]
    pub fn start(upstream: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("address"), upstream, None)
            .unwrap_or_else(|e| panic!("cannot start the proxy in front of {upstream}: {e}"))
    }

    /// A proxy on loopback address `listen` (port 0 for a free one) in front of `upstream`,
    /// also appending each record as a JSON line to `record` if given.
    pub fn start_on(listen: SocketAddr, upstream: &str, record: Option<&Path>) -> io::Result<Self> {
        if !listen.ip().is_loopback() {
            return Err(invalid(format!("{listen}: the proxy only listens on loopback")));
        }
        let (authority, _) = split_url(upstream)?;
        let log = record
            .map(|path| OpenOptions::new().create(true).append(true).open(path).map(Mutex::new))
            .transpose()?;
        let listener = StdTcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            upstream: authority.to_owned(),
            state: Mutex::default(),
            log,
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("safebox-aws-proxy")
            .enable_all()
            .build()?;
        let serving = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("proxy listener");
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let shared = Arc::clone(&serving);
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Ok(Self {
            endpoint,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Everything answered so far, in arrival order.
    #[must_use]
    pub fn requests(&self) -> Vec<Recorded> {
        let mut records = self.shared.state().records.clone();
        records.sort_by_key(|r| r.seq);
        records
    }

    /// The answered requests for `operation`, in arrival order.
    #[must_use]
    pub fn requests_for(&self, operation: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.operation == operation)
            .collect()
    }

    /// Forgets the records and arrival counts (not the pending faults and delays).
    pub fn clear(&self) {
        let mut state = self.shared.state();
        state.records.clear();
        state.arrivals.clear();
    }

    /// Answers the next `times` requests for `operation` (`*` for any) with `fault` instead
    /// of forwarding them. Injections for the same operation apply in the order given.
    pub fn inject(&self, operation: &str, times: usize, fault: Fault) {
        self.shared.state().faults.push((operation.to_owned(), times, fault));
    }

    /// Holds every request for `operation` (`*` for any) for `delay` before answering it;
    /// `Duration::ZERO` removes the delay.
    pub fn delay(&self, operation: &str, delay: Duration) {
        let mut state = self.shared.state();
        if delay.is_zero() {
            state.delays.remove(operation);
        } else {
            state.delays.insert(operation.to_owned(), delay);
        }
    }

    /// How many requests for `operation` have arrived, including those still in flight (for
    /// example held by [`Proxy::delay`]).
    #[must_use]
    pub fn arrivals(&self, operation: &str) -> usize {
        self.shared.state().arrivals.get(operation).copied().unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Records, then faults, delays or forwards one request.
async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> io::Result<Response<Full<Bytes>>> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(other)?.to_bytes();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), ToString::to_string);
    let mut recorded = Recorded::new(
        parts.method.as_str(),
        &target,
        header_pairs(&parts.headers),
        body.to_vec(),
    );
    let (delay, fault) = {
        let mut state = shared.state();
        recorded.seq = state.next_seq;
        state.next_seq += 1;
        *state.arrivals.entry(recorded.operation.clone()).or_default() += 1;
        let op = recorded.operation.as_str();
        let delay = state.delays.get(op).or_else(|| state.delays.get("*")).copied();
        let fault = state
            .faults
            .iter_mut()
            .find(|(pattern, left, _)| *left > 0 && (pattern == op || pattern == "*"))
            .map(|(_, left, fault)| {
                *left -= 1;
                fault.clone()
            });
        state.faults.retain(|(_, left, _)| *left > 0);
        (delay, fault)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let response = if let Some(fault) = fault {
        recorded.injected = true;
        fault.response(&recorded.service)
    } else {
        let mut forward = Request::builder()
            .method(parts.method)
            .uri(target)
            .version(parts.version);
        for (name, value) in &parts.headers {
            if name != hyper::header::EXPECT {
                forward = forward.header(name, value);
            }
        }
        let forward = forward.body(Full::new(body)).map_err(other)?;
        Some(match send(&shared.upstream, forward).await {
            Ok(response) => as_s3_answers(&recorded.operation, response).map(Full::new),
            Err(e) => Response::builder()
                .status(502)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(format!(
                    "proxy: upstream {}: {e}\n",
                    shared.upstream
                ))))
                .map_err(other)?,
        })
    };
    recorded.status = response.as_ref().map_or(0, |r| r.status().as_u16());
    if let Some(log) = &shared.log {
        let mut file = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(file, "{}", recorded.to_json()).and_then(|()| file.flush());
    }
    shared.state().records.push(recorded);
    response.ok_or_else(|| io::Error::new(io::ErrorKind::ConnectionAborted, "injected disconnect"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// An upstream on its own runtime that answers every request with its body and a
    /// description of how it arrived.
    fn echo_upstream() -> (tokio::runtime::Runtime, String) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let describe = format!(
                            "{} {} te={} cl={} auth={}",
                            req.method(),
                            req.uri(),
                            req.headers()
                                .get("transfer-encoding")
                                .map_or("-", |v| v.to_str().unwrap_or("?")),
                            req.headers()
                                .get("content-length")
                                .map_or("-", |v| v.to_str().unwrap_or("?")),
                            req.headers()
                                .get("authorization")
                                .map_or("-", |v| v.to_str().unwrap_or("?")),
                        );
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(201)
                                .header("x-echo", describe)
                                .body(Full::new(body))
                                .expect("response"),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (runtime, endpoint)
    }

    #[test]
    fn forwards_and_records_requests() {
        let (_runtime, upstream) = echo_upstream();
        let proxy = Proxy::start(&upstream);
        let auth =
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/ebs/aws4_request, SignedHeaders=host, Signature=00";
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let response = request(
            "PUT",
            &format!("{}/snapshots/snap-1/blocks/7?x=1", proxy.endpoint),
            &[("authorization", auth), ("x-amz-checksum", "abc")],
            block.clone(),
        )
        .expect("PUT through the proxy");
        assert_eq!(response.status, 201);
        assert_eq!(response.body, block, "the response body comes back verbatim");
        let echo = response.header("x-echo").expect("upstream echo");
        assert!(
            echo.starts_with("PUT /snapshots/snap-1/blocks/7?x=1 te=- cl=1048576 auth=AWS4"),
            "{echo}"
        );

        // A chunked request then a second one on the same (kept-alive) connection.
        let address = proxy.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address).expect("connect to the proxy");
        let chunked = "POST /chunked HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        let second = "GET /second HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n";
        stream
            .write_all(format!("{chunked}{second}").as_bytes())
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert_eq!(answer.matches("HTTP/1.1 201").count(), 2, "{answer}");
        assert!(answer.contains("POST /chunked te=chunked cl=-"), "{answer}");
        assert!(answer.contains("hello, world"), "{answer}");

        let records = proxy.requests();
        assert_eq!(records.len(), 3, "{records:?}");
        let put = &records[0];
        assert_eq!(
            (put.method.as_str(), put.path.as_str()),
            ("PUT", "/snapshots/snap-1/blocks/7?x=1")
        );
        assert_eq!(
            (put.service.as_str(), put.operation.as_str()),
            ("ebs", "PutSnapshotBlock")
        );
        assert_eq!(put.body, block);
        assert_eq!(put.header("X-Amz-Checksum"), Some("abc"));
        assert!(put.to_json().get("body").is_none(), "EBS blocks stay out of the log");
        assert_eq!(records[1].body, b"hello, world");
        assert_eq!(records[1].header("transfer-encoding"), Some("chunked"));
        assert_eq!((records[2].path.as_str(), records[2].status), ("/second", 201));
        assert!(records.iter().all(|r| !r.injected));
        proxy.clear();
        assert!(proxy.requests().is_empty());
    }

    #[test]
    fn injects_faults_then_passes_through() {
        let (_runtime, upstream) = echo_upstream();
        let proxy = Proxy::start(&upstream);
        let kms = [
            ("x-amz-target", "TrentService.CreateKey"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00"),
            ("content-type", "application/x-amz-json-1.1"),
        ];
        proxy.inject("CreateKey", 2, Fault::Throttle);
        proxy.inject("CreateKey", 1, Fault::ServerError);
        let url = format!("{}/", proxy.endpoint);
        let statuses: Vec<u16> = (0..4)
            .map(|_| {
                request("POST", &url, &kms, r#"{"KeyUsage":"ENCRYPT_DECRYPT"}"#)
                    .expect("request")
                    .status
            })
            .collect();
        assert_eq!(statuses, [400, 400, 500, 201]);
        let passed = request("POST", &url, &kms, "{}").expect("request");
        assert_eq!(passed.status, 201, "the faults are used up");

        let records = proxy.requests_for("CreateKey");
        assert_eq!(
            records.iter().map(|r| r.injected).collect::<Vec<_>>(),
            [true, true, true, false, false]
        );
        assert_eq!(records[0].service, "kms");
        assert_eq!(records[0].json().expect("JSON body")["KeyUsage"], "ENCRYPT_DECRYPT");

        // The error bodies are what each protocol's SDK parses.
        let body = Fault::Throttle.response("kms").expect("response");
        assert_eq!(body.headers()["x-amzn-errortype"], "ThrottlingException");
        let ec2 = Fault::Throttle.response("ec2").expect("response");
        assert_eq!(ec2.status(), 503);
        assert_eq!(Fault::Throttle.response("ebs").expect("response").status(), 429);

        proxy.inject("*", 1, Fault::Disconnect);
        assert!(
            request("GET", &url, &[], Vec::new()).is_err(),
            "the connection is dropped"
        );
        let last = proxy.requests().pop().expect("recorded");
        assert_eq!((last.status, last.injected), (0, true));
    }

    #[test]
    fn delays_hold_requests_in_flight() {
        let (_runtime, upstream) = echo_upstream();
        let proxy = Proxy::start(&upstream);
        proxy.delay("*", Duration::from_millis(300));
        let url = format!("{}/slow", proxy.endpoint);
        let started = Instant::now();
        let pending = std::thread::spawn(move || request("GET", &url, &[], Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.arrivals("") == 0 {
            assert!(Instant::now() < deadline, "the request never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(proxy.requests().is_empty(), "still in flight");
        assert_eq!(pending.join().expect("thread").expect("response").status, 201);
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn parses_forms_and_operations() {
        let recorded = Recorded::new(
            "POST",
            "/",
            vec![(
                "content-type".into(),
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            )],
            b"Action=RunInstances&EnclaveOptions.Enabled=true&TagSpecification.1.Tag.1.Value=a+b%2Fc%3D".to_vec(),
        );
        assert_eq!(recorded.operation, "RunInstances");
        assert_eq!(recorded.form_value("EnclaveOptions.Enabled").as_deref(), Some("true"));
        assert_eq!(
            recorded.form_value("TagSpecification.1.Tag.1.Value").as_deref(),
            Some("a b/c=")
        );
        let ebs = |method: &str, path: &str| {
            let auth = "AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-west-1/ebs/aws4_request, SignedHeaders=host, Signature=00";
            Recorded::new(method, path, vec![("authorization".into(), auth.into())], Vec::new()).operation
        };
        assert_eq!(ebs("POST", "/snapshots"), "StartSnapshot");
        assert_eq!(ebs("POST", "/snapshots/completion/snap-1"), "CompleteSnapshot");
        assert_eq!(
            ebs("GET", "/snapshots/snap-1/blocks?maxResults=10"),
            "ListSnapshotBlocks"
        );
        assert_eq!(
            ebs("GET", "/snapshots/snap-1/blocks/3?blockToken=t"),
            "GetSnapshotBlock"
        );
        assert_eq!(
            ebs("GET", "/snapshots/snap-2/changedblocks?firstSnapshotId=snap-1"),
            "ListChangedBlocks"
        );
        let s3 = |method: &str, path: &str| {
            let auth =
                "AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=00";
            Recorded::new(method, path, vec![("authorization".into(), auth.into())], Vec::new()).operation
        };
        assert_eq!(
            s3("PUT", "/evidence/prod/audit/00000000000000000001.json?x-id=PutObject"),
            "PutObject"
        );
        assert_eq!(s3("GET", "/evidence/prod/lease.json?x-id=GetObject"), "GetObject");
        assert_eq!(
            s3("DELETE", "/evidence/prod/lease.json?x-id=DeleteObject"),
            "DeleteObject"
        );
        assert_eq!(
            s3("GET", "/evidence?versions&prefix=prod%2Faudit%2F"),
            "ListObjectVersions"
        );
        assert_eq!(s3("GET", "/evidence?versioning"), "GetBucketVersioning");
        assert_eq!(s3("GET", "/evidence?object-lock"), "GetObjectLockConfiguration");
        assert_eq!(s3("GET", "/evidence?list-type=2&prefix=x"), "ListObjectsV2");
        assert_eq!(s3("PUT", "/evidence"), "CreateBucket");
        assert_eq!(Fault::Throttle.response("s3").expect("response").status(), 503);
    }

    #[test]
    fn only_the_versioning_root_is_renamed_as_s3_names_it() {
        let moto = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GetBucketVersioningResponse xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>Enabled</Status></GetBucketVersioningResponse>";
        let answer = |operation: &str| {
            let response = Response::builder()
                .header("content-length", moto.len())
                .body(Bytes::from(moto))
                .expect("response");
            as_s3_answers(operation, response)
        };
        let fixed = answer("GetBucketVersioning");
        let text = std::str::from_utf8(fixed.body()).expect("utf-8");
        assert_eq!(
            text,
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Status>Enabled</Status></VersioningConfiguration>"
        );
        assert_eq!(fixed.headers()["content-length"], text.len().to_string().as_str());
        assert_eq!(answer("GetObject").body(), moto.as_bytes());
    }

    #[test]
    fn moto_through_the_proxy() {
        let moto = Moto::start();
        let proxy = Proxy::start(&moto.endpoint);
        let response = request(
            "POST",
            &format!("{}/", proxy.endpoint),
            &[
                ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00",
                ),
            ],
            "Action=DescribeRegions&Version=2016-11-15",
        )
        .expect("DescribeRegions through the proxy");
        let text = String::from_utf8_lossy(&response.body);
        assert_eq!(response.status, 200, "{text}");
        assert!(text.contains("DescribeRegionsResponse"), "{text}");
        let recorded = proxy.requests().pop().expect("recorded");
        assert_eq!(
            (recorded.service.as_str(), recorded.operation.as_str()),
            ("ec2", "DescribeRegions")
        );
        assert_eq!((recorded.status, recorded.injected), (200, false));
        assert!(recorded.succeeded());
        assert!(moto.state().is_object());
        moto.reset();
    }
}
