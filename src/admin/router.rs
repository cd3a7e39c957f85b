//! [`AdminRouter`]: the admin routes over one ledger, and how they are guarded.

use axum::routing::{delete, get, post, put};
use axum::Router;

use super::auth::{require_token, AdminToken};
use super::handlers;
use crate::ledger::{LedgerAdmin, LedgerReports};

/// Builds the admin API of a ledger as an axum [`Router`] to nest outside the credit
/// layer. See the [module docs](super) for the routes and their answers.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_credits::admin::{AdminRouter, AdminToken};
/// use tower_credits::{CreditLayer, MemoryLedger};
///
/// let ledger = MemoryLedger::new();
/// let admin = AdminRouter::new(ledger.clone(), AdminToken::new("a-long-random-admin-token")?);
/// let app = Router::new()
///     .route("/v1/echo", get(|| async { "echo" }))
///     .layer(CreditLayer::new(ledger))
///     // After `.layer`: the admin routes are not billed, and the admin token is never
///     // read as an API key.
///     .nest("/admin", admin.into_router());
/// # let _: Router = app;
/// # Ok::<_, tower_credits::admin::InvalidAdminToken>(())
/// ```
#[derive(Debug, Clone)]
pub struct AdminRouter<L> {
    ledger: L,
    token: Option<AdminToken>,
}

impl<L> AdminRouter<L>
where
    L: LedgerAdmin + LedgerReports,
{
    /// The admin API of `ledger`, open only to `Authorization: Bearer <token>`.
    pub fn new(ledger: L, token: AdminToken) -> Self {
        Self {
            ledger,
            token: Some(token),
        }
    }

    /// The admin API of `ledger` with no token of its own: for a router you guard with your
    /// own auth layer (`.layer(...)` on the returned router, or on the router you nest it
    /// in).
    ///
    /// **Never mount it unguarded**: anyone who reaches it can credit any account and mint
    /// API keys.
    pub fn without_token(ledger: L) -> Self {
        Self {
            ledger,
            token: None,
        }
    }

    /// The routes, ready to `.nest("/admin", ...)`.
    pub fn into_router(self) -> Router {
        let routes = Router::new()
            .route("/accounts/{account}", get(handlers::get_account::<L>))
            .route("/accounts/{account}/top-ups", post(handlers::top_up::<L>))
            .route("/accounts/{account}/history", get(handlers::history::<L>))
            .route(
                "/accounts/{account}/settings",
                put(handlers::put_settings::<L>),
            )
            .route("/accounts/{account}/keys", post(handlers::create_key::<L>))
            .route("/keys/{hash}", delete(handlers::revoke_key::<L>))
            .fallback(handlers::not_found)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .with_state(self.ledger);
        match self.token {
            // `layer`, not `route_layer`: an unknown path is refused too, so the router
            // does not tell a stranger which paths exist.
            Some(token) => routes.layer(axum::middleware::from_fn_with_state(token, require_token)),
            None => routes,
        }
    }
}

impl<L> From<AdminRouter<L>> for Router
where
    L: LedgerAdmin + LedgerReports,
{
    fn from(admin: AdminRouter<L>) -> Self {
        admin.into_router()
    }
}
