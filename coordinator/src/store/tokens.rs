//! Named operator tokens: each has a name the audit log records and a
//! role (admin, or viewer for reading only); and enrollment tokens scoped
//! to one group (an agent registering with one can join that group only).
//! Only a hash is stored; a revoked token is kept (revoked) so its name is
//! never reused for another holder. Names are unique across both kinds.

use super::audit::Entity;
use super::{Read, Result, StoreError, Txn};
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

/// One enrollment token, as `token list --enroll` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnrollTokenView {
    pub name: String,
    pub group: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl Txn<'_> {
    /// A valid name not in use (even revoked) by a token of either kind.
    fn check_new_name(&self, name: &str) -> Result<()> {
        spot_common::validate_group_name(name).map_err(|_| {
            StoreError::Invalid(format!(
                "token name {name:?} must be 1-64 characters of [A-Za-z0-9._-]"
            ))
        })?;
        let taken: bool = self.tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE name = ?1)
                 OR EXISTS (SELECT 1 FROM enroll_tokens WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StoreError::AlreadyExists {
                what: "token",
                id: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Record a new token by its hash; a name in use (even revoked) is
    /// refused.
    pub fn create_token(&mut self, name: &str, role: TokenRole, hash: &str) -> Result<TokenView> {
        self.check_new_name(name)?;
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

    /// Record a new enrollment token for `group` (which must exist).
    pub fn create_enroll_token(
        &mut self,
        name: &str,
        group: &str,
        hash: &str,
    ) -> Result<EnrollTokenView> {
        self.check_new_name(name)?;
        self.group(group)?;
        self.tx.execute(
            "INSERT INTO enroll_tokens (name, group_name, token_hash, created_at_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![name, group, hash, self.now_ms()],
        )?;
        let view = EnrollTokenView {
            name: name.to_owned(),
            group: group.to_owned(),
            created_at_ms: self.now_ms(),
            revoked_at_ms: None,
        };
        self.audit(Entity::Token(name), "token_create", &json!(null), &view)?;
        Ok(view)
    }

    /// Audit a registration refused because its enrollment token belongs
    /// to another group.
    pub fn enrollment_refused(
        &mut self,
        token: &str,
        token_group: &str,
        asked_group: &str,
        instance: &str,
    ) -> Result<()> {
        self.audit(
            Entity::Token(token),
            "enrollment_refused",
            &json!({"group": token_group}),
            &json!({"code": "enrollment_group_mismatch", "asked_group": asked_group,
                   "instance_id": instance}),
        )
    }

    /// Revoke a token of either kind: it stops working at once.
    pub fn revoke_token(&mut self, name: &str) -> Result<serde_json::Value> {
        let mut revoked = false;
        for table in ["tokens", "enroll_tokens"] {
            revoked |= self.tx.execute(
                &format!(
                    "UPDATE {table} SET revoked_at_ms = ?2 WHERE name = ?1 AND revoked_at_ms IS NULL"
                ),
                params![name, self.now_ms()],
            )? > 0;
        }
        let operator = list(&self.tx)?.into_iter().find(|t| t.name == name);
        let view = match operator {
            Some(t) => json!(t),
            None => json!(enroll_list(&self.tx)?.into_iter().find(|t| t.name == name)),
        };
        if !revoked || view.is_null() {
            return Err(StoreError::NotFound {
                what: "active token",
                id: name.to_owned(),
            });
        }
        self.audit(Entity::Token(name), "token_revoke", &json!(null), &view)?;
        Ok(view)
    }
}

pub fn enroll_list(conn: &dyn Conn) -> Result<Vec<EnrollTokenView>> {
    let stmt = conn.prepare_cached(
        "SELECT name, group_name, created_at_ms, revoked_at_ms FROM enroll_tokens ORDER BY name",
    )?;
    let rows = stmt
        .query_map([], |r| {
            Ok(EnrollTokenView {
                name: r.get(0)?,
                group: r.get(1)?,
                created_at_ms: r.get(2)?,
                revoked_at_ms: r.get(3)?,
            })
        })?
        .collect::<Result<_>>()?;
    Ok(rows)
}

/// The name and group of the active enrollment token with this hash.
pub fn find_enroll(conn: &dyn Conn, hash: &str) -> Result<Option<(String, String)>> {
    conn.query_row(
        "SELECT name, group_name FROM enroll_tokens WHERE token_hash = ?1 AND revoked_at_ms IS NULL",
        [hash],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
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
