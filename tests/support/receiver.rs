//! A real webhook receiver for the integration tests: an HTTP/1 server on 127.0.0.1,
//! plain or TLS (a certificate generated for `localhost` and `127.0.0.1`), that verifies
//! each delivery's Standard Webhooks headers the way a customer's endpoint would, twice:
//! with `tower_credits::events::verify`, and with [`reference`], an implementation of the
//! specification's reference algorithm that shares no code with the crate.
//!
//! - a delivery that either check refuses is answered 401, a body that is not JSON 400;
//!   both are counted in [`Receiver::rejected`] and kept in [`Receiver::rejections`];
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
use tower_credits::events::signature::{
    VerifyError, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use tower_credits::events::{verify, WebhookSecret};

use super::rig::{wait_for_async, DEADLINE};

/// The largest body the receiver reads.
const MAX_BODY: usize = 1 << 20;

/// One accepted delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The parsed JSON body.
    pub body: serde_json::Value,
    /// The body's bytes, as they arrived.
    pub raw_body: Bytes,
    /// Every header of the request, as it arrived.
    pub headers: http::HeaderMap,
    /// The `webhook-id` header, if it was sent.
    pub event_id: Option<String>,
    /// The `webhook-timestamp` header, parsed.
    pub timestamp: u64,
    /// The `webhook-signature` header.
    pub signature: String,
    /// The `user-agent` header, if it was sent.
    pub user_agent: Option<String>,
    /// The `content-type` header, if it was sent.
    pub content_type: Option<String>,
    /// The request path.
    pub path: String,
}

/// One refused delivery: what each check said, and the status answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What `tower_credits::events::verify` said (`Ok` when only the body was bad).
    pub ours: Result<(), VerifyError>,
    /// What the reference algorithm said.
    pub reference: Result<(), String>,
    /// The status answered: 401 for a signature, 400 for a body, 413 for a large one.
    pub status: u16,
}

#[derive(Debug)]
struct Shared {
    secret: WebhookSecret,
    /// The same secret as text, for the reference check.
    secret_text: String,
    fail_remaining: AtomicUsize,
    failed: AtomicUsize,
    rejections: Mutex<Vec<Rejection>>,
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
    /// A plain HTTP receiver on `127.0.0.1:0`, verifying with `secret` (`whsec_…`).
    pub async fn http(secret: &str) -> Receiver {
        Receiver::start(secret, None, None).await
    }

