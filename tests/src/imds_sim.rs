//! IMDS simulator: IMDSv2 only, as AWS behaves.
//!
//! * `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//!   answers a token and echoes the TTL header (the SDK refuses a token
//!   answer without it);
//! * every GET needs a valid, unexpired `X-aws-ec2-metadata-token`, else
//!   401; a GET without any token (IMDSv1) is 401 too;
//! * identity paths, instance tags, and the three notice paths, which are
//!   404 until a notice is injected (now or at a set time);
//! * faults: slow answers, 500s, garbage bodies on the notice paths.
//!
//! Controlled in-process through `ImdsSim` or over HTTP under `/_sim/`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct InstanceMeta {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
    pub lifecycle: String,
    pub tags: HashMap<String, String>,
    /// The account of the signed identity document.
    pub account_id: String,
    /// Serve a signed identity document (a metadata mock that cannot sign
    /// answers 404 there).
    pub signed: bool,
}

impl InstanceMeta {
    pub fn spot(instance_id: &str, instance_type: &str, az: &str, group: &str) -> InstanceMeta {
        InstanceMeta {
            instance_id: instance_id.into(),
            instance_type: instance_type.into(),
            availability_zone: az.into(),
            region: az
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .into(),
            lifecycle: "spot".into(),
            tags: [("spot:group".to_owned(), group.to_owned())]
                .into_iter()
                .collect(),
            account_id: crate::identity_sign::ACCOUNT_ID.into(),
            signed: true,
        }
    }

