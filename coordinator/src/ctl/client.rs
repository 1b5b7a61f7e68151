//! The HTTP side of spotctl: where the coordinator is, how to ask it,
//! and the event stream.

use super::{Cli, render};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Why spotctl failed, and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Config(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused { .. } => 1,
            CtlError::Unreachable(_) => 3,
            CtlError::Config(_) => 4,
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
    ca_bundle: Option<PathBuf>,
}

/// A client of the operator API.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    tls: spot_runtime::tls::ClientTls,
}

impl Client {
    pub fn new(
        base: &str,
        token: &str,
        tls: spot_runtime::tls::ClientTls,
    ) -> Result<Client, CtlError> {
        let http = Self::http(
            &tls,
            reqwest::Client::builder().timeout(Duration::from_secs(30)),
        )?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
            tls,
        })
    }

    fn http(
        tls: &spot_runtime::tls::ClientTls,
        b: reqwest::ClientBuilder,
    ) -> Result<reqwest::Client, CtlError> {
        tls.apply(b)
            .map_err(|e| CtlError::Config(format!("{e:#}")))?
            .build()
            .map_err(|e| CtlError::Config(format!("HTTP client: {e}")))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, CtlError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CtlError::Unreachable(format!("coordinator at {}: {e}", self.base)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| CtlError::Unreachable(format!("reading the answer: {e}")))?;
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            CtlError::Unreachable(format!(
                "the coordinator answered {status} with non-JSON: {text:.200}"
            ))
        })?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(CtlError::Refused {
                code: v["code"].as_str().unwrap_or("error").to_owned(),
                message: v["message"].as_str().unwrap_or(&text).to_owned(),
            })
        }
    }

    /// Print the event stream, one line per event, until interrupted; a
    /// stream the coordinator ends is resumed from the last event seen.
    pub async fn watch(&self, after: Option<i64>, json_out: bool) -> Result<(), CtlError> {
        use std::io::Write;
        // No overall timeout: the stream lives as long as we watch.
        let http = Self::http(
            &self.tls,
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)),
        )?;
        let mut last = after;
        let mut connected_once = false;
        loop {
            let mut req = http
                .get(format!("{}/v1/events/stream", self.base))
                .bearer_auth(&self.token);
            if let Some(id) = last {
                req = req.header("Last-Event-ID", id.to_string());
            }
            let mut resp = match req.send().await {
                Ok(r) => r,
                Err(e) if connected_once => {
                    eprintln!("spotctl: stream lost ({e}); reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    return Err(CtlError::Unreachable(format!(
                        "coordinator at {}: {e}",
                        self.base
                    )));
                }
            };
            if !resp.status().is_success() {
                let status = resp.status();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                return Err(CtlError::Refused {
                    code: v["code"].as_str().unwrap_or("error").to_owned(),
                    message: v["message"]
                        .as_str()
                        .map_or_else(|| status.to_string(), str::to_owned),
                });
            }
            connected_once = true;
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let Some((id, entry)) = sse_event(&block) else {
                        continue;
                    };
                    last = Some(id);
                    let line = if json_out {
                        entry.to_string()
                    } else {
                        render::event(&entry)
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            eprintln!("spotctl: the coordinator ended the stream; resuming");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }
}

/// Flags, else environment (clap), else the config file, else defaults.
pub(super) fn client(cli: &Cli) -> Result<Client, CtlError> {
    let path = cli.config.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/spotctl.toml"))
    });
    let file: FileConfig = match &path {
        Some(p) if p.exists() => {
            spot_runtime::config::read_toml(p).map_err(|e| CtlError::Config(format!("{e:#}")))?
        }
        Some(p) if cli.config.is_some() => {
            return Err(CtlError::Config(format!(
                "config file {} not found",
                p.display()
            )));
        }
        _ => FileConfig::default(),
    };
    let url = cli
        .url
        .clone()
        .or(file.url)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = cli.token.clone().or(file.token).ok_or_else(|| {
        CtlError::Config(
            "no token: pass --token, set SPOTCTL_TOKEN, or put token = \"...\" in ~/.config/spotctl.toml"
                .into(),
        )
    })?;
    let tls = spot_runtime::tls::ClientTls {
        ca_bundle: cli.ca_bundle.clone().or(file.ca_bundle),
        ..Default::default()
    };
    Client::new(&url, &token, tls)
}

/// One Server-Sent Event block: its id and JSON data (comments and
/// keep-alives give `None`).
fn sse_event(block: &str) -> Option<(i64, Value)> {
    let mut id = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    Some((id?, serde_json::from_str(&data).ok()?))
}
