//! Finding, spawning and reaping the `anvil` process.
//!
//! The child is a plain `std::process::Child`: dropping [`AnvilProcess`] sends SIGKILL and waits for
//! it, so no test leaves an anvil behind, whatever the runtime is doing at that moment. A reader
//! thread drains stdout (anvil logs every request; an undrained pipe would stall it), reports the
//! start-up facts and keeps the last lines for error messages.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use tokio::sync::oneshot;

use super::{DevChainError, DevChainOptions};

/// Lines of anvil output kept for error messages.
const LOG_TAIL_LINES: usize = 200;

/// Where `scripts/install-deps.sh` installs the npm package `@foundry-rs/anvil`.
const TOOLS_PREFIX: &str = ".local/chainsync-tools";

/// Locates the anvil binary: `$ANVIL_BIN`, then `PATH`, then the npm prefix of the install script.
pub(crate) fn find_anvil() -> Result<PathBuf, DevChainError> {
    let mut searched = Vec::new();
    if let Some(bin) = std::env::var_os("ANVIL_BIN").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(bin);
        if path.is_file() {
            return Ok(native_binary(&path));
        }
        searched.push(format!("$ANVIL_BIN={}", path.display()));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("anvil");
            if candidate.is_file() {
                return Ok(native_binary(&candidate));
            }
        }
        searched.push("PATH".to_string());
    }
    if let Some(home) = std::env::var_os("HOME") {
        let modules = Path::new(&home)
            .join(TOOLS_PREFIX)
            .join("node_modules/@foundry-rs");
        for platform in platform_packages() {
            let candidate = modules.join(platform).join("bin/anvil");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        searched.push(modules.display().to_string());
    }
    Err(DevChainError::AnvilNotFound {
        searched: searched.join(", "),
    })
}

fn platform_packages() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "aarch64" => &["anvil-linux-arm64", "anvil-darwin-arm64"],
        _ => &["anvil-linux-amd64", "anvil-darwin-amd64"],
    }
}

/// npm's `.bin/anvil` is a node wrapper that spawns the real binary; killing the wrapper would
/// orphan anvil, so resolve to the binary of the platform package next to it when we can.
fn native_binary(path: &Path) -> PathBuf {
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let is_script = resolved
        .extension()
        .is_some_and(|ext| ext == "mjs" || ext == "js");
    if is_script {
        // <prefix>/node_modules/@foundry-rs/anvil/bin.mjs -> ../anvil-linux-amd64/bin/anvil
        if let Some(scope) = resolved.parent().and_then(Path::parent) {
            for platform in platform_packages() {
                let candidate = scope.join(platform).join("bin/anvil");
                if candidate.is_file() {
                    return candidate;
                }
            }
        }
    }
    path.to_path_buf()
}

/// What anvil printed before it started listening.
pub(crate) struct Started {
    pub port: u16,
    pub signers: Vec<PrivateKeySigner>,
}

/// A running anvil. Dropping it kills and reaps the process.
pub(crate) struct AnvilProcess {
    child: Child,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl AnvilProcess {
    /// Spawns anvil on `port` (0 = any free port) and waits until it reports its address.
    pub(crate) async fn spawn(
        binary: &Path,
        opts: &DevChainOptions,
        port: u16,
        load_state: Option<&Path>,
    ) -> Result<(Self, Started), DevChainError> {
        let mut cmd = Command::new(binary);
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--chain-id")
            .arg(opts.chain_id.to_string())
            .arg("--accounts")
            .arg(opts.accounts.to_string())
            .arg("--balance")
            .arg(opts.balance_eth.to_string());
        if let Some(block_time) = opts.block_time {
            cmd.arg("--block-time")
                .arg(block_time.as_secs_f64().to_string());
        }
        if let Some(gas_limit) = opts.gas_limit {
            cmd.arg("--gas-limit").arg(gas_limit.to_string());
        }
        if let Some(hardfork) = &opts.hardfork {
            cmd.arg("--hardfork").arg(hardfork);
        }
        if let Some(path) = load_state {
            cmd.arg("--load-state").arg(path);
        }
        cmd.args(&opts.extra_args)
            .env("NO_COLOR", "1")
            .env("FOUNDRY_DISABLE_NIGHTLY_WARNING", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());

        let mut child = cmd.spawn().map_err(|source| DevChainError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL_LINES)));
        let (tx, rx) = oneshot::channel();
        if let Some(stdout) = child.stdout.take() {
            let log = Arc::clone(&log);
            std::thread::Builder::new()
                .name("anvil-stdout".into())
                .spawn(move || read_stdout(stdout, log, tx))
                .map_err(|source| DevChainError::Spawn {
                    binary: binary.display().to_string(),
                    source,
                })?;
        }
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::Builder::new()
                .name("anvil-stderr".into())
                .spawn(move || drain(stderr, log))
                .map_err(|source| DevChainError::Spawn {
                    binary: binary.display().to_string(),
                    source,
                })?;
        }

        let mut process = Self { child, log };
        match tokio::time::timeout(opts.startup_timeout, rx).await {
            Ok(Ok(started)) => Ok((process, started)),
            Ok(Err(_)) => {
                // stdout closed before "Listening on": anvil exited (bad flag, port taken, ...).
                let status = process.child.wait().ok();
                // Give the stderr thread a moment to record the reason.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(DevChainError::Exited {
                    status: status.map_or_else(|| "unknown".into(), |s| s.to_string()),
                    log: process.log_tail(),
                })
            }
            Err(_) => Err(DevChainError::StartTimeout {
                after: opts.startup_timeout,
                log: process.log_tail(),
            }),
        }
    }

    /// The last lines anvil printed (stdout and stderr), oldest first.
    pub(crate) fn log_lines(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn log_tail(&self) -> String {
        let lines = self.log_lines();
        let start = lines.len().saturating_sub(20);
        lines[start..].join("\n")
    }

    /// Kills the process and waits for it to exit.
    pub(crate) fn kill(mut self) {
        self.reap();
    }

    fn reap(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for AnvilProcess {
    fn drop(&mut self) {
        self.reap();
    }
}

fn push_line(log: &Mutex<VecDeque<String>>, line: String) {
    if let Ok(mut log) = log.lock() {
        if log.len() == LOG_TAIL_LINES {
            log.pop_front();
        }
        log.push_back(line);
    }
}

fn read_stdout(
    stdout: std::process::ChildStdout,
    log: Arc<Mutex<VecDeque<String>>>,
    tx: oneshot::Sender<Started>,
) {
    let mut reader = BufReader::new(stdout);
    let mut tx = Some(tx);
    let mut in_keys = false;
    let mut signers = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = line.trim_end();
        if tx.is_some() {
            if text.starts_with("Private Keys") {
                in_keys = true;
            } else if in_keys && text.starts_with('(') {
                if let Some(key) = text.split_whitespace().nth(1)
                    && let Ok(signer) = PrivateKeySigner::from_str(key)
                {
                    signers.push(signer);
                }
            } else if in_keys && !text.is_empty() && !text.starts_with('=') {
                in_keys = false;
            }
            if let Some(addr) = text.strip_prefix("Listening on") {
                if let (Ok(addr), Some(tx)) = (SocketAddr::from_str(addr.trim()), tx.take()) {
                    let _ = tx.send(Started {
                        port: addr.port(),
                        signers: std::mem::take(&mut signers),
                    });
                }
                continue;
            }
        }
        push_line(&log, text.to_string());
    }
}

fn drain(stderr: std::process::ChildStderr, log: Arc<Mutex<VecDeque<String>>>) {
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => push_line(&log, line.trim_end().to_string()),
        }
    }
}
