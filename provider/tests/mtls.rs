//! The plugin transport as Terraform meets it: the provider binary is started the way
//! Terraform starts it, and TLS clients connect with the announced client certificate, with
//! another one and with none. Only the announced one gets a gRPC answer.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use safebox_proto::plugin::grpc_controller_client::GrpcControllerClient;
use safebox_proto::tfplugin6 as pb;
use safebox_proto::tfplugin6::provider_client::ProviderClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// The HTTP/2 client connection preface (RFC 9113 section 3.4) and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// A client identity shaped like Terraform's: self-signed, ECDSA, marked as a CA.
struct ClientIdentity {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn client_identity() -> ClientIdentity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    ClientIdentity {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

struct Plugin {
    child: Child,
    port: u16,
    server_cert: Vec<u8>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_plugin(client_cert_pem: &str) -> Plugin {
    let mut child = Command::new(env!("CARGO_BIN_EXE_terraform-provider-safebox"))
        .env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "6")
        .env("PLUGIN_CLIENT_CERT", client_cert_pem)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let parts: Vec<&str> = line.trim().split('|').collect();
    assert_eq!(parts.len(), 6, "handshake line: {line:?}");
    assert_eq!(&parts[..3], ["1", "6", "tcp"]);
    assert_eq!(parts[4], "grpc");
    let port = parts[3].strip_prefix("127.0.0.1:").unwrap().parse().unwrap();
    let server_cert = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(parts[5])
        .unwrap();
    Plugin {
        child,
        port,
        server_cert,
    }
}

/// Trusts exactly the server certificate from the handshake line, as Terraform does.
#[derive(Debug)]
struct PinnedServer(Vec<u8>);

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the announced server certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn connector(plugin: &Plugin, identity: Option<&ClientIdentity>) -> TlsConnector {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer(plugin.server_cert.clone())));
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![id.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Connects, speaks the HTTP/2 preface and returns whether the server answered with a
/// SETTINGS frame (an authenticated session) rather than an alert or a hang-up.
async fn server_answers(plugin: &Plugin, identity: Option<&ClientIdentity>) -> bool {
    let tcp = TcpStream::connect(("127.0.0.1", plugin.port)).await.unwrap();
    let Ok(mut tls) = connector(plugin, identity)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return false;
    };
    if tls.write_all(H2_PREFACE).await.is_err() || tls.flush().await.is_err() {
        return false;
    }
    let mut header = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut header)).await {
        // Frame type 0x4 is SETTINGS.
        Ok(Ok(_)) => header[3] == 0x4,
        _ => false,
    }
}

#[tokio::test]
async fn only_the_announced_client_certificate_gets_through() {
    let terraform = client_identity();
    let stranger = client_identity();
    let plugin = start_plugin(&terraform.cert_pem);
    assert!(
        server_answers(&plugin, Some(&terraform)).await,
        "the announced certificate must be accepted"
    );
    assert!(
        !server_answers(&plugin, Some(&stranger)).await,
        "another certificate must be refused"
    );
    assert!(
        !server_answers(&plugin, None).await,
        "a client without a certificate must be refused"
    );
    // The refusals did not take the server down.
    assert!(server_answers(&plugin, Some(&terraform)).await);
}

async fn grpc_channel(plugin: &Plugin, identity: &ClientIdentity) -> tonic::transport::Channel {
    let connector = connector(plugin, Some(identity));
    let port = plugin.port;
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                tcp.set_nodelay(true)?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn serves_the_provider_and_exits_promptly_on_shutdown() {
    let terraform = client_identity();
    let mut plugin = start_plugin(&terraform.cert_pem);
    let channel = grpc_channel(&plugin, &terraform).await;

    let schema = ProviderClient::new(channel.clone())
        .get_provider_schema(pb::get_provider_schema::Request {})
        .await
        .unwrap()
        .into_inner();
    assert!(schema.resource_schemas.contains_key("safebox_policy"));
    assert!(schema.server_capabilities.unwrap().get_provider_schema_optional);

    // A malformed request is a diagnostic, never a crash.
    let garbage = ProviderClient::new(channel.clone())
        .validate_resource_config(pb::validate_resource_config::Request {
            type_name: "safebox_policy".into(),
            config: Some(pb::DynamicValue {
                msgpack: vec![0xdd, 0xff, 0xff, 0xff, 0xff],
                json: Vec::new(),
            }),
            client_capabilities: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(garbage.diagnostics.len(), 1);
    assert!(garbage.diagnostics[0].detail.contains("could not be decoded"));

    // RPCs the provider does not offer answer Unimplemented.
    let status = ProviderClient::new(channel.clone())
        .open_ephemeral_resource(pb::open_ephemeral_resource::Request::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    let started = Instant::now();
    GrpcControllerClient::new(channel)
        .shutdown(safebox_proto::plugin::Empty {})
        .await
        .unwrap();
    loop {
        if let Some(status) = plugin.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the provider did not exit after Shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn run_by_hand_it_says_what_it_is_and_exits_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_terraform-provider-safebox"))
        .env_remove("TF_PLUGIN_MAGIC_COOKIE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("Terraform provider plugin") && stderr.contains("through terraform"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
