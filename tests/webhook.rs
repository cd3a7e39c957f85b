//! `Webhook::send` against a real receiver (`tests/support/receiver.rs`), over HTTPS with
//! a generated certificate and over plain HTTP on loopback: signatures verified on the
//! receiving side, refusals and failures reported as `DeliveryError`s.

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_credits::events::webhook::{DeliveryError, Webhook, WebhookError};

use support::receiver::Receiver;

const SECRET: &[u8] = b"whsec_integration";

fn event(id: &str) -> Bytes {
    Bytes::from(json!({ "id": id, "type": "balance.low", "account": "acct_1" }).to_string())
}

/// Sends one event and checks the receiver verified and recorded it with its headers.
async fn delivers_and_is_verified(receiver: &Receiver, hook: &Webhook) {
    hook.send("evt_1", event("evt_1")).await.expect("delivered");
    receiver.wait_for_deliveries(1).await;

    assert_eq!(receiver.deliveries(), 1);
    assert_eq!(receiver.rejected(), 0);
    assert_eq!(receiver.failed(), 0);
    assert_eq!(receiver.ids(), ["evt_1"]);
    assert_eq!(receiver.events()[0]["type"], "balance.low");
    assert_eq!(receiver.events()[0]["account"], "acct_1");

    let record = &receiver.records()[0];
    assert_eq!(record.event_id.as_deref(), Some("evt_1"));
    assert_eq!(record.event_id.as_deref(), record.body["id"].as_str());
    assert_eq!(record.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        record.user_agent.as_deref(),
        Some(concat!("tower-credits/", env!("CARGO_PKG_VERSION")))
    );
    assert!(record.signature.starts_with("t="), "{}", record.signature);
    assert_eq!(record.path, "/hooks");
}

#[tokio::test]
async fn https_delivery_is_signed_and_verified() {
    let receiver = Receiver::https(SECRET).await;
    assert!(receiver.url().starts_with("https://localhost:"));
    let hook = Webhook::new(&receiver.url(), SECRET)
        .unwrap()
        .add_root_certificate_pem(&receiver.ca_pem().expect("an HTTPS receiver has a CA"))
        .unwrap();
    delivers_and_is_verified(&receiver, &hook).await;
}

#[tokio::test]
async fn http_delivery_to_loopback_is_signed_and_verified() {
    let receiver = Receiver::http(SECRET).await;
    assert!(receiver.url().starts_with("http://127.0.0.1:"));
    assert!(receiver.ca_pem().is_none());
    let hook = Webhook::new(&receiver.url(), SECRET).unwrap();
    delivers_and_is_verified(&receiver, &hook).await;
}

#[tokio::test]
async fn https_receiver_with_an_untrusted_certificate_is_a_transport_error() {
    let receiver = Receiver::https(SECRET).await;
    let hook = Webhook::new(&receiver.url(), SECRET).unwrap();
    let err = hook.send("evt_1", event("evt_1")).await.unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Transport(text) if text.contains("certificate")),
        "{err:?}"
    );
    assert_eq!(receiver.deliveries(), 0);
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    assert!(matches!(
        Webhook::new("http://example.com/x", SECRET),
        Err(WebhookError::InsecureUrl(_))
    ));
}

#[tokio::test]
async fn receiver_with_another_secret_rejects_with_401() {
    let receiver = Receiver::http(b"another secret").await;
    let hook = Webhook::new(&receiver.url(), SECRET).unwrap();
    assert_eq!(
        hook.send("evt_1", event("evt_1")).await,
        Err(DeliveryError::Status(401))
    );
    assert_eq!(receiver.rejected(), 1);
    assert_eq!(receiver.deliveries(), 0);
}

#[tokio::test]
async fn failing_receiver_answers_500_then_accepts() {
    let receiver = Receiver::https(SECRET).await.fail_first(2);
    let hook = Webhook::new(&receiver.url(), SECRET)
        .unwrap()
        .add_root_certificate_pem(&receiver.ca_pem().unwrap())
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            hook.send("evt_1", event("evt_1")).await,
            Err(DeliveryError::Status(500))
        );
    }
    assert_eq!(receiver.failed(), 2);
    assert_eq!(receiver.deliveries(), 0);

    hook.send("evt_1", event("evt_1")).await.expect("third try");
    receiver.wait_for_deliveries(1).await;
    assert_eq!(receiver.ids(), ["evt_1"]);
    assert_eq!(receiver.failed(), 2);
    assert_eq!(receiver.rejected(), 0);
}

#[tokio::test]
async fn retries_arrive_as_duplicates_in_order() {
    let receiver = Receiver::http(SECRET).await;
    let hook = Webhook::new(&receiver.url(), SECRET).unwrap();
    for id in ["evt_1", "evt_2", "evt_1"] {
        hook.send(id, event(id)).await.unwrap();
    }
    receiver.wait_for_deliveries(3).await;
    assert_eq!(receiver.ids(), ["evt_1", "evt_2", "evt_1"]);
    let headers: Vec<_> = receiver.event_id_headers().into_iter().flatten().collect();
    assert_eq!(headers, receiver.ids());
}

#[tokio::test]
async fn unanswered_delivery_times_out() {
    // Accepts connections and reads requests, but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    let hook = Webhook::new(&url, SECRET)
        .unwrap()
        .timeout(Duration::from_millis(200));
    assert_eq!(
        hook.send("evt_1", event("evt_1")).await,
        Err(DeliveryError::Timeout)
    );
    silent.abort();
}

#[tokio::test]
async fn refused_connection_is_a_transport_error() {
    // A listener that hangs up on every connection before answering (a port merely
    // closed could be taken by a parallel test's receiver).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hang_up = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        }
    });
    let hook = Webhook::new(&format!("http://{addr}/hooks?token=t0ps3cret"), SECRET).unwrap();
    match hook.send("evt_1", event("evt_1")).await {
        Err(DeliveryError::Transport(text)) => {
            assert!(!text.contains("t0ps3cret"), "{text}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    hang_up.abort();
}

#[tokio::test]
async fn redirect_is_not_followed() {
    // Answers every request with a redirect to a second listener, which counts
    // connections: following the redirect would post the signed body there.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_url = format!("http://{}/stolen", target.local_addr().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let redirector = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "request head cut short");
            head.extend_from_slice(&buf[..n]);
        }
        let answer = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: {target_url}\r\ncontent-length: 0\r\n\r\n"
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        let _ = stream.read_to_end(&mut Vec::new()).await;
    });
    let hook = Webhook::new(&url, SECRET).unwrap();
    assert_eq!(
        hook.send("evt_1", event("evt_1")).await,
        Err(DeliveryError::Status(307))
    );
    let followed = tokio::time::timeout(Duration::from_millis(200), target.accept()).await;
    assert!(followed.is_err(), "the redirect was followed");
    redirector.abort();
}
