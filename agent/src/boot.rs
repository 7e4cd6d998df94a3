//! Where the agent of a booted box learns its per-box settings (a
//! [`safebox::agent_api::BootConfig`]): one source, named explicitly by `--boot-config`, so a
//! box never guesses and no test ever reaches the instance metadata address.
//!
//! - `fw-cfg`: QEMU's firmware configuration device, which the host fills with `-fw_cfg
//!   name=opt/safebox/...,file=...`. Linux shows each item as
//!   `/sys/firmware/qemu_fw_cfg/by_name/<name>/raw` once the `qemu_fw_cfg` module is loaded
//!   (Documentation/ABI/testing/sysfs-firmware-qemu_fw_cfg). The local backend hands over the
//!   configuration ([`safebox::agent_api::FW_CFG_CONFIG`]) and the box's simulated signing leaf
//!   ([`safebox::agent_api::FW_CFG_ATTESTATION`]). Nothing travels over the network.
//! - `ec2`: the instance's user data, from the EC2 Instance Metadata Service version 2 (Amazon
//!   EC2 User Guide, "Use the Instance Metadata Service to access instance metadata"): `PUT
//!   /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` gives a session token, and
//!   `GET /latest/user-data` with `X-aws-ec2-metadata-token` gives the user data, which must be
//!   the configuration's JSON. The address is `169.254.169.254:80` unless `--imds` says
//!   otherwise (the tests point it at a local stand-in).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use safebox::agent_api::{BootConfig, FW_CFG_ATTESTATION, FW_CFG_CONFIG};
use safebox::attest::simulated::SimulatedLeaf;

/// Where Linux shows QEMU's firmware configuration items.
pub const FW_CFG_DIR: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// The instance metadata service on EC2.
pub const EC2_IMDS: &str = "169.254.169.254:80";
/// How long the agent keeps asking IMDS at boot (the network may come up late).
const IMDS_PATIENCE: Duration = Duration::from_secs(60);
/// One IMDS exchange's timeout.
const IMDS_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest user data EC2 accepts (16 KiB) and then some.
const MAX_USER_DATA: usize = 64 * 1024;
/// How long the session token lives, in seconds (only two requests use it).
const IMDS_TOKEN_TTL: u32 = 60;

/// Where the boot configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// QEMU's firmware configuration, under this folder ([`FW_CFG_DIR`]).
    FwCfg(PathBuf),
    /// EC2 user data from IMDSv2 at this `HOST:PORT` ([`EC2_IMDS`]).
    Ec2(String),
}

/// What a booted box's agent starts with.
pub struct Boot {
    /// The settings.
    pub config: BootConfig,
    /// The simulated signing leaf, when the box runs under QEMU.
    pub leaf: Option<SimulatedLeaf>,
}

/// One firmware configuration item's bytes.
fn fw_cfg_item(dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    let path = dir.join(name).join("raw");
    std::fs::read(&path).map_err(|e| {
        format!(
            "reading {}: {e}; under QEMU the host passes -fw_cfg name={name},file=... and the qemu_fw_cfg module must be loaded",
            path.display()
        )
    })
}

/// Reads the boot configuration from `source`.
///
/// # Errors
/// A message naming the item or request that failed and what to provide.
pub fn load(source: &BootSource) -> Result<Boot, String> {
    match source {
        BootSource::FwCfg(dir) => {
            let config = BootConfig::parse(
                &fw_cfg_item(dir, FW_CFG_CONFIG)?,
                &format!("the firmware configuration item {FW_CFG_CONFIG}"),
            )
            .map_err(|e| e.to_string())?;
            let pem = fw_cfg_item(dir, FW_CFG_ATTESTATION)?;
            let pem = String::from_utf8(pem).map_err(|_| format!("{FW_CFG_ATTESTATION} is not PEM text"))?;
            let leaf = SimulatedLeaf::from_pem(&pem).map_err(|e| format!("{FW_CFG_ATTESTATION}: {e}"))?;
            Ok(Boot {
                config,
                leaf: Some(leaf),
            })
        }
        BootSource::Ec2(imds) => {
            let user_data = user_data(imds, IMDS_PATIENCE)?;
            Ok(Boot {
                config: BootConfig::parse(&user_data, "the instance's user data").map_err(|e| e.to_string())?,
                leaf: None,
            })
        }
    }
}

