//! What the admin router answers when it cannot do what it was asked: RFC 9457 problem
//! JSON, like the layer's own refusals (see the [module docs](super) for the table).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::{Map, Value};

use crate::ledger::{ErrorKind, LedgerError};
use crate::problem::DEFAULT_PROBLEM_TYPE_BASE;

/// A refusal of the admin router. Every variant is a 4xx or 5xx problem JSON; none of them
/// wrote anything.
#[derive(Debug)]
pub(crate) enum AdminError {
    /// No `Authorization: Bearer`, or the wrong token: `401` + `WWW-Authenticate: Bearer`.
    Unauthorized,
    /// A body that is not JSON, has the wrong content type or is too large (axum's own
    /// rejection, with its status: 400, 413, 415 or 422).
    Json(JsonRejection),
    /// A path segment that could not be decoded: 400.
    Path(PathRejection),
    /// The body is JSON but not an object: 422.
    NotAnObject,
    /// A field is missing: 422.
    MissingField(&'static str),
    /// A field the route does not know: 422.
    UnknownField(String),
    /// A field has a value the route does not accept: 400.
    InvalidField { field: &'static str, detail: String },
    /// The account id in the path is not a valid account id: 400.
    InvalidAccountId(String),
    /// The key hash in the path is not 64 hex digits: 400.
    InvalidKeyHash,
    /// The account has never been topped up or configured: 404.
    UnknownAccount(String),
    /// No API key has this hash: 404.
    UnknownKey,
    /// No such admin route: 404.
    NotFound,
    /// The route exists, not with this method: 405.
    MethodNotAllowed,
    /// The operating system's random number generator failed (a new API key): 500.
    Random,
    /// The ledger refused or failed.
    Ledger(LedgerError),
}

impl From<LedgerError> for AdminError {
    fn from(error: LedgerError) -> Self {
        Self::Ledger(error)
    }
}

impl From<JsonRejection> for AdminError {
    fn from(rejection: JsonRejection) -> Self {
        Self::Json(rejection)
    }
}

impl From<PathRejection> for AdminError {
    fn from(rejection: PathRejection) -> Self {
        Self::Path(rejection)
    }
}

/// The parts of one problem document.
struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    extra: Map<String, Value>,
}

impl Problem {
    fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: String) -> Self {
        Self {
            status,
            slug,
            title,
            detail,
            extra: Map::new(),
        }
    }

    fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(name.to_owned(), value.into());
        self
    }
}

impl AdminError {
    fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::Unauthorized => Problem::new(
                S::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "The admin API needs `Authorization: Bearer <admin token>`.".into(),
            ),
            Self::Json(rejection) => Problem::new(
                rejection.status(),
                "invalid-body",
                "Invalid request body",
                format!("{}. Nothing was written.", rejection.body_text()),
            ),
            Self::Path(rejection) => Problem::new(
                S::BAD_REQUEST,
                "invalid-path",
                "Invalid path",
                format!("{}. Nothing was written.", rejection.body_text()),
            ),
            Self::NotAnObject => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Invalid request body",
                "The body must be a JSON object. Nothing was written.".into(),
            ),
            Self::Random => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "key-generation-failed",
                "Key generation failed",
                "The system's random number generator failed; no key was made.".into(),
            ),
            Self::MissingField(field) => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "missing-field",
                "Missing field",
                format!("The body has no `{field}`. Nothing was written."),
            )
            .with("field", *field),
            Self::UnknownField(field) => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "unknown-field",
                "Unknown field",
                format!("This route has no field `{field}`. Nothing was written."),
            )
            .with("field", field.as_str()),
            Self::InvalidField { field, detail } => Problem::new(
                S::BAD_REQUEST,
                "invalid-field",
                "Invalid field",
                format!("`{field}` {detail}. Nothing was written."),
            )
            .with("field", *field),
            Self::InvalidAccountId(reason) => Problem::new(
                S::BAD_REQUEST,
                "invalid-account-id",
                "Invalid account id",
                format!("The account id {reason}. Nothing was written."),
            ),
            Self::InvalidKeyHash => Problem::new(
                S::BAD_REQUEST,
                "invalid-key-hash",
                "Invalid key hash",
                "An API key is named by its SHA-256: 64 hex digits.".into(),
            ),
            Self::UnknownAccount(account) => Problem::new(
                S::NOT_FOUND,
                "unknown-account",
                "Unknown account",
                format!("Account {account} has never been topped up or configured."),
            )
            .with("account", account.as_str()),
            Self::UnknownKey => Problem::new(
                S::NOT_FOUND,
                "unknown-key",
                "Unknown API key",
                "No API key has this hash.".into(),
            ),
            Self::NotFound => Problem::new(
                S::NOT_FOUND,
                "not-found",
                "Not found",
                "The admin API has no such route.".into(),
            ),
            Self::MethodNotAllowed => Problem::new(
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "This admin route does not take this method.".into(),
            ),
            Self::Ledger(error) => ledger_problem(error),
        }
    }
}

fn ledger_problem(error: &LedgerError) -> Problem {
    use StatusCode as S;
    match error {
        LedgerError::TopUpConflict {
            first_amount,
            amount,
        } => Problem::new(
            S::CONFLICT,
            "top-up-conflict",
            "Top-up conflict",
            format!(
                "This idempotency key already credited {first_amount}, not {amount}. Nothing was credited."
            ),
        )
        .with("first_amount", *first_amount),
        LedgerError::TopUpKeyClaimed { account } => Problem::new(
            S::CONFLICT,
            "top-up-conflict",
            "Top-up conflict",
            format!(
                "This idempotency key already credited account {account}: a payment credits one account, once. Nothing was credited."
            ),
        )
        .with("claimed_by", account.as_str()),
        LedgerError::UnknownAccount => Problem::new(
            S::NOT_FOUND,
            "unknown-account",
            "Unknown account",
            "The account has never been topped up or configured.".into(),
        ),
        error => match error.kind() {
            ErrorKind::InvalidInput => Problem::new(
                S::BAD_REQUEST,
                "invalid-input",
                "Invalid input",
                format!("The ledger refused it: {error}. Nothing was written."),
            ),
            ErrorKind::Conflict => Problem::new(
                S::CONFLICT,
                "conflict",
                "Conflict",
                format!("{error}. Nothing was written."),
            ),
            ErrorKind::Unavailable => Problem::new(
                S::SERVICE_UNAVAILABLE,
                "ledger-unavailable",
                "Ledger unavailable",
                "The ledger cannot be reached right now; nothing was written. Retry shortly."
                    .into(),
            ),
            // Corrupt, and any kind a later version adds: fail closed, say little.
            _ => Problem::new(
                S::INTERNAL_SERVER_ERROR,
                "ledger-error",
                "Ledger error",
                "The ledger answered unexpectedly; the operators have been told.".into(),
            ),
        },
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        if let Self::Ledger(error) = &self {
            if error.kind() == ErrorKind::Corrupt {
                tracing::error!(%error, "admin: the ledger answered unexpectedly");
            }
        }
        let problem = self.problem();
        let mut body = Map::new();
        body.insert(
            "type".into(),
            format!("{DEFAULT_PROBLEM_TYPE_BASE}{}", problem.slug).into(),
        );
        body.insert("title".into(), problem.title.into());
        body.insert("status".into(), problem.status.as_u16().into());
        body.insert("detail".into(), problem.detail.into());
        body.extend(problem.extra);
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        let mut response = (problem.status, bytes).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Ledger(error) if error.is_unavailable() => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
