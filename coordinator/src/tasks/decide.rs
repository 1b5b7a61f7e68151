//! The decision engine's task: every `decision_interval`, after every
//! price consolidation and on a rebalance or maintenance notice, each group
//! whose `decisions` mode is `shadow` or `auto` gets a decision from the
//! built-in model, or from the external model when one is configured
//! (docs/DECISIONS.md). An external model
//! that errs, answers late or answers something invalid is not followed:
//! the built-in model decides, and the log says why. An answer that fails
//! validation is logged with the raw answer, counted, and taken as
//! NO_ACTION. In `shadow` mode the log says what would have
//! been done; in `auto` mode a SWITCH goes through the switch flow and a
//! CREATE_REPLICA through the launch path, in the transaction that logs
//! the decision. A group that is paused, in a transition, switching or
//! launching is left alone this pass.

use super::Schedule;
use crate::metrics::DecisionLabels;
use crate::state::AppState;
use crate::store::{Ctx, LoggedDecision, Read, StoreError, Via};
use sha2::{Digest, Sha256};
use spot_common::decision::{self, Action, DecisionInput, DecisionOutput, builtin};
use spot_common::{Actor, DecisionMode, ModelChoice, SwitchState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A decision the same as the last one logged is logged again after this.
const REPEAT_LOG_MS: i64 = 3_600_000;

/// Groups decided at once.
const PARALLEL: usize = 16;

/// A launch younger than this that has not registered is still on its way.
const LAUNCHING_MS: i64 = 600_000;

pub async fn run(state: Arc<AppState>) -> anyhow::Result<()> {
    let external = state
        .config
        .decision_model_url
        .as_deref()
        .map(|url| Arc::new(External::new(url, state.config.decision_model_timeout)));
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut schedule = Schedule::every(state.config.decision_interval, &state).or_on(&state.decide);
    while schedule.next().await {
        // One group's failure is logged and never stops the others.
        let names = match state.db.read(|s| s.group_names()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %spot_common::error_chain(&e), "decision pass: listing groups");
                continue;
            }
        };
        // Groups are decided side by side (an external model's deadline
        // then bounds a pass at 1,000 / PARALLEL deadlines), the store
        // serialising their writes.
        let mut set = tokio::task::JoinSet::new();
        for name in names {
            let (state, external, permits) =
                (Arc::clone(&state), external.clone(), Arc::clone(&permits));
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                if let Err(e) = decide(&state, external.as_deref(), &name, crate::state::now_ms()).await {
                    tracing::warn!(group = %name, error = %spot_common::error_chain(&e), "decision failed; next pass retries");
                }
            });
        }
        while let Some(done) = set.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a decision panicked; the next pass retries");
            }
        }
    }
    Ok(())
}

/// The model's input for `group` and the model its config names, or
/// `None` when the group is not to be decided now (mode off, paused, or
/// something already in flight).
pub async fn input(
    state: &AppState,
    group: &str,
    now_ms: i64,
) -> Result<Option<(DecisionInput, Option<ModelChoice>)>, StoreError> {
    let name = group.to_owned();
    let on_demand = state.config.on_demand_dollars();
    state
        .db
        .read(move |s| {
            let g = s.group(&name)?;
            if g.config.decision_mode() == DecisionMode::Off || g.config.paused {
                return Ok(None);
            }
            let switching = s
                .switches(&name)?
                .iter()
                .any(|w| w.state == SwitchState::Launching);
            if g.transition.is_some()
                || switching
                || s.launches_in_flight(&name, now_ms - LAUNCHING_MS)? > 0
            {
                return Ok(None);
            }
            let input = s.decision_input(&name, now_ms, &on_demand)?;
            Ok(Some((input, g.config.model)))
        })
        .await
}

/// What the decision says, ready for the log.
struct Judged {
    output: DecisionOutput,
    /// The action acted on (NO_ACTION when the answer was invalid).
    action: Action,
    invalid: Option<String>,
    /// Why the external model was not followed (the built-in model
    /// decided instead).
    fallback: Option<String>,
    latency_us: i64,
    digest: String,
    saving: Option<f64>,
}

/// The external model (`decision_model_url`): the input is POSTed as
/// JSON, the answer read within `decision_model_timeout`.
pub struct External {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
}

/// Answers longer than this are refused unread.
const MAX_ANSWER: usize = 64 * 1024;

