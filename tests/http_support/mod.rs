//! Helpers for end-to-end HTTP tests: a real axum server on a loopback port and a real
//! hyper client (HTTP/1.1 or HTTP/2). The deadline, waits and checks every test shares are
//! in `tests/support/rig.rs` (a test binary that uses this module declares `mod support;`).
#![allow(dead_code)]

pub mod sse;

use std::net::SocketAddr;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower_credits::ledger::Configure;
use tower_credits::{AccountId, AccountSettings, ApiKeyHash, Ledger, MemoryLedger};
use tower_credits::{LedgerAdmin, LedgerReports, TopUp};

pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(app: Router) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response read to the end: status, headers, body, trailers.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn int(&self, name: &str) -> i64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .parse()
            .unwrap()
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()?
            .get(name)
            .map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub async fn read(response: Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    read(client.request(req).await.unwrap()).await
}

pub fn get_req(url: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get(url);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    req.body(Full::default()).unwrap()
}

/// A gRPC request carrying `message`, with API key `key` as `authorization: Bearer <key>`
/// in its metadata.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

pub fn post_json(url: &str, key: &str, json: serde_json::Value) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap()
}

/// An account with `credits`, reachable by API key `key`.
pub async fn account<L: LedgerAdmin>(ledger: &L, name: &str, key: &str, credits: u64) -> AccountId {
    let account = AccountId::new(name).unwrap();
    ledger
        .configure(Configure::new(&account, AccountSettings::new()))
        .await
        .unwrap();
    if credits > 0 {
        ledger
            .top_up(TopUp::new(&account, credits, format!("seed-{name}")))
            .await
            .unwrap();
    }
    ledger
        .register_api_key(&ApiKeyHash::of(key), &account)
        .await
        .unwrap();
    account
}

pub async fn available(ledger: &MemoryLedger, account: &AccountId) -> i64 {
    ledger.balance(account).await.unwrap().available
}

/// A ledger whose store is down: every call fails as unavailable.
#[derive(Clone)]
pub struct DownLedger;

macro_rules! down {
    ($($trait:ident { $($name:ident($($arg:ty),*) -> $t:ty;)* })*) => {
        $(impl $trait for DownLedger {
            down!(@future $trait);
            $(fn $name(&self, $(_: $arg),*) -> Self::Future<$t> {
                std::future::ready(Err(tower_credits::LedgerError::Unavailable("connection refused to 10.0.0.7:6379".into())))
            })*
        })*
    };
    (@future Ledger) => {
        type Future<T: Send + 'static> = std::future::Ready<Result<T, tower_credits::LedgerError>>;
    };
    (@future $other:ident) => {};
}

down! {
    Ledger {
        reserve(tower_credits::ledger::Reserve) -> tower_credits::ledger::ReserveOutcome;
        settle(tower_credits::ledger::Settle) -> tower_credits::ledger::Settlement;
        extend(tower_credits::ledger::Extend) -> tower_credits::ledger::Extended;
        grow(tower_credits::ledger::Grow) -> tower_credits::ledger::GrowOutcome;
        store_response(tower_credits::ledger::StoreResponse) -> bool;
        lookup_api_key(&tower_credits::ApiKeyHash) -> Option<tower_credits::AccountId>;
    }
    LedgerAdmin {
        top_up(tower_credits::TopUp) -> tower_credits::ledger::ToppedUp;
        configure(tower_credits::ledger::Configure) -> ();
        register_api_key(&tower_credits::ApiKeyHash, &AccountId) -> ();
        revoke_api_key(&tower_credits::ApiKeyHash) -> bool;
    }
    LedgerReports {
        balance(&tower_credits::AccountId) -> tower_credits::Balance;
        usage(&tower_credits::AccountId) -> tower_credits::ledger::Usage;
    }
}

/// A [`MemoryLedger`] whose store can be switched off: while `down`, every call fails as
/// unavailable. `calls` counts the calls that reached it (up or down), `lookups` those of
/// them that looked up an API key.
#[derive(Clone, Default)]
pub struct SwitchLedger {
    pub inner: MemoryLedger,
    pub down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub lookups: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SwitchLedger {
    pub fn new(inner: MemoryLedger) -> Self {
        Self {
            inner,
            ..Self::default()
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// API key lookups that reached the ledger (a cached key costs none).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs `call` (the ledger method `name`) only while the store is up (the in-memory
    /// ledger acts when called).
    fn gate<T: Send + 'static>(
        &self,
        name: &str,
        call: impl FnOnce() -> std::future::Ready<Result<T, tower_credits::LedgerError>>,
    ) -> std::future::Ready<Result<T, tower_credits::LedgerError>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if name == "lookup_api_key" {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::ready(Err(tower_credits::LedgerError::Timeout(
                std::time::Duration::from_millis(50),
            )))
        } else {
            call()
        }
    }
}

macro_rules! switch {
    ($($trait:ident { $($name:ident($($arg:ident: $ty:ty),*) -> $t:ty;)* })*) => {
        $(impl $trait for SwitchLedger {
            switch!(@future $trait);
            $(fn $name(&self, $($arg: $ty),*) -> Self::Future<$t> {
                self.gate(stringify!($name), || $trait::$name(&self.inner, $($arg),*))
            })*
        })*
    };
    (@future Ledger) => {
        type Future<T: Send + 'static> = std::future::Ready<Result<T, tower_credits::LedgerError>>;
    };
    (@future $other:ident) => {};
}

switch! {
    Ledger {
        reserve(r: tower_credits::ledger::Reserve) -> tower_credits::ledger::ReserveOutcome;
        settle(s: tower_credits::ledger::Settle) -> tower_credits::ledger::Settlement;
        extend(e: tower_credits::ledger::Extend) -> tower_credits::ledger::Extended;
        grow(g: tower_credits::ledger::Grow) -> tower_credits::ledger::GrowOutcome;
        store_response(s: tower_credits::ledger::StoreResponse) -> bool;
        lookup_api_key(k: &tower_credits::ApiKeyHash) -> Option<tower_credits::AccountId>;
    }
    LedgerAdmin {
        top_up(t: tower_credits::TopUp) -> tower_credits::ledger::ToppedUp;
        configure(c: tower_credits::ledger::Configure) -> ();
        register_api_key(k: &tower_credits::ApiKeyHash, a: &tower_credits::AccountId) -> ();
        revoke_api_key(k: &tower_credits::ApiKeyHash) -> bool;
    }
    LedgerReports {
        balance(a: &tower_credits::AccountId) -> tower_credits::Balance;
        usage(a: &tower_credits::AccountId) -> tower_credits::ledger::Usage;
    }
}
