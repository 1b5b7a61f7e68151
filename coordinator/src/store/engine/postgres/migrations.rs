//! PostgreSQL's schema migrations: a version ladder kept in the one-row
//! table `schema_version`, numbered as SQLite's (`sqlite/migrations.rs`)
//! so a version means the same schema on both engines. PostgreSQL joined
//! at version 11: its first step creates that schema whole; every later
//! step is written once per engine.
//!
//! Each step runs in one transaction under a transaction-scoped advisory
//! lock, so coordinators starting together migrate once (a transaction
//! lock is released with its transaction, through a pooler too, and never
//! stacks). DDL differences from SQLite: `BIGINT` for every integer (the
//! statements bind 64-bit integers), `DOUBLE PRECISION` for reals,
//! identity columns for row ids, `TEXT COLLATE "C"` so text compares and
//! sorts byte by byte as SQLite's does, deferrable foreign keys (a copy
//! from SQLite inserts rows in table order), and `json_extract` defined
//! as a function (`dialect::POSTGRES_JSON_EXTRACT`).

use crate::store::Result;
use postgres::Client;

/// Arbitrary, fixed: the advisory lock key of the ladder.
const MIGRATION_LOCK: i64 = 0x0053_706f_744d_6967; // "SpotMig"

/// The schema as of SQLite's version 11, in PostgreSQL's terms.
const V11: &str = r#"
CREATE TABLE groups (
    name          TEXT PRIMARY KEY,
    config        TEXT NOT NULL,
    epoch         BIGINT NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    version       BIGINT NOT NULL DEFAULT 1,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    transition    TEXT,
    ec2_seen_at_ms BIGINT
);

CREATE TABLE agents (
    agent_id          TEXT PRIMARY KEY,
    token_hash        TEXT NOT NULL UNIQUE,
    instance_id       TEXT NOT NULL,
    group_name        TEXT NOT NULL REFERENCES groups(name) DEFERRABLE,
    instance_type     TEXT NOT NULL,
    availability_zone TEXT NOT NULL,
    region            TEXT NOT NULL,
    lifecycle         TEXT NOT NULL,
    agent_version     TEXT NOT NULL,
    status            TEXT NOT NULL
        CHECK (status IN ('online', 'offline', 'replaced', 'deleted')),
    registered_at_ms  BIGINT NOT NULL,
    last_heartbeat_ms BIGINT,
    reported_role     TEXT,
    highest_epoch     BIGINT NOT NULL DEFAULT 0,
    healthy           BIGINT NOT NULL DEFAULT 0,
    backlog           BIGINT NOT NULL DEFAULT 0,
    replaced_by       TEXT REFERENCES agents(agent_id) DEFERRABLE
);
CREATE INDEX agents_by_instance ON agents(instance_id);

CREATE TABLE instances (
    instance_id       TEXT PRIMARY KEY,
    group_name        TEXT NOT NULL REFERENCES groups(name) DEFERRABLE,
    role              TEXT NOT NULL CHECK (role IN
        ('launching', 'replica', 'primary', 'zombie', 'failed', 'terminated')),
    agent_id          TEXT REFERENCES agents(agent_id) DEFERRABLE,
    instance_type     TEXT NOT NULL,
    availability_zone TEXT NOT NULL,
    version           BIGINT NOT NULL DEFAULT 1,
    created_at_ms     BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL,
    ec2_state         TEXT,
    role_epoch        BIGINT NOT NULL DEFAULT 0,
    declared_dead_at_ms BIGINT,
    stranger          BIGINT NOT NULL DEFAULT 0,
    ec2_state_at_ms   BIGINT
);
-- Invariant 1, enforced by the database itself.
CREATE UNIQUE INDEX one_primary_per_group ON instances(group_name) WHERE role = 'primary';
CREATE INDEX instances_by_group ON instances(group_name, role);
CREATE INDEX instances_by_update ON instances(updated_at_ms) WHERE role = 'terminated';
CREATE INDEX instances_by_pool ON instances(instance_type, availability_zone);

CREATE TABLE commands (
    request_id      TEXT PRIMARY KEY,
    agent_id        TEXT REFERENCES agents(agent_id) DEFERRABLE,
    group_name      TEXT NOT NULL REFERENCES groups(name) DEFERRABLE,
    kind            TEXT NOT NULL,
    body            TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    epoch           BIGINT NOT NULL,
    deadline_ms     BIGINT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN
        ('queued', 'delivered', 'done', 'failed', 'stale', 'expired', 'cancelled')),
    created_at_ms   BIGINT NOT NULL,
    delivered_at_ms BIGINT,
    finished_at_ms  BIGINT,
    result          TEXT,
    subject         TEXT
);
CREATE INDEX commands_pending ON commands(agent_id, state, priority DESC, created_at_ms);
CREATE INDEX commands_by_group ON commands(group_name, kind, state);
CREATE INDEX commands_by_subject ON commands(subject, kind, state);
CREATE INDEX commands_for_coordinator ON commands(state, priority DESC, created_at_ms)
    WHERE agent_id IS NULL;
