//! The coordinator's optional EC2 executor: runs the commands queued for
//! nobody (agent `NULL`): fences and launches that no live agent of a
//! group can make (a lone PRIMARY lost, a group that lost every instance).
//! It uses the coordinator's own credentials, scoped by the IAM policy in
//! packaging/iam-policy-coordinator.json to instances tagged `spot:group`.
//!
//! The same discipline as an agent's: a command is marked delivered before
//! its call, a launch's ClientToken derives from its request id (a retried
//! or resumed launch never creates a second instance), a termination or
//! fence is idempotent by nature; a command taken but unfinished (a crash)
//! is taken again after `redeliver_after`. Each runs as its own task, so a
//! minute-long fence never delays a launch.
//!
//! It also takes EC2's view of a group whose transition waits for one (a
//! start or a restored store: nothing is granted before it). Its agents
//! are asked too, but a group may have none that can answer (every agent
//! cut from EC2, the only live one a ZOMBIE), and without this the grant
//! would wait for ever.

use super::Schedule;
use crate::state::AppState;
use crate::store::Ctx;
use spot_common::{Command, CommandKind, CommandOutcome, EventBody};
use spot_runtime::ec2::{self, Ec2Api, ErrorClass, LaunchSpec};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a group's EC2 view is taken while its transition waits for
/// one.
const LOOK_EVERY: Duration = Duration::from_secs(5);

fn lock(running: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    running.lock().unwrap_or_else(|p| p.into_inner())
}

/// Take EC2's view of `group` and record it as an agent's would be.
async fn look(state: &AppState, ec2: &dyn Ec2Api, group: &str) {
    let list = match ec2.group_instances(group).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%group, error = %e, "DescribeInstances for a group whose transition waits for EC2's view; again shortly");
            return;
        }
    };
    let g = group.to_owned();
    match state
        .db
        .transact(Ctx::system(crate::state::now_ms()), move |tx| {
            tx.ec2_view(&g, &list)
        })
        .await
    {
        Ok(done) => {
            tracing::info!(%group, "the coordinator took EC2's view of the group (its transition waited for one)");
            state.woke(done);
            state.reconcile.notify_one();
        }
        Err(e) => {
            tracing::warn!(%group, error = %spot_common::error_chain(&e), "recording EC2's view of a group")
        }
    }
}

/// The executor, over the coordinator's EC2 client.
pub async fn run(state: Arc<AppState>, ec2: Arc<dyn Ec2Api>) -> anyhow::Result<()> {
    tracing::info!(region = %state.config.ec2_region, "coordinator EC2 executor on");
    let mut schedule = Schedule::every(Duration::from_secs(1), &state).or_on(&state.executor_wake);
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut looked: HashMap<String, Instant> = HashMap::new();
    let redeliver = crate::state::millis(state.config.redeliver_after);
    let redeliver = i64::try_from(redeliver).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            alive = schedule.next() => if !alive {
                tasks.abort_all();
                return Ok(());
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(error = %e, "an executor command task failed");
                }
                continue;
            }
        }
        if state.view.acting() {
            let wanted = state.ec2_view_wanted.groups();
            looked.retain(|g, _| wanted.contains(g));
            for group in wanted {
                let key = format!("ec2-view:{group}");
                let due = looked
                    .get(&group)
                    .is_none_or(|at: &Instant| at.elapsed() >= LOOK_EVERY);
                if !due || !lock(&running).insert(key.clone()) {
                    continue;
                }
                looked.insert(group.clone(), Instant::now());
                let (state, ec2, running) =
                    (Arc::clone(&state), Arc::clone(&ec2), Arc::clone(&running));
                tasks.spawn(async move {
                    look(&state, ec2.as_ref(), &group).await;
                    lock(&running).remove(&key);
                });
            }
        }
        let cmds = match state
            .db
            .transact(Ctx::system(crate::state::now_ms()), move |tx| {
                tx.take_commands(None, redeliver, 16)
            })
            .await
        {
            Ok(d) => d.value,
            Err(e) => {
                tracing::warn!(error = %spot_common::error_chain(&e), "taking the executor's commands; next tick");
                continue;
            }
        };
        for cmd in cmds {
            if !lock(&running).insert(cmd.request_id.clone()) {
                continue;
            }
            let (state, ec2, running) =
                (Arc::clone(&state), Arc::clone(&ec2), Arc::clone(&running));
            tasks.spawn(async move {
                let rid = cmd.request_id.clone();
                // A leader whose lease may have run out calls nothing: the
                // command stays delivered and the next leader hands it out
                // again (launches carry their ClientToken, so a retry never
                // doubles one).
                if !state.view.acting() {
                    lock(&running).remove(&rid);
                    return;
                }
                let result = execute(&state, ec2.as_ref(), &cmd).await;
                record(&state, result).await;
                lock(&running).remove(&rid);
            });
        }
    }
}

