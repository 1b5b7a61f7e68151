//! Group commit on the store's side: many requests in one transaction,
//! each under its own context (`state::group_commit` gathers them).

use super::{Ctx, Done, Result, Store, StoreError, Txn};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The work of one request in a group commit: `Fn`, as it runs again
/// alone when its batch fails.
pub type Work<T> = Box<dyn Fn(&mut Txn<'_>) -> Result<T> + Send>;

/// One request of a group commit ([`Store::transact_many`]).
pub struct Request<T> {
    pub ctx: Ctx,
    /// Idempotent under `ctx.request_id` in this scope (see
    /// [`Store::idempotent`]).
    pub scope: Option<&'static str>,
    pub work: Work<T>,
}

impl Store {
    /// Many requests in one transaction, one commit (a group commit), each
    /// under its own context (its actor in the audit, its request id). If
    /// any fails the batch rolls back and each runs again alone, so one
    /// request's refusal costs the others nothing. Answers keep the order.
    pub fn transact_many<T>(&mut self, requests: &[Request<T>]) -> Vec<Result<Done<T>>>
    where
        T: Serialize + DeserializeOwned,
    {
        if let [first, _, ..] = requests {
            let batch = (|| {
                let mut tx = self.begin(first.ctx.clone())?;
                let mut values = Vec::with_capacity(requests.len());
                for r in requests {
                    tx.ctx = r.ctx.clone();
                    values.push(tx.run(r)?);
                }
                Ok::<_, StoreError>((values, tx.commit()?))
            })();
            if let Ok((values, wake)) = batch {
                return values
                    .into_iter()
                    .map(|value| {
                        Ok(Done {
                            value,
                            wake: wake.clone(),
                        })
                    })
                    .collect();
            }
        }
        requests
            .iter()
            .map(|r| {
                let mut tx = self.begin(r.ctx.clone())?;
                let value = tx.run(r)?;
                let wake = tx.commit()?;
                Ok(Done { value, wake })
            })
            .collect()
    }
}

/// What a transaction that wrote `groups` leaves behind (tests).
#[cfg(test)]
pub fn generation_touched_all() -> super::generation::Touched {
    super::generation::Touched {
        all: true,
        instances: Vec::new(),
    }
}