CREATE INDEX commands_by_finished ON commands(finished_at_ms) WHERE finished_at_ms IS NOT NULL;

CREATE TABLE events (
    event_id       TEXT PRIMARY KEY,
    agent_id       TEXT NOT NULL REFERENCES agents(agent_id) DEFERRABLE,
    seq            BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    body           TEXT NOT NULL,
    at_ms          BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL
);
CREATE INDEX events_by_agent ON events(agent_id, seq);
CREATE INDEX events_by_kind ON events(agent_id, kind, received_at_ms);
CREATE INDEX events_by_received ON events(received_at_ms);

CREATE TABLE notices (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE REFERENCES events(event_id) DEFERRABLE,
    agent_id        TEXT NOT NULL REFERENCES agents(agent_id) DEFERRABLE,
    instance_id     TEXT NOT NULL,
    group_name      TEXT NOT NULL,
    kind            TEXT NOT NULL,
    effective_at_ms BIGINT,
    seen_at_ms      BIGINT NOT NULL
);
CREATE INDEX notices_by_seen ON notices(seen_at_ms);
CREATE INDEX notices_by_instance ON notices(instance_id, kind);

CREATE TABLE switches (
    id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    group_name        TEXT NOT NULL REFERENCES groups(name) DEFERRABLE,
    request_id        TEXT,
    from_instance     TEXT,
    to_instance       TEXT,
    target_pool       TEXT NOT NULL,
    state             TEXT NOT NULL,
    started_at_ms     BIGINT NOT NULL,
    demote_started_ms BIGINT,
    promote_done_ms   BIGINT,
    downtime_ms       BIGINT,
    launch_request_id TEXT,
    failure           TEXT
);

CREATE TABLE audit (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at_ms      BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    request_id TEXT,
    entity     TEXT NOT NULL,
    action     TEXT NOT NULL,
    pre_state  TEXT NOT NULL,
    post_state TEXT NOT NULL
);
CREATE INDEX audit_by_entity ON audit(entity, id);
CREATE INDEX audit_by_time ON audit(at_ms);

CREATE TABLE idempotency (
    request_id    TEXT PRIMARY KEY,
    scope         TEXT NOT NULL,
    response      TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    request_hash  TEXT
);

CREATE TABLE price_staging (
    id                  BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    instance_type       TEXT NOT NULL,
    availability_zone   TEXT NOT NULL,
    product_description TEXT NOT NULL,
    aws_timestamp_ms    BIGINT NOT NULL,
    price_micros        BIGINT NOT NULL,
    reporter_agent      TEXT NOT NULL REFERENCES agents(agent_id) DEFERRABLE,
    reporter_role       TEXT NOT NULL,
    received_at_ms      BIGINT NOT NULL,
    UNIQUE (instance_type, availability_zone, product_description,
            aws_timestamp_ms, price_micros, reporter_agent)
);
CREATE INDEX price_staging_by_pool
    ON price_staging(instance_type, availability_zone, product_description, aws_timestamp_ms);
CREATE INDEX price_staging_by_received ON price_staging(received_at_ms);
CREATE INDEX price_staging_by_reporter ON price_staging(reporter_agent);

CREATE TABLE price_hourly (
    instance_type       TEXT NOT NULL,
    availability_zone   TEXT NOT NULL,
    product_description TEXT NOT NULL,
    hour_ms             BIGINT NOT NULL,
    price_micros        BIGINT NOT NULL CHECK (price_micros >= 0),
    interpolated        BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    PRIMARY KEY (instance_type, availability_zone, product_description, hour_ms)
);

CREATE TABLE consolidation_runs (
    id                  BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    started_at_ms       BIGINT NOT NULL,
    duration_ms         BIGINT NOT NULL,
    pools               BIGINT NOT NULL,
    rows_read           BIGINT NOT NULL,
    duplicates_dropped  BIGINT NOT NULL,
    conflicts_median    BIGINT NOT NULL,
    primary_precedence  BIGINT NOT NULL,
    points_interpolated BIGINT NOT NULL,
    hours_written       BIGINT NOT NULL,
    staging_pruned      BIGINT NOT NULL
);

