//! Instance metadata: the identity at start and the bodies of the notice
//! paths, classified (the watcher that polls them is `notices`).
//!
//! Uses `aws-config`'s IMDSv2 client (token PUT, cached, refreshed on 401;
//! never IMDSv1). One client is built and reused so its token is too.
//! Timeouts are tight because the watcher polls every second: an attempt
//! gets 800 ms, an operation 2 s with 2 attempts; a slow or failing IMDS
//! costs one poll, is logged, and the next tick tries again. 404 means
//! "no such key" (no notice), mapped to `Ok(None)`.
//!
//! The SDK client drops its cached token only when the token's own TTL
//! runs out, so a token the server revoked early (IMDS restarted, instance
//! stopped and started) would be retried with, and refused, until then. On
//! a 401 we therefore build a fresh client (a fresh token) and retry once.

use aws_config::imds::client::Client;
use aws_config::imds::client::error::ImdsError;
use spot_common::NoticeKind;
use spot_common::notice;
use spot_common::wire::IdentityProof;
use std::sync::Arc;
use std::time::Duration;

pub const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
pub const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
pub const SCHEDULED: &str = "/latest/meta-data/events/maintenance/scheduled";
pub const IDENTITY_DOCUMENT: &str = "/latest/dynamic/instance-identity/document";
pub const IDENTITY_RSA2048: &str = "/latest/dynamic/instance-identity/rsa2048";

/// A raw body longer than this is cut before it is journaled.
const MAX_RAW: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("GET {path}")]
    Get {
        path: String,
        #[source]
        source: Box<ImdsError>,
    },
    #[error("{path} is missing")]
    Missing { path: String },
    #[error("invalid IMDS endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

#[derive(Clone)]
pub struct Imds {
    endpoint: Option<String>,
    client: Arc<std::sync::Mutex<Client>>,
}

/// What the instance is, from IMDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
    /// `spot` or `on-demand`.
    pub lifecycle: String,
    /// From the `spot:group` instance tag, when tags are in metadata.
    pub group_tag: Option<String>,
    /// The signed instance identity document, which the coordinator checks
    /// at registration. `None` where IMDS has none (a metadata mock); a
    /// coordinator in `identity = "verify"` then refuses us, saying so.
    pub proof: Option<IdentityProof>,
}

impl Imds {
    pub fn new(endpoint: Option<&str>) -> Result<Imds, MetadataError> {
        let client = Self::build(endpoint)?;
        Ok(Imds {
            endpoint: endpoint.map(str::to_owned),
            client: Arc::new(std::sync::Mutex::new(client)),
        })
    }

    fn build(endpoint: Option<&str>) -> Result<Client, MetadataError> {
        let mut b = Client::builder()
            .max_attempts(2)
            .connect_timeout(Duration::from_millis(500))
            .read_timeout(Duration::from_millis(800))
            .operation_attempt_timeout(Duration::from_millis(800))
            .operation_timeout(Duration::from_secs(2));
        if let Some(e) = endpoint {
            b = b.endpoint(e).map_err(|err| MetadataError::Endpoint {
                endpoint: e.to_owned(),
                reason: err.to_string(),
            })?;
        }
        Ok(b.build())
    }

