//! What a coordinator that does not lead answers (PostgreSQL, several
//! coordinators): `/healthz` and `/metrics` itself; the agent API with a
//! `307` to the leader (agents follow it and keep talking to the leader
//! directly, with their own client certificate, so a follower never
//! carries an agent's long-poll); everything else (the operator API, the
//! event stream, the dashboard) proxied to the leader, so an operator,
//! a browser or a load balancer may use any coordinator.
//!
//! With no leader known (an election in progress, or this coordinator cut
//! from the database): `503 no_leader` with `Retry-After: 1`; an agent
//! tries its next coordinator URL. A request another coordinator already
//! proxied is never proxied again (two followers that each think the
//! other leads would bounce it forever).

use super::ApiError;
use crate::metrics::Metrics;
use crate::state::cluster::View;
use crate::store::Db;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;

/// Marks a request a coordinator proxied (its value: the proxy's URL).
pub const FORWARDED_BY: &str = "x-spot-forwarded-by";

pub struct Follower {
    pub view: Arc<View>,
    pub metrics: Arc<Metrics>,
    pub db: Db,
    http: reqwest::Client,
}

impl Follower {
    /// `peer_ca`: trusted besides the system's roots when the leader
    /// serves HTTPS from a private CA.
    pub fn new(
        view: Arc<View>,
        metrics: Arc<Metrics>,
        db: Db,
        peer_ca: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Follower> {
        let tls = spot_runtime::tls::ClientTls {
            ca_bundle: peer_ca,
            ..Default::default()
        };
        let http = tls
            .apply(
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(3))
                    // The proxy answers what the leader answers, redirects too.
                    .redirect(reqwest::redirect::Policy::none()),
            )?
            .build()?;
        Ok(Follower {
            view,
            metrics,
            db,
            http,
        })
    }
}

pub fn router(f: Arc<Follower>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(forward)
        .with_state(f)
}

fn no_leader() -> Response {
    let mut resp = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_leader",
        "this coordinator does not lead and knows no leader yet (an election is in progress, \
         or it is cut off from the store); try another coordinator or retry in 1 s",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// The agent API: what agents call with their own tokens.
fn agent_route(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/agents/") else {
        return false;
    };
    rest == "register"
        || rest.split_once('/').is_some_and(|(_, tail)| {
            matches!(tail, "heartbeat" | "commands" | "events" | "pricing")
        })
}

async fn forward(State(f): State<Arc<Follower>>, req: Request) -> Response {
    let Some(leader) = f.view.leader_elsewhere() else {
        return no_leader();
    };
    let target = format!(
        "{leader}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    if agent_route(req.uri().path()) {
        f.metrics.follower_redirects.inc();
        return match header::HeaderValue::from_str(&target) {
            Ok(location) => (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response(),
            Err(_) => no_leader(),
        };
    }
    if req.headers().contains_key(FORWARDED_BY) {
        return no_leader();
    }
    proxy(&f, req, &target).await
}

/// Hop-by-hop headers (RFC 9110 7.6.1) stay on their hop.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

async fn proxy(f: &Follower, req: Request, target: &str) -> Response {
    let (parts, body) = req.into_parts();
    // Operator bodies are small (the API caps them at 1 MiB).
    let body = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body: {e}"),
            )
            .into_response();
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(v) = header::HeaderValue::from_str(&f.view.advertise_url) {
        headers.insert(FORWARDED_BY, v);
    }
    let sent = f
        .http
        .request(parts.method, target)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%target, error = %spot_common::error_chain(&e), "proxying to the leader");
            return no_leader();
        }
    };
    f.metrics.follower_proxied.inc();
    let mut resp = Response::builder().status(upstream.status().as_u16());
    for (name, value) in upstream.headers() {
        if !hop_by_hop(name) {
            resp = resp.header(name, value);
        }
    }
    // Streamed: an event stream or a long answer flows through as it comes.
    resp.body(Body::from_stream(upstream.bytes_stream()))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

async fn healthz(State(f): State<Arc<Follower>>) -> Response {
    use crate::store::Read;
    let leader = f.view.leader();
    let version = f.db.read(|s| s.schema_version()).await;
    let body = serde_json::json!({
        // A follower that reads the store is healthy: it takes over when
        // the leader's lease runs out.
        "status": if version.is_ok() { "ok" } else { "store_unreachable" },
        "leader": false,
        "leader_url": f.view.leader_elsewhere(),
        "leader_epoch": leader.epoch,
        "advertise_url": f.view.advertise_url,
        "store": f.view.store,
        "schema_version": version.ok(),
    });
    let status = if body["status"] == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(f): State<Arc<Follower>>) -> Response {
    super::encode_metrics(&f.metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agent_api_is_redirected() {
        for p in [
            "/v1/agents/register",
            "/v1/agents/a-1/heartbeat",
            "/v1/agents/a-1/commands",
            "/v1/agents/a-1/events",
            "/v1/agents/a-1/pricing",
        ] {
            assert!(agent_route(p), "{p}");
        }
        for p in [
            "/v1/agents",
            "/v1/agents/a-1",
            "/v1/agents/a-1/reset",
            "/v1/groups",
        ] {
            assert!(!agent_route(p), "{p}");
        }
    }
}