    /// The identity document IMDS serves for this instance, in AWS's
    /// layout.
    pub fn document(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(&serde_json::json!({
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "billingProducts": null,
            "devpayProductCodes": null,
            "marketplaceProductCodes": null,
            "imageId": "ami-0sim0000000000000",
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": null,
            "pendingTime": "2026-12-04T09:00:00Z",
            "privateIp": "10.0.0.10",
            "ramdiskId": null,
            "region": self.region,
            "version": "2017-09-30",
        }))?)
    }

    /// `document` with its `rsa2048` signature under the test key.
    pub fn proof(&self) -> anyhow::Result<spot_common::wire::IdentityProof> {
        crate::identity_sign::proof_of(self.document()?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    None,
    /// Every answer waits this long first.
    Slow,
    /// Every GET answers 500.
    Error500,
    /// Notice paths answer a body that is not JSON.
    Garbage,
}

#[derive(Default)]
struct Stats {
    token_puts: u64,
    gets: u64,
    unauthorized: u64,
}

struct Inner {
    meta: InstanceMeta,
    tokens: HashMap<String, Instant>,
    /// path -> (body, visible from)
    notices: HashMap<&'static str, (String, Instant)>,
    fault: Fault,
    delay: Duration,
    stats: Stats,
    next_token: u64,
}

#[derive(Clone)]
pub struct ImdsSim {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

pub const INSTANCE_ACTION: &str = "spot/instance-action";
pub const REBALANCE: &str = "events/recommendations/rebalance";
pub const SCHEDULED: &str = "events/maintenance/scheduled";

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `21 Jan 2019 09:00:43 GMT`, the way IMDS writes maintenance times.
fn aws_event_time(t: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let r = rfc3339(t); // 2026-11-27T10:00:00Z
    let month: usize = r[5..7].parse().unwrap_or(1);
    format!(
        "{} {} {} {} GMT",
        &r[8..10],
        MONTHS[month.clamp(1, 12) - 1],
        &r[0..4],
        &r[11..19]
    )
}

impl ImdsSim {
    /// The base URL agents are pointed at.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }

    /// Serve on 127.0.0.1 (port chosen by the OS) until the runtime stops.
    pub async fn start(meta: InstanceMeta) -> anyhow::Result<ImdsSim> {
        let inner = Arc::new(Mutex::new(Inner {
            meta,
            tokens: HashMap::new(),
            notices: HashMap::new(),
            fault: Fault::None,
            delay: Duration::ZERO,
            stats: Stats::default(),
            next_token: 0,
        }));
        let (listener, addr) = crate::loopback().await?;
        let sim = ImdsSim { inner, addr };
        let app = Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/{*path}", get(meta_get))
            .route(
                "/latest/dynamic/instance-identity/{kind}",
                get(identity_get),
            )
            .route("/_sim/notice", post(ctl_notice))
            .route("/_sim/fault", post(ctl_fault))
            .route("/_sim/expire-tokens", post(ctl_expire))
            .route("/_sim/stats", get(ctl_stats))
            .with_state(sim.clone());
        crate::serve(listener, app);
        Ok(sim)
    }

    /// Spot interruption notice: `action` at `time`, visible after `after`.
    pub fn interrupt(&self, action: &str, time: std::time::SystemTime, after: Duration) {
        let body = format!(r#"{{"action": "{action}", "time": "{}"}}"#, rfc3339(time));
        self.set_raw(INSTANCE_ACTION, body, after);
    }

    pub fn rebalance(&self, notice_time: std::time::SystemTime) {
        let body = format!(r#"{{"noticeTime": "{}"}}"#, rfc3339(notice_time));
        self.set_raw(REBALANCE, body, Duration::ZERO);
    }

    /// A scheduled maintenance event (`code`: `system-reboot`,
    /// `instance-stop`...) not before `not_before`, as IMDS writes it.
    pub fn scheduled(&self, event_id: &str, code: &str, not_before: std::time::SystemTime) {
        let after = not_before + Duration::from_secs(1000);
        let body = format!(
            r#"[{{"NotBefore": "{}", "Code": "{code}", "Description": "scheduled {code}", "EventId": "{event_id}", "NotAfter": "{}", "State": "active"}}]"#,
            aws_event_time(not_before),
            aws_event_time(after),
        );
        self.set_raw(SCHEDULED, body, Duration::ZERO);
    }

    /// Any body on a notice path (for malformed-body tests).
    pub fn set_raw(&self, path: &'static str, body: String, after: Duration) {
        self.lock()
            .notices
            .insert(path, (body, Instant::now() + after));
    }

    pub fn clear_notices(&self) {
        self.lock().notices.clear();
    }

    pub fn fault(&self, fault: Fault, delay: Duration) {
        let mut g = self.lock();
        g.fault = fault;
        g.delay = delay;
    }

    /// Invalidate every token: the next GET with an old token gets 401.
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// (token PUTs, GETs, 401s)
    pub fn stats(&self) -> (u64, u64, u64) {
        let g = self.lock();
        (g.stats.token_puts, g.stats.gets, g.stats.unauthorized)
    }
}

async fn delay(sim: &ImdsSim) {
    let d = {
        let g = sim.lock();
        if g.fault == Fault::Slow {
            g.delay
        } else {
            Duration::ZERO
        }
    };
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn token(State(sim): State<ImdsSim>, headers: HeaderMap) -> Response {
    delay(&sim).await;
    let ttl: Option<u64> = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
        return (StatusCode::BAD_REQUEST, "missing or invalid TTL").into_response();
    };
    let mut g = sim.lock();
    g.stats.token_puts += 1;
    g.next_token += 1;
    let t = format!("sim-token-{}-{}", g.next_token, rand::random::<u32>());
    g.tokens
        .insert(t.clone(), Instant::now() + Duration::from_secs(ttl));
    (
        [("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
        t,
    )
        .into_response()
}

async fn meta_get(
    State(sim): State<ImdsSim>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    delay(&sim).await;
    let mut g = sim.lock();
    if let Some(refused) = admit(&mut g, &headers) {
        return refused;
    }
    let m = &g.meta;
    let body = match path.as_str() {
        "instance-id" => Some(m.instance_id.clone()),
        "instance-type" => Some(m.instance_type.clone()),
        "placement/availability-zone" => Some(m.availability_zone.clone()),
        "placement/region" => Some(m.region.clone()),
        "instance-life-cycle" => Some(m.lifecycle.clone()),
        p if p.starts_with("tags/instance/") => m.tags.get(&p["tags/instance/".len()..]).cloned(),
        p => {
            let key = [INSTANCE_ACTION, REBALANCE, SCHEDULED]
                .into_iter()
                .find(|k| *k == p);
            match key.and_then(|k| g.notices.get(k)) {
                Some(_) if g.fault == Fault::Garbage => Some("<html>\u{0}garbage{".to_owned()),
                Some((body, from)) if *from <= Instant::now() => Some(body.clone()),
                _ => None,
            }
        }
    };
    match body {
        Some(b) => b.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Count a GET and check its token and the 500 fault: `Some` is the
/// refusal to answer.
fn admit(g: &mut Inner, headers: &HeaderMap) -> Option<Response> {
    g.stats.gets += 1;
    let valid = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| g.tokens.get(t))
        .is_some_and(|exp| *exp > Instant::now());
    if !valid {
        g.stats.unauthorized += 1;
        return Some(StatusCode::UNAUTHORIZED.into_response());
    }
    (g.fault == Fault::Error500).then(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The signed instance identity document and its `rsa2048` signature
/// (signed fresh each time, as the document is small).
async fn identity_get(
    State(sim): State<ImdsSim>,
    Path(kind): Path<String>,
    headers: HeaderMap,
) -> Response {
    delay(&sim).await;
    let meta = {
        let mut g = sim.lock();
        if let Some(refused) = admit(&mut g, &headers) {
            return refused;
        }
        g.meta.clone()
    };
    if !meta.signed {
        return StatusCode::NOT_FOUND.into_response();
    }
    let body = match kind.as_str() {
        "document" => meta.document(),
        "rsa2048" => meta.proof().map(|p| p.rsa2048),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match body {
        Ok(b) => b.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeReq {
    /// interruption | rebalance | scheduled | clear
    kind: String,
    /// Seconds until the action (interruption, default 120) or the
    /// maintenance's NotBefore (scheduled, default 3600).
    #[serde(default)]
    in_s: Option<u64>,
}

async fn ctl_notice(State(sim): State<ImdsSim>, Json(r): Json<NoticeReq>) -> StatusCode {
    let now = std::time::SystemTime::now();
    match r.kind.as_str() {
        "interruption" => sim.interrupt(
            "terminate",
            now + Duration::from_secs(r.in_s.unwrap_or(120)),
            Duration::ZERO,
        ),
        "rebalance" => sim.rebalance(now),
        "scheduled" => sim.scheduled(
            "instance-event-sim",
            "system-reboot",
            now + Duration::from_secs(r.in_s.unwrap_or(3600)),
        ),
        "clear" => sim.clear_notices(),
        _ => return StatusCode::BAD_REQUEST,
    }
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultReq {
    fault: Fault,
    #[serde(default)]
    delay_ms: u64,
}

async fn ctl_fault(State(sim): State<ImdsSim>, Json(r): Json<FaultReq>) -> StatusCode {
    sim.fault(r.fault, Duration::from_millis(r.delay_ms));
    StatusCode::NO_CONTENT
}

async fn ctl_expire(State(sim): State<ImdsSim>) -> StatusCode {
    sim.expire_tokens();
    StatusCode::NO_CONTENT
}

async fn ctl_stats(State(sim): State<ImdsSim>) -> Json<serde_json::Value> {
    let (puts, gets, unauth) = sim.stats();
    Json(serde_json::json!({"token_puts": puts, "gets": gets, "unauthorized": unauth}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity_sign::{ACCOUNT_ID, signer};
    use spot_common::identity;

    /// What the simulator signs, the coordinator's parser accepts with the
    /// fields of the instance (the RSA check itself is the coordinator's).
    #[test]
    fn a_signed_document_parses_to_its_instance() {
        let meta = InstanceMeta::spot("i-0abc", "c5.xlarge", "us-east-1b", "db");
        let p = meta.proof().unwrap();
        let pkcs7 = identity::base64_decode(&p.rsa2048).unwrap();
        let doc = identity::verify(
            &pkcs7,
            Some(&p.document),
            &[signer().unwrap()],
            |_, _, _| true,
        )
        .unwrap();
        assert_eq!(
            (
                doc.instance_id.as_str(),
                doc.instance_type.as_str(),
                doc.availability_zone.as_str()
            ),
            ("i-0abc", "c5.xlarge", "us-east-1b")
        );
        assert_eq!(
            (doc.account_id.as_str(), doc.region.as_str()),
            (ACCOUNT_ID, "us-east-1")
        );
    }
}
