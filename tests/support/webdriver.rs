//! A minimal W3C WebDriver client over the hyper client the tests already use, and a
//! headless Chromium driven by Debian's `chromedriver` on a free port.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::rig::wait_until;

/// A `chromedriver` process (killed on drop) and one browser session in it.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a fresh profile in `profile`.
    pub async fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
        let client = Client::builder(TokioExecutor::new()).build_http();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            client,
        };
        wait_until("chromedriver answers", || async {
            browser_status(&browser).await
        })
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1100,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let session = browser.call("POST", "/session", Some(caps)).await;
        browser.session = session["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser
    }

    /// One WebDriver command: its `value`, or a panic with the driver's error.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self
            .client
            .request(req)
            .await
            .expect("chromedriver answers");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).expect("WebDriver answers JSON");
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {value}"
        );
        value["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.call(
            "POST",
            &self.session_path("/url"),
            Some(json!({"url": url})),
        )
        .await;
    }

    /// The element matching the CSS `selector`: its WebDriver id.
    pub async fn find(&self, selector: &str) -> String {
        let found = self
            .call(
                "POST",
                &self.session_path("/element"),
                Some(json!({"using": "css selector", "value": selector})),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element id")
            .to_owned()
    }

    /// Types `text` into the element matching `selector`.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self.find(selector).await;
        let path = self.session_path(&format!("/element/{element}/value"));
        self.call("POST", &path, Some(json!({"text": text}))).await;
    }

    /// Runs `script` in the page (a function body; `return` gives the value).
    pub async fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.session_path("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The text of the element matching `selector`, `""` when there is none.
    pub async fn text(&self, selector: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : '';",
            json!(selector)
        );
        self.script(&script).await.as_str().unwrap_or("").to_owned()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let png = self
            .call("GET", &self.session_path("/screenshot"), None)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64"))
            .expect("a PNG")
    }

    /// Ends the session (the browser quits).
    pub async fn quit(&self) {
        self.call("DELETE", &self.session_path(""), None).await;
    }
}

async fn browser_status(browser: &Browser) -> bool {
    let req = http::Request::get(format!("{}/status", browser.base))
        .body(Full::default())
        .unwrap();
    match browser.client.request(req).await {
        Ok(response) => {
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes)
                .map(|v| v["value"]["ready"] == json!(true))
                .unwrap_or(false)
        }
        Err(_) => false,
    }
}
