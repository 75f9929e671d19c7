//! A private PgBouncer (Debian's `pgbouncer`, installed by `scripts/install-deps.sh`) in
//! transaction mode on a free port, in front of a Postgres server; stopped on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct PgBouncer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("PGBOUNCER_BIN") {
        return p.into();
    }
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "pgbouncer".into()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgBouncer {
    /// `pool_mode = transaction` with `default_pool_size` server connections per database and
    /// user, forwarding every database name to `upstream_port` on 127.0.0.1 (trust auth).
    pub fn start(upstream_port: u16, pool_size: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "\"root\" \"\"\n\"postgres\" \"\"\n").unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 1000\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 server_lifetime = 3600\nserver_idle_timeout = 600\n",
                users.display()
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root; it switches to another user itself with -u.
        let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir.path(), perms).unwrap();
        let mut cmd = Command::new(binary());
        if nix_is_root() {
            cmd.arg("-u").arg("postgres");
        }
        let log = std::fs::File::create(dir.path().join("pgbouncer.log")).unwrap();
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("pgbouncer could not start ({e}): run scripts/install-deps.sh")
            });
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "pgbouncer did not start: {}",
                std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            port,
            dir,
        }
    }

    /// URL of database `db` through this pooler.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://root@127.0.0.1:{}/{db}", self.port)
    }

    /// The pooler's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
