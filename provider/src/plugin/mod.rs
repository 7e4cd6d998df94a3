//! The go-plugin server Terraform talks to: handshake on stdout, gRPC over mutually
//! authenticated TLS on 127.0.0.1, and go-plugin's controller, stdio and broker services
//! beside the provider service.

pub mod handshake;
pub mod tls;

use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use safebox_proto::plugin::grpc_broker_server::{GrpcBroker, GrpcBrokerServer};
use safebox_proto::plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use safebox_proto::plugin::grpc_stdio_server::{GrpcStdio, GrpcStdioServer};
use safebox_proto::plugin::{ConnInfo, Empty, StdioData};
use safebox_proto::tfplugin6::provider_server::ProviderServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status, Streaming};

use crate::log;
use crate::provider::SafeboxProvider;

/// Longest a client may take to finish the TLS handshake before it is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After Shutdown, how long in-flight responses get to drain before the process exits.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Terraform's plugin client allows messages up to 256 MiB; so does the server.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Serves `provider` until Terraform calls `GRPCController.Shutdown`.
///
/// # Errors
/// A message when the plugin cannot start serving.
pub async fn serve(env: handshake::PluginEnv, provider: SafeboxProvider) -> Result<(), String> {
    let identity = tls::generate_server_identity()?;
    let client = tls::PinnedClientCert::from_pem(&env.client_cert_pem)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&identity, client)?));
    let listener = handshake::bind(env.ports).await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (mut graceful, mut requested) = (shutdown_rx.clone(), shutdown_rx);
    let incoming = ReceiverStream::new(accept(listener, acceptor));
    let (health, health_service) = tonic_health::server::health_reporter();
    // go-plugin pings the service named "plugin".
    health
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;

    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(
            ProviderServer::new(provider)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(GrpcControllerServer::new(Controller { shutdown: shutdown_tx }))
        .add_service(GrpcStdioServer::new(Stdio))
        .add_service(GrpcBrokerServer::new(Broker))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        });

    // Only now, with the listener bound, tell Terraform where to connect.
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{}",
        handshake::handshake_line(port, identity.cert_der.as_ref())
    )
    .map_err(|e| e.to_string())?;
    stdout.flush().map_err(|e| e.to_string())?;
    drop(stdout);
    log::debug(&format!("serving plugin protocol 6 on 127.0.0.1:{port}"));

    let mut served = tokio::spawn(server);
    tokio::select! {
        result = &mut served => {
            return match result {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
        }
        _ = requested.wait_for(|stop| *stop) => {}
    }
    // The graceful shutdown waits for Terraform to hang up; do not wait for that forever.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, served).await;
    Ok(())
}

/// Accepts TCP connections, sets TCP_NODELAY (without it every RPC waits ~40 ms on delayed
/// ACKs) and completes the TLS handshake off the accept loop, so a stalled client cannot block
/// others.
fn accept(listener: TcpListener, acceptor: TlsAcceptor) -> mpsc::Receiver<Result<TlsConnection, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::error(&format!("accepting a connection failed: {e}"));
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                log::error(&format!("setting TCP_NODELAY failed: {e}"));
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConnection(tls))).await;
                    }
                    Ok(Err(e)) => log::error(&format!("refused a TLS connection from {peer}: {e}")),
                    Err(_) => log::error(&format!("dropped {peer}: TLS handshake timed out")),
                }
            });
        }
    });
    rx
}

/// An authenticated connection, as tonic serves it.
pub struct TlsConnection(TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// `plugin.GRPCController`: Terraform's way of ending the plugin.
struct Controller {
    shutdown: watch::Sender<bool>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        log::debug("Terraform requested shutdown");
        let _ = self.shutdown.send(true);
        Ok(Response::new(Empty {}))
    }
}

type PendingStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// `plugin.GRPCStdio`: the provider logs through stderr lines, not this stream, so the stream
/// stays open and silent until the plugin exits.
struct Stdio;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    async fn stream_stdio(&self, _: Request<()>) -> Result<Response<PendingStream<StdioData>>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}

/// `plugin.GRPCBroker`: the provider protocol opens no extra connections, so the broker
/// stream stays open and idle.
struct Broker;

#[tonic::async_trait]
impl GrpcBroker for Broker {
    async fn start_stream(&self, _: Request<Streaming<ConnInfo>>) -> Result<Response<PendingStream<ConnInfo>>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}
