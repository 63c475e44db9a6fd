//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` in a temporary directory,
//! a server on a free loopback port, removed when dropped (or when the process exits).
//!
//! The server binaries are looked up in `COFFER_PG_BIN`, then in the newest
//! `/usr/lib/postgresql/<version>/bin`. As root, the cluster runs as the `postgres` user,
//! since `initdb` refuses to run as root.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as_postgres: bool,
    stopped: Mutex<bool>,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Real fsync (benchmarks, crash tests) or none (fast functional tests).
    pub durable: bool,
    /// More server settings (`name=value`), after the harness's own, so they override them.
    pub settings: Vec<String>,
}

fn find_bin() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("COFFER_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
        return Err(format!("COFFER_PG_BIN={} has no initdb", dir.display()));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|_| missing())?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(missing)
}

fn missing() -> String {
    "PostgreSQL server binaries not found: install the postgresql package (Debian keeps them in \
     /usr/lib/postgresql/<version>/bin) or set COFFER_PG_BIN to the directory holding initdb"
        .to_string()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    pub fn start(options: Options) -> Result<Cluster, String> {
        let bin = find_bin()?;
        // SAFETY: geteuid has no preconditions.
        let run_as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(format!(
            "coffer-pg-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cluster = Cluster {
            dir,
            bin,
            port: free_port(),
            run_as_postgres,
            stopped: Mutex::new(false),
        };
        if run_as_postgres {
            let (uid, gid) = postgres_ids()?;
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot hand {} to postgres: {e}", cluster.dir.display()))?;
        }
        let data = cluster.dir.join("data");
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "coffer",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )?;
        let fsync = if options.durable { "on" } else { "off" };
        let server_options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c synchronous_commit={fsync} \
             -c full_page_writes={fsync} -c max_connections=200 -c shared_buffers=128MB{}",
            cluster.port,
            cluster.dir.display(),
            options
                .settings
                .iter()
                .map(|setting| format!(" -c {setting}"))
                .collect::<String>()
        );
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &cluster.dir.join("server.log").to_string_lossy(),
                "-o",
                &server_options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let mut command = if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .map_err(|e| format!("cannot run {tool}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(())
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("PostgreSQL did not start within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of a database of this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://coffer@127.0.0.1:{}/{database}", self.port)
    }

    /// URL of a database of this cluster through its Unix socket (in the cluster's directory):
    /// no TCP stack on either side, as for a Coffer beside its database.
    pub fn socket_url(&self, database: &str) -> String {
        let dir = self.dir.to_string_lossy();
        let dir = percent_encoding::utf8_percent_encode(&dir, percent_encoding::NON_ALPHANUMERIC);
        format!("postgres://coffer@{dir}:{}/{database}", self.port)
    }

    /// Creates a fresh database and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| format!("cannot connect to the test cluster: {e}"))?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .map_err(|e| format!("CREATE DATABASE: {e}"))?;
        Ok(self.url(name))
    }

    /// A database with a unique name.
    pub fn fresh_database(&self) -> Result<String, String> {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        self.create_database(&name)
    }

    pub fn stop(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
        *stopped = true;
        let data = self.dir.join("data");
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn postgres_ids() -> Result<(u32, u32), String> {
    let output = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .map_err(|e| e.to_string())?;
    let uid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse::<u32>()
        .map_err(|_| "no postgres user".to_string())?;
    let output = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .map_err(|e| e.to_string())?;
    let gid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse::<u32>()
        .map_err(|_| "no postgres group".to_string())?;
    Ok((uid, gid))
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(Ok(cluster)) = SHARED.get() {
        cluster.stop();
    }
}

/// One cluster per test process, stopped and removed when the process exits.
pub fn shared() -> &'static Cluster {
    let cluster = SHARED.get_or_init(|| {
        let cluster = Cluster::start(Options::default());
        if cluster.is_ok() {
            // SAFETY: registering a plain extern "C" function without arguments.
            unsafe { libc::atexit(stop_shared) };
        }
        cluster
    });
    match cluster {
        Ok(cluster) => cluster,
        Err(message) => panic!("cannot start the test PostgreSQL cluster: {message}"),
    }
}
