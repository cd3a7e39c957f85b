//! Outbound webhooks: one signed HTTPS `POST` per delivery, in the [Standard Webhooks]
//! form.
//!
//! A [`Webhook`] is an endpoint and the secret (or, during a rotation, the secrets) shared
//! with its receiver. [`Webhook::send`] posts one event body with the `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` headers (see [`signature`](super::signature))
//! and reports how the delivery went; retrying is the caller's business.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com/

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, USER_AGENT as USER_AGENT_HEADER};
use http::{Method, Request, Uri};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use url::Url;

use super::signature::{headers, SecretError, WebhookSecret};

/// How long one delivery may take, connection and response included, unless
/// [`Webhook::timeout`] says otherwise: 10 seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const USER_AGENT: &str = concat!("tower-credits/", env!("CARGO_PKG_VERSION"));

/// Why a [`Webhook`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL does not parse.
    #[error("invalid webhook URL: {0}")]
    InvalidUrl(String),
    /// The URL is neither `https://` nor `http://` to a loopback host. Holds the URL's
    /// scheme and host only: its path and query may carry a token.
    #[error("webhook URL must be https:// (http:// only to a loopback host), not {0}")]
    InsecureUrl(String),
    /// The signing secret is not `whsec_` followed by the base64 of a 24 to 64 byte key.
    #[error("invalid webhook secret: {0}")]
    Secret(#[from] SecretError),
    /// A root certificate given to [`Webhook::add_root_certificate_pem`] is not a valid
    /// PEM certificate.
    #[error("invalid root certificate: {0}")]
    Certificate(String),
    /// The HTTP client could not be built (its TLS configuration was refused).
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// Why a delivery by [`Webhook::send`] failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The receiver answered with a status other than 2xx, its code here (redirects
    /// included: they are not followed).
    #[error("webhook receiver answered HTTP {0}")]
    Status(u16),
    /// The request could not be sent or its answer not read: connection refused, TLS
    /// failure, connection reset. The text leaves out the URL.
    #[error("webhook delivery failed: {0}")]
    Transport(String),
    /// No answer came within the webhook's timeout.
    #[error("webhook delivery timed out")]
    Timeout,
    /// The event id cannot be a `webhook-id`: it is empty, or has a `.` or a character
    /// other than visible ASCII.
    #[error("event id cannot be a `webhook-id` (visible ASCII without `.`)")]
    InvalidEventId,
}

/// A webhook endpoint: where signed events are posted, and the secrets they are signed
/// with.
///
/// Cloning is cheap and clones share one connection pool. `Debug` never shows a secret.
///
/// ```
/// use std::time::Duration;
/// use tower_credits::events::webhook::{Webhook, WebhookError};
///
/// const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// let hook = Webhook::new("https://billing.example.com/hooks", SECRET)?
///     .timeout(Duration::from_secs(5));
/// assert_eq!(hook.url(), "https://billing.example.com/hooks");
/// assert!(!format!("{hook:?}").contains("MfKQ9r8G"));
///
/// // Plain HTTP only to this machine.
/// assert!(Webhook::new("http://127.0.0.1:8080/hooks", SECRET).is_ok());
/// assert!(matches!(
///     Webhook::new("http://billing.example.com/hooks", SECRET),
///     Err(WebhookError::InsecureUrl(_)),
/// ));
/// // Secrets only in the Standard Webhooks form.
/// assert!(matches!(
///     Webhook::new("https://billing.example.com/hooks", "hunter2"),
///     Err(WebhookError::Secret(_)),
/// ));
/// # Ok::<(), WebhookError>(())
/// ```
#[derive(Clone)]
pub struct Webhook {
    url: Url,
    /// `url` as the request target: the same URL, without its fragment.
    uri: Uri,
    /// Every delivery is signed with each, in this order: the first given to
    /// [`Webhook::new`], then each added by [`Webhook::also_sign_with`].
    secrets: Arc<[WebhookSecret]>,
    timeout: Duration,
    /// The roots added by [`Webhook::add_root_certificate_pem`], on top of the Mozilla
    /// ones.
    roots: Vec<CertificateDer<'static>>,
    client: HttpClient,
}

