//! Validation: every value, and the timing relations the protocol needs
//! (docs/STATE_MACHINE.md, "Timing relations").

use super::{Config, ConfigError};
use std::time::Duration;

impl Config {
    /// Checks every value and the timing relations the protocol needs
    /// (docs/STATE_MACHINE.md, "Timing relations"); each error says which
    /// relation broke and with which values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.heartbeat_interval < Duration::from_millis(100) {
            return bad("heartbeat_interval must be at least 100ms");
        }
        if self.missed_heartbeats == 0 {
            return bad("missed_heartbeats must be at least 1");
        }
        for (ok, relation) in [
            (
                self.lease >= self.heartbeat_interval * 2,
                "lease >= 2 x heartbeat_interval (one lost heartbeat must not cost the lease)",
            ),
            (
                self.offline_after() <= self.lease_expiry(),
                "heartbeat_interval x missed_heartbeats <= lease + heartbeat_interval + 1s (an agent silent past its lease is OFFLINE)",
            ),
            (
                self.demote_timeout >= self.heartbeat_interval * 2,
                "demote_timeout >= 2 x heartbeat_interval (a demotion reaches a live agent and is answered)",
            ),
            (
                self.promotion_timeout >= self.heartbeat_interval * 2 + Duration::from_secs(5),
                "promotion_timeout >= 2 x heartbeat_interval + 5s (the agent's promote deadline is promotion_timeout - 5s)",
            ),
            (
                self.fence_timeout >= Duration::from_secs(10),
                "fence_timeout >= 10s (EC2 needs seconds to terminate an instance)",
            ),
        ] {
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "timing relation broken: {relation}; got heartbeat_interval {}, missed_heartbeats {}, lease {}, demote_timeout {}, promotion_timeout {}, fence_timeout {}",
                    humantime::format_duration(self.heartbeat_interval),
                    self.missed_heartbeats,
                    humantime::format_duration(self.lease),
                    humantime::format_duration(self.demote_timeout),
                    humantime::format_duration(self.promotion_timeout),
                    humantime::format_duration(self.fence_timeout),
                )));
            }
        }
        if self.store_url.is_postgres() && self.leader_lease < Duration::from_secs(3) {
            return bad(
                "leader_lease must be at least 3s (renewals every quarter of it must fit round trips to PostgreSQL)",
            );
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "advertise_url {url:?} must be an http:// or https:// URL"
            )));
        }
        if self.price_retention < Duration::from_secs(92 * 86_400) {
            return bad("price_retention must be at least 92d (3 months of training data)");
        }
        self.retention.validate().map_err(ConfigError::Invalid)?;
        self.decisions.validate().map_err(ConfigError::Invalid)?;
        if self.decision_interval < Duration::from_secs(1) {
            return bad("decision_interval must be at least 1s");
        }
        if let Some(url) = &self.decision_model_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "decision_model_url {url:?} must be an http:// or https:// URL"
            )));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60))
            .contains(&self.decision_model_timeout)
        {
            return bad("decision_model_timeout must be 10ms-60s");
        }
        if !(0.0..=1.0).contains(&self.decision_ab_split) {
            return bad("decision_ab_split must be between 0 and 1");
        }
        if self.price_max_gap < Duration::from_secs(3600) {
            return bad("price_max_gap must be at least 1h");
        }
        if self.consolidate_interval < Duration::from_secs(1) {
            return bad("consolidate_interval must be at least 1s");
        }
        for (t, p) in &self.on_demand_prices {
            if spot_common::pricing::parse_price(p).is_err() {
                return Err(ConfigError::Invalid(format!(
                    "on_demand_prices.{t}: {p:?} is not a price"
                )));
            }
        }
        for (name, t) in [
            ("enrollment_token", &self.enrollment_token),
            ("admin_token", &self.admin_token),
        ] {
            if let Some(t) = t
                && t.len() < 16
            {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at least 16 characters"
                )));
            }
        }
        Ok(())
    }
}
