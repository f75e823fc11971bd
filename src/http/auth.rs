//! Bearer-token authentication. Three credentials, three doors:
//! `API_TOKENS` for client endpoints, `DRAIN_TOKEN` for `/drain`, and the
//! per-job callback token (see `callback_token`) for callbacks and heartbeats.
//! Tokens are compared in constant time and never logged.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{config::SecretList, http::error::ApiError, state::AppState};

/// The bearer token of a request, if it has a well-formed one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether `presented` equals one of `tokens`. Compares digests, so neither
/// the length nor the content of a token leaks through timing, and checks
/// every token without stopping early.
pub fn token_matches(tokens: &SecretList, presented: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let mut ok = subtle::Choice::from(0);
    for t in tokens.iter() {
        ok |= Sha256::digest(t.expose().as_bytes()).ct_eq(&presented);
    }
    ok.into()
}

fn check(headers: &HeaderMap, tokens: &SecretList) -> Result<(), ApiError> {
    match bearer(headers) {
        None => Err(ApiError::Unauthorized { invalid_token: false }),
        Some(t) if token_matches(tokens, t) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized { invalid_token: true }),
    }
}

/// Middleware for client endpoints (`/jobs*`, `/stats`, `/limits`).
pub async fn require_api_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(req.headers(), &state.config.api_tokens) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Middleware for `/drain`.
pub async fn require_drain_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(req.headers(), &state.config.drain_token) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn matching_any_of_several_tokens() {
        let tokens = SecretList::new(["first-token-aaaaaaaa", "second-token-bbbbbbb"]);
        assert!(token_matches(&tokens, "first-token-aaaaaaaa"));
        assert!(token_matches(&tokens, "second-token-bbbbbbb"));
        assert!(!token_matches(&tokens, "first-token-aaaaaaa"));
        assert!(!token_matches(&tokens, ""));
    }
}
