//! Group commit of the agent API's storms. An instance's registration and
//! its first healthy beat (LAUNCHING -> REPLICA) are durable writes; a
//! fleet that starts at once sends thousands of each within seconds, and
//! one transaction (one fsync) apiece queues them behind each other until
//! the coordinator sheds. Here the requests that arrive while a commit
//! runs wait for the next one, which carries all of them
//! (`Store::transact_many`): what each writes, and its audit entry under
//! its own agent, stay the same; only the commits are shared.

use crate::store::{Db, Done, Request, Result, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Requests waiting for a commit, and whether one is being made.
pub struct GroupCommit<T> {
    inner: Arc<Mutex<Queue<T>>>,
}

impl<T> Default for GroupCommit<T> {
    fn default() -> Self {
        GroupCommit {
            inner: Arc::new(Mutex::new(Queue {
                waiting: Vec::new(),
                flushing: false,
            })),
        }
    }
}

type Waiting<T> = (Request<T>, oneshot::Sender<Result<Done<T>>>);

struct Queue<T> {
    waiting: Vec<Waiting<T>>,
    flushing: bool,
}

/// The most requests one transaction carries.
const BATCH: usize = 512;

impl<T> GroupCommit<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// Commit `request`, with whichever others wait.
    pub async fn submit(&self, db: &Db, request: Request<T>) -> Result<Done<T>> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = lock(&self.inner);
            q.waiting.push((request, tx));
            !std::mem::replace(&mut q.flushing, true)
        };
        if start {
            // Its own task: a request dropped by its client must not
            // strand the ones queued behind it.
            tokio::spawn(flush(Arc::clone(&self.inner), db.clone()));
        }
        rx.await
            .map_err(|_| StoreError::InProgress("the group commit was abandoned".into()))?
    }
}

async fn flush<T>(inner: Arc<Mutex<Queue<T>>>, db: Db)
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    loop {
        let (requests, answers): (Vec<_>, Vec<_>) = {
            let mut q = lock(&inner);
            if q.waiting.is_empty() {
                q.flushing = false;
                return;
            }
            let n = q.waiting.len().min(BATCH);
            q.waiting.drain(..n).unzip()
        };
        match db.write(move |s| Ok(s.transact_many(&requests))).await {
            Ok(done) => {
                for (tx, d) in answers.into_iter().zip(done) {
                    let _ = tx.send(d);
                }
            }
            // The senders drop: each waiter answers an error.
            Err(e) => tracing::warn!(error = %e, "group commit failed"),
        }
    }
}

fn lock<T>(m: &Mutex<Queue<T>>) -> std::sync::MutexGuard<'_, Queue<T>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