/// HTTP/1 over rustls (or plain TCP, for loopback `http://` URLs); a clone shares the
/// connection pool.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.redacted_url())
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("timeout", &self.timeout)
            .field("extra_roots", &self.roots.len())
            .finish()
    }
}

impl Webhook {
    /// A webhook posting to `url`, signing with `secret`.
    ///
    /// `url` must be `https://`, or `http://` to a loopback host (`127.0.0.0/8`, `::1`,
    /// `localhost`) for local receivers and tests; anything else is
    /// [`WebhookError::InsecureUrl`]: signed bodies would cross the network in clear.
    ///
    /// `secret` must be in the Standard Webhooks form, `whsec_` followed by the base64 of
    /// a 24 to 64 byte key (see [`WebhookSecret`]); anything else is
    /// [`WebhookError::Secret`], which says what is wrong without showing the secret.
    ///
    /// Deliveries use rustls with the Mozilla root certificates (add a private CA with
    /// [`add_root_certificate_pem`](Self::add_root_certificate_pem)), time out after
    /// [`DEFAULT_TIMEOUT`], and do not follow redirects.
    pub fn new(url: &str, secret: &str) -> Result<Webhook, WebhookError> {
        let url = Url::parse(url).map_err(|err| WebhookError::InvalidUrl(err.to_string()))?;
        check_url(&url)?;
        let uri = request_uri(&url)?;
        let secret: WebhookSecret = secret.parse()?;
        Ok(Webhook {
            url,
            uri,
            secrets: Arc::new([secret]),
            timeout: DEFAULT_TIMEOUT,
            roots: Vec::new(),
            client: build_client(&[])?,
        })
    }

    /// Also signs every delivery with `secret`, for a rotation: the `webhook-signature`
    /// header then carries one signature per secret, space-separated, and a receiver
    /// holding any one of them passes.
    ///
    /// To rotate, add the new secret here, give it to the receiver, then drop the old one
    /// from the sender. Fails like [`new`](Self::new) on a secret not in the `whsec_`
    /// form.
    ///
    /// ```
    /// use tower_credits::events::webhook::Webhook;
    ///
    /// let hook = Webhook::new(
    ///     "https://billing.example.com/hooks",
    ///     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", // the current secret
    /// )?
    /// .also_sign_with("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")?; // the next one
    /// # let _ = hook;
    /// # Ok::<(), tower_credits::events::webhook::WebhookError>(())
    /// ```
    pub fn also_sign_with(mut self, secret: &str) -> Result<Self, WebhookError> {
        let secret: WebhookSecret = secret.parse()?;
        let mut secrets = self.secrets.to_vec();
        secrets.push(secret);
        self.secrets = secrets.into();
        Ok(self)
    }

