//! The metered SSE handler the stream tests share, and an SSE reader that parses events as
//! EventSource does.

use std::convert::Infallible;

use axum::extract::Query;
use axum::response::sse::{Event, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use tower_credits::{Charge, ChargeError};

/// `?n=` events; `polite`: the handler stops by itself when `add` is refused (else it goes
/// on regardless, and the layer must cut it).
#[derive(serde::Deserialize)]
pub struct Params {
    pub n: u64,
    #[serde(default)]
    pub polite: bool,
}

/// `n` SSE events `{"i":…}`, each metered 1 credit as it is produced, settled at the end.
pub async fn metered_sse(
    charge: Charge,
    Query(p): Query<Params>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    charge.defer();
    let events = stream::iter(0..p.n)
        .take_while(move |_| {
            let metered = charge.add(1);
            let go_on = !p.polite || !matches!(metered, Err(ChargeError::HoldExceeded { .. }));
            async move { go_on }
        })
        .map(|i| Ok(Event::default().data(format!("{{\"i\":{i}}}"))));
    Sse::new(events)
}

/// SSE events as EventSource reads them: `(event name, data)` per blank-line-ended block.
pub fn events(body: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(body).unwrap().replace("\r\n", "\n");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let (mut event, mut data) = ("message".to_owned(), Vec::new());
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.trim_start().to_owned());
                }
            }
            (event, data.join("\n"))
        })
        .collect()
}

/// The data events, and the final `credits` event's JSON (`Null` when there is none).
pub fn data_and_credits(body: &[u8]) -> (Vec<String>, serde_json::Value) {
    let mut credits = serde_json::Value::Null;
    let mut data = Vec::new();
    for (name, payload) in events(body) {
        match name.as_str() {
            "credits" => credits = serde_json::from_str(&payload).unwrap(),
            _ => data.push(payload),
        }
    }
    (data, credits)
}
