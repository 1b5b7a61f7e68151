//! Task supervision: every long-running task of a binary runs under one
//! `Supervisor`. Shutdown is one `CancellationToken`; a task that ends or
//! panics before shutdown was asked for cancels the others and makes
//! `wait` return an error, so the process exits non-zero and systemd
//! restarts it (a daemon whose failover loop died must not look healthy).
//! Draining is bounded by a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
    token: CancellationToken,
}

impl Supervisor {
    pub fn new(token: CancellationToken) -> Supervisor {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            token,
        }
    }

    /// The shutdown token every task watches.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    fn describe(
        &self,
        ended: Result<(Id, anyhow::Result<()>), tokio::task::JoinError>,
    ) -> (&'static str, Option<String>) {
        match ended {
            Ok((id, Ok(()))) => (self.name(id), None),
            Ok((id, Err(e))) => (self.name(id), Some(format!("failed: {e:#}"))),
            Err(e) => (self.name(e.id()), Some(format!("panicked: {e}"))),
        }
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("task")
    }

    /// Run until `shutdown` resolves (or the token is cancelled), then
    /// cancel the token and drain within `drain`. A task that ended
    /// before that is an error, as is one failing while draining.
    pub async fn wait(
        mut self,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            // Biased: a task that returned because shutdown was asked for
            // (the token is already cancelled) is not a failure.
            biased;
            _ = self.token.cancelled() => tracing::info!("shutting down"),
            _ = shutdown => tracing::info!("shutting down"),
            Some(ended) = self.tasks.join_next_with_id() => {
                let (name, why) = self.describe(ended);
                let why = why.unwrap_or_else(|| "ended".to_owned());
                tracing::error!(task = name, "{name} {why} before shutdown; stopping");
                failure = Some(format!("{name} {why}"));
            }
        }
        self.token.cancel();
        let drained = tokio::time::timeout(drain, async {
            while let Some(ended) = self.tasks.join_next_with_id().await {
                if let (name, Some(why)) = self.describe(ended) {
                    tracing::error!(task = name, "{name} {why} while stopping");
                    failure.get_or_insert(format!("{name} {why}"));
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::error!(?drain, "tasks did not stop in time; abandoning them");
        }
        match failure {
            None => Ok(()),
            Some(f) => anyhow::bail!("{f}"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT (the shutdown a service manager asks for).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn waits(token: CancellationToken) -> anyhow::Result<()> {
        token.cancelled().await;
        Ok(())
    }

    #[tokio::test]
    async fn clean_shutdown_is_ok() {
        let mut s = Supervisor::new(CancellationToken::new());
        s.spawn("a", waits(s.token()));
        s.spawn("b", waits(s.token()));
        assert!(s.wait(async {}, Duration::from_secs(5)).await.is_ok());
    }

    #[tokio::test]
    async fn a_task_that_panics_stops_everything_with_an_error() {
        let mut s = Supervisor::new(CancellationToken::new());
        let token = s.token();
        s.spawn("steady", waits(s.token()));
        s.spawn("reconciler", async { panic!("boom") });
        let e = s
            .wait(std::future::pending(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("reconciler panicked"), "{e}");
        assert!(token.is_cancelled(), "the others were told to stop");
    }

    #[tokio::test]
    async fn a_task_that_ends_early_is_an_error_too() {
        let mut s = Supervisor::new(CancellationToken::new());
        s.spawn("steady", waits(s.token()));
        s.spawn("monitor", async { Ok(()) });
        let e = s
            .wait(std::future::pending(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("monitor ended"), "{e}");
    }

    #[tokio::test]
    async fn a_task_that_ends_because_shutdown_was_asked_is_not_a_failure() {
        let mut s = Supervisor::new(CancellationToken::new());
        let token = s.token();
        s.spawn("outbox", waits(s.token()));
        token.cancel();
        // Let the task observe the cancellation and finish first.
        tokio::task::yield_now().await;
        assert!(
            s.wait(std::future::pending(), Duration::from_secs(5))
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn draining_is_bounded() {
        let mut s = Supervisor::new(CancellationToken::new());
        s.spawn("stuck", std::future::pending());
        let t = tokio::time::Instant::now();
        assert!(s.wait(async {}, Duration::from_secs(3)).await.is_ok());
        assert!(t.elapsed() >= Duration::from_secs(3));
        assert!(t.elapsed() < Duration::from_secs(4));
    }
}
