//! Where the SQL of the store depends on the engine. Everything else in
//! `store/` is written in the SQL both SQLite and PostgreSQL speak:
//!
//! * conflicts: `INSERT ... ON CONFLICT DO NOTHING` / `DO UPDATE` (never
//!   SQLite's `INSERT OR IGNORE` / `OR REPLACE`);
//! * new ids: `INSERT ... RETURNING id` (never `last_insert_rowid()`);
//! * time: no SQL time function anywhere; every timestamp is Unix
//!   milliseconds computed by the coordinator and bound as a parameter
//!   (`Ctx::now_ms`), so both engines store and compare the same integers.
//!
//! What differs, and lives here only:
//!
//! * the schema version: SQLite's `PRAGMA user_version` (`sqlite.rs`); a
//!   second engine keeps it in a one-row table behind
//!   `Conn::schema_version`;
//! * placeholders: the statements use `?N`; PostgreSQL wants `$N`
//!   ([`numbered_placeholders`] rewrites them);
//! * JSON fields: the statements read stored JSON with
//!   `json_extract(column, '$.path')`, SQLite's built-in; a PostgreSQL
//!   engine defines a function of that name in its first migration
//!   ([`POSTGRES_JSON_EXTRACT`]: the same JSONPath, a scalar back);
//! * DDL: SQLite's migration ladder (`sqlite/migrations.rs`) uses `STRICT` tables and
//!   `INTEGER PRIMARY KEY` row ids, which a second engine writes as
//!   `BIGINT GENERATED ALWAYS AS IDENTITY` in its own ladder.

/// `?1`, `?2`, ... as PostgreSQL's `$1`, `$2`, ...; a `?` inside a quoted
/// literal is left alone.
pub fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// `json_extract(doc, path)` for PostgreSQL, as the statements use it:
/// the JSONPath's first match as text, NULL when absent or when `doc` is
/// NULL (checked by hand against PostgreSQL 15). One difference remains for
/// that engine to absorb: SQLite answers a JSON boolean as 1/0, this as
/// `true`/`false`, and two statements compare booleans with `= 0`/`= 1`
/// (`snapshot.rs`, the proactive-launch time; `fence.rs`, `hook_ok`).
pub const POSTGRES_JSON_EXTRACT: &str = r#"
CREATE FUNCTION json_extract(doc text, path text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_path_query_first(doc::jsonb, path::jsonpath) #>> '{}'
$$;
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_outside_literals() {
        assert_eq!(
            numbered_placeholders(
                "SELECT json_extract(body, '$.a?1') FROM t WHERE a = ?1 AND b IN (?2, ?10)"
            ),
            "SELECT json_extract(body, '$.a?1') FROM t WHERE a = $1 AND b IN ($2, $10)"
        );
    }
}
