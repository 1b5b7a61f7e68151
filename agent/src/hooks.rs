//! Hooks and health checks: operator-provided executables, each with a
//! timeout; output captured (bounded) for the journal.
//!
//! A hook is `<hooks_dir>/<name>` (`promote`, `demote`). A missing hook is
//! not an error (nothing to run); one that is not executable, fails or
//! times out is. Hooks get `SPOT_REQUEST_ID`, `SPOT_GROUP`, `SPOT_EPOCH`,
//! `SPOT_ROLE` and `SPOT_DATA_VOLUMES` (`/dev/sdf=vol-...,...`: the data
//! volumes attached before a promote hook, to mount), run without a
//! shell, and are killed on timeout.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Output kept per stream.
pub const MAX_OUTPUT: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    pub ran: bool,
    pub success: bool,
    pub output: String,
}

#[derive(Debug, Clone)]
pub struct HookEnv<'a> {
    pub request_id: &'a str,
    pub group: &'a str,
    pub epoch: u64,
    pub role: &'a str,
    /// `device=volume,...`: the data volumes attached for the promote hook
    /// (empty when the group has none).
    pub data_volumes: &'a str,
}

async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            // Keep reading past the cap so the child never blocks on a full pipe.
            Ok(n) if buf.len() < MAX_OUTPUT => {
                let take = n.min(MAX_OUTPUT - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            Ok(_) => {}
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Run `argv` with `env`, killing it (and its process group) after
/// `timeout` or as soon as `cancel` resolves (with the reason it gives).
pub async fn run_command(
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
    cancel: impl Future<Output = String>,
) -> HookRun {
    let Some((prog, args)) = argv.split_first() else {
        return HookRun {
            ran: false,
            success: false,
            output: "empty command".into(),
        };
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout kills the hook's children too
        // (a shell hook's `sleep` would otherwise hold the pipes open).
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return HookRun {
                ran: false,
                success: false,
                output: format!("cannot start {prog}: {e}"),
            };
        }
    };
    let out = child.stdout.take().map(|s| tokio::spawn(read_bounded(s)));
    let err = child.stderr.take().map(|s| tokio::spawn(read_bounded(s)));
    let stopped = tokio::select! {
        status = tokio::time::timeout(timeout, child.wait()) => match status {
            Ok(Ok(st)) => Ok((st.success(), format!("exit: {st}"))),
            Ok(Err(e)) => Ok((false, format!("wait failed: {e}"))),
            Err(_) => Err(format!("timed out after {timeout:?}, killed")),
        },
        why = cancel => Err(format!("cancelled ({why}), killed")),
    };
    let (success, note) = match stopped {
        Ok(done) => done,
        Err(note) => {
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .arg("-KILL")
                    .arg("--")
                    .arg(format!("-{pid}"))
                    .status()
                    .await;
            }
            let _ = child.kill().await;
            (false, note)
        }
    };
    // A daemonised grandchild may still hold the pipes: do not wait for it.
    let collect = |h: Option<tokio::task::JoinHandle<String>>| async move {
        match h {
            Some(h) => tokio::time::timeout(Duration::from_secs(2), h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        }
    };
    let mut output = collect(out).await;
    {
        let e = collect(err).await;
        if !e.is_empty() {
            output.push_str("\n[stderr]\n");
            output.push_str(&e);
        }
    }
    output.push_str(&format!("\n[{note}]"));
    HookRun {
        ran: true,
        success,
        output,
    }
}

/// Run the named hook if it exists; `cancel` as for `run_command`.
pub async fn run_hook(
    dir: &Path,
    name: &str,
    env: &HookEnv<'_>,
    timeout: Duration,
    cancel: impl Future<Output = String>,
) -> HookRun {
    let path = dir.join(name);
    if !path.exists() {
        return HookRun {
            ran: false,
            success: true,
            output: format!("no {name} hook at {}", path.display()),
        };
    }
    let vars = [
        ("SPOT_REQUEST_ID", env.request_id.to_owned()),
        ("SPOT_GROUP", env.group.to_owned()),
        ("SPOT_EPOCH", env.epoch.to_string()),
        ("SPOT_ROLE", env.role.to_owned()),
        ("SPOT_DATA_VOLUMES", env.data_volumes.to_owned()),
    ];
    run_command(&[path.display().to_string()], &vars, timeout, cancel).await
}

/// How the agent decides its workload is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    None,
    Http {
        url: String,
        timeout: Duration,
    },
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

impl HealthCheck {
    /// Healthy or not, with a reason when not.
    pub async fn check(&self, http: &reqwest::Client) -> (bool, Option<String>) {
        match self {
            HealthCheck::None => (true, None),
            HealthCheck::Http { url, timeout } => {
                match http.get(url).timeout(*timeout).send().await {
                    Ok(r) if r.status().is_success() => (true, None),
                    Ok(r) => (false, Some(format!("GET {url}: {}", r.status()))),
                    Err(e) => (false, Some(format!("GET {url}: {e}"))),
                }
            }
            HealthCheck::Command { argv, timeout } => {
                let r = run_command(argv, &[], *timeout, std::future::pending()).await;
                if r.success {
                    (true, None)
                } else {
                    (false, Some(r.output))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn script(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Run hook `name` of `dir` with the test environment, never cancelled.
    async fn run(dir: &Path, name: &str, timeout: Duration) -> HookRun {
        run_hook(dir, name, &env(), timeout, pending()).await
    }

    fn env() -> HookEnv<'static> {
        HookEnv {
            request_id: "r-1",
            group: "db",
            epoch: 7,
            role: "primary",
            data_volumes: "",
        }
    }

    #[tokio::test]
    async fn hook_gets_its_environment_and_output_is_captured() {
        let d = tempfile::tempdir().unwrap();
        let body = "echo $SPOT_REQUEST_ID $SPOT_GROUP $SPOT_EPOCH $SPOT_ROLE; echo oops >&2";
        script(d.path(), "promote", body);
        let r = run(d.path(), "promote", Duration::from_secs(5)).await;
        assert!(r.ran && r.success, "{r:?}");
        assert!(r.output.contains("r-1 db 7 primary"), "{}", r.output);
        assert!(r.output.contains("[stderr]\noops"));
    }

    #[tokio::test]
    async fn missing_hook_is_fine_failing_or_slow_hook_is_not() {
        let d = tempfile::tempdir().unwrap();
        let r = run(d.path(), "demote", Duration::from_secs(1)).await;
        assert!(!r.ran && r.success);
        script(d.path(), "demote", "exit 3");
        assert!(
            !run(d.path(), "demote", Duration::from_secs(5))
                .await
                .success
        );
        script(d.path(), "promote", "sleep 30");
        let t = std::time::Instant::now();
        let r = run(d.path(), "promote", Duration::from_millis(300)).await;
        assert!(!r.success && r.output.contains("timed out"));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_cancelled_hook_is_killed_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("child-alive");
        script(
            d.path(),
            "promote",
            &format!("(sleep 2; touch {}) &\nsleep 30", marker.display()),
        );
        let t = std::time::Instant::now();
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "epoch 9 accepted".to_owned()
        };
        let r = run_hook(d.path(), "promote", &env(), Duration::from_secs(60), cancel).await;
        assert!(
            !r.success && r.output.contains("cancelled (epoch 9 accepted)"),
            "{r:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!marker.exists(), "the hook's child was killed too");
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let body = "head -c 1000000 /dev/zero | tr '\\0' x";
        script(d.path(), "promote", body);
        let r = run(d.path(), "promote", Duration::from_secs(10)).await;
        assert!(r.success);
        assert!(r.output.len() < MAX_OUTPUT + 200, "{}", r.output.len());
    }

    #[tokio::test]
    async fn command_health_check() {
        let http = reqwest::Client::new();
        let ok = HealthCheck::Command {
            argv: vec!["true".into()],
            timeout: Duration::from_secs(2),
        };
        assert!(ok.check(&http).await.0);
        let bad = HealthCheck::Command {
            argv: vec!["false".into()],
            timeout: Duration::from_secs(2),
        };
        assert!(!bad.check(&http).await.0);
        let down = HealthCheck::Http {
            url: "http://127.0.0.1:9/".into(),
            timeout: Duration::from_millis(500),
        };
        assert!(!down.check(&http).await.0);
    }
}