/// The instance's user data from IMDSv2 at `imds`, retrying connection failures for `patience`.
///
/// # Errors
/// A message saying what IMDS answered, or that it never did.
pub fn user_data(imds: &str, patience: Duration) -> Result<Vec<u8>, String> {
    let started = Instant::now();
    loop {
        match imds_user_data(imds) {
            Ok(data) => return Ok(data),
            Err(Imds::Answered(message)) => return Err(message),
            Err(Imds::Unreachable(message)) if started.elapsed() >= patience => {
                return Err(format!(
                    "the instance metadata service at {imds} did not answer within {} s: {message}",
                    patience.as_secs()
                ))
            }
            Err(Imds::Unreachable(_)) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

enum Imds {
    /// No answer (yet): retried.
    Unreachable(String),
    /// An answer that will not change: final.
    Answered(String),
}

fn imds_user_data(imds: &str) -> Result<Vec<u8>, Imds> {
    let (status, token) = http(
        imds,
        &format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: {imds}\r\nX-aws-ec2-metadata-token-ttl-seconds: {IMDS_TOKEN_TTL}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )?;
    if status != 200 {
        return Err(Imds::Answered(format!(
            "the instance metadata service refused a session token ({status}): IMDSv2 must be enabled and its hop limit allow this instance"
        )));
    }
    let token = String::from_utf8(token)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| Imds::Answered("the instance metadata service sent an unusable token".into()))?;
    let (status, body) = http(
        imds,
        &format!(
            "GET /latest/user-data HTTP/1.1\r\nHost: {imds}\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
        ),
    )?;
    match status {
        200 => Ok(body),
        404 => Err(Imds::Answered(
            "the instance has no user data; launch it with user data {\"safebox_box_key\": \"<64 hex digits>\"}".into(),
        )),
        other => Err(Imds::Answered(format!(
            "the instance metadata service answered {other} for the user data"
        ))),
    }
}

/// One HTTP/1.1 exchange with `Connection: close`: the status and the body.
fn http(address: &str, request: &str) -> Result<(u16, Vec<u8>), Imds> {
    let unreachable = |e: std::io::Error| Imds::Unreachable(e.to_string());
    let socket = address
        .parse::<std::net::SocketAddr>()
        .map_err(|_| Imds::Answered(format!("--imds {address:?} is not an address like {EC2_IMDS}")))?;
    let mut stream = TcpStream::connect_timeout(&socket, IMDS_TIMEOUT).map_err(unreachable)?;
    stream.set_read_timeout(Some(IMDS_TIMEOUT)).map_err(unreachable)?;
    stream.set_write_timeout(Some(IMDS_TIMEOUT)).map_err(unreachable)?;
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut response = Vec::new();
    stream
        .take(MAX_USER_DATA as u64 + 4096)
        .read_to_end(&mut response)
        .map_err(unreachable)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Imds::Unreachable("the answer has no complete header".into()))?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut body = response[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| Imds::Unreachable(format!("the answer starts {:?}", head.lines().next())))?;
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    if let Some(length) = length {
        if body.len() < length {
            return Err(Imds::Unreachable("the answer ended early".into()));
        }
        body.truncate(length);
    }
    if body.len() > MAX_USER_DATA {
        return Err(Imds::Answered(format!("the user data is over {MAX_USER_DATA} bytes")));
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A stand-in for IMDSv2 on loopback: a token for a PUT with a TTL, the user data for a
    /// GET with that token, 401 otherwise. Returns its address and the requests it saw.
    fn fake_imds(user_data: Option<&'static str>) -> (String, std::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (seen, requests) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                    request.push(byte[0]);
                }
                let request = String::from_utf8(request).unwrap();
                let (status, body) = if request.starts_with("PUT /latest/api/token ")
                    && request.contains("X-aws-ec2-metadata-token-ttl-seconds: ")
                {
                    ("200 OK", "token-123")
                } else if request.starts_with("GET /latest/user-data ")
                    && request.contains("X-aws-ec2-metadata-token: token-123\r\n")
                {
                    user_data.map_or(("404 Not Found", ""), |d| ("200 OK", d))
                } else {
                    ("401 Unauthorized", "")
                };
                let _ = seen.send(request);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (address, requests)
    }

    #[test]
    fn ec2_user_data_comes_from_imdsv2_with_a_session_token() {
        let json = r#"{"safebox_box_key": "1111111111111111111111111111111111111111111111111111111111111111"}"#;
        let (address, requests) = fake_imds(Some(json));
        let boot = load(&BootSource::Ec2(address)).unwrap();
        assert_eq!(boot.config.box_key, "1".repeat(64));
        assert!(boot.leaf.is_none());
        let first = requests.recv().unwrap();
        assert!(first.starts_with("PUT /latest/api/token HTTP/1.1\r\n"), "{first}");
        let second = requests.recv().unwrap();
        assert!(second.starts_with("GET /latest/user-data HTTP/1.1\r\n"), "{second}");

        let (address, _) = fake_imds(None);
        let err = load(&BootSource::Ec2(address)).err().unwrap();
        assert!(err.contains("has no user data"), "{err}");
        // Nobody listening: retried, then a message naming the address.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let err = user_data(&closed, Duration::from_millis(300)).unwrap_err();
        assert!(err.contains(&closed), "{err}");
    }

    #[test]
    fn fw_cfg_items_are_read_from_sysfs_and_named_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&BootSource::FwCfg(dir.path().to_path_buf())).err().unwrap();
        assert!(err.contains("opt/safebox/config.json/raw"), "{err}");
        assert!(err.contains("-fw_cfg name=opt/safebox/config.json"), "{err}");

        let nitro_dir = tempfile::tempdir().unwrap();
        let nitro = safebox::attest::simulated::SimulatedNitro::open_or_create(nitro_dir.path()).unwrap();
        let leaf = nitro.issue_box_leaf("local-b-tpm", 1_800_000_000_000).unwrap();
        let item = |name: &str, body: &[u8]| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("raw"), body).unwrap();
        };
        item(
            FW_CFG_CONFIG,
            format!(
                r#"{{"safebox_box_key": "{}", "safebox_module_id": "local-b-tpm"}}"#,
                "2".repeat(64)
            )
            .as_bytes(),
        );
        item(FW_CFG_ATTESTATION, leaf.to_pem().as_bytes());
        let boot = load(&BootSource::FwCfg(dir.path().to_path_buf())).unwrap();
        assert_eq!(boot.config.module_id.as_deref(), Some("local-b-tpm"));
        assert_eq!(boot.leaf.unwrap().trust_root().unwrap(), nitro.trust_root().unwrap());
    }
}
