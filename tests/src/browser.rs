//! Headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, installed by the test command; `fantoccini` as the
//! client), for the dashboard's browser tests and its benchmark.

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// The chromedriver to use: `SPOT_CHROMEDRIVER` (the test command sets it,
/// and then it must exist), else `/usr/bin/chromedriver`; `None` (the
/// caller skips) when that is missing too.
pub fn chromedriver() -> Option<String> {
    if let Ok(path) = std::env::var("SPOT_CHROMEDRIVER") {
        assert!(
            std::path::Path::new(&path).exists(),
            "SPOT_CHROMEDRIVER={path} does not exist (the test command installs chromium-driver)"
        );
        return Some(path);
    }
    let path = "/usr/bin/chromedriver";
    if std::path::Path::new(path).exists() {
        return Some(path.to_owned());
    }
    eprintln!("SKIPPED: no chromedriver at {path}; run the README's test command");
    None
}

impl Browser {
    /// Start chromedriver on a free loopback port and one headless Chromium
    /// session with a fresh profile.
    pub async fn start(driver_path: &str) -> Result<Browser> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = Command::new(driver_path);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd
            .spawn()
            .with_context(|| format!("starting {driver_path}"))?;
        let profile = tempfile::tempdir()?;
        let binary = std::env::var("SPOT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if start.elapsed() < Duration::from_secs(20) => {
                    tracing::debug!(error = %e, "chromedriver not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("no WebDriver session from {driver_path}: {e}"),
            }
        };
        Ok(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Run `script` in the page (its `arguments`: `args`); its return value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        Ok(self.client.execute(script, args).await?)
    }

    /// Open `url`, then wait until `script` returns something truthy there
    /// (`until`); that value.
    pub async fn open_until(
        &self,
        url: &str,
        what: &str,
        timeout: Duration,
        script: &str,
    ) -> Result<Value> {
        self.client.goto(url).await?;
        self.until(what, timeout, script).await
    }

    /// Wait until `script` returns something truthy; that value.
    pub async fn until(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        let start = Instant::now();
        loop {
            let v = self.js(script, vec![]).await?;
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Log in on the dashboard at `base` with `token`.
    pub async fn login(&self, base: &str, token: &str) -> Result<()> {
        self.client.goto(&format!("{base}/ui")).await?;
        let input = self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#token"))
            .await?;
        // A previous session's page may still be up: log out first.
        if !input.is_displayed().await? {
            self.client
                .find(Locator::Css("#logout"))
                .await?
                .click()
                .await?;
            self.until(
                "the login form",
                Duration::from_secs(5),
                "return !document.querySelector('#login').hidden",
            )
            .await?;
        }
        input.send_keys(token).await?;
        self.client
            .find(Locator::Css("#login button"))
            .await?
            .click()
            .await?;
        self.until(
            "the dashboard after login",
            Duration::from_secs(10),
            "return document.body.dataset.role || ''",
        )
        .await?;
        Ok(())
    }

    pub async fn close(mut self) -> Result<()> {
        let r = self.client.clone().close().await;
        self.stop_driver();
        Ok(r?)
    }

    fn stop_driver(&mut self) {
        // chromedriver and the Chromium it started share its process group.
        if let Ok(pid) = i32::try_from(self.driver.id()) {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .status();
            let _ = self.driver.kill();
        }
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop_driver();
    }
}