    /// Sets how long one delivery may take, from connecting to the end of the answer's
    /// head; past it [`send`](Self::send) returns [`DeliveryError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Also trusts the certificates in `pem` (one or more `CERTIFICATE` blocks) as roots:
    /// a private CA, or a test receiver's self-signed certificate. The public roots stay
    /// trusted.
    ///
    /// Fails with [`WebhookError::Certificate`] when `pem` holds no valid certificate.
    pub fn add_root_certificate_pem(mut self, pem: &[u8]) -> Result<Self, WebhookError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| WebhookError::Certificate(error_text(&err)))?;
        if certs.is_empty() {
            return Err(WebhookError::Certificate(
                "no CERTIFICATE block in the PEM".to_owned(),
            ));
        }
        let mut roots = self.roots.clone();
        roots.extend(certs);
        self.client = build_client(&roots).map_err(|err| match err {
            // A certificate that parses as PEM but not as X.509 is refused here.
            WebhookError::Client(text) => WebhookError::Certificate(text),
            other => other,
        })?;
        self.roots = roots;
        Ok(self)
    }

    /// The URL deliveries are posted to.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The URL as logs and dead letters show it: without user info, query or fragment
    /// (any of them may carry a token).
    pub fn redacted_url(&self) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        url.set_fragment(None);
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.to_string()
    }

    /// Posts one event: `body` (JSON) with the headers `content-type: application/json`,
    /// `user-agent: tower-credits/<version>`, and the Standard Webhooks three:
    /// `webhook-id: <event_id>`, `webhook-timestamp` (now, in Unix seconds) and
    /// `webhook-signature` (one `v1,` signature per secret).
    ///
    /// A 2xx answer is `Ok`; any other is [`DeliveryError::Status`], and a failure to
    /// get an answer is [`DeliveryError::Transport`] or [`DeliveryError::Timeout`]. It
    /// sends once: retrying, with the same `event_id` (receivers deduplicate by it), is
    /// the caller's choice. An `event_id` that cannot be a `webhook-id` is
    /// [`DeliveryError::InvalidEventId`], before anything is sent.
    pub async fn send(&self, event_id: &str, body: Bytes) -> Result<(), DeliveryError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let signed = headers(&self.secrets, event_id, now, &body)
            .map_err(|_| DeliveryError::InvalidEventId)?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(USER_AGENT_HEADER, HeaderValue::from_static(USER_AGENT))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(|err| DeliveryError::Transport(error_text(&err)))?;
        request.headers_mut().extend(signed);
        // The client follows no redirects: a 3xx comes back as it is, and is refused
        // below. Following one would post the signed body again to wherever `Location`
        // points, possibly another host, which could then replay it.
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| DeliveryError::Timeout)?
            .map_err(|err| DeliveryError::Transport(error_text(&err)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }
}

/// `https://` anywhere; `http://` only to a loopback host.
fn check_url(url: &Url) -> Result<(), WebhookError> {
    let host = url.host_str().unwrap_or_default();
    let allowed = match url.scheme() {
        "https" => !host.is_empty(),
        "http" => is_loopback(host),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(WebhookError::InsecureUrl(format!(
            "{}://{host}",
            url.scheme()
        )))
    }
}

