//! go-plugin's handshake, as Terraform runs it: the environment Terraform sets for the plugin
//! and the one line the plugin answers with on stdout.

use base64::Engine as _;
use tokio::net::TcpListener;

/// The environment variable Terraform sets to prove a plugin was launched by it.
pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
/// Terraform's magic cookie value (a constant in Terraform's plugin client).
pub const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// go-plugin's own protocol version.
pub const CORE_PROTOCOL_VERSION: u32 = 1;
/// The Terraform plugin protocol major version this provider speaks.
pub const APP_PROTOCOL_VERSION: u32 = 6;

/// What Terraform told the plugin through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEnv {
    /// The PEM certificate Terraform will present as TLS client (AutoMTLS).
    pub client_cert_pem: String,
    /// The port range to listen in; `(0, 0)` lets the system choose.
    pub ports: (u16, u16),
}

/// Why the plugin cannot start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// Started by hand rather than by Terraform.
    #[error("this binary is a Terraform provider plugin and is not meant to be run directly; use it through terraform (see the README)")]
    NotLaunchedByTerraform,
    /// Terraform offered only protocol versions we do not speak.
    #[error("Terraform offered plugin protocol versions {offered:?}, but this provider speaks version 6 only; use Terraform 1.0 or newer")]
    UnsupportedProtocol {
        /// `PLUGIN_PROTOCOL_VERSIONS` as given.
        offered: String,
    },
    /// No client certificate: the connection could not be authenticated.
    #[error("Terraform did not pass a client certificate (PLUGIN_CLIENT_CERT); this provider serves only over mutually authenticated TLS")]
    NoClientCertificate,
    /// A port bound that is not a port number.
    #[error("{name}={value:?} is not a port number")]
    BadPort {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// No port in the range could be bound.
    #[error("no free port between {min} and {max} on 127.0.0.1: {reason}")]
    NoPort {
        /// Range start.
        min: u16,
        /// Range end.
        max: u16,
        /// The last error.
        reason: String,
    },
}

/// Reads the plugin environment through `var`.
///
/// # Errors
/// A [`HandshakeError`] saying why the plugin cannot serve.
pub fn read_env(var: impl Fn(&str) -> Option<String>) -> Result<PluginEnv, HandshakeError> {
    if var(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE_VALUE) {
        return Err(HandshakeError::NotLaunchedByTerraform);
    }
    if let Some(offered) = var("PLUGIN_PROTOCOL_VERSIONS") {
        let speaks = offered
            .split(',')
            .any(|v| v.trim().parse::<u32>() == Ok(APP_PROTOCOL_VERSION));
        if !speaks {
            return Err(HandshakeError::UnsupportedProtocol { offered });
        }
    }
    let client_cert_pem = var("PLUGIN_CLIENT_CERT")
        .filter(|pem| !pem.trim().is_empty())
        .ok_or(HandshakeError::NoClientCertificate)?;
    let port = |name: &'static str| -> Result<u16, HandshakeError> {
        match var(name) {
            None => Ok(0),
            Some(value) if value.is_empty() => Ok(0),
            Some(value) => value.parse().map_err(|_| HandshakeError::BadPort { name, value }),
        }
    };
    Ok(PluginEnv {
        client_cert_pem,
        ports: (port("PLUGIN_MIN_PORT")?, port("PLUGIN_MAX_PORT")?),
    })
}

/// Binds a listener on 127.0.0.1 in the range `ports` (inclusive), or anywhere for `(0, 0)`.
///
/// # Errors
/// [`HandshakeError::NoPort`] when every port in the range is taken.
pub async fn bind((min, max): (u16, u16)) -> Result<TcpListener, HandshakeError> {
    if min == 0 && max == 0 {
        return TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| HandshakeError::NoPort {
                min,
                max,
                reason: e.to_string(),
            });
    }
    let max = if max == 0 { u16::MAX } else { max };
    let mut reason = format!("the range is empty (PLUGIN_MIN_PORT {min} > PLUGIN_MAX_PORT {max})");
    for port in min..=max {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return Ok(listener),
            Err(e) => reason = e.to_string(),
        }
    }
    Err(HandshakeError::NoPort { min, max, reason })
}

/// The line that tells Terraform where to connect and which server certificate to trust:
/// `CORE|APP|tcp|ADDRESS|grpc|CERT`, the certificate as base64 DER without padding.
#[must_use]
pub fn handshake_line(port: u16, server_cert_der: &[u8]) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|tcp|127.0.0.1:{port}|grpc|{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(server_cert_der)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn refuses_to_run_without_terraforms_cookie() {
        assert_eq!(read_env(env(&[])), Err(HandshakeError::NotLaunchedByTerraform));
        assert_eq!(
            read_env(env(&[(MAGIC_COOKIE_KEY, "wrong")])),
            Err(HandshakeError::NotLaunchedByTerraform)
        );
    }

    #[test]
    fn needs_protocol_6_and_a_client_certificate() {
        let cookie = (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE);
        assert!(matches!(
            read_env(env(&[
                cookie,
                ("PLUGIN_PROTOCOL_VERSIONS", "5"),
                ("PLUGIN_CLIENT_CERT", "x")
            ])),
            Err(HandshakeError::UnsupportedProtocol { .. })
        ));
        assert_eq!(read_env(env(&[cookie])), Err(HandshakeError::NoClientCertificate));
        let ok = read_env(env(&[
            cookie,
            ("PLUGIN_PROTOCOL_VERSIONS", "5,6"),
            ("PLUGIN_CLIENT_CERT", "pem"),
            ("PLUGIN_MIN_PORT", "10000"),
            ("PLUGIN_MAX_PORT", "25000"),
        ]))
        .unwrap();
        assert_eq!(ok.ports, (10000, 25000));
        assert!(matches!(
            read_env(env(&[
                cookie,
                ("PLUGIN_CLIENT_CERT", "pem"),
                ("PLUGIN_MIN_PORT", "ten")
            ])),
            Err(HandshakeError::BadPort {
                name: "PLUGIN_MIN_PORT",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn binds_inside_the_port_range() {
        let first = bind((0, 0)).await.unwrap();
        let taken = first.local_addr().unwrap().port();
        let next = bind((taken, taken.saturating_add(5))).await.unwrap();
        let port = next.local_addr().unwrap().port();
        assert!(port > taken && port <= taken.saturating_add(5));
        assert!(matches!(bind((taken, taken)).await, Err(HandshakeError::NoPort { .. })));
    }

    #[test]
    fn handshake_line_has_go_plugins_shape() {
        let line = handshake_line(1234, &[0xff, 0xfe, 0x00, 0x01]);
        assert_eq!(line, "1|6|tcp|127.0.0.1:1234|grpc|//4AAQ");
    }
}
