//! Standard Webhooks signatures: the specification's published test vectors against
//! `events::verify`, and `Webhook::send` against a real receiver
//! (`tests/support/receiver.rs`), over HTTPS with a generated certificate and over plain
//! HTTP on loopback. The receiver verifies every delivery twice, with `events::verify`
//! and with an independent implementation of the reference algorithm; tampered, forged,
//! stale and re-labelled deliveries are refused; failures come back as `DeliveryError`s.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_credits::events::signature::{
    headers, sign, verify_at, VerifyError, DEFAULT_TOLERANCE, ID_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
use tower_credits::events::webhook::{DeliveryError, Webhook, WebhookError};
use tower_credits::events::{verify, WebhookSecret};

use support::receiver::{reference, Receiver};

const SECRET: &str = "whsec_wmoohBP1Vlg4mvvGI6ZAact297TTGy/UvVlGDBKt5Ro=";
/// The secret `SECRET` is rotated to.
const NEXT_SECRET: &str = "whsec_Rq6XYNLCYuLwDrrAFaqp/4NCphcxHUFapxhzAbDM7gM=";

fn secret(text: &str) -> WebhookSecret {
    text.parse().unwrap()
}

fn now() -> u64 {
    reference::now() as u64
}

/// `webhook-id`, `webhook-timestamp` and `webhook-signature` with these values.
fn header_map(id: &str, timestamp: u64, signature: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(ID_HEADER, HeaderValue::from_str(id).unwrap());
    map.insert(TIMESTAMP_HEADER, HeaderValue::from(timestamp));
    map.insert(SIGNATURE_HEADER, HeaderValue::from_str(signature).unwrap());
    map
}

// ---------------------------------------------------------------------------------------
// The specification's test vectors.
//
// Copied from the Standard Webhooks reference libraries' tests, in
// github.com/standard-webhooks/standard-webhooks (commit b2fa7b8):
// - `libraries/python/tests/test_webhooks.py` (`test_sign_function`, `DEFAULT_*`,
//   `test_invalid_signature_raises_error`, `test_multi_sig_payload_is_valid`); the same
//   vector is in the JavaScript, Go, Ruby, PHP, C# and Java tests;
// - `libraries/rust/src/lib.rs` (`test_sign`, `test_no_verify`,
//   `test_no_verify_with_multiple_signatures`).
// ---------------------------------------------------------------------------------------

/// A signed message of the reference tests: secret, id, timestamp, payload, signature.
struct Vector {
    secret: &'static str,
    msg_id: &'static str,
    timestamp: u64,
    payload: &'static str,
    signature: &'static str,
}

const VECTORS: [Vector; 2] = [
    // Python, JavaScript, Go, Ruby, PHP, C#, Java: `test_sign_function` and its peers.
    Vector {
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        msg_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
        timestamp: 1614265330,
        payload: r#"{"test": 2432232314}"#,
        signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    },
    // Rust: `test_sign`.
    Vector {
        secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        msg_id: "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        timestamp: 1649367553,
        payload: r#"{"email":"test@example.com","username":"test_user"}"#,
        signature: "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
    },
];

/// Signatures the reference tests expect to be refused for the vectors' messages.
const WRONG_SIGNATURES: [&str; 4] = [
    // Python `test_invalid_signature_raises_error`: the first vector, last byte changed.
    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
    // Rust `test_no_verify`.
    "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=",
    // Python / JavaScript / Go multi-signature decoys.
    "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    // Rust `test_no_verify_with_multiple_signatures`.
    "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q= v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
];

#[test]
fn the_specification_vectors_pass_verify() {
    for v in &VECTORS {
        let headers = header_map(v.msg_id, v.timestamp, v.signature);
        let key = secret(v.secret);
        // At the vector's own time, and at the edges of the 5-minute tolerance.
        for now in [v.timestamp, v.timestamp + 300, v.timestamp - 300] {
            assert_eq!(
                verify_at(&key, &headers, v.payload.as_bytes(), DEFAULT_TOLERANCE, now),
                Ok(()),
                "{} at {now}",
                v.msg_id
            );
        }
        // The reference algorithm of the test support agrees (a check on the checker).
        assert_eq!(
            reference::verify(v.secret, &headers, v.payload.as_bytes(), v.timestamp as i64),
            Ok(())
        );
    }
}

