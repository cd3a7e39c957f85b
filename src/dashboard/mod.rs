//! A usage dashboard for callers (feature `dashboard`): one page, served by the crate, that
//! shows a caller its balance, held credits, runway and warning thresholds, its cost per
//! route (calls, credits, average per call; sortable), and its balance over time as a chart
//! with the thresholds drawn on it, refreshed while open.
//!
//! The caller pastes an API key and presses Enter; the key stays in the tab's
//! `sessionStorage` and goes out only as `Authorization: Bearer` to the JSON readout
//! ([`CreditsReadout`](crate::readout::CreditsReadout)) and history
//! ([`CreditsHistory`](crate::readout::CreditsHistory)) of the same origin. The page needs
//! no key to load, no build step and nothing from elsewhere (no external script, font or
//! image): it works offline. It is sent with a strict `Content-Security-Policy` (scripts
//! and styles from itself only, no inline handlers, no framing).
//!
//! ```
//! use axum::Router;
//! use tower_credits::dashboard::Dashboard;
//!
//! let app: Router = Router::new().nest_service(
//!     "/dashboard",
//!     Dashboard::new().top_up_url("https://example.com/billing"),
//! );
//! ```
//!
//! Mount it outside the credit layer (or price it free): the page is public, the figures
//! come from the readout routes, which the layer authenticates.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The page's policy: everything from this origin only, nothing inline, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard service: answers the page at its mount point, and its script and style
/// at `<mount>/app.js` and `<mount>/app.css`. See the [module docs](self).
#[derive(Clone)]
pub struct Dashboard {
    config: Config,
    page: Arc<Bytes>,
}

impl fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dashboard").finish_non_exhaustive()
    }
}

impl Default for Dashboard {
    fn default() -> Self {
        Self::new()
    }
}

/// Where the page finds things.
#[derive(Clone)]
struct Config {
    base: String,
    readout: String,
    history: String,
    top_up: String,
    refresh: Duration,
}

impl Dashboard {
    /// Mounted at `/dashboard`, reading `/v1/credits` and `/v1/credits/history`, refreshed
    /// every 5 s, with no top-up link.
    pub fn new() -> Self {
        Self::with(Config {
            base: "/dashboard".into(),
            readout: "/v1/credits".into(),
            history: "/v1/credits/history".into(),
            top_up: String::new(),
            refresh: Duration::from_secs(5),
        })
    }

    fn with(config: Config) -> Self {
        let page = PAGE
            .replace("{{BASE}}", &escape(&config.base))
            .replace("{{READOUT}}", &escape(&config.readout))
            .replace("{{HISTORY}}", &escape(&config.history))
            .replace("{{TOP_UP}}", &escape(&config.top_up))
            .replace("{{REFRESH_MS}}", &config.refresh.as_millis().to_string());
        Self {
            config,
            page: Arc::new(Bytes::from(page)),
        }
    }

    /// Where the dashboard is mounted (default `/dashboard`): the page loads its script and
    /// style from under it.
    pub fn mounted_at(self, path: &str) -> Self {
        let mut config = self.config;
        config.base = path.trim_end_matches('/').to_owned();
        Self::with(config)
    }

    /// The JSON readout and history routes (defaults `/v1/credits` and
    /// `/v1/credits/history`).
    pub fn readout_urls(self, readout: &str, history: &str) -> Self {
        let mut config = self.config;
        config.readout = readout.to_owned();
        config.history = history.to_owned();
        Self::with(config)
    }

    /// Where callers buy credits: shown as a link, prominent when the balance is low.
    pub fn top_up_url(self, url: &str) -> Self {
        let mut config = self.config;
        config.top_up = url.to_owned();
        Self::with(config)
    }

    /// How often the open page reads the figures again (default 5 s; at least 1 s).
    pub fn refresh_every(self, every: Duration) -> Self {
        let mut config = self.config;
        config.refresh = every.max(Duration::from_secs(1));
        Self::with(config)
    }

    fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let (body, kind) = if path.ends_with("/app.js") {
            (
                Bytes::from_static(SCRIPT.as_bytes()),
                "text/javascript; charset=utf-8",
            )
        } else if path.ends_with("/app.css") {
            (
                Bytes::from_static(STYLE.as_bytes()),
                "text/css; charset=utf-8",
            )
        } else if path.is_empty() || path == "/" || path.ends_with("/dashboard") {
            ((*self.page).clone(), "text/html; charset=utf-8")
        } else {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        };
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

impl<B> Service<Request<B>> for Dashboard {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.answer(req.uri().path())))
    }
}

/// Text safe inside a double-quoted HTML attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_configured_and_escaped() {
        let d = Dashboard::new()
            .mounted_at("/ui/")
            .top_up_url("https://example.com/pay?a=1&b=\"x\"")
            .refresh_every(Duration::from_secs(2));
        let page = std::str::from_utf8(&d.page).unwrap().to_owned();
        assert!(page.contains(r#"href="/ui/app.css""#), "{page}");
        assert!(page.contains(r#"src="/ui/app.js""#));
        assert!(page.contains(r#"data-top-up="https://example.com/pay?a=1&amp;b=&quot;x&quot;""#));
        assert!(page.contains(r#"data-refresh-ms="2000""#));
        assert!(!page.contains("{{"));
        // Settings survive each other.
        assert_eq!(d.config.base, "/ui");
        assert_eq!(d.config.refresh, Duration::from_secs(2));
    }

    #[test]
    fn nothing_inline_and_a_strict_policy() {
        let d = Dashboard::new();
        let page = d.answer("/");
        assert_eq!(page.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let html = PAGE.to_lowercase();
        for inline in [
            " onclick=",
            " onload=",
            " onsubmit=",
            "<script>",
            "style=\"",
            "javascript:",
        ] {
            assert!(!html.contains(inline), "inline {inline:?} in the page");
        }
        assert!(
            !SCRIPT.contains("innerHTML"),
            "the script writes text, never HTML"
        );
        assert!(
            !PAGE.contains("http://") && !PAGE.contains("https://"),
            "nothing from elsewhere"
        );
        assert_eq!(
            d.answer("/app.js").headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(d.answer("/nope").status(), StatusCode::NOT_FOUND);
    }
}
