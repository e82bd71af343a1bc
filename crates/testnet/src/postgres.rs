//! A throw-away PostgreSQL cluster for tests: Debian's `postgresql` package, a fresh cluster in
//! a temporary directory made by `initdb` and run by `pg_ctl`, no system service touched.
//!
//! `initdb` refuses to run as root, so the cluster belongs to the `postgres` user the package
//! creates and every server program runs as that user (`runuser`). The server listens on a
//! unix socket in the directory and on one loopback port, nowhere else. On drop it is stopped
//! (`pg_ctl stop -m immediate`), its postmaster killed by PID if it is still there, and the
//! directory removed.
//!
//! Missing binaries or user are a failure with a message, never a skip: CI installs the package
//! (.ci/install-deps).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The role and database the cluster is made with.
pub const USER: &str = "chainboot";
/// The role's password (password authentication is required on the TCP port).
pub const PASSWORD: &str = "throwaway-test-password";

/// A running (or stopped, see [`PgCluster::stop`]) throw-away cluster.
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Extra server options (TLS).
    options: String,
}

/// The newest `/usr/lib/postgresql/N/bin` holding `initdb` and `pg_ctl`.
fn find_bin_dir() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
             install Debian's `postgresql` package (.ci/install-deps)"
        ),
    }
}

fn free_loopback_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

/// Runs a PostgreSQL program as the `postgres` user; panics with its output on failure.
fn run_as_postgres(program: &Path, args: &[&str]) -> String {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("runuser {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chown_postgres(path: &Path) {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("the `postgres` user is missing: install Debian's `postgresql` package");
    nix::unistd::chown(path, Some(user.uid), Some(user.gid)).expect("chown to postgres");
}

impl PgCluster {
    /// Makes and starts a cluster with role and database [`USER`] (password [`PASSWORD`]).
    pub fn start() -> PgCluster {
        PgCluster::start_with(None)
    }

    /// The same, with TLS on the loopback port: the server presents `cert_pem` (with its key
    /// `key_pem`).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> PgCluster {
        PgCluster::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> PgCluster {
        crate::require(&["runuser"]);
        let bin = find_bin_dir();
        let dir =
            std::env::temp_dir().join(format!("chainboot-pg-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir(&dir).expect("create the cluster directory");
        chown_postgres(&dir);
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).expect("write pwfile");
        chown_postgres(&pwfile);
        let data = dir.join("data");
        run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                path_str(&data),
                "-U",
                USER,
                "--pwfile",
                path_str(&pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let p = dir.join(name);
                std::fs::write(&p, pem).expect("write TLS file");
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod TLS file");
                chown_postgres(&p);
            }
            options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                path_str(&dir.join("server.crt")),
                path_str(&dir.join("server.key"))
            );
        }
        let cluster = PgCluster {
            bin,
            dir,
            port: free_loopback_port(),
            options,
        };
        cluster.start_server();
        cluster.psql("postgres", &format!("CREATE DATABASE {USER}"));
        cluster
    }

    fn start_server(&self) {
        let opts = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c max_connections=200{}",
            path_str(&self.dir),
            self.port,
            self.options
        );
        run_as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                path_str(&self.data()),
                "-l",
                path_str(&self.dir.join("log")),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for the loopback port (the password is not in it: see [`PgCluster::password_file`]).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{USER}", self.port)
    }

    /// A file holding [`PASSWORD`], mode 0600, under the cluster's directory.
    pub fn password_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.join("client-password");
        // Tests sharing a cluster call this concurrently while others read the file: write a
        // new file and rename it over, so a reader never sees it empty or half written.
        let tmp = self.dir.join(format!(
            "client-password.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&tmp, format!("{PASSWORD}\n")).expect("write password file");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::rename(&tmp, &p).expect("rename password file");
        p
    }

    /// Runs SQL through `psql` on the unix socket as [`USER`]; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        run_as_postgres(
            &self.bin.join("psql"),
            &[
                "-h",
                path_str(&self.dir),
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
        )
    }

    /// A connection string through the cluster's unix socket: it reaches the cluster from any
    /// network namespace (the socket is a file), where the loopback port does not.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user={USER} dbname={db}",
            path_str(&self.dir),
            self.port
        )
    }

    /// A fresh, empty database in this cluster (tests sharing a cluster stay apart); its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("t{}", next_id());
        self.psql(USER, &format!("CREATE DATABASE {name}"));
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// The postmaster's PID, from `postmaster.pid`, while it runs.
    pub fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stops the server at once (no checkpoint: as a crash would), keeping the cluster.
    pub fn stop(&self) {
        run_as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                path_str(&self.data()),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the server again after [`PgCluster::stop`], on the same port.
    pub fn restart(&self) {
        self.start_server();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let stopped = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args([
                    "-D",
                    path_str(&self.data()),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            if !stopped {
                // A wedged server: the postmaster dies by its PID, and its children follow it.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn next_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
