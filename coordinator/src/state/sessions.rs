//! The dashboard's login sessions: in memory, bounded, keyed by the hash
//! of the cookie's value (a restarted coordinator asks for the token again).

use std::collections::HashMap;
use std::sync::Mutex;

/// A session lasts a working day; then the token is asked for again.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;
/// More live sessions than any team has browsers: a flood of logins with
/// a valid token cannot grow memory without bound.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Session {
    /// The hash of the token that logged in (re-checked on every request).
    pub token_hash: String,
    pub csrf: String,
    pub expires_ms: i64,
}

/// Live sessions, keyed by the hash of the cookie's value.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session for `token_hash`: the cookie's value and the session.
    pub fn create(
        &self,
        token_hash: String,
        now_ms: i64,
    ) -> Result<(String, Session), TooManySessions> {
        let id = super::random_token();
        let s = Session {
            token_hash,
            csrf: super::random_token(),
            expires_ms: now_ms + SESSION_MS,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires_ms > now_ms);
        }
        if map.len() >= MAX_SESSIONS {
            return Err(TooManySessions(MAX_SESSIONS));
        }
        map.insert(spot_common::token_hash(&id), s.clone());
        Ok((id, s))
    }

    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let key = spot_common::token_hash(id);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        let key = spot_common::token_hash(id);
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// Every session slot is taken by a live session.
#[derive(Debug, thiserror::Error)]
#[error("{0} sessions are open; log out elsewhere or wait for them to expire")]
pub struct TooManySessions(pub usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_can_be_removed() {
        let ss = Sessions::default();
        let (id, s) = ss.create("h".into(), 0).unwrap();
        assert_eq!(ss.get(&id, 1).unwrap().csrf, s.csrf);
        assert!(ss.get("other", 1).is_none());
        assert!(ss.get(&id, SESSION_MS).is_none(), "expired");
        let (id, _) = ss.create("h".into(), 0).unwrap();
        ss.remove(&id);
        assert!(ss.get(&id, 1).is_none());
    }
}
