//! `Db`: the store's async handle. One writer connection and a pool of
//! reader connections (WAL on SQLite, MVCC on PostgreSQL, lets reads
//! proceed while a write commits), each used on the blocking pool, so no
//! async worker ever waits on the database.

use super::{Ctx, Done, Result, Store, Txn, engine};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Reader connections the store keeps: a long read (a reconcile snapshot,
/// an audit page, an event stream's poll) must not make a heartbeat's or a
/// long-poll's read wait.
pub const READERS: usize = 4;

/// Async handle: one writer connection and a pool of [`READERS`] reader
/// connections (WAL lets reads proceed while a write commits), each used
/// on the blocking pool.
#[derive(Clone)]
pub struct Db {
    write: Arc<Mutex<Store>>,
    read: Arc<Readers>,
    /// On PostgreSQL with several coordinators: the term every write
    /// transaction is checked against.
    fence: Option<Arc<engine::postgres::Fence>>,
    /// Where it is, for another connection (the leader's lease).
    url: Arc<engine::StoreUrl>,
    /// Moved by the writer after each commit that wrote roles.
    roles: super::Generation,
}

/// The reader pool: a read takes the first idle connection, or waits for
/// the next in turn when all are busy.
struct Readers {
    conns: Vec<Mutex<Store>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Readers {
    fn take(&self) -> std::sync::MutexGuard<'_, Store> {
        use std::sync::atomic::Ordering;
        let n = self.conns.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(guard) = self.conns[(start + i) % n].try_lock() {
                return guard;
            }
        }
        lock(&self.conns[start % n])
    }
}

/// A poisoned lock means a panic mid-call; SQLite already rolled that
/// transaction back, so the connection is still sound.
fn lock(m: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Db {
    /// Open (creating and migrating) the SQLite store at `path`.
    pub fn open(path: &Path) -> Result<Db> {
        Self::open_url(&engine::StoreUrl::Sqlite(path.to_owned()), false)
    }

    /// Open (creating and migrating) the store at `url`. `fenced`
    /// (PostgreSQL only): every write transaction checks this process's
    /// leader term ([`Db::fence`]); until one is set, writes are refused.
    pub fn open_url(url: &engine::StoreUrl, fenced: bool) -> Result<Db> {
        let (writer, conns, fence): (Store, Vec<Mutex<Store>>, _) = match url {
            engine::StoreUrl::Sqlite(path) => {
                let writer = Store::new(engine::sqlite::Sqlite::open(path, false)?);
                let conns = (0..READERS)
                    .map(|_| {
                        Ok(Mutex::new(Store::new(engine::sqlite::Sqlite::open(
                            path, true,
                        )?)))
                    })
                    .collect::<Result<_>>()?;
                (writer, conns, None)
            }
            engine::StoreUrl::Postgres(u) => {
                use engine::postgres::{Fence, Postgres, Target};
                let target = Arc::new(Target::parse(u)?);
                let fence = fenced.then(|| Arc::new(Fence::default()));
                let writer = Store::new(Postgres::open(Arc::clone(&target), fence.clone(), true)?);
                let conns = (0..READERS)
                    .map(|_| {
                        Ok(Mutex::new(Store::new(Postgres::open(
                            Arc::clone(&target),
                            None,
                            false,
                        )?)))
                    })
                    .collect::<Result<_>>()?;
                (writer, conns, fence)
            }
        };
        let roles = writer.roles_generation();
        Ok(Db {
            roles,
            write: Arc::new(Mutex::new(writer)),
            read: Arc::new(Readers {
                conns,
                next: std::sync::atomic::AtomicUsize::new(0),
            }),
            fence,
            url: Arc::new(url.clone()),
        })
    }

    /// The stamp to take before reading a heartbeat's answer about
    /// `instance`: the answer is still the store's while the stamp is equal.
    pub fn roles_stamp(&self, instance: &str) -> super::Stamp {
        self.roles.stamp(instance)
    }

    /// The leader term writes are checked against (PostgreSQL, `fenced`).
    pub fn fence(&self) -> Option<&Arc<engine::postgres::Fence>> {
        self.fence.as_ref()
    }

    pub fn url(&self) -> &engine::StoreUrl {
        &self.url
    }

    /// A connection of its own, outside the pools and unfenced (the
    /// leader's lease: it must never queue behind the store's work).
    pub fn side_connection(&self) -> Result<Store> {
        match &*self.url {
            engine::StoreUrl::Sqlite(path) => {
                Ok(Store::new(engine::sqlite::Sqlite::open(path, false)?))
            }
            engine::StoreUrl::Postgres(u) => {
                let target = Arc::new(engine::postgres::Target::parse(u)?);
                Ok(Store::new(engine::postgres::Postgres::open(
                    target, None, false,
                )?))
            }
        }
    }

    async fn run<R, F>(store: &Arc<Mutex<Store>>, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R> + Send + 'static,
    {
        let store = Arc::clone(store);
        tokio::task::spawn_blocking(move || f(&mut lock(&store))).await?
    }

    /// Run `f` on the writer connection (it opens its own transactions).
    pub async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R> + Send + 'static,
    {
        Self::run(&self.write, f).await
    }

    /// Run `f` in one write transaction and commit it.
    pub async fn transact<R, F>(&self, ctx: Ctx, f: F) -> Result<Done<R>>
    where
        R: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<R> + Send + 'static,
    {
        self.write(move |s| s.transact(ctx, f)).await
    }

    /// Like `transact`, answering a repeated `ctx.request_id` with the
    /// first answer (see [`Store::idempotent`]).
    pub async fn idempotent<R, F>(&self, scope: &'static str, ctx: Ctx, f: F) -> Result<Done<R>>
    where
        R: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<R> + Send + 'static,
    {
        self.write(move |s| s.idempotent(scope, ctx, f)).await
    }

    /// Run `f` on the writer connection on this thread (one-off commands).
    pub fn write_now<R>(&self, f: impl FnOnce(&mut Store) -> Result<R>) -> Result<R> {
        f(&mut lock(&self.write))
    }

    /// Run `f` on the reader connection on this thread: for start-up and
    /// one-off commands, never on an async worker.
    pub fn read_now<R>(&self, f: impl FnOnce(&Store) -> Result<R>) -> Result<R> {
        f(&self.read.take())
    }

    /// Run `f` on the reader connection.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> Result<R> + Send + 'static,
    {
        let readers = Arc::clone(&self.read);
        tokio::task::spawn_blocking(move || f(&readers.take())).await?
    }
}
