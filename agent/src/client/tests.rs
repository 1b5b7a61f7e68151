//! Several coordinators: the link skips one that does not answer,
//! follows a follower's redirect to the leader with its token, sticks
//! to the leader, and moves on when the leader steps down.

use super::*;
use axum::http::{HeaderMap, StatusCode as S};
use axum::response::IntoResponse;
use std::sync::atomic::AtomicU32;

/// A coordinator that answers heartbeats: as leader (checking the
/// token), or by redirecting to `leader`, or with 503 not_leader.
#[derive(Clone, Default)]
struct Fake {
    hits: Arc<AtomicU32>,
    leader: Arc<Mutex<Option<String>>>,
    stepped_down: Arc<std::sync::atomic::AtomicBool>,
}

async fn serve(f: Fake) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, h: HeaderMap| {
        let f = f.clone();
        async move {
            f.hits.fetch_add(1, Ordering::SeqCst);
            if f.stepped_down.load(Ordering::SeqCst) {
                return (
                    S::SERVICE_UNAVAILABLE,
                    r#"{"code":"not_leader","message":""}"#,
                )
                    .into_response();
            }
            let to = f.leader.lock().unwrap().clone();
            match to {
                Some(leader) => (
                    S::TEMPORARY_REDIRECT,
                    [("location", format!("{leader}{uri}"))],
                )
                    .into_response(),
                None if h.get("authorization").and_then(|v| v.to_str().ok())
                    == Some("Bearer tok") =>
                {
                    axum::Json(fake::answer(spot_common::Role::Replica, 0, 0)).into_response()
                }
                None => S::UNAUTHORIZED.into_response(),
            }
        }
    });
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

fn beat() -> HeartbeatRequest {
    HeartbeatRequest {
        instance_id: "i-1".into(),
        role: None,
        role_epoch: 0,
        highest_epoch: 0,
        healthy: true,
        health_detail: None,
        backlog: 0,
        grant: None,
    }
}

#[tokio::test]
async fn the_link_finds_the_leader_through_a_dead_coordinator_and_a_follower() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (follower, leader) = (Fake::default(), Fake::default());
    let leader_url = serve(leader.clone()).await;
    *follower.leader.lock().unwrap() = Some(leader_url.clone());
    let follower_url = serve(follower.clone()).await;
    let link = Link::new(
        &[dead, follower_url, leader_url],
        &spot_runtime::tls::ClientTls::default(),
    )
    .unwrap();
    link.heartbeat("a-1", "tok", &beat()).await.unwrap();
    link.heartbeat("a-1", "tok", &beat()).await.unwrap();
    assert_eq!(
        follower.hits.load(Ordering::SeqCst),
        1,
        "redirected once, then straight to the leader"
    );
    assert_eq!(
        leader.hits.load(Ordering::SeqCst),
        2,
        "the token went along"
    );

    // The leader steps down and the follower takes over: the link
    // moves on by itself, within the same call.
    leader.stepped_down.store(true, Ordering::SeqCst);
    *follower.leader.lock().unwrap() = None;
    link.heartbeat("a-1", "tok", &beat()).await.unwrap();
    assert_eq!(follower.hits.load(Ordering::SeqCst), 2);

    // Nobody leads: the error says so, and the caller's retry applies.
    follower.stepped_down.store(true, Ordering::SeqCst);
    let err = link.heartbeat("a-1", "tok", &beat()).await.unwrap_err();
    assert!(
        matches!(err, LinkError::Server { status: 503, .. }),
        "{err:?}"
    );
}