#[test]
fn the_crate_signs_the_specification_vectors_exactly() {
    for v in &VECTORS {
        let key = secret(v.secret);
        assert_eq!(
            sign(
                std::slice::from_ref(&key),
                v.msg_id,
                v.timestamp,
                v.payload.as_bytes()
            ),
            v.signature
        );
        let sent = headers(&[key], v.msg_id, v.timestamp, v.payload.as_bytes()).unwrap();
        assert_eq!(sent[ID_HEADER], v.msg_id);
        assert_eq!(sent[TIMESTAMP_HEADER], v.timestamp.to_string().as_str());
        assert_eq!(sent[SIGNATURE_HEADER], v.signature);
        assert_eq!(
            reference::sign(v.secret, v.msg_id, v.timestamp as i64, v.payload.as_bytes()),
            Ok(v.signature.to_owned())
        );
    }
}

#[test]
fn the_specification_vectors_refuse_what_the_reference_tests_refuse() {
    let v = &VECTORS[0];
    let key = secret(v.secret);
    let check = |headers: &HeaderMap, now: u64| {
        verify_at(&key, headers, v.payload.as_bytes(), DEFAULT_TOLERANCE, now)
    };
    for wrong in WRONG_SIGNATURES {
        let headers = header_map(v.msg_id, v.timestamp, wrong);
        assert_eq!(
            check(&headers, v.timestamp),
            Err(VerifyError::Mismatch),
            "{wrong}"
        );
    }
    // Partial signatures: `v1,` alone, and the first 8 characters.
    for partial in ["v1,", &v.signature[..8]] {
        let headers = header_map(v.msg_id, v.timestamp, partial);
        assert_eq!(
            check(&headers, v.timestamp),
            Err(VerifyError::Mismatch),
            "{partial}"
        );
    }
    // Old and new timestamps, one second past the tolerance.
    let headers = header_map(v.msg_id, v.timestamp, v.signature);
    for now in [v.timestamp + 301, v.timestamp - 301] {
        assert_eq!(
            check(&headers, now),
            Err(VerifyError::Stale { age_secs: 301 })
        );
    }
    // Another body, another id, another timestamp under the same signature.
    assert_eq!(
        verify_at(
            &key,
            &headers,
            br#"{"test": 2432232315}"#,
            DEFAULT_TOLERANCE,
            v.timestamp
        ),
        Err(VerifyError::Mismatch)
    );
    let other_id = header_map("msg_p5jXN8AQM9LWM0D4loKWxJel", v.timestamp, v.signature);
    assert_eq!(check(&other_id, v.timestamp), Err(VerifyError::Mismatch));
    let other_time = header_map(v.msg_id, v.timestamp + 1, v.signature);
    assert_eq!(check(&other_time, v.timestamp), Err(VerifyError::Mismatch));
    // Another secret: the Rust vector's.
    assert_eq!(
        verify_at(
            &secret(VECTORS[1].secret),
            &headers,
            v.payload.as_bytes(),
            DEFAULT_TOLERANCE,
            v.timestamp
        ),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn a_valid_signature_among_decoys_and_other_versions_passes() {
    // Python `test_multi_sig_payload_is_valid`: decoys, a `v2` entry, the valid one.
    let v = &VECTORS[0];
    let signature = [
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        v.signature,
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    ]
    .join(" ");
    let headers = header_map(v.msg_id, v.timestamp, &signature);
    assert_eq!(
        verify_at(
            &secret(v.secret),
            &headers,
            v.payload.as_bytes(),
            DEFAULT_TOLERANCE,
            v.timestamp
        ),
        Ok(())
    );
}

#[test]
fn rotation_signatures_verify_with_the_reference_algorithm_under_either_secret() {
    let body = br#"{"id":"evt_1","type":"balance.low"}"#;
    let at = now();
    let sent = headers(&[secret(SECRET), secret(NEXT_SECRET)], "evt_1", at, body).unwrap();
    let signature = sent[SIGNATURE_HEADER].to_str().unwrap();
    assert_eq!(signature.split(' ').count(), 2, "{signature}");
    for key in [SECRET, NEXT_SECRET] {
        assert_eq!(
            reference::verify(key, &sent, body, at as i64),
            Ok(()),
            "{key}"
        );
        assert_eq!(verify(&secret(key), &sent, body), Ok(()));
    }
    let unrelated = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert!(reference::verify(unrelated, &sent, body, at as i64).is_err());
    assert_eq!(
        verify(&secret(unrelated), &sent, body),
        Err(VerifyError::Mismatch)
    );
}

// ---------------------------------------------------------------------------------------
// Deliveries to a real receiver.
// ---------------------------------------------------------------------------------------

fn event(id: &str) -> Bytes {
    Bytes::from(json!({ "id": id, "type": "balance.low", "account": "acct_1" }).to_string())
}

/// Sends one event and checks the receiver verified and recorded it with its headers.
async fn delivers_and_is_verified(receiver: &Receiver, hook: &Webhook) {
    let before = now();
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
    assert!(
        (before..=now()).contains(&record.timestamp),
        "webhook-timestamp {} is the time of sending",
        record.timestamp
    );
    assert!(record.signature.starts_with("v1,"), "{}", record.signature);
    assert_eq!(
        record.signature.split(' ').count(),
        1,
        "one secret, one signature"
    );
    assert_eq!(record.path, "/hooks");
    // The receiver accepted it only because both checks passed; say so on the record.
    assert_eq!(
        reference::verify(SECRET, &record.headers, &record.raw_body, now() as i64),
        Ok(())
    );
    assert_eq!(
        verify(&secret(SECRET), &record.headers, &record.raw_body),
        Ok(())
    );
    // No header of the old scheme.
    assert!(record.headers.get("credits-signature").is_none());
    assert!(record.headers.get("credits-event-id").is_none());
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
fn a_secret_not_in_the_whsec_form_is_refused_at_start() {
    for bad in ["whsec_integration", "integration", "", "whsec_"] {
        let err = Webhook::new("https://hooks.example.com/", bad).unwrap_err();
        assert!(matches!(err, WebhookError::Secret(_)), "{bad:?}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("whsec_"), "{text}");
        if !bad.is_empty() && bad != "whsec_" {
            assert!(!text.contains(bad), "the error shows the secret: {text}");
        }
    }
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
    let receiver = Receiver::http(NEXT_SECRET).await;
    let hook = Webhook::new(&receiver.url(), SECRET).unwrap();
    assert_eq!(
        hook.send("evt_1", event("evt_1")).await,
        Err(DeliveryError::Status(401))
    );
    assert_eq!(receiver.rejected(), 1);
    assert_eq!(receiver.deliveries(), 0);
    let rejection = &receiver.rejections()[0];
    assert_eq!(rejection.ours, Err(VerifyError::Mismatch));
    assert!(rejection.reference.is_err(), "{rejection:?}");
}

#[tokio::test]
async fn during_a_rotation_receivers_with_the_old_or_the_new_secret_both_verify() {
    let hook = |url: &str| {
        Webhook::new(url, SECRET)
            .unwrap()
            .also_sign_with(NEXT_SECRET)
            .unwrap()
    };
    for key in [SECRET, NEXT_SECRET] {
        let receiver = Receiver::http(key).await;
        hook(&receiver.url())
            .send("evt_1", event("evt_1"))
            .await
            .expect("delivered");
        receiver.wait_for_deliveries(1).await;
        assert_eq!(receiver.rejected(), 0);
        let record = &receiver.records()[0];
        assert_eq!(
            record.signature.split(' ').count(),
            2,
            "{}",
            record.signature
        );
    }
}

/// A genuine delivery, captured as the receiver got it: its headers and raw body.
async fn captured_delivery(receiver: &Receiver) -> (HeaderMap, Bytes) {
    let hook = Webhook::new(&receiver.url(), SECRET).unwrap();
    hook.send("evt_1", event("evt_1")).await.expect("delivered");
    receiver.wait_for_deliveries(1).await;
    let record = receiver.records().remove(0);
    let mut headers = HeaderMap::new();
    for name in [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
        headers.insert(name, record.headers[name].clone());
    }
    (headers, record.raw_body)
}

#[tokio::test]
async fn a_tampered_body_is_refused() {
    let receiver = Receiver::http(SECRET).await;
    let (headers, body) = captured_delivery(&receiver).await;
    let tampered = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("acct_1", "acct_2");
    assert_ne!(tampered.as_bytes(), &body[..]);
    assert_eq!(
        receiver.post(&headers, Bytes::from(tampered)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(receiver.deliveries(), 1);
    let rejection = &receiver.rejections()[0];
    assert_eq!(rejection.ours, Err(VerifyError::Mismatch));
    assert!(rejection.reference.is_err(), "{rejection:?}");
}

#[tokio::test]
async fn a_replay_under_a_new_id_is_refused_and_an_exact_replay_carries_the_same_id() {
    let receiver = Receiver::http(SECRET).await;
    let (headers, body) = captured_delivery(&receiver).await;

    // Issue 21, finding 5: a replay with a fresh id header must not pass as a new event.
    let mut relabelled = headers.clone();
    relabelled.insert(ID_HEADER, HeaderValue::from_static("evt_2"));
    assert_eq!(
        receiver.post(&relabelled, body.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let rejection = &receiver.rejections()[0];
    assert_eq!(rejection.ours, Err(VerifyError::Mismatch));
    assert!(rejection.reference.is_err(), "{rejection:?}");

    // An exact replay within the tolerance passes the signature check, with the id it
    // had: that is why receivers deduplicate by `webhook-id`.
    assert_eq!(receiver.post(&headers, body).await, StatusCode::NO_CONTENT);
    assert_eq!(
        receiver.event_id_headers(),
        [Some("evt_1".to_owned()), Some("evt_1".to_owned())]
    );
}

#[tokio::test]
async fn a_stale_delivery_is_refused() {
    let receiver = Receiver::http(SECRET).await;
    let body = event("evt_1");
    // Signed right, but six minutes ago: a recorded delivery replayed late.
    let old = headers(&[secret(SECRET)], "evt_1", now() - 360, &body).unwrap();
    assert_eq!(
        receiver.post(&old, body.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let rejection = &receiver.rejections()[0];
    assert!(
        matches!(rejection.ours, Err(VerifyError::Stale { age_secs }) if age_secs >= 360),
        "{rejection:?}"
    );
    assert_eq!(
        rejection.reference,
        Err("signature timestamp too old".to_owned())
    );
    // The same, signed now, passes.
    let fresh = headers(&[secret(SECRET)], "evt_1", now(), &body).unwrap();
    assert_eq!(receiver.post(&fresh, body).await, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_delivery_without_the_headers_is_refused() {
    let receiver = Receiver::http(SECRET).await;
    let (headers, body) = captured_delivery(&receiver).await;
    for name in [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER] {
        let mut missing = headers.clone();
        missing.remove(name);
        assert_eq!(
            receiver.post(&missing, body.clone()).await,
            StatusCode::UNAUTHORIZED
        );
        let rejection = receiver.rejections().pop().unwrap();
        assert_eq!(rejection.ours, Err(VerifyError::MissingHeader(name)));
    }
    assert_eq!(receiver.deliveries(), 1);
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
    // `webhook-id` is the body's `id` on every delivery, retries included.
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