CREATE TABLE counters (
    key   TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);

CREATE TABLE decisions (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    group_name      TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    mode            TEXT NOT NULL,
    model           TEXT NOT NULL,
    input_digest    TEXT NOT NULL,
    action          TEXT NOT NULL,
    target_instance_type     TEXT,
    target_availability_zone TEXT,
    confidence      DOUBLE PRECISION NOT NULL,
    reason          TEXT NOT NULL,
    latency_us      BIGINT NOT NULL,
    saving_per_hour DOUBLE PRECISION,
    outcome         TEXT NOT NULL,
    invalid         TEXT,
    fallback        TEXT,
    assigned        TEXT NOT NULL DEFAULT 'builtin',
    primary_price   DOUBLE PRECISION
);
CREATE INDEX decisions_by_group ON decisions(group_name, id);
CREATE INDEX decisions_by_time ON decisions(at_ms);

CREATE TABLE tokens (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
    token_hash    TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE TABLE enroll_tokens (
    name          TEXT PRIMARY KEY,
    group_name    TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

-- PostgreSQL only: who leads the coordinators sharing this database
-- (engine/postgres/lease.rs). One row; its lease is on the database's clock.
CREATE TABLE coordinator_leader (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    epoch       BIGINT NOT NULL,
    holder      TEXT,
    url         TEXT,
    expires_at  TIMESTAMPTZ NOT NULL,
    acquired_at TIMESTAMPTZ
);
INSERT INTO coordinator_leader (id, epoch, expires_at) VALUES (1, 0, now());
"#;

/// `(from, to, sql)`: each step brings the schema from one version to the
/// next.
fn steps() -> Vec<(i64, i64, String)> {
    // Text as SQLite compares it: byte by byte.
    let v11 = V11.replace(" TEXT", " TEXT COLLATE \"C\"");
    vec![
        (
            0,
            11,
            format!("{v11}\n{}", super::super::dialect::POSTGRES_JSON_EXTRACT),
        ),
        // As SQLite's 11 -> 12: the leader term of each audit entry.
        (
            11,
            12,
            "ALTER TABLE audit ADD COLUMN leader_epoch BIGINT NOT NULL DEFAULT 0;".into(),
        ),
        // As SQLite's 12 -> 13: the data volumes' whereabouts.
        (
            12,
            13,
            r#"
            CREATE TABLE group_volumes (
                group_name          TEXT COLLATE "C" NOT NULL REFERENCES groups(name) DEFERRABLE,
                device              TEXT COLLATE "C" NOT NULL,
                configured_volume   TEXT COLLATE "C" NOT NULL,
                volume_id           TEXT COLLATE "C" NOT NULL,
                availability_zone   TEXT COLLATE "C",
                holder              TEXT COLLATE "C",
                last_snapshot_id    TEXT COLLATE "C",
                last_snapshot_at_ms BIGINT,
                updated_at_ms       BIGINT NOT NULL,
                PRIMARY KEY (group_name, device)
            );
            "#
            .into(),
        ),
    ]
}

pub const LATEST: i64 = 13;

/// The schema version the database is at (0: empty).
pub fn version(c: &mut Client) -> Result<i64> {
    let exists: bool = c
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    Ok(c.query_one("SELECT version FROM schema_version", &[])?
        .try_get(0)?)
}

/// Bring the database to the latest schema version.
pub fn migrate(c: &mut Client) -> Result<i64> {
    loop {
        let mut tx = c.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let current: Option<i64> = tx
            .query_opt("SELECT version FROM schema_version", &[])?
            .map(|r| r.try_get(0))
            .transpose()?;
        let version = current.unwrap_or(0);
        let Some((_, to, sql)) = steps().into_iter().find(|(from, _, _)| *from == version) else {
            if version > LATEST {
                tracing::warn!(
                    version,
                    latest = LATEST,
                    "the store's schema is newer than this coordinator knows (a newer coordinator migrated it)"
                );
            }
            tx.commit()?;
            return Ok(version);
        };
        tx.batch_execute(&sql)?;
        if current.is_some() {
            tx.execute("UPDATE schema_version SET version = $1", &[&to])?;
        } else {
            tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&to])?;
        }
        tx.commit()?;
        tracing::info!(
            from = version,
            to,
            "migrated coordinator schema (PostgreSQL)"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_engines_are_at_the_same_schema_version() {
        assert_eq!(super::LATEST, crate::store::engine::sqlite::LATEST);
    }
}