/// Whether `host` (as `Url::host_str` writes it: IPv6 in brackets, IPv4 normalized,
/// domains lowercase) is this machine.
fn is_loopback(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    let ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `url` as an `http::Uri`, the fragment left out: it is never sent.
fn request_uri(url: &Url) -> Result<Uri, WebhookError> {
    let mut url = url.clone();
    url.set_fragment(None);
    url.as_str()
        .parse()
        .map_err(|err: http::uri::InvalidUri| WebhookError::InvalidUrl(err.to_string()))
}

/// The HTTP client: HTTP/1 only, rustls on ring trusting the Mozilla roots and `roots`,
/// `http://` allowed (`check_url` already limited it to loopback).
fn build_client(roots: &[CertificateDer<'static>]) -> Result<HttpClient, WebhookError> {
    let mut store = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for root in roots {
        store
            .add(root.clone())
            .map_err(|err| WebhookError::Client(error_text(&err)))?;
    }
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| WebhookError::Client(error_text(&err)))?
            .with_root_certificates(store)
            .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// An error and its sources, `: `-separated: the client's own text alone ("client error
/// (Connect)") does not say what went wrong. None of them holds the URL.
fn error_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A secret in the Standard Webhooks form (the specification's test key).
    const S: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn refused(url: &str) -> bool {
        matches!(Webhook::new(url, S), Err(WebhookError::InsecureUrl(_)))
    }

    #[test]
    fn https_is_allowed_anywhere() {
        let hook = Webhook::new("https://hooks.example.com/credits?x=1", S).unwrap();
        assert_eq!(hook.url(), "https://hooks.example.com/credits?x=1");
        assert!(Webhook::new("https://10.0.0.1:8443/", S).is_ok());
    }

    #[test]
    fn http_is_allowed_to_loopback_only() {
        for url in [
            "http://127.0.0.1/hooks",
            "http://127.0.0.1:9000/hooks",
            "http://127.1.2.3/",
            "http://[::1]:9000/hooks",
            "http://localhost:9000/hooks",
            "http://LOCALHOST/",
        ] {
            assert!(Webhook::new(url, S).is_ok(), "{url}");
        }
        for url in [
            "http://example.com/x",
            "http://10.0.0.1/",
            "http://128.0.0.1/",
            "http://[::2]/",
            "http://localhost.example.com/",
            "http://127.0.0.1.example.com/",
        ] {
            assert!(refused(url), "{url}");
        }
    }

    #[test]
    fn other_schemes_are_refused() {
        assert!(refused("ftp://127.0.0.1/x"));
        assert!(refused("ftp://example.com/x"));
        assert!(refused("file:///etc/passwd"));
        assert!(matches!(
            Webhook::new("not a url", S),
            Err(WebhookError::InvalidUrl(_))
        ));
    }

    #[test]
    fn refusal_shows_scheme_and_host_only() {
        let err = Webhook::new("http://example.com/x?token=t0ps3cret", S).unwrap_err();
        assert!(matches!(&err, WebhookError::InsecureUrl(u) if u == "http://example.com"));
        assert!(!err.to_string().contains("t0ps3cret"));
    }

    #[test]
    fn secrets_not_in_the_whsec_form_are_refused() {
        for secret in [
            "",
            "s",
            "whsec_",
            "whsec_quick start",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            let err = Webhook::new("https://example.com/", secret).unwrap_err();
            assert!(
                matches!(err, WebhookError::Secret(_)),
                "{secret:?}: {err:?}"
            );
            assert!(err.to_string().contains("whsec_"), "{err}");
        }
        let hook = Webhook::new("https://example.com/", S).unwrap();
        assert!(matches!(
            hook.also_sign_with("whsec_c2hvcnQ="),
            Err(WebhookError::Secret(SecretError::KeyLength { len: 5 }))
        ));
    }

    #[test]
    fn debug_hides_the_secret() {
        let hook = Webhook::new("https://example.com/hooks?token=q", S)
            .unwrap()
            .also_sign_with("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .unwrap()
            .timeout(Duration::from_secs(3));
        let debug = format!("{hook:?}");
        assert!(!debug.contains("MfKQ9r8G"), "{debug}");
        assert!(!debug.contains("C2FVsBQI"), "{debug}");
        assert!(debug.contains("<2 redacted>"), "{debug}");
        assert!(!debug.contains("token"), "{debug}");
        assert!(debug.contains("https://example.com/hooks"), "{debug}");
        assert!(debug.contains("3s"), "{debug}");
        let hook = Webhook::new("https://user:pass@example.com/h?token=q#frag", S).unwrap();
        assert_eq!(hook.redacted_url(), "https://example.com/h");
    }

    #[test]
    fn bad_root_certificates_are_refused() {
        let hook = Webhook::new("https://example.com/", S).unwrap();
        assert!(matches!(
            hook.clone().add_root_certificate_pem(b"not a pem"),
            Err(WebhookError::Certificate(_))
        ));
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            hook.add_root_certificate_pem(garbage),
            Err(WebhookError::Certificate(_))
        ));
    }

    #[tokio::test]
    async fn invalid_event_id_is_refused_before_sending() {
        let hook = Webhook::new("http://127.0.0.1:9/", S).unwrap();
        for id in ["evt\n1", "evt.1", ""] {
            assert_eq!(
                hook.send(id, Bytes::from_static(b"{}")).await,
                Err(DeliveryError::InvalidEventId),
                "{id:?}"
            );
        }
    }
}