    /// An HTTPS receiver on `127.0.0.1:0`, verifying with `secret` (`whsec_…`), with a
    /// self-signed certificate for `localhost` and `127.0.0.1` (see [`Receiver::ca_pem`]).
    pub async fn https(secret: &str) -> Receiver {
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

    async fn start(secret: &str, tls: Option<TlsAcceptor>, ca_pem: Option<Vec<u8>>) -> Receiver {
        let shared = Arc::new(Shared {
            secret: secret.parse().expect("a test secret in the whsec_ form"),
            secret_text: secret.to_owned(),
            fail_remaining: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            rejections: Mutex::new(Vec::new()),
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

    /// The `webhook-id` headers of the accepted deliveries, in arrival order.
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

    /// How many deliveries were refused: bad or missing signature headers, or a body that
    /// is not JSON.
    pub fn rejected(&self) -> usize {
        self.shared.rejections.lock().unwrap().len()
    }

    /// The refused deliveries, in arrival order.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.shared.rejections.lock().unwrap().clone()
    }

    /// Posts `body` with `headers` (and `content-type: application/json`) to this
    /// receiver, as an attacker replaying or altering a delivery would, and returns the
    /// status it answered. Plain HTTP receivers only.
    pub async fn post(&self, headers: &http::HeaderMap, body: Bytes) -> StatusCode {
        assert!(self.ca_pem.is_none(), "`post` speaks plain HTTP");
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        let mut request = Request::post(self.url())
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(body))
            .unwrap();
        request.headers_mut().extend(headers.clone());
        let response = tokio::time::timeout(DEADLINE, client.request(request))
            .await
            .expect("the receiver answers within the deadline")
            .expect("the receiver answers");
        response.status()
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
    let reject = |ours, reference, status: StatusCode| {
        shared.rejections.lock().unwrap().push(Rejection {
            ours,
            reference,
            status: status.as_u16(),
        });
        status
    };
    let Ok(body) = Limited::new(body, MAX_BODY).collect().await else {
        return reject(Ok(()), Ok(()), StatusCode::PAYLOAD_TOO_LARGE);
    };
    let body = body.to_bytes();

    // Both checks, on the raw bytes, before the body is parsed.
    let ours = verify(&shared.secret, &parts.headers, &body);
    let reference = reference::verify(&shared.secret_text, &parts.headers, &body, reference::now());
    if ours.is_err() || reference.is_err() {
        return reject(ours, reference, StatusCode::UNAUTHORIZED);
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return reject(Ok(()), Ok(()), StatusCode::BAD_REQUEST);
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
        raw_body: body,
        event_id: header(ID_HEADER),
        timestamp: header(TIMESTAMP_HEADER)
            .and_then(|t| t.parse().ok())
            .expect("a verified delivery has a timestamp"),
        signature: header(SIGNATURE_HEADER).expect("a verified delivery has a signature"),
        headers: parts.headers.clone(),
        user_agent: header("user-agent"),
        content_type: header("content-type"),
        path: parts.uri.path().to_owned(),
    });
    StatusCode::NO_CONTENT
}

/// The Standard Webhooks algorithm written out again from the specification
/// (`spec/standard-webhooks.md`) and its reference Rust library
/// (`libraries/rust/src/lib.rs`, both in github.com/standard-webhooks/standard-webhooks),
/// step for step, sharing no code with tower-credits: HMAC-SHA256 is built here from
/// RFC 2104 over the `sha2` hash, the secret decoded and the signature encoded with the
/// `base64` crate's standard engine, and signatures compared as text in constant time,
/// as the reference library does.
pub mod reference {
    use base64::Engine as _;
    use sha2::{Digest, Sha256};

    /// The reference libraries' tolerance, either way: five minutes.
    pub const TOLERANCE_IN_SECONDS: i64 = 5 * 60;

    /// Now, in Unix seconds.
    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_secs() as i64
    }

    /// HMAC-SHA256 as RFC 2104 defines it: H((K ^ opad) || H((K ^ ipad) || message)),
    /// with a key longer than the 64-byte block hashed first.
    pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
        const BLOCK: usize = 64;
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// The key of a `whsec_` secret (the prefix is optional, as in the reference
    /// libraries).
    pub fn key(secret: &str) -> Result<Vec<u8>, String> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| format!("invalid secret: {e}"))?;
        if key.is_empty() {
            return Err("secret may not be blank".to_owned());
        }
        Ok(key)
    }

    /// `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{payload}")>`; the payload must
    /// be UTF-8, as the reference library requires.
    pub fn sign(
        secret: &str,
        msg_id: &str,
        timestamp: i64,
        payload: &[u8],
    ) -> Result<String, String> {
        let key = key(secret)?;
        let payload = std::str::from_utf8(payload).map_err(|_| "payload invalid".to_owned())?;
        let to_sign = format!("{msg_id}.{timestamp}.{payload}");
        let signed = hmac_sha256(&key, to_sign.as_bytes());
        let encoded = base64::engine::general_purpose::STANDARD.encode(signed);
        Ok(format!("v1,{encoded}"))
    }

    /// The reference library's `verify_with_timestamp`: the three headers present, the
    /// timestamp within [`TOLERANCE_IN_SECONDS`] of `now`, and any space-separated `v1,`
    /// entry equal (compared in constant time) to the expected signature.
    pub fn verify(
        secret: &str,
        headers: &http::HeaderMap,
        payload: &[u8],
        now: i64,
    ) -> Result<(), String> {
        let header = |name: &str| {
            headers
                .get(name)
                .ok_or(format!("missing header {name}"))?
                .to_str()
                .map_err(|_| format!("invalid header {name}"))
        };
        let msg_id = header("webhook-id")?;
        let msg_signature = header("webhook-signature")?;
        let msg_ts: i64 = header("webhook-timestamp")?
            .parse()
            .map_err(|_| "failed to parse timestamp".to_owned())?;
        if now - msg_ts > TOLERANCE_IN_SECONDS {
            return Err("signature timestamp too old".to_owned());
        }
        if msg_ts > now + TOLERANCE_IN_SECONDS {
            return Err("signature timestamp too far in future".to_owned());
        }
        let versioned = sign(secret, msg_id, msg_ts, payload)?;
        let (_, expected) = versioned.split_once(',').ok_or("signature invalid")?;
        let matched = msg_signature
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .any(|(_, signature)| {
                signature.len() == expected.len()
                    && signature
                        .bytes()
                        .zip(expected.bytes())
                        .fold(0, |acc, (a, b)| acc | (a ^ b))
                        == 0
            });
        if matched {
            Ok(())
        } else {
            Err("signature invalid".to_owned())
        }
    }
}