fn result(cmd: &Command, outcome: CommandOutcome, detail: Option<String>) -> EventBody {
    EventBody::CommandResult {
        request_id: cmd.request_id.clone(),
        outcome,
        detail,
        instance_id: None,
        error_code: None,
    }
}

fn failed(cmd: &Command, e: ec2::Ec2Error) -> EventBody {
    EventBody::CommandResult {
        request_id: cmd.request_id.clone(),
        outcome: CommandOutcome::Failed,
        detail: Some(e.to_string()),
        instance_id: None,
        error_code: Some(e.code),
    }
}

async fn execute(state: &AppState, ec2: &dyn Ec2Api, cmd: &Command) -> EventBody {
    let now = crate::state::now_ms();
    match &cmd.action {
        CommandKind::Launch { .. } => {
            let Some(spec) = LaunchSpec::of(cmd) else {
                return result(
                    cmd,
                    CommandOutcome::Failed,
                    Some("not a launch command".into()),
                );
            };
            match ec2.launch(&spec).await {
                Ok(id) => {
                    tracing::warn!(group = %cmd.group, instance_id = %id, pool = %spec.pool, "the coordinator launched an instance");
                    EventBody::CommandResult {
                        request_id: cmd.request_id.clone(),
                        outcome: CommandOutcome::Done,
                        detail: None,
                        instance_id: Some(id),
                        error_code: None,
                    }
                }
                Err(e) => failed(cmd, e),
            }
        }
        CommandKind::Fence { instance_id } => {
            let within = ec2::fence_window(cmd.deadline_ms, now);
            tracing::warn!(group = %cmd.group, target_instance = %instance_id, "the coordinator fences through EC2");
            let r = ec2::fence(ec2, instance_id, within, Duration::from_secs(1)).await;
            state
                .metrics
                .fences
                .get_or_create(&crate::metrics::OutcomeLabel {
                    outcome: if r.is_ok() { "done" } else { "failed" },
                })
                .inc();
            match r {
                Ok(()) => result(
                    cmd,
                    CommandOutcome::Done,
                    Some(format!("{instance_id} terminated")),
                ),
                Err(e) => failed(cmd, e),
            }
        }
        CommandKind::Terminate { instance_id } => match ec2.terminate(instance_id).await {
            Ok(()) => result(cmd, CommandOutcome::Done, None),
            Err(e) if e.class == ErrorClass::NotFound => {
                result(cmd, CommandOutcome::Done, Some("already gone".into()))
            }
            Err(e) => failed(cmd, e),
        },
        other => result(
            cmd,
            CommandOutcome::Failed,
            Some(format!(
                "{} is an agent's command, not the coordinator's",
                other.name()
            )),
        ),
    }
}

/// Record a result as an agent's would be; the reconciler looks at once.
async fn record(state: &AppState, body: EventBody) {
    let b = body.clone();
    match state
        .db
        .transact(Ctx::system(crate::state::now_ms()), move |tx| {
            tx.command_result(None, &b)
        })
        .await
    {
        Ok(done) => {
            state.woke(done);
            state.reconcile.notify_one();
        }
        // Not recorded: the command stays delivered and is run again after
        // `redeliver_after` (idempotently).
        Err(e) => {
            tracing::error!(error = %spot_common::error_chain(&e), ?body, "recording an executor result")
        }
    }
}
