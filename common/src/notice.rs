//! Parsing of the interruption signals AWS puts in instance metadata.
//!
//! Bodies as AWS sends them:
//! * `spot/instance-action`: `{"action": "terminate", "time": "2026-11-27T10:00:00Z"}`
//!   (`action` is `terminate`, `stop` or `hibernate`);
//! * `events/recommendations/rebalance`: `{"noticeTime": "2026-11-27T09:58:00Z"}`;
//! * `events/maintenance/scheduled`: a JSON array of
//!   `{"Code", "Description", "EventId", "NotAfter", "NotBefore", "State"}`.
//!
//! A body that does not parse is an error the caller journals as malformed;
//! it is never fatal.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    #[error("body is not the expected JSON: {0}")]
    Json(String),
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    #[error("time {0:?} is not RFC 3339")]
    BadTime(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAction {
    pub action: String,
    /// When AWS will act (unix ms).
    pub time_ms: i64,
}

fn parse_time(s: &str) -> Result<i64, NoticeError> {
    let t = humantime::parse_rfc3339(s).map_err(|_| NoticeError::BadTime(s.to_owned()))?;
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| NoticeError::BadTime(s.to_owned()))?;
    i64::try_from(d.as_millis()).map_err(|_| NoticeError::BadTime(s.to_owned()))
}

pub fn parse_instance_action(body: &str) -> Result<InstanceAction, NoticeError> {
    #[derive(Deserialize)]
    struct Raw {
        action: String,
        time: String,
    }
    let raw: Raw = serde_json::from_str(body).map_err(|e| NoticeError::Json(e.to_string()))?;
    if !matches!(raw.action.as_str(), "terminate" | "stop" | "hibernate") {
        return Err(NoticeError::UnknownAction(raw.action));
    }
    Ok(InstanceAction {
        time_ms: parse_time(&raw.time)?,
        action: raw.action,
    })
}

/// Returns the notice time (unix ms).
pub fn parse_rebalance(body: &str) -> Result<i64, NoticeError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Raw {
        notice_time: String,
    }
    let raw: Raw = serde_json::from_str(body).map_err(|e| NoticeError::Json(e.to_string()))?;
    parse_time(&raw.notice_time)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduledEvent {
    pub code: String,
    #[serde(default)]
    pub description: String,
    pub event_id: String,
    #[serde(default)]
    pub not_before: String,
    #[serde(default)]
    pub not_after: String,
    #[serde(default)]
    pub state: String,
}

pub fn parse_scheduled(body: &str) -> Result<Vec<ScheduledEvent>, NoticeError> {
    serde_json::from_str(body).map_err(|e| NoticeError::Json(e.to_string()))
}

/// IMDS writes event times as `21 Jan 2019 09:00:43 GMT`; RFC 3339 is
/// accepted too.
pub fn parse_event_time(s: &str) -> Result<i64, NoticeError> {
    let bad = || NoticeError::BadTime(s.to_owned());
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [day, month, year, time, "GMT" | "UTC"] = parts.as_slice() else {
        return parse_time(s);
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|m| m == month).ok_or_else(bad)? + 1;
    let d: u32 = day.parse().map_err(|_| bad())?;
    let y: u32 = year.parse().map_err(|_| bad())?;
    parse_time(&format!("{y:04}-{m:02}-{d:02}T{time}Z")).map_err(|_| bad())
}

/// The maintenance that will disrupt the instance: among the events still
/// to happen (state `active`; `completed` and `canceled` ones are over),
/// the earliest `NotBefore` (unix ms; `None` when AWS gave none we can
/// read: treat it as imminent) and its code. `None`: nothing scheduled.
pub fn pending_maintenance(events: &[ScheduledEvent]) -> Option<(Option<i64>, String)> {
    let active: Vec<&ScheduledEvent> = events
        .iter()
        .filter(|e| {
            !matches!(
                e.state.to_ascii_lowercase().as_str(),
                "completed" | "canceled" | "cancelled"
            )
        })
        .collect();
    let when = |e: &ScheduledEvent| parse_event_time(&e.not_before).ok();
    let first = active.iter().min_by_key(|e| when(e).unwrap_or(i64::MIN))?;
    Some((when(first), first.code.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_real_instance_action_body() {
        let a = parse_instance_action(r#"{"action": "terminate", "time": "2026-11-27T10:00:00Z"}"#)
            .unwrap();
        assert_eq!(a.action, "terminate");
        assert_eq!(a.time_ms, 1_795_773_600_000);
        assert!(
            parse_instance_action(r#"{"action": "stop", "time": "2026-11-27T10:00:00.123Z"}"#)
                .is_ok()
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            "",
            "{",
            "null",
            "[]",
            r#"{"action": "explode", "time": "2026-11-27T10:00:00Z"}"#,
            r#"{"action": "terminate", "time": "tomorrow"}"#,
            "\u{0}\u{1}",
        ] {
            assert!(parse_instance_action(body).is_err(), "{body:?}");
        }
        assert!(parse_rebalance(r#"{"noticeTime": 5}"#).is_err());
    }

    #[test]
    fn parses_rebalance_and_scheduled_events() {
        assert_eq!(
            parse_rebalance(r#"{"noticeTime": "2026-11-27T10:00:00Z"}"#).unwrap(),
            1_795_773_600_000
        );
        let ev = parse_scheduled(
            r#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "system-reboot",
            "Description": "scheduled reboot", "EventId": "instance-event-0d59937288b749b32",
            "NotAfter": "21 Jan 2019 09:17:23 GMT", "State": "active"}]"#,
        )
        .unwrap();
        assert_eq!(ev[0].code, "system-reboot");
        assert_eq!(ev[0].event_id, "instance-event-0d59937288b749b32");
        assert!(parse_scheduled("[]").unwrap().is_empty());
        let (at, code) = pending_maintenance(&ev).unwrap();
        assert_eq!(code, "system-reboot");
        assert_eq!(at, Some(1_548_061_243_000), "21 Jan 2019 09:00:43 GMT");
    }

    #[test]
    fn only_maintenance_still_to_happen_is_pending() {
        let ev = |state: &str, not_before: &str, code: &str| ScheduledEvent {
            code: code.into(),
            description: String::new(),
            event_id: format!("e-{code}"),
            not_before: not_before.into(),
            not_after: String::new(),
            state: state.into(),
        };
        let over = [
            ev("completed", "21 Jan 2019 09:00:43 GMT", "system-reboot"),
            ev("canceled", "22 Jan 2019 09:00:43 GMT", "instance-stop"),
        ];
        assert_eq!(pending_maintenance(&over), None);
        let mixed = [
            over[0].clone(),
            ev("active", "2026-12-02T10:00:00Z", "instance-retirement"),
            ev("active", "1 Dec 2026 10:00:00 GMT", "system-maintenance"),
        ];
        assert_eq!(
            pending_maintenance(&mixed),
            Some((Some(1_796_119_200_000), "system-maintenance".into())),
            "the earliest active one"
        );
        // An unreadable time is taken as imminent, never as "no event".
        let odd = [ev("active", "soon", "instance-stop")];
        assert_eq!(
            pending_maintenance(&odd),
            Some((None, "instance-stop".into()))
        );
        assert!(parse_event_time("32 Foo 2019 09:00:43 GMT").is_err());
    }
}
