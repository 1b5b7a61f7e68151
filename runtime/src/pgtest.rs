//! A real PostgreSQL server for tests and simulations: `initdb` and
//! `postgres` in a temporary directory, listening on a loopback port
//! only, run as the `postgres` user when we are root (PostgreSQL refuses
//! to run as root).
//!
//! [`shared`] is one server per test process: the one the test command
//! started (`SPOT_TEST_POSTGRES_URL`), else one started here on first use
//! that stops with the process (its wrapper watches our pid). Each test
//! takes a database of its own from it ([`PgServer::fresh_database`]).
//! [`PgServer::start`] is a server owned by its caller, stopped on drop,
//! which a simulation may restart (a nemesis fault).
//!
//! The server programs come from `SPOT_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A running PostgreSQL server on 127.0.0.1.
pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// Owned by its caller (stopped on drop) or the process-wide one.
    owned: bool,
    _tmp: Option<tempfile::TempDir>,
}

/// The server programs' directory.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SPOT_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(d) = found.pop() {
        return Ok(d);
    }
    let which = Command::new("sh")
        .args(["-c", "command -v postgres"])
        .output()?;
    let p = String::from_utf8_lossy(&which.stdout).trim().to_owned();
    if let Some(d) = Path::new(&p).parent().filter(|_| !p.is_empty()) {
        return Ok(d.to_owned());
    }
    bail!(
        "no PostgreSQL server programs found (install postgresql-15, or set SPOT_PG_BIN to the \
         directory holding initdb and postgres)"
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// uid and gid of the `postgres` user.
fn postgres_user() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let o = Command::new("id").args([flag, "postgres"]).output()?;
        if !o.status.success() {
            bail!("running as root needs a `postgres` user to run the server as");
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// A command that runs as `postgres` when we are root.
fn as_server_user(program: &Path) -> Result<Command> {
    let mut c = Command::new(program);
    if is_root() {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = postgres_user()?;
        c.uid(uid).gid(gid);
    }
    Ok(c)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgServer {
    /// A new server in a new temporary directory, stopped on drop.
    pub fn start() -> Result<PgServer> {
        let tmp = tempfile::Builder::new().prefix("spot-pg-").tempdir()?;
        let mut s = Self::start_in(tmp.path(), None)?;
        s._tmp = Some(tmp);
        s.owned = true;
        Ok(s)
    }

    /// initdb in `dir` (world-traversable, for the server user), then
    /// start. With `watch_pid`, the server stops when that process ends.
    fn start_in(dir: &Path, watch_pid: Option<u32>) -> Result<PgServer> {
        use std::os::unix::fs::PermissionsExt;
        let bin = bin_dir()?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
        let data = dir.join("data");
        let out = as_server_user(&bin.join("initdb"))?
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut s = PgServer {
            port: 0,
            dir: dir.to_owned(),
            bin,
            child: None,
            owned: false,
            _tmp: None,
        };
        s.launch(watch_pid)?;
        Ok(s)
    }

    /// Start the server on a free port (retried: the port may be taken
    /// between our probe and its bind).
    fn launch(&mut self, watch_pid: Option<u32>) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            let port = if self.port == 0 {
                free_port()?
            } else {
                self.port
            };
            match self.launch_on(port, watch_pid) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    fn launch_on(&mut self, port: u16, watch_pid: Option<u32>) -> Result<()> {
        let data = self.dir.join("data");
        let postgres = self.bin.join("postgres");
        // Durability is not under test here; speed is.
        let args = format!(
            "-D {} -k {} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            data.display(),
            self.dir.display()
        );
        let log = std::fs::File::create(self.dir.join("postgres.log"))?;
        let child = match watch_pid {
            // The server outlives nothing: its wrapper stops it (fast
            // shutdown) once the watched process is gone.
            Some(pid) => as_server_user(Path::new("/bin/sh"))?
                .arg("-c")
                .arg(format!(
                    "{} {args} & p=$!; while [ -d /proc/{pid} ] && kill -0 $p 2>/dev/null; do sleep 1; done; \
                     kill -INT $p 2>/dev/null; wait $p; rm -rf {}/data",
                    postgres.display(),
                    self.dir.display()
                ))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
            None => as_server_user(&postgres)?
                .args(args.split(' '))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        };
        self.child = Some(child);
        self.port = port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                bail!(
                    "postgres exited ({st}): {}",
                    std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("postgres did not answer within 30 s")
    }

    /// Run `sql` through psql as the superuser; its output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database; its URL.
    pub fn fresh_database(&self) -> Result<String> {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Stop the server the fast way (clients disconnected, no checkpoint
    /// wait); data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop and start again on the same port: every client connection is
    /// cut, the data stays (a database failover or a restart).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch(None)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.owned {
            self.stop();
        }
    }
}

/// The server of this test process: `SPOT_TEST_POSTGRES_URL` (a server
/// the test command started), else one started now that stops when this
/// process ends.
pub fn shared() -> Result<&'static Shared> {
    static SHARED: OnceLock<std::result::Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| Shared::open().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A server many tests share: they each create a database on it.
pub enum Shared {
    /// Started by the test command: its superuser URL.
    External(String),
    Own(PgServer),
}

impl Shared {
    fn open() -> Result<Shared> {
        if let Ok(url) = std::env::var("SPOT_TEST_POSTGRES_URL") {
            return Ok(Shared::External(url));
        }
        // Under the system's temp dir, which the server user can reach.
        let dir = tempfile::Builder::new()
            .prefix("spot-pg-shared-")
            .tempdir()?
            .keep();
        Ok(Shared::Own(PgServer::start_in(
            &dir,
            Some(std::process::id()),
        )?))
    }

    /// A new, empty database; its URL.
    pub fn fresh_database(&self) -> Result<String> {
        match self {
            Shared::Own(s) => s.fresh_database(),
            Shared::External(url) => {
                let name = format!("t_{}_{}", std::process::id(), rand::random::<u64>());
                let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
                let psql = bin_dir().map_or_else(|_| PathBuf::from("psql"), |d| d.join("psql"));
                let out = Command::new(psql)
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c"])
                    .arg(format!("CREATE DATABASE {name}"))
                    .output()
                    .context("running psql")?;
                if !out.status.success() {
                    bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
                Ok(format!("{base}/{name}"))
            }
        }
    }
}
