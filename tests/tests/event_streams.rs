#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `/v1/events/stream` against the real coordinator: every open stream
//! follows one feed and sees each change once, a resumed stream misses
//! nothing, and a token past its cap of open streams gets a clear 429.

use reqwest::StatusCode;
use serde_json::json;
use spot_tests::harness::{Coordinator, eventually};
use std::time::Duration;

/// The next `n` events' `event:` names, in order.
async fn events(resp: &mut reqwest::Response, n: usize) -> Vec<String> {
    let mut buf = String::new();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while out.len() < n {
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let Some(name) = block.lines().find_map(|l| l.strip_prefix("event: ")) {
                    out.push(name.to_owned());
                }
            }
            if out.len() >= n {
                break;
            }
            let chunk = resp.chunk().await.unwrap().expect("the stream ended");
            buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {out:?} within 10 s"));
    out.truncate(n);
    out
}

async fn open(c: &Coordinator, query: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/v1/events/stream{query}", c.base))
        .bearer_auth(&c.admin_token)
        .send()
        .await
        .unwrap()
}

async fn create(c: &Coordinator, name: &str) {
    let (st, v) = c
        .api()
        .post(
            "/v1/groups",
            &c.admin_token,
            &json!({"name": name, "config": {"paused": true}}),
        )
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_sees_each_change_once_and_a_token_has_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(dir.path(), &[]).unwrap();
    create(&c, "before").await;

    let mut live = open(&c, "").await;
    let mut resumed = open(&c, "?after=0").await;
    assert_eq!(live.status(), 200);
    create(&c, "after").await;
    // The live stream starts with what happens next; the resumed one
    // replays the store first, then follows the feed without a repeat.
    assert_eq!(events(&mut live, 1).await, ["create"]);
    assert_eq!(events(&mut resumed, 2).await, ["create", "create"]);
    create(&c, "third").await;
    assert_eq!(events(&mut live, 1).await, ["create"]);
    assert_eq!(events(&mut resumed, 1).await, ["create"]);

    // 32 open streams per token; the next is refused until one closes.
    let mut held = vec![live, resumed];
    while held.len() < spot_coordinator::state::STREAMS_PER_TOKEN {
        let r = open(&c, "").await;
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let refused = open(&c, "").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "too_many_streams", "{body}");
    held.pop();
    eventually(
        "a closed stream frees its slot",
        Duration::from_secs(10),
        || async {
            let r = open(&c, "").await;
            (r.status() == 200).then_some(())
        },
    )
    .await
    .unwrap();
}
