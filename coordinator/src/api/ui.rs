//! The dashboard: static files embedded in the binary under `/ui` (no web
//! server beside the coordinator, nothing loaded from the internet), and
//! the login that turns an operator token into a session cookie.
//!
//! A session is `HttpOnly`, `SameSite=Strict` (and `Secure` under TLS) and
//! lives in memory: a restarted coordinator asks for the token again. It
//! holds the token's hash, not a role, so a revoked named token ends its
//! sessions at once. Every mutating request made with the cookie must
//! carry the session's CSRF token in `X-CSRF-Token` and, when the browser
//! sends one, an `Origin` naming this coordinator; bearer-token callers
//! (spotctl, scripts) send no cookie and need neither.

use super::{ApiError, ApiJson, Caller};
use crate::state::{AppState, Session};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get, routing::post};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const COOKIE: &str = "spot_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty()).then_some(v)
        })
}

pub fn mutating(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A cookie-authenticated change must prove it comes from the dashboard:
/// the session's CSRF token in its header, and no foreign `Origin`.
pub fn check_csrf(headers: &HeaderMap, session: &Session) -> Result<(), ApiError> {
    let refuse = |why: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_refused",
            format!("{why}: changes made with the login cookie must come from the dashboard"),
        )
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, h)| h);
        if host.is_none() || origin_host != host {
            return Err(refuse("the request's Origin is not this coordinator"));
        }
    }
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !super::hash_matches(
        &spot_common::token_hash(presented),
        &spot_common::token_hash(&session.csrf),
    ) || presented.is_empty()
    {
        return Err(refuse("missing or wrong X-CSRF-Token"));
    }
    Ok(())
}

/// The page's files besides `index.html`: path, content type, bytes.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    ("/ui/app.js", JS, include_bytes!("../../ui/app.js")),
    ("/ui/app.css", CSS, include_bytes!("../../ui/app.css")),
    (
        "/ui/vendor/uPlot.iife.min.js",
        JS,
        include_bytes!("../../ui/vendor/uPlot.iife.min.js"),
    ),
    (
        "/ui/vendor/uPlot.min.css",
        CSS,
        include_bytes!("../../ui/vendor/uPlot.min.css"),
    ),
    (
        "/ui/vendor/uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../ui/vendor/uPlot.LICENSE"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

pub fn routes() -> Router<Arc<AppState>> {
    let mut r = Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session));
    for (path, content_type, body) in ASSETS {
        r = r.route(path, get(move || async move { asset(content_type, body) }));
    }
    r
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The binary is the version: a new coordinator serves new files.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    let mut r = asset(
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    );
    let h = r.headers_mut();
    // Scripts only from here; uPlot sets element styles from script.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    token: String,
}

/// Who is logged in, and the CSRF token the page sends with changes.
#[derive(Debug, Serialize)]
pub struct SessionView {
    actor: String,
    role: spot_common::TokenRole,
    csrf: String,
}

fn view(caller: &Caller, s: &Session) -> SessionView {
    SessionView {
        actor: caller.actor.to_string(),
        role: caller.role,
        csrf: s.csrf.clone(),
    }
}

fn cookie(state: &AppState, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let c =
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}");
    HeaderValue::from_str(&c)
        .unwrap_or_else(|_| HeaderValue::from_static("spot_session=; Max-Age=0"))
}

async fn login(
    State(state): State<Arc<AppState>>,
    extensions: axum::http::Extensions,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    // A token guesser gets ten tries, then one every few seconds.
    if let Some(ip) = super::source(&extensions)
        && let Err(wait) = state.login_limit.take(ip, std::time::Instant::now())
    {
        tracing::warn!(source = %ip, "dashboard logins from this address rate limited");
        return Ok(super::rate_limited("login attempts", wait));
    }
    let hash = spot_common::token_hash(req.token.trim());
    let Some(caller) = super::caller_for_hash(&state, hash.clone()).await? else {
        tracing::warn!("dashboard login refused: unknown or revoked token");
        return Err(ApiError::unauthorized());
    };
    let (id, s) = state
        .sessions
        .create(hash, crate::state::now_ms())
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sessions",
                e.to_string(),
            )
        })?;
    tracing::info!(actor = %caller.actor, role = %caller.role, "dashboard login");
    let mut r = Json(view(&caller, &s)).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&state, &id, crate::state::SESSION_MS / 1000),
    );
    Ok(r)
}

/// The session behind the request's cookie, and who it is.
async fn from_cookie(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Session, Caller), ApiError> {
    let id = session_cookie(headers).ok_or_else(ApiError::unauthorized)?;
    let s = state
        .sessions
        .get(id, crate::state::now_ms())
        .ok_or_else(ApiError::unauthorized)?;
    let caller = super::caller_for_hash(state, s.token_hash.clone())
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    Ok((id.to_owned(), s, caller))
}

async fn session(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<SessionView>, ApiError> {
    let (_, s, caller) = from_cookie(&state, &headers).await?;
    Ok(Json(view(&caller, &s)))
}

async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (id, s, caller) = from_cookie(&state, &headers).await?;
    check_csrf(&headers, &s)?;
    state.sessions.remove(&id);
    tracing::info!(actor = %caller.actor, "dashboard logout");
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie(&state, "", 0));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; spot_session=abc; b=2")]);
        assert_eq!(session_cookie(&h), Some("abc"));
        assert_eq!(
            session_cookie(&headers(&[("cookie", "spot_session=")])),
            None
        );
        assert_eq!(
            session_cookie(&headers(&[("cookie", "x_spot_session=1")])),
            None
        );
    }

    #[test]
    fn csrf_needs_the_token_and_a_matching_origin() {
        let s = Session {
            token_hash: "h".into(),
            csrf: "tok".into(),
            expires_ms: 1,
        };
        let ok = headers(&[("host", "10.0.0.1:8080"), ("x-csrf-token", "tok")]);
        assert!(check_csrf(&ok, &s).is_ok());
        let same_origin = headers(&[
            ("host", "10.0.0.1:8080"),
            ("origin", "https://10.0.0.1:8080"),
            ("x-csrf-token", "tok"),
        ]);
        assert!(check_csrf(&same_origin, &s).is_ok());
        for bad in [
            headers(&[("host", "10.0.0.1:8080")]),
            headers(&[("host", "10.0.0.1:8080"), ("x-csrf-token", "nope")]),
            headers(&[("host", "10.0.0.1:8080"), ("x-csrf-token", "")]),
            headers(&[
                ("host", "10.0.0.1:8080"),
                ("origin", "http://10.0.0.1:9999"),
                ("x-csrf-token", "tok"),
            ]),
        ] {
            let e = check_csrf(&bad, &s).unwrap_err();
            assert_eq!(e.code, "csrf_refused", "{bad:?}");
        }
    }
}
