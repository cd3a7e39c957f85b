//! A real webhook receiver for the integration tests: an HTTP/1 server on 127.0.0.1,
//! plain or TLS (a certificate generated for `localhost` and `127.0.0.1`), that verifies
//! each delivery's signature the way a customer's endpoint would.
//!
//! - a missing or bad `credits-signature` (or a body that is not JSON) is answered 401
//!   (400 for the body) and counted in [`Receiver::rejected`];
//! - the first [`Receiver::fail_first`] otherwise good deliveries are answered 500 and
//!   counted in [`Receiver::failed`];
//! - every other delivery is recorded and answered 204.
//!
//! Waits poll against the shared [`DEADLINE`]: nothing here sleeps and hopes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tower_credits::events::signature::{verify_signature, DEFAULT_TOLERANCE, SIGNATURE_HEADER};

use super::rig::{wait_for_async, DEADLINE};

/// The largest body the receiver reads.
const MAX_BODY: usize = 1 << 20;

/// One accepted delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The parsed JSON body.
    pub body: serde_json::Value,
    /// The `credits-event-id` header, if it was sent.
    pub event_id: Option<String>,
    /// The `credits-signature` header.
    pub signature: String,
    /// The `user-agent` header, if it was sent.
    pub user_agent: Option<String>,
    /// The `content-type` header, if it was sent.
    pub content_type: Option<String>,
    /// The request path.
    pub path: String,
}

#[derive(Debug)]
struct Shared {
    secret: Vec<u8>,
    fail_remaining: AtomicUsize,
    failed: AtomicUsize,
    rejected: AtomicUsize,
    accepted: Mutex<Vec<Delivery>>,
}

/// A webhook receiver listening on 127.0.0.1; it stops when dropped.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: Option<Vec<u8>>,
    server: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Aborting the accept loop drops its `JoinSet`, which aborts every connection.
        self.server.abort();
    }
}

impl Receiver {
    /// A plain HTTP receiver on `127.0.0.1:0`, verifying with `secret`.
    pub async fn http(secret: &[u8]) -> Receiver {
        Receiver::start(secret, None, None).await
    }

    /// An HTTPS receiver on `127.0.0.1:0`, verifying with `secret`, with a self-signed
    /// certificate for `localhost` and `127.0.0.1` (see [`Receiver::ca_pem`]).
    pub async fn https(secret: &[u8]) -> Receiver {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("generate a test certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(signing_key.serialize_der()),
        );
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("a valid test certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Receiver::start(secret, Some(acceptor), Some(cert.pem().into_bytes())).await
    }

    async fn start(secret: &[u8], tls: Option<TlsAcceptor>, ca_pem: Option<Vec<u8>>) -> Receiver {
        let shared = Arc::new(Shared {
            secret: secret.to_vec(),
            fail_remaining: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            accepted: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        let server = tokio::spawn(accept_loop(listener, tls, Arc::clone(&shared)));
        Receiver {
            shared,
            addr,
            ca_pem,
            server,
        }
    }

    /// Makes the next `n` otherwise good deliveries answer 500 (replacing any count
    /// still pending). Builder form of [`Receiver::set_fail_first`].
    pub fn fail_first(self, n: usize) -> Receiver {
        self.set_fail_first(n);
        self
    }

    /// Makes the next `n` otherwise good deliveries answer 500, on a running receiver.
    pub fn set_fail_first(&self, n: usize) {
        self.shared.fail_remaining.store(n, Ordering::SeqCst);
    }

    /// Where to send deliveries: `http://127.0.0.1:PORT/hooks`, or
    /// `https://localhost:PORT/hooks` (the name the certificate is for).
    pub fn url(&self) -> String {
        let port = self.addr.port();
        if self.ca_pem.is_some() {
            format!("https://localhost:{port}/hooks")
        } else {
            format!("http://127.0.0.1:{port}/hooks")
        }
    }

    /// The receiver's self-signed certificate as PEM (HTTPS only), to trust with
    /// `Webhook::add_root_certificate_pem`.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        self.ca_pem.clone()
    }

    /// The accepted deliveries, in arrival order, duplicates included.
    pub fn records(&self) -> Vec<Delivery> {
        self.shared.accepted.lock().unwrap().clone()
    }

    /// The accepted bodies, in arrival order, duplicates included.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.records().into_iter().map(|d| d.body).collect()
    }

    /// The `credits-event-id` headers of the accepted deliveries, in arrival order.
    pub fn event_id_headers(&self) -> Vec<Option<String>> {
        self.records().into_iter().map(|d| d.event_id).collect()
    }

    /// The `id` fields of the accepted bodies, in arrival order (empty when missing).
    pub fn ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|body| body["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// How many deliveries were accepted.
    pub fn deliveries(&self) -> usize {
        self.shared.accepted.lock().unwrap().len()
    }

    /// How many good deliveries were answered 500 by [`Receiver::fail_first`].
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// How many deliveries were refused: bad or missing signature, or a body that is not
    /// JSON.
    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` deliveries were accepted, failing the test after
    /// [`DEADLINE`].
    pub async fn wait_for_deliveries(&self, n: usize) {
        wait_for_async(&format!("{n} webhook deliveries"), DEADLINE, || async {
            (self.deliveries() >= n).then_some(())
        })
        .await
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Reap finished connections so the set does not grow with every delivery.
        while connections.try_join_next().is_some() {}
        let tls = tls.clone();
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&shared), request));
            let http1 = hyper::server::conn::http1::Builder::new();
            // A client that gives up mid-request (a timeout test) is no receiver error.
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = http1.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
                None => {
                    let _ = http1.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let status = receive(&shared, request).await;
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    Ok(response)
}

async fn receive(shared: &Shared, request: Request<Incoming>) -> StatusCode {
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
        shared.rejected.fetch_add(1, Ordering::SeqCst);
        return StatusCode::PAYLOAD_TOO_LARGE;
    };
    let body = body.to_bytes();

    let signature = header(SIGNATURE_HEADER).unwrap_or_default();
    if verify_signature(&shared.secret, &signature, &body, DEFAULT_TOLERANCE).is_err() {
        shared.rejected.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        shared.rejected.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    };
    let failing = shared
        .fail_remaining
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        shared.failed.fetch_add(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    shared.accepted.lock().unwrap().push(Delivery {
        body: json,
        event_id: header("credits-event-id"),
        signature,
        user_agent: header("user-agent"),
        content_type: header("content-type"),
        path: parts.uri.path().to_owned(),
    });
    StatusCode::NO_CONTENT
}
