//! The admin router's guard: a bearer token, compared in constant time.

use std::fmt;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::errors::AdminError;
use crate::account::{bearer_token, MAX_API_KEY_LEN};

/// Fewest characters an admin token may have.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The bearer token that opens the admin router.
///
/// It keeps only the token's SHA-256, and compares the SHA-256 of what a request presents
/// with it in constant time ([`subtle`]): neither the time an answer takes nor the token's
/// length tells a caller how much of a guess was right. `Debug` never prints it.
///
/// A token is 16 to 256 characters (use 32 random bytes or more, e.g. `openssl rand -hex
/// 32`) of the RFC 6750 token alphabet: letters, digits and `-._~+/=`.
///
/// ```
/// use tower_credits::admin::AdminToken;
///
/// let token = AdminToken::new("a-long-random-admin-token")?;
/// assert_eq!(format!("{token:?}"), "AdminToken(***)");
/// assert!(AdminToken::new("short").is_err());
/// # Ok::<_, tower_credits::admin::InvalidAdminToken>(())
/// ```
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

/// Why [`AdminToken::new`] refused a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid admin token: {reason}")]
pub struct InvalidAdminToken {
    reason: &'static str,
}

impl AdminToken {
    /// Checks and keeps (the SHA-256 of) an admin token.
    pub fn new(token: impl AsRef<str>) -> Result<Self, InvalidAdminToken> {
        let token = token.as_ref();
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(InvalidAdminToken {
                reason: "shorter than 16 characters",
            });
        }
        if token.len() > MAX_API_KEY_LEN {
            return Err(InvalidAdminToken {
                reason: "longer than 256 characters",
            });
        }
        let token_char = |b: u8| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        };
        if !token.bytes().all(token_char) {
            return Err(InvalidAdminToken {
                reason: "it may hold only letters, digits and `-._~+/=`",
            });
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is this token, in time independent of both.
    pub(crate) fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// Lets a request through only with `Authorization: Bearer <the admin token>`; anything
/// else is `401` with `WWW-Authenticate: Bearer`, before any route or body is read.
pub(crate) async fn require_token(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    match bearer_token(request.headers()) {
        Ok(presented) if token.accepts(presented) => next.run(request).await,
        _ => AdminError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_token() {
        let token = AdminToken::new("0123456789abcdef-admin").unwrap();
        assert!(token.accepts("0123456789abcdef-admin"));
        assert!(!token.accepts("0123456789abcdef-admiN"));
        assert!(!token.accepts("0123456789abcdef-admin0"));
        assert!(!token.accepts(""));
    }

    #[test]
    fn refuses_weak_or_malformed_tokens() {
        assert!(AdminToken::new("too-short").is_err());
        assert!(AdminToken::new("has a space in it ok").is_err());
        assert!(AdminToken::new("ünïcödé-ünïcödé-ünïcödé").is_err());
    }
}