impl External {
    pub fn new(url: &str, timeout: Duration) -> External {
        External {
            client: reqwest::Client::new(),
            url: url.to_owned(),
            timeout,
        }
    }

    /// The model's answer, or why there is none (unreachable, an error
    /// status, too long, not the schema, too late).
    pub async fn ask(&self, input: &DecisionInput) -> Result<DecisionOutput, String> {
        let call = async {
            let resp = self
                .client
                .post(&self.url)
                .json(input)
                .send()
                .await
                .map_err(|e| format!("unreachable: {}", spot_common::error_chain(&e)))?;
            if !resp.status().is_success() {
                return Err(format!("answered {}", resp.status()));
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if body.len() > MAX_ANSWER {
                return Err(format!("answer of {} bytes is too long", body.len()));
            }
            serde_json::from_slice(&body).map_err(|e| {
                let raw = String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned();
                format!("answer does not parse ({e}): {raw}")
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                )
            })?
    }
}

/// Why `out` may not be acted on, with the raw answer.
fn refused(input: &DecisionInput, out: &DecisionOutput) -> Option<String> {
    decision::validate(input, out).err().map(|e| {
        let raw = serde_json::to_string(out).unwrap_or_default();
        format!("{e}; answer: {raw}")
    })
}

async fn judge(
    input: &DecisionInput,
    params: &builtin::Params,
    external: Option<&External>,
) -> Judged {
    let t = Instant::now();
    let (output, fallback) = match external {
        None => (builtin::decide(input, params), None),
        Some(ext) => match ext.ask(input).await {
            Ok(o) => match refused(input, &o) {
                None => (o, None),
                Some(why) => (builtin::decide(input, params), Some(why)),
            },
            Err(why) => (builtin::decide(input, params), Some(why)),
        },
    };
    let fallback = fallback.map(|why| {
        format!(
            "external model {}: {why}; the built-in model decided",
            external.map_or("", |e| e.url.as_str())
        )
    });
    let latency_us = i64::try_from(t.elapsed().as_micros()).unwrap_or(i64::MAX);
    let invalid = refused(input, &output);
    let action = if invalid.is_some() {
        Action::NoAction
    } else {
        output.action.clone()
    };
    let saving = match &action {
        Action::Switch { pool } => {
            let here = input.primary.as_ref().and_then(|p| p.price);
            let there = input
                .pools
                .iter()
                .find(|p| &p.pool == pool)
                .and_then(|p| p.price());
            here.zip(there).map(|(a, b)| a - b)
        }
        _ => None,
    };
    let digest = hex::encode(Sha256::digest(
        serde_json::to_vec(input).unwrap_or_default(),
    ));
    Judged {
        output,
        action,
        invalid,
        fallback,
        latency_us,
        digest,
        saving,
    }
}

/// Decide for one group and act on it (per its mode); returns the logged
/// decision's id, or `None` when the group was not decided (or decided
/// as last time, within the hour).
pub async fn decide(
    state: &AppState,
    external: Option<&External>,
    group: &str,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let Some((input, chosen)) = input(state, group, now_ms).await? else {
        return Ok(None);
    };
    let mode = input.config.mode;
    let assigned = decision::assign(
        group,
        chosen,
        external.is_some(),
        state.config.decision_ab_split,
    );
    let external = external.filter(|_| assigned == ModelChoice::External);
    let primary_price = input.primary.as_ref().and_then(|p| p.price);
    let j = judge(&input, &state.config.decisions, external).await;
    state
        .metrics
        .decisions
        .get_or_create(&DecisionLabels {
            mode: mode.as_str(),
            action: j.action.name(),
        })
        .inc();
    if let Some(why) = &j.fallback {
        state.metrics.decision_fallbacks.inc();
        tracing::warn!(%group, fallback = %why, "external model not followed");
    }
    if let Some(why) = &j.invalid {
        state.metrics.decision_fallbacks.inc();
        tracing::warn!(%group, invalid = %why, "model answer refused; taken as NO_ACTION");
    }
    let shadow = |verb: &str| format!("shadow: would {verb}");
    let auto = mode == DecisionMode::Auto;
    let (what, act) = match &j.action {
        Action::Switch { pool } => (
            format!(
                "switch to {pool}{}",
                j.saving
                    .map(|s| format!(" (saves ${s:.4}/h)"))
                    .unwrap_or_default()
            ),
            auto,
        ),
        Action::CreateReplica { pool } => (format!("launch a REPLICA in {pool}"), auto),
        Action::Stay => ("stay".to_owned(), false),
        Action::NoAction => ("nothing".to_owned(), false),
    };
    let outcome = if act || matches!(j.action, Action::Stay | Action::NoAction) {
        what.clone()
    } else {
        shadow(&what)
    };
    if !act {
        // The same answer as last time is logged once an hour (the metric
        // counts every one): 1,000 groups decided every 5 minutes would
        // otherwise log 288,000 rows a day saying "stay".
        let name = group.to_owned();
        let last = state.db.read(move |s| s.decisions(&name, 1)).await?;
        let target = match &j.action {
            Action::Switch { pool } | Action::CreateReplica { pool } => Some(pool.clone()),
            _ => None,
        };
        if let Some(l) = last.first()
            && l.action == j.action.name()
            && l.target_pool == target
            && l.invalid.is_none() == j.invalid.is_none()
            && l.fallback.is_none() == j.fallback.is_none()
            && now_ms - l.at_ms < REPEAT_LOG_MS
        {
            return Ok(None);
        }
    }
    let name = group.to_owned();
    let ctx = Ctx::new(now_ms, Actor::System);
    let log = move |tx: &mut crate::store::Txn<'_>, outcome: &str| {
        tx.log_decision(&LoggedDecision {
            group: &name,
            mode,
            input_digest: &j.digest,
            output: &j.output,
            latency_us: j.latency_us,
            saving_per_hour: j.saving,
            outcome,
            invalid: j.invalid.as_deref(),
            fallback: j.fallback.as_deref(),
            assigned,
            primary_price,
        })
    };
    if !act {
        tracing::info!(%group, mode = mode.as_str(), decision = %outcome, "decided");
        let done = state.db.transact(ctx, move |tx| log(tx, &outcome)).await?;
        return Ok(Some(done.value));
    }
    // Act and log in one transaction; a refusal (a switch already in
    // flight, a group changed meanwhile) is logged on its own.
    let name = group.to_owned();
    let action = j.action.clone();
    let log2 = log.clone();
    let acted = state
        .db
        .transact(ctx.clone(), move |tx| {
            let g = tx.group(&name)?;
            let done = match &action {
                Action::Switch { pool } => {
                    let pool = g.config.pool(pool).cloned().ok_or_else(|| {
                        StoreError::Invalid(format!("{pool} is not a pool of {name}"))
                    })?;
                    let sw = tx.request_switch(&name, &pool)?;
                    format!("{what}: switch {}", sw.id)
                }
                Action::CreateReplica { pool } => {
                    // Checked again in the writing transaction: the planner
                    // may have launched one since the input was read.
                    if tx.launches_in_flight(&name, now_ms - LAUNCHING_MS)? > 0
                        || g.transition.is_some()
                    {
                        return Err(StoreError::InProgress(
                            "a launch or a replacement is already in flight".into(),
                        ));
                    }
                    let pool = g.config.pool(pool).cloned().ok_or_else(|| {
                        StoreError::Invalid(format!("{pool} is not a pool of {name}"))
                    })?;
                    let rid = format!("decision-launch-{name}-{now_ms}");
                    tx.queue_launch(&rid, &name, Via::Auto, &pool, false)?;
                    format!("{what}: launch {rid}")
                }
                Action::Stay | Action::NoAction => what.clone(),
            };
            log2(tx, &done).map(|id| (id, done))
        })
        .await;
    let (id, done) = match acted {
        Ok(d) => state.woke(d),
        Err(
            e @ (StoreError::Invalid(_)
            | StoreError::InProgress(_)
            | StoreError::VersionConflict(_)
            | StoreError::NotFound { .. }
            | StoreError::Role(_)
            | StoreError::Rule(_)),
        ) => {
            let refused = format!("refused: {e}");
            let id = state
                .db
                .transact(ctx, move |tx| log(tx, &refused))
                .await?
                .value;
            tracing::warn!(%group, error = %e, "decision not acted on");
            return Ok(Some(id));
        }
        Err(e) => return Err(e),
    };
    state.reconcile.notify_one();
    tracing::info!(%group, mode = mode.as_str(), decision = %done, "decided and acted");
    Ok(Some(id))
}
