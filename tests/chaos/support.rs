//! Real daemon processes, a private Postgres cluster, a private Redis: things the chaos tests
//! may kill without touching the shared services.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `chainsync daemon` child process, killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub http_port: u16,
    log: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, name: &str, config: &str) -> Self {
        Self::start_env(dir, name, config, &[])
    }

    /// [`Daemon::start`] with extra environment variables (e.g. `CHAINSYNC_HTTP__ADMIN_TOKEN`).
    pub fn start_env(dir: &Path, name: &str, config: &str, env: &[(&str, &str)]) -> Self {
        let http_port = free_port();
        let path = dir.join(format!("{name}.toml"));
        let listen = format!("listen = \"127.0.0.1:{http_port}\"\n");
        // Into the config's own [http] table when it has one.
        let text = match config.find("[http]\n") {
            Some(i) => format!("{}{listen}{}", &config[..i + 7], &config[i + 7..]),
            None => format!("{config}\n[http]\n{listen}"),
        };
        std::fs::write(&path, text).unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chainsync"))
            .arg("--config")
            .arg(&path)
            .arg("daemon")
            .env("RUST_LOG", "warn")
            // The config file names the database; an inherited DATABASE_URL would override it.
            .env_remove("DATABASE_URL")
            .envs(env.iter().copied())
            // The daemon logs (JSON) to stdout, panics go to stderr: both into the log.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            http_port,
            log: log_path,
        }
    }

    /// Panics with the tail of the daemon's log if it has exited: a test waiting on a queue to
    /// drain should fail at once, not time out, when the daemons are gone.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "daemon {} exited ({status}):\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A throwaway Postgres cluster owned by the `postgres` user (the server refuses to run as root).
pub struct PrivatePg {
    dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    /// `-c name=value` server settings given at each start.
    settings: String,
}

fn pg_bin() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions.pop().unwrap().join("bin")
}

fn as_postgres(args: &[&str]) -> bool {
    Command::new("runuser")
        .arg("-u")
        .arg("postgres")
        .arg("--")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn private_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "chainsync-pg-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(
        Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .unwrap()
            .success()
    );
    dir
}

fn settings_text(settings: &[(&str, &str)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!(" -c {k}={v}"))
        .collect()
}

impl PrivatePg {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A new cluster started with these server settings (`-c name=value`).
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        let dir = private_dir();
        let bin = pg_bin();
        let data = dir.join("data");
        assert!(
            as_postgres(&[
                bin.join("initdb").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "root"
            ]),
            "initdb failed"
        );
        let pg = Self {
            dir,
            port: free_port(),
            bin,
            settings: settings_text(settings),
        };
        pg.up();
        pg
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), started on a port of its own.
    pub fn replica_of(primary: &PrivatePg, settings: &[(&str, &str)]) -> Self {
        let dir = private_dir();
        let bin = pg_bin();
        let data = dir.join("data");
        assert!(
            as_postgres(&[
                bin.join("pg_basebackup").to_str().unwrap(),
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "root",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ]),
            "pg_basebackup failed"
        );
        let pg = Self {
            dir,
            port: free_port(),
            bin,
            settings: settings_text(settings),
        };
        pg.up();
        pg
    }

    /// Promotes this standby to a primary and waits until it accepts writes.
    pub fn promote(&self) {
        let data = self.dir.join("data");
        assert!(
            as_postgres(&[
                self.bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-w",
                "promote",
            ]),
            "pg_ctl promote failed"
        );
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`: no shutdown
    /// checkpoint, nothing more sent to standbys).
    pub fn crash(&self) {
        let data = self.dir.join("data");
        as_postgres(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://root@127.0.0.1:{}/{db}", self.port)
    }

    pub fn up(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200{}",
            self.port,
            self.dir.display(),
            self.settings
        );
        assert!(
            as_postgres(&[
                self.bin.join("pg_ctl").to_str().unwrap(),
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                self.dir.join("log").to_str().unwrap(),
                "-w",
                "start"
            ]),
            "pg_ctl start failed"
        );
    }

    pub fn down(&self) {
        let data = self.dir.join("data");
        as_postgres(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "stop",
        ]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private redis-server on a free port, killed on drop.
pub struct PrivateRedis {
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child: Some(child) }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
