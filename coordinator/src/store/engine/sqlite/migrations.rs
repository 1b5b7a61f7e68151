//! SQLite's schema migrations: a version ladder (`PRAGMA user_version`).
//! Each step runs in one
//! transaction at start-up, so a crash mid-migration leaves the previous
//! version intact.

use rusqlite::{Connection, TransactionBehavior};

/// The columns of `commands` between `agent_id` and `result`, as created
/// in step 1 and again when step 5 rebuilt the table (SQLite cannot drop a
/// NOT NULL in place).
macro_rules! command_columns {
    () => {
        r#"
        group_name      TEXT NOT NULL REFERENCES groups(name),
        kind            TEXT NOT NULL,
        body            TEXT NOT NULL,
        priority        INTEGER NOT NULL,
        epoch           INTEGER NOT NULL,
        deadline_ms     INTEGER NOT NULL,
        state           TEXT NOT NULL CHECK (state IN
            ('queued', 'delivered', 'done', 'failed', 'stale', 'expired', 'cancelled')),
        created_at_ms   INTEGER NOT NULL,
        delivered_at_ms INTEGER,
        finished_at_ms  INTEGER,
        "#
    };
}

/// Step N brings the schema from version N to N+1.
const STEPS: &[&str] = &[
    // 0 -> 1: the fleet's state.
    concat!(
        r#"
    CREATE TABLE groups (
        name          TEXT PRIMARY KEY,
        config        TEXT NOT NULL,
        epoch         INTEGER NOT NULL DEFAULT 0 CHECK (epoch >= 0),
        version       INTEGER NOT NULL DEFAULT 1,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE agents (
        agent_id          TEXT PRIMARY KEY,
        token_hash        TEXT NOT NULL UNIQUE,
        instance_id       TEXT NOT NULL,
        group_name        TEXT NOT NULL REFERENCES groups(name),
        instance_type     TEXT NOT NULL,
        availability_zone TEXT NOT NULL,
        region            TEXT NOT NULL,
        lifecycle         TEXT NOT NULL,
        agent_version     TEXT NOT NULL,
        status            TEXT NOT NULL
            CHECK (status IN ('online', 'offline', 'replaced', 'deleted')),
        registered_at_ms  INTEGER NOT NULL,
        last_heartbeat_ms INTEGER,
        reported_role     TEXT,
        highest_epoch     INTEGER NOT NULL DEFAULT 0,
        healthy           INTEGER NOT NULL DEFAULT 0,
        backlog           INTEGER NOT NULL DEFAULT 0,
        replaced_by       TEXT REFERENCES agents(agent_id)
    ) STRICT;
    CREATE INDEX agents_by_instance ON agents(instance_id);

    CREATE TABLE instances (
        instance_id       TEXT PRIMARY KEY,
        group_name        TEXT NOT NULL REFERENCES groups(name),
        role              TEXT NOT NULL CHECK (role IN
            ('launching', 'replica', 'primary', 'zombie', 'failed', 'terminated')),
        agent_id          TEXT REFERENCES agents(agent_id),
        instance_type     TEXT NOT NULL,
        availability_zone TEXT NOT NULL,
        version           INTEGER NOT NULL DEFAULT 1,
        created_at_ms     INTEGER NOT NULL,
        updated_at_ms     INTEGER NOT NULL
    ) STRICT;
    -- Invariant 1, enforced by the database itself.
    CREATE UNIQUE INDEX one_primary_per_group ON instances(group_name) WHERE role = 'primary';
    CREATE INDEX instances_by_group ON instances(group_name, role);

    CREATE TABLE commands (
        request_id      TEXT PRIMARY KEY,
        agent_id        TEXT NOT NULL REFERENCES agents(agent_id),
    "#,
        command_columns!(),
        r#"
        result          TEXT
    ) STRICT;
    CREATE INDEX commands_pending ON commands(agent_id, state, priority DESC, created_at_ms);

    CREATE TABLE events (
        event_id       TEXT PRIMARY KEY,
        agent_id       TEXT NOT NULL REFERENCES agents(agent_id),
        seq            INTEGER NOT NULL,
        kind           TEXT NOT NULL,
        body           TEXT NOT NULL,
        at_ms          INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX events_by_agent ON events(agent_id, seq);

    CREATE TABLE notices (
        id              INTEGER PRIMARY KEY,
        event_id        TEXT NOT NULL UNIQUE REFERENCES events(event_id),
        agent_id        TEXT NOT NULL REFERENCES agents(agent_id),
        instance_id     TEXT NOT NULL,
        group_name      TEXT NOT NULL,
        kind            TEXT NOT NULL,
        effective_at_ms INTEGER,
        seen_at_ms      INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE switches (
        id                INTEGER PRIMARY KEY,
        group_name        TEXT NOT NULL REFERENCES groups(name),
        request_id        TEXT,
        from_instance     TEXT,
        to_instance       TEXT,
        target_pool       TEXT NOT NULL,
        state             TEXT NOT NULL,
        started_at_ms     INTEGER NOT NULL,
        demote_started_ms INTEGER,
        promote_done_ms   INTEGER,
        downtime_ms       INTEGER
    ) STRICT;

    CREATE TABLE audit (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms      INTEGER NOT NULL,
        actor      TEXT NOT NULL,
        request_id TEXT,
        entity     TEXT NOT NULL,
        action     TEXT NOT NULL,
        pre_state  TEXT NOT NULL,
        post_state TEXT NOT NULL
    ) STRICT;
    CREATE INDEX audit_by_entity ON audit(entity, id);

    CREATE TABLE idempotency (
        request_id    TEXT PRIMARY KEY,
        scope         TEXT NOT NULL,
        response      TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) STRICT;

    -- Room for the pricing pipeline: raw reports as agents send them.
    CREATE TABLE price_staging (
        id                  INTEGER PRIMARY KEY,
        instance_type       TEXT NOT NULL,
        availability_zone   TEXT NOT NULL,
        product_description TEXT NOT NULL,
        aws_timestamp_ms    INTEGER NOT NULL,
        price_micros        INTEGER NOT NULL,
        reporter_agent      TEXT NOT NULL REFERENCES agents(agent_id),
        reporter_role       TEXT NOT NULL,
        received_at_ms      INTEGER NOT NULL,
        UNIQUE (instance_type, availability_zone, product_description,
                aws_timestamp_ms, price_micros, reporter_agent)
    ) STRICT;
    "#
    ),
    // 1 -> 2: the two-phase promotion protocol, EC2 states, switches.
    r#"
    ALTER TABLE groups ADD COLUMN transition TEXT;
    ALTER TABLE instances ADD COLUMN ec2_state TEXT;
    ALTER TABLE switches ADD COLUMN launch_request_id TEXT;
    CREATE INDEX commands_by_group ON commands(group_name, kind, state);
    CREATE INDEX events_by_kind ON events(agent_id, kind, received_at_ms);
    "#,
    // 2 -> 3: the pricing pipeline.
    r#"
    CREATE INDEX price_staging_by_pool
        ON price_staging(instance_type, availability_zone, product_description, aws_timestamp_ms);
    CREATE INDEX price_staging_by_received ON price_staging(received_at_ms);
    CREATE TABLE price_hourly (
        instance_type       TEXT NOT NULL,
        availability_zone   TEXT NOT NULL,
        product_description TEXT NOT NULL,
        hour_ms             INTEGER NOT NULL,
        price_micros        INTEGER NOT NULL CHECK (price_micros >= 0),
        interpolated        INTEGER NOT NULL,
        updated_at_ms       INTEGER NOT NULL,
        PRIMARY KEY (instance_type, availability_zone, product_description, hour_ms)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE consolidation_runs (
        id                  INTEGER PRIMARY KEY,
        started_at_ms       INTEGER NOT NULL,
        duration_ms         INTEGER NOT NULL,
        pools               INTEGER NOT NULL,
        rows_read           INTEGER NOT NULL,
        duplicates_dropped  INTEGER NOT NULL,
        conflicts_median    INTEGER NOT NULL,
        primary_precedence  INTEGER NOT NULL,
        points_interpolated INTEGER NOT NULL,
        hours_written       INTEGER NOT NULL,
        staging_pruned      INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE counters (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) STRICT;
    "#,
    // 3 -> 4: commands name the instance they are about (derived ids stay
    // opaque to SQL); group configs lose the unused `health_check`.
    r#"
    ALTER TABLE commands ADD COLUMN subject TEXT;
    UPDATE commands SET subject = (SELECT a.instance_id FROM agents a WHERE a.agent_id = commands.agent_id)
        WHERE kind IN ('promote', 'demote');
    UPDATE commands SET subject = json_extract(body, '$.action.instance_id') WHERE kind = 'terminate';
    CREATE INDEX commands_by_subject ON commands(subject, kind, state);
    UPDATE groups SET config = json_remove(config, '$.health_check');
    "#,
    // 4 -> 5: fencing. Commands without an agent are the coordinator's EC2
    // executor's; instances remember the epoch of their role and an
    // operator's "declared dead"; idempotency answers remember a hash of
    // their request so a reused id with other content is refused.
    concat!(
        r#"
    CREATE TABLE commands_v5 (
        request_id      TEXT PRIMARY KEY,
        agent_id        TEXT REFERENCES agents(agent_id),
    "#,
        command_columns!(),
        r#"
        result          TEXT,
        subject         TEXT
    ) STRICT;
    INSERT INTO commands_v5 SELECT request_id, agent_id, group_name, kind, body, priority, epoch,
        deadline_ms, state, created_at_ms, delivered_at_ms, finished_at_ms, result, subject FROM commands;
    DROP TABLE commands;
    ALTER TABLE commands_v5 RENAME TO commands;
    CREATE INDEX commands_pending ON commands(agent_id, state, priority DESC, created_at_ms);
    CREATE INDEX commands_by_group ON commands(group_name, kind, state);
    CREATE INDEX commands_by_subject ON commands(subject, kind, state);
    CREATE INDEX commands_for_coordinator ON commands(state, priority DESC, created_at_ms)
        WHERE agent_id IS NULL;
    ALTER TABLE instances ADD COLUMN role_epoch INTEGER NOT NULL DEFAULT 0;
    UPDATE instances SET role_epoch = COALESCE((SELECT MAX(c.epoch) FROM commands c
        WHERE c.subject = instances.instance_id AND c.kind = 'promote' AND c.state = 'done'), 0)
        WHERE role = 'primary';
    ALTER TABLE instances ADD COLUMN declared_dead_at_ms INTEGER;
    ALTER TABLE idempotency ADD COLUMN request_hash TEXT;
    "#
    ),
    // 5 -> 6: a failed or cancelled switch says why.
    r#"
    ALTER TABLE switches ADD COLUMN failure TEXT;
    "#,
    // 6 -> 7: retention finds old rows by age without scanning a table,
    // and an agent's last references without scanning the price reports.
    r#"
    CREATE INDEX events_by_received ON events(received_at_ms);
    CREATE INDEX notices_by_seen ON notices(seen_at_ms);
    CREATE INDEX commands_by_finished ON commands(finished_at_ms) WHERE finished_at_ms IS NOT NULL;
    CREATE INDEX audit_by_time ON audit(at_ms);
    CREATE INDEX instances_by_update ON instances(updated_at_ms) WHERE role = 'terminated';
    CREATE INDEX price_staging_by_reporter ON price_staging(reporter_agent);
    "#,
    // 7 -> 8: the decision log.
    r#"
    CREATE TABLE decisions (
        id              INTEGER PRIMARY KEY,
        group_name      TEXT NOT NULL,
        at_ms           INTEGER NOT NULL,
        mode            TEXT NOT NULL,
        model           TEXT NOT NULL,
        input_digest    TEXT NOT NULL,
        action          TEXT NOT NULL,
        target_instance_type     TEXT,
        target_availability_zone TEXT,
        confidence      REAL NOT NULL,
        reason          TEXT NOT NULL,
        latency_us      INTEGER NOT NULL,
        saving_per_hour REAL,
        outcome         TEXT NOT NULL,
        invalid         TEXT,
        fallback        TEXT
    ) STRICT;
    CREATE INDEX decisions_by_group ON decisions(group_name, id);
    CREATE INDEX decisions_by_time ON decisions(at_ms);
    CREATE INDEX instances_by_pool ON instances(instance_type, availability_zone);
    CREATE INDEX notices_by_instance ON notices(instance_id, kind);
    "#,
    // 8 -> 9: named operator tokens (admin or viewer), revocable; the
    // decision log says which model a group was assigned.
    r#"
    CREATE TABLE tokens (
        name          TEXT PRIMARY KEY,
        role          TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
        token_hash    TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    ) STRICT;
    -- A/B: the model a group was assigned, and its PRIMARY's price then.
    ALTER TABLE decisions ADD COLUMN assigned TEXT NOT NULL DEFAULT 'builtin';
    ALTER TABLE decisions ADD COLUMN primary_price REAL;
    "#,
    // 9 -> 10: an instance EC2 runs for a group, launched by a launch this
    // store never saw (a store restored from an older copy): a stranger,
    // fenced before any grant until it is heard; when an agent last showed
    // the coordinator the group's instances in EC2.
    r#"
    ALTER TABLE instances ADD COLUMN stranger INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE groups ADD COLUMN ec2_seen_at_ms INTEGER;
    "#,
    // 10 -> 11: when an agent last reported an instance's EC2 state (a
    // report its own agent contradicts by speaking later is no evidence);
    // enrollment tokens scoped to one group (a table of their own: no
    // query of the operator tokens can ever find one).
    r#"
    ALTER TABLE instances ADD COLUMN ec2_state_at_ms INTEGER;
    CREATE TABLE enroll_tokens (
        name          TEXT PRIMARY KEY,
        group_name    TEXT NOT NULL,
        token_hash    TEXT NOT NULL UNIQUE,
        created_at_ms INTEGER NOT NULL,
        revoked_at_ms INTEGER
    ) STRICT;
    "#,
    // 11 -> 12: each audit entry names the leader term it was written in
    // (0 on SQLite, where one coordinator always leads): on PostgreSQL the
    // entries' terms never go backwards, which the nemesis checks.
    r#"
    ALTER TABLE audit ADD COLUMN leader_epoch INTEGER NOT NULL DEFAULT 0;
    "#,
    // 12 -> 13: where each group's data volumes are now (a volume restored
    // in another zone is a new one) and their latest snapshot.
    r#"
    CREATE TABLE group_volumes (
        group_name          TEXT NOT NULL REFERENCES groups(name),
        device              TEXT NOT NULL,
        configured_volume   TEXT NOT NULL,
        volume_id           TEXT NOT NULL,
        availability_zone   TEXT,
        holder              TEXT,
        last_snapshot_id    TEXT,
        last_snapshot_at_ms INTEGER,
        updated_at_ms       INTEGER NOT NULL,
        PRIMARY KEY (group_name, device)
    ) STRICT;
    "#,
];

pub const LATEST: i64 = STEPS.len() as i64;

/// Bring the database to the latest schema version.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = super::schema_version(&tx)?;
        if version >= LATEST {
            return Ok(version);
        }
        let step = usize::try_from(version).unwrap_or(usize::MAX);
        let Some(sql) = STEPS.get(step) else {
            return Ok(version);
        };
        tx.execute_batch(sql)?;
        super::set_schema_version(&tx, version + 1)?;
        tx.commit()?;
        tracing::info!(
            from = version,
            to = version + 1,
            "migrated coordinator schema"
        );
    }
}
