//! The admin routes: one handler each, generic over any ledger with admin and reports.
//!
//! Each handler checks everything it was given before it calls the ledger, so a refusal
//! writes nothing.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use super::errors::AdminError;
use crate::api_key::ApiKeyHash;
use crate::ledger::audit::PageQuery;
use crate::ledger::MAX_AMOUNT;
use crate::ledger::{
    AccountId, AccountSettings, Configure, LedgerAdmin, LedgerError, LedgerReports, Threshold,
    TopUp, DEFAULT_RUNWAY_HORIZON, MAX_RUNWAY_HORIZON,
};

/// The account id of the path, checked.
fn account(path: Result<Path<String>, PathRejection>) -> Result<AccountId, AdminError> {
    let Path(raw) = path?;
    AccountId::new(&raw).map_err(|error| match error {
        LedgerError::InvalidAccountId { reason } => AdminError::InvalidAccountId(reason.into()),
        other => AdminError::Ledger(other),
    })
}

/// The JSON object of the body, with only the fields in `allowed`.
fn object(
    body: Result<Json<Value>, JsonRejection>,
    allowed: &[&str],
) -> Result<Map<String, Value>, AdminError> {
    let Json(value) = body?;
    let Value::Object(fields) = value else {
        return Err(AdminError::NotAnObject);
    };
    if let Some(unknown) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(AdminError::UnknownField(unknown.clone()));
    }
    Ok(fields)
}

/// A whole number of credits in `min..=MAX_AMOUNT`.
fn credits(field: &'static str, value: &Value, min: u64) -> Result<u64, AdminError> {
    let invalid = |detail: String| AdminError::InvalidField { field, detail };
    let Value::Number(number) = value else {
        return Err(invalid("must be a whole number of credits".into()));
    };
    match number.as_u64() {
        Some(n) if n < min => Err(invalid(format!("must be at least {min}, not {n}"))),
        Some(n) if n > MAX_AMOUNT => Err(invalid(format!(
            "is {n}, more than the most a ledger accepts ({MAX_AMOUNT})"
        ))),
        Some(n) => Ok(n),
        None if number.as_i64().is_some() => {
            Err(invalid(format!("must be at least {min}, not {number}")))
        }
        None => match number.as_f64() {
            Some(f) if f.fract() == 0.0 && f > MAX_AMOUNT as f64 => Err(invalid(format!(
                "is {number}, more than the most a ledger accepts ({MAX_AMOUNT})"
            ))),
            Some(f) if f.fract() == 0.0 && f < 0.0 => {
                Err(invalid(format!("must be at least {min}, not {number}")))
            }
            _ => Err(invalid("must be a whole number of credits".into())),
        },
    }
}

/// Present and not `null`.
fn required<'a>(
    fields: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a Value, AdminError> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(AdminError::MissingField(name)),
        Some(value) => Ok(value),
    }
}

