//! Named operator tokens: each has a name the audit log records and a
//! role (admin, or viewer for reading only). Only a hash is stored; a
//! revoked token is kept (revoked) so its name is never reused for
//! another holder.

use super::audit::Entity;
use super::{Result, StoreError, Txn};
use crate::store::engine::col;
use crate::store::engine::{Conn, ConnExt, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;
use spot_common::TokenRole;

/// One named token, as `token list` shows it (never the token itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenView {
    pub name: String,
    pub role: TokenRole,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl Txn<'_> {
    /// Record a new token by its hash; a name in use (even revoked) is
    /// refused.
    pub fn create_token(&mut self, name: &str, role: TokenRole, hash: &str) -> Result<TokenView> {
        spot_common::validate_group_name(name).map_err(|_| {
            StoreError::Invalid(format!(
                "token name {name:?} must be 1-64 characters of [A-Za-z0-9._-]"
            ))
        })?;
        let taken: bool = self.tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::AlreadyExists {
                what: "token",
                id: name.to_owned(),
            });
        }
        self.tx.execute(
            "INSERT INTO tokens (name, role, token_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, role.as_str(), hash, self.now_ms()],
        )?;
        let view = TokenView {
            name: name.to_owned(),
            role,
            created_at_ms: self.now_ms(),
            revoked_at_ms: None,
        };
        self.audit(Entity::Token(name), "token_create", &json!(null), &view)?;
        Ok(view)
    }

    /// Revoke a token: it stops working at once.
    pub fn revoke_token(&mut self, name: &str) -> Result<TokenView> {
        let n = self.tx.execute(
            "UPDATE tokens SET revoked_at_ms = ?2 WHERE name = ?1 AND revoked_at_ms IS NULL",
            params![name, self.now_ms()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "active token",
                id: name.to_owned(),
            });
        }
        let view = list(&self.tx)?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| StoreError::NotFound {
                what: "token",
                id: name.to_owned(),
            })?;
        self.audit(Entity::Token(name), "token_revoke", &json!(null), &view)?;
        Ok(view)
    }
}

pub fn list(conn: &dyn Conn) -> Result<Vec<TokenView>> {
    let stmt = conn.prepare_cached(
        "SELECT name, role, created_at_ms, revoked_at_ms FROM tokens ORDER BY name",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(TokenView {
                name: r.get(0)?,
                role: col::text(r, 1)?,
                created_at_ms: r.get(2)?,
                revoked_at_ms: r.get(3)?,
            })
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}

/// The name and role of the active token with this hash.
pub fn find(conn: &dyn Conn, hash: &str) -> Result<Option<(String, TokenRole)>> {
    conn.query_row(
        "SELECT name, role FROM tokens WHERE token_hash = ?1 AND revoked_at_ms IS NULL",
        [hash],
        |r| Ok((r.get(0)?, col::text(r, 1)?)),
    )
    .optional()
}