    fn client(&self) -> Client {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// GET a metadata path; 404 is `None`; a 401 gets one retry with a
    /// fresh token.
    pub async fn get(&self, path: &str) -> Result<Option<String>, MetadataError> {
        let status = |e: &ImdsError| match e {
            ImdsError::ErrorResponse(r) => Some(r.response().status().as_u16()),
            _ => None,
        };
        let mut result = self.client().get(path).await;
        if let Err(e) = &result
            && status(e) == Some(401)
        {
            tracing::info!(%path, "IMDS refused our token (401); fetching a new one");
            let fresh = Self::build(self.endpoint.as_deref())?;
            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
            result = fresh.get(path).await;
        }
        match result {
            Ok(v) => Ok(Some(v.as_ref().to_owned())),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(source) => Err(MetadataError::Get {
                path: path.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    async fn require(&self, path: &str) -> Result<String, MetadataError> {
        self.get(path)
            .await?
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| MetadataError::Missing {
                path: path.to_owned(),
            })
    }

    pub async fn identity(&self) -> Result<Identity, MetadataError> {
        let availability_zone = self
            .require("/latest/meta-data/placement/availability-zone")
            .await?;
        let region = match self.get("/latest/meta-data/placement/region").await? {
            Some(r) => r.trim().to_owned(),
            // Older IMDS: the region is the zone minus its letter.
            None => availability_zone
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .to_owned(),
        };
        Ok(Identity {
            instance_id: self.require("/latest/meta-data/instance-id").await?,
            instance_type: self.require("/latest/meta-data/instance-type").await?,
            lifecycle: match self.get("/latest/meta-data/instance-life-cycle").await? {
                Some(l) if l.trim() == "spot" => "spot".to_owned(),
                _ => "on-demand".to_owned(),
            },
            group_tag: self
                .get("/latest/meta-data/tags/instance/spot:group")
                .await?
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
            proof: self.proof().await?,
            availability_zone,
            region,
        })
    }

    /// The identity document and its RSA-2048 signature, verbatim (the
    /// signature is over the document's exact bytes).
    async fn proof(&self) -> Result<Option<IdentityProof>, MetadataError> {
        let Some(document) = self.get(IDENTITY_DOCUMENT).await? else {
            tracing::warn!("IMDS has no instance identity document; registering without one");
            return Ok(None);
        };
        let Some(rsa2048) = self.get(IDENTITY_RSA2048).await? else {
            tracing::warn!(
                "IMDS has an identity document but no rsa2048 signature; registering without one"
            );
            return Ok(None);
        };
        Ok(Some(IdentityProof { document, rsa2048 }))
    }
}

pub fn bounded(raw: &str) -> String {
    if raw.len() <= MAX_RAW {
        return raw.to_owned();
    }
    let mut end = MAX_RAW;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    raw[..end].to_owned()
}

/// Classify one metadata body into what to journal.
pub fn classify(path: &str, raw: &str) -> (NoticeKind, Option<i64>, Option<String>) {
    let malformed = (NoticeKind::Malformed, None, None);
    match path {
        INSTANCE_ACTION => match notice::parse_instance_action(raw) {
            Ok(a) => (NoticeKind::Interruption, Some(a.time_ms), Some(a.action)),
            Err(_) => malformed,
        },
        REBALANCE => match notice::parse_rebalance(raw) {
            Ok(t) => (NoticeKind::Rebalance, Some(t), None),
            Err(_) => malformed,
        },
        // The earliest maintenance still to happen: its NotBefore is the
        // deadline, its code (`system-reboot`, `instance-stop`...) the
        // action.
        _ => match notice::parse_scheduled(raw) {
            Ok(events) => match notice::pending_maintenance(&events) {
                Some((at, code)) => (NoticeKind::ScheduledMaintenance, at, Some(code)),
                None => (NoticeKind::ScheduledMaintenance, None, None),
            },
            Err(_) => malformed,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_maps_paths_and_bodies() {
        let (k, t, a) = classify(
            INSTANCE_ACTION,
            r#"{"action":"stop","time":"2026-11-27T10:00:00Z"}"#,
        );
        assert_eq!(
            (k, t.is_some(), a.as_deref()),
            (NoticeKind::Interruption, true, Some("stop"))
        );
        assert_eq!(classify(INSTANCE_ACTION, "<html>").0, NoticeKind::Malformed);
        assert_eq!(
            classify(REBALANCE, r#"{"noticeTime":"2026-11-27T10:00:00Z"}"#).0,
            NoticeKind::Rebalance
        );
        assert_eq!(
            classify(
                SCHEDULED,
                r#"[{"Code":"system-reboot","EventId":"e","NotBefore":"21 Jan 2019 09:00:43 GMT","State":"active"}]"#
            ),
            (
                NoticeKind::ScheduledMaintenance,
                Some(1_548_061_243_000),
                Some("system-reboot".into())
            )
        );
        assert_eq!(classify(SCHEDULED, "nope").0, NoticeKind::Malformed);
    }

    #[test]
    fn bounded_cuts_on_a_char_boundary() {
        let s = "é".repeat(5000);
        let b = bounded(&s);
        assert!(b.len() <= MAX_RAW && s.starts_with(&b));
    }
}