/// `GET /accounts/{account}`: the account's balance.
pub(crate) async fn get_account<L: LedgerReports>(
    State(ledger): State<L>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, AdminError> {
    let account = account(path)?;
    let balance = ledger
        .balance(&account)
        .await
        .map_err(|e| unknown_account(e, &account))?;
    Ok(Json(json!({
        "account": account.as_str(),
        "available": balance.available,
        "held": balance.held,
        "committed": balance.committed,
        "credit_limit": balance.credit_limit,
        "thresholds": balance.thresholds,
    })))
}

/// `GET /accounts/{account}/history?cursor=&limit=&since=`: the account's audit trail,
/// newest first (see [`AuditEntry`](crate::ledger::AuditEntry)).
pub(crate) async fn history<L: LedgerReports>(
    State(ledger): State<L>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, AdminError> {
    let account = account(path)?;
    let page = PageQuery::parse(query.as_deref()).map_err(|detail| AdminError::InvalidField {
        field: "query",
        detail,
    })?;
    let entries = ledger
        .history(&account, page.cursor.as_deref(), page.limit)
        .await?;
    let entries = page.trim(entries);
    Ok(Json(json!({
        "account": account.as_str(),
        "entries": entries.entries,
        "next": entries.next,
    })))
}

fn unknown_account(error: LedgerError, account: &AccountId) -> AdminError {
    match error {
        LedgerError::UnknownAccount => AdminError::UnknownAccount(account.to_string()),
        other => AdminError::Ledger(other),
    }
}

/// `POST /accounts/{account}/top-ups` with `{"amount", "idempotency_key"}`.
pub(crate) async fn top_up<L: LedgerAdmin>(
    State(ledger): State<L>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let account = account(path)?;
    let fields = object(body, &["amount", "idempotency_key"])?;
    let amount = required(&fields, "amount")?;
    let key = required(&fields, "idempotency_key")?;
    let amount = credits("amount", amount, 1)?;
    let Value::String(key) = key else {
        return Err(AdminError::InvalidField {
            field: "idempotency_key",
            detail: "must be a string (the payment id)".into(),
        });
    };
    crate::ledger::validate::check_idempotency_key(key)?;
    let topped = ledger
        .top_up(TopUp::new(&account, amount, key.as_str()))
        .await?;
    Ok(Json(json!({
        "account": account.as_str(),
        "amount": topped.amount,
        "replayed": topped.replayed,
        "available": topped.available,
    })))
}

/// A threshold: credits (`100`) or a percentage of the last top-up (`"10%"`).
fn threshold(value: &Value) -> Result<Threshold, AdminError> {
    let invalid = |detail: String| AdminError::InvalidField {
        field: "thresholds",
        detail,
    };
    match value {
        Value::String(text) => {
            let pct = text
                .strip_suffix('%')
                .and_then(|digits| digits.parse::<u8>().ok())
                .filter(|pct| (1..=100).contains(pct))
                .ok_or_else(|| {
                    invalid(format!(
                        "has {text:?}: a percentage is written \"1%\" to \"100%\""
                    ))
                })?;
            Ok(Threshold::PercentOfLastTopUp(pct))
        }
        value => credits("thresholds", value, 0).map(Threshold::Credits),
    }
}

fn threshold_json(threshold: &Threshold) -> Value {
    match threshold {
        Threshold::Credits(credits) => json!(credits),
        Threshold::PercentOfLastTopUp(pct) => json!(format!("{pct}%")),
        // A kind a later version adds.
        #[allow(unreachable_patterns)]
        other => json!(format!("{other:?}")),
    }
}

/// `PUT /accounts/{account}/settings` with `{"credit_limit", "thresholds",
/// "runway_horizon_secs"}`: replaces all three (a field left out takes its default).
pub(crate) async fn put_settings<L: LedgerAdmin>(
    State(ledger): State<L>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, AdminError> {
    let account = account(path)?;
    let fields = object(body, &["credit_limit", "thresholds", "runway_horizon_secs"])?;
    let mut settings = AccountSettings::new();
    if let Some(limit) = fields.get("credit_limit").filter(|v| !v.is_null()) {
        settings = settings.credit_limit(credits("credit_limit", limit, 0)?);
    }
    match fields.get("thresholds") {
        None | Some(Value::Null) => {}
        Some(Value::Array(values)) => {
            for value in values {
                settings = settings.threshold(threshold(value)?);
            }
        }
        Some(_) => {
            return Err(AdminError::InvalidField {
                field: "thresholds",
                detail: "must be an array of credits (100) or percentages (\"10%\")".into(),
            })
        }
    }
    if let Some(horizon) = fields.get("runway_horizon_secs").filter(|v| !v.is_null()) {
        let secs = horizon
            .as_u64()
            .filter(|&secs| secs <= MAX_RUNWAY_HORIZON.as_secs())
            .ok_or_else(|| AdminError::InvalidField {
                field: "runway_horizon_secs",
                detail: format!(
                    "must be whole seconds from 0 (never) to {}",
                    MAX_RUNWAY_HORIZON.as_secs()
                ),
            })?;
        settings = settings.runway_horizon(Duration::from_secs(secs));
    }
    crate::ledger::check_alerts(&settings.thresholds, settings.runway_horizon)?;
    ledger
        .configure(Configure::new(&account, settings.clone()))
        .await?;
    Ok(Json(json!({
        "account": account.as_str(),
        "credit_limit": settings.credit_limit,
        "thresholds": settings.thresholds.iter().map(threshold_json).collect::<Vec<_>>(),
        "runway_horizon_secs": settings.runway_horizon.unwrap_or(DEFAULT_RUNWAY_HORIZON).as_secs(),
    })))
}

/// Prefix of the API keys the admin router makes.
const KEY_PREFIX: &str = "tck_";

/// A new API key: 32 bytes from the operating system, in hex, after [`KEY_PREFIX`].
fn new_key() -> Result<String, AdminError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| AdminError::Random)?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// `POST /accounts/{account}/keys`: a new API key for an existing account. The raw key is
/// in this answer only; the ledger keeps its SHA-256.
pub(crate) async fn create_key<L: LedgerAdmin + LedgerReports>(
    State(ledger): State<L>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, AdminError> {
    let account = account(path)?;
    // A key for an account that does not exist would only ever answer 401.
    ledger
        .balance(&account)
        .await
        .map_err(|e| unknown_account(e, &account))?;
    let key = new_key()?;
    let hash = ApiKeyHash::of(&key);
    ledger.register_api_key(&hash, &account).await?;
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "account": account.as_str(),
            "key": key,
            "hash": hash.to_hex(),
        })),
    )
        .into_response();
    // The raw key is shown once: no cache may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /keys/{hash}`: revokes an API key by its SHA-256 (hex). `204`, or `404` when
/// no key has this hash.
pub(crate) async fn revoke_key<L: LedgerAdmin>(
    State(ledger): State<L>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, AdminError> {
    let Path(raw) = path?;
    let hash = ApiKeyHash::from_hex(&raw).ok_or(AdminError::InvalidKeyHash)?;
    if ledger.revoke_api_key(&hash).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::UnknownKey)
    }
}

/// Any path the router does not have.
pub(crate) async fn not_found() -> AdminError {
    AdminError::NotFound
}

/// A path the router has, with another method.
pub(crate) async fn method_not_allowed() -> AdminError {
    AdminError::MethodNotAllowed
}
