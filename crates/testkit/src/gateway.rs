//! [`Gateway`]: the real `sse-gateway` binary, run as a child process for one test.
//!
//! The builder renders a `gateway.toml` into the guard's own temporary directory —
//! public and admin listeners on free loopback ports, `threads = 2`, the NATS URL — plus
//! whatever keys the test sets, starts `<bin> --config <file>` with stdout and stderr in a
//! log file next to it, and waits (polling, 30 s at most) until the admin `/healthz`
//! answers 200. If the process exits first, the error carries its log.
//!
//! ```no_run
//! # async fn demo(nats: &sse_testkit::NatsServer) -> anyhow::Result<()> {
//! use sse_testkit::Gateway;
//! let gw = Gateway::builder("target/debug/sse-gateway") // env!("CARGO_BIN_EXE_sse-gateway")
//!     .nats_url(&nats.url())
//!     .set("sse", "heartbeat", "\"1s\"")
//!     .spawn()
//!     .await?;
//! gw.wait_ready(std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! [`check_config`] and [`run_config`] run the binary on a config expected to be
//! rejected.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::http;
use crate::metrics::Metrics;
use crate::wait::{eventually, free_port, free_ports};

/// How long a starting gateway may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh port pairs tried by [`GatewayBuilder::spawn`] when a picked port was taken.
const SPAWN_ATTEMPTS: usize = 3;
/// How long [`Gateway::restart`] retries while the old ports are still taken.
const RESTART_RETRY: Duration = Duration::from_secs(5);
/// `RUST_LOG` for the child unless the test environment sets one.
const DEFAULT_RUST_LOG: &str = "info,sse=debug";
/// Bound for [`check_config`].
const CHECK_CONFIG_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures and spawns a [`Gateway`].
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    bin: PathBuf,
    nats_url: Option<String>,
    sets: Vec<(String, String, String)>,
    raw: String,
    env: Vec<(String, String)>,
}

impl GatewayBuilder {
    /// `[nats] url`. Without it the URL points at a closed loopback port (never at a
    /// shared server), which suits `[bus] kind = "memory"` and "NATS is down" tests.
    pub fn nats_url(mut self, url: &str) -> Self {
        self.nats_url = Some(url.to_owned());
        self
    }

    /// Sets `key = toml_value` in `[section]`; `toml_value` is TOML as written, so
    /// strings carry their quotes: `.set("sse", "heartbeat", "\"1s\"")`. Overrides the
    /// defaults (`server.listen`, `server.threads`, `admin.listen`, `nats.url`) and
    /// earlier sets of the same key.
    pub fn set(mut self, section: &str, key: &str, toml_value: &str) -> Self {
        self.sets
            .push((section.to_owned(), key.to_owned(), toml_value.to_owned()));
        self
    }

    /// TOML appended verbatim after the rendered sections — for arrays of tables such as
    /// `[[routes]]`, or sections not touched by [`Self::set`] (TOML forbids a table twice).
    pub fn raw(mut self, extra_toml: &str) -> Self {
        self.raw.push_str(extra_toml);
        if !self.raw.ends_with('\n') {
            self.raw.push('\n');
        }
        self
    }

    /// An environment variable for the child (e.g. `RUST_LOG`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes the config, starts the process and waits until admin `/healthz` is 200.
    pub async fn spawn(self) -> anyhow::Result<Gateway> {
        let dir = tempfile::Builder::new()
            .prefix("sse-testkit-gateway-")
            .tempdir()
            .context("create a temporary directory for the gateway")?;
        let config_path = dir.path().join("gateway.toml");
        let log_path = dir.path().join("gateway.log");
        let nats_url = self
            .nats_url
            .clone()
            .unwrap_or_else(|| format!("nats://127.0.0.1:{}", free_port()));
        let mut last_error = None;
        for _ in 0..SPAWN_ATTEMPTS {
            let ports = free_ports(2);
            let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
            let admin_addr = SocketAddr::from(([127, 0, 0, 1], ports[1]));
            let config = render_config(addr, admin_addr, &nats_url, &self.sets, &self.raw);
            fs::write(&config_path, &config)
                .with_context(|| format!("write {}", config_path.display()))?;
            File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
            let mut gateway = Gateway {
                child: None,
                previous: None,
                pid: 0,
                exit_status: None,
                bin: self.bin.clone(),
                env: self.env.clone(),
                addr,
                admin_addr,
                config_path: config_path.clone(),
                log_path: log_path.clone(),
                _dir: None,
            };
            match gateway.start_and_wait_healthy().await {
                Ok(()) => {
                    gateway._dir = Some(dir);
                    return Ok(gateway);
                }
                Err(e) if gateway.exit_status.is_some() && port_taken(&gateway.log()) => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e.context(format!("config:\n{config}"))),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "the gateway failed {SPAWN_ATTEMPTS} times to bind its ports"
            )))
    }
}

/// A running gateway process; see the [module docs](self). Dropping it kills the process
/// and deletes its directory.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    /// The process an [`Gateway::upgrade`] took over from, until it is reaped.
    previous: Option<Child>,
    pid: u32,
    exit_status: Option<ExitStatus>,
    bin: PathBuf,
    env: Vec<(String, String)>,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    /// `None` only while spawning. Dropped after `Drop::drop` killed the process.
    _dir: Option<TempDir>,
}

impl Gateway {
    /// A builder for the binary at `bin` (in integration tests:
    /// `env!("CARGO_BIN_EXE_sse-gateway")`).
    pub fn builder(bin: impl Into<PathBuf>) -> GatewayBuilder {
        GatewayBuilder {
            bin: bin.into(),
            nats_url: None,
            sets: Vec::new(),
            raw: String::new(),
            env: Vec::new(),
        }
    }

    /// The public listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The process id of the current (or last) process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The rendered config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process's stdout and stderr so far (all runs, restarts included).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path)
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Polls admin `/readyz` until it answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_admin_status("/readyz", 200, timeout).await
    }

    /// Polls admin `path` until it answers `status` (e.g. `/readyz` → 503 after SIGTERM).
    pub async fn wait_admin_status(
        &self,
        path: &str,
        status: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("admin {path} to answer {status}");
        eventually(timeout, &what, || async {
            let r = http::get(self.admin_addr, path, &[]).await?;
            anyhow::ensure!(r.status == status, "status {}: {}", r.status, r.text());
            Ok(())
        })
        .await
        .with_context(|| format!("gateway log:\n{}", self.log_tail()))
    }

    /// Scrapes admin `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<Metrics> {
        let r = http::get(self.admin_addr, "/metrics", &[]).await?;
        if r.status != 200 {
            bail!("/metrics answered {}: {}", r.status, r.text());
        }
        Metrics::parse(&r.text())
    }

    /// Sends SIGTERM (via `kill -TERM <pid>`). Does nothing once the process has been
    /// reaped by [`Self::wait_exit`] or [`Self::kill`].
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails on the unreaped process.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP: the gateway reads its config file again.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails on the unreaped process.
    pub fn reload(&self) {
        self.signal("HUP");
    }

    /// Sends `SIG<name>` to the process, if it runs.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails on the unreaped process.
    pub fn signal(&self, name: &str) {
        if self.child.is_none() {
            return;
        }
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run `kill -{name}`: {e}"));
        assert!(
            status.success(),
            "`kill -{name} {}` failed: {status}",
            self.pid
        );
    }

    /// Starts `<bin> --upgrade --config <file>` (log appended), which takes the running
    /// process's listening sockets over; from then on this guard is the new process
    /// ([`Self::pid`]), and the old one drains and exits: wait for it with
    /// [`Self::wait_previous_exit`].
    pub fn upgrade(&mut self) -> anyhow::Result<()> {
        let mut log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        writeln!(log, "=== sse-testkit: upgrading the gateway ===")?;
        let mut command = command(&self.bin, "--config", &self.config_path);
        command.arg("--upgrade");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {} --upgrade", self.bin.display()))?;
        self.pid = child.id();
        self.exit_status = None;
        self.previous = self.child.replace(child);
        Ok(())
    }

    /// Waits until the process an upgrade took over from exits, and returns its status.
    pub async fn wait_previous_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(previous) = &mut self.previous else {
                bail!("no upgrade in progress");
            };
            if let Some(status) = previous.try_wait().context("wait for the old gateway")? {
                self.previous = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the old gateway still runs {timeout:?} after the upgrade; log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process with SIGKILL and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it already exited; `wait` reaps it either way.
            let _ = child.kill();
            self.exit_status = child.wait().ok();
        }
    }

    /// Waits until the process exits (polling) and returns its status; errors with the
    /// log tail if it still runs after `timeout`. Returns the same status when called
    /// again.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_reap()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "gateway (pid {}) still running after {timeout:?}; log:\n{}",
                    self.pid,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process if it runs, then starts it again with the same config file
    /// (same ports), retrying for a few seconds while a port is still taken, and waits
    /// until `/healthz` is 200.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let retry_until = Instant::now() + RESTART_RETRY;
        loop {
            let mut log = OpenOptions::new()
                .append(true)
                .open(&self.log_path)
                .with_context(|| format!("open {}", self.log_path.display()))?;
            writeln!(log, "=== sse-testkit: restarting the gateway ===")?;
            match self.start_and_wait_healthy().await {
                Ok(()) => return Ok(()),
                Err(e) if self.exit_status.is_some() && Instant::now() < retry_until => {
                    drop(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts `<bin> --config <file>` (log appended) and waits for admin `/healthz` 200.
    async fn start_and_wait_healthy(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let mut command = command(&self.bin, "--config", &self.config_path);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.pid = child.id();
        self.exit_status = None;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_reap()? {
                bail!(
                    "the gateway exited during start-up with {status}; log:\n{}",
                    self.log()
                );
            }
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                http::get(self.admin_addr, "/healthz", &[]),
            )
            .await;
            // Healthy, and the public listener bound (the admin listener can come up
            // first): checked in the kernel's socket table, without a connection that
            // would count against the per-address caps a test is about to probe.
            if let Ok(Ok(r)) = probe
                && r.status == 200
                && is_listening(self.addr)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "the gateway did not answer admin /healthz with 200 and listen on {} \
                     within {START_TIMEOUT:?}; log:\n{}",
                    self.addr,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Reaps the process if it exited.
    fn try_reap(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait().context("wait for the gateway")?
        {
            self.exit_status = Some(status);
            self.child = None;
        }
        Ok(self.exit_status)
    }

    /// The last 8 KiB of the log.
    fn log_tail(&self) -> String {
        let log = self.log();
        let mut start = log.len().saturating_sub(8 * 1024);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_owned()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut previous) = self.previous.take() {
            let _ = previous.kill();
            let _ = previous.wait();
        }
    }
}

/// Runs `<bin> --check-config <file>` on `toml_text` and returns its output (30 s at
/// most). A valid config exits 0; config errors exit non-zero with the reason on stderr.
pub fn check_config(bin: impl AsRef<Path>, toml_text: &str) -> anyhow::Result<Output> {
    run_to_exit(
        bin.as_ref(),
        "--check-config",
        toml_text,
        CHECK_CONFIG_TIMEOUT,
    )
}

/// Runs `<bin> --config <file>` on `toml_text`, expecting it to exit (a rejected
/// config) within `timeout`, and returns its output. If it is still running then, it is
/// killed and this is an error saying it hung.
pub fn run_config(
    bin: impl AsRef<Path>,
    toml_text: &str,
    timeout: Duration,
) -> anyhow::Result<Output> {
    run_to_exit(bin.as_ref(), "--config", toml_text, timeout)
}

/// Writes `toml_text` to a temporary file, runs `<bin> <flag> <file>` with output in
/// files (no pipe can fill up), and polls for its exit.
fn run_to_exit(
    bin: &Path,
    flag: &str,
    toml_text: &str,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let dir = tempfile::Builder::new()
        .prefix("sse-testkit-config-")
        .tempdir()
        .context("create a temporary directory")?;
    let config_path = dir.path().join("gateway.toml");
    fs::write(&config_path, toml_text).context("write the config")?;
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = command(bin, flag, &config_path)
        .stdout(File::create(&stdout_path)?)
        .stderr(File::create(&stderr_path)?)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{} {flag} <file>` hung: still running after {timeout:?}, killed; \
                 stderr:\n{}\nconfig:\n{toml_text}",
                bin.display(),
                String::from_utf8_lossy(&fs::read(&stderr_path).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: fs::read(&stdout_path)?,
        stderr: fs::read(&stderr_path)?,
    })
}

/// `<bin> <flag> <config>` with stdin closed and `RUST_LOG` defaulted.
fn command(bin: &Path, flag: &str, config: &Path) -> Command {
    let mut command = Command::new(bin);
    command.arg(flag).arg(config).stdin(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", DEFAULT_RUST_LOG);
    }
    command
}

/// True when a start-up log says a listener's port was taken.
fn port_taken(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use") || log.contains("addrinuse")
}

/// Renders the config: `[server]`, `[admin]` and `[nats]` with their defaults, then the
/// other sections in the order first set; later sets of a key win. `raw` goes last.
fn render_config(
    addr: SocketAddr,
    admin_addr: SocketAddr,
    nats_url: &str,
    sets: &[(String, String, String)],
    raw: &str,
) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let mut sections: Vec<(String, Vec<(String, String)>)> = vec![
        (
            "server".to_owned(),
            vec![
                ("listen".to_owned(), quote(&addr.to_string())),
                ("threads".to_owned(), "2".to_owned()),
            ],
        ),
        (
            "admin".to_owned(),
            vec![("listen".to_owned(), quote(&admin_addr.to_string()))],
        ),
        ("nats".to_owned(), vec![("url".to_owned(), quote(nats_url))]),
    ];
    for (section, key, value) in sets {
        let index = match sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                sections.push((section.clone(), Vec::new()));
                sections.len() - 1
            }
        };
        let keys = &mut sections[index].1;
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => v.clone_from(value),
            None => keys.push((key.clone(), value.clone())),
        }
    }
    let mut out = String::new();
    for (section, keys) in &sections {
        out.push_str(&format!("[{section}]\n"));
        for (key, value) in keys {
            out.push_str(&format!("{key} = {value}\n"));
        }
        out.push('\n');
    }
    out.push_str(raw);
    out
}

/// Whether some socket listens on `addr` (an IPv4 address), from `/proc/net/tcp`.
/// Elsewhere than Linux: assumed so.
fn is_listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return true;
    };
    let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    // `local_address` is the address in host byte order as hex, then the port; state
    // 0A is LISTEN.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    fn sets(items: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        items
            .iter()
            .map(|(s, k, v)| (s.to_string(), k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_defaults_sets_and_raw() {
        let text = render_config(
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:1001".parse().unwrap(),
            "nats://127.0.0.1:1002",
            &sets(&[
                ("sse", "heartbeat", "\"1s\""),
                ("server", "threads", "1"),
                ("limits", "max_connections", "5"),
                ("sse", "retry", "\"2s\""),
                ("sse", "heartbeat", "\"3s\""),
            ]),
            "[[routes]]\nprefix = \"/api\"\n",
        );
        assert_eq!(
            text,
            "[server]\nlisten = \"127.0.0.1:1000\"\nthreads = 1\n\n\
             [admin]\nlisten = \"127.0.0.1:1001\"\n\n\
             [nats]\nurl = \"nats://127.0.0.1:1002\"\n\n\
             [sse]\nheartbeat = \"3s\"\nretry = \"2s\"\n\n\
             [limits]\nmax_connections = 5\n\n\
             [[routes]]\nprefix = \"/api\"\n"
        );
    }

    /// An executable shell script in `dir`.
    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("fake-gateway");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn check_config_returns_output() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "echo \"flag $1\"; cat \"$2\" >&2; exit 2");
        let out = check_config(&bin, "[sse]\nretry = 15\n").unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "flag --check-config\n"
        );
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            "[sse]\nretry = 15\n"
        );
    }

    #[test]
    fn run_config_reports_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "echo starting >&2; exec sleep 30");
        let err = run_config(&bin, "", Duration::from_millis(300)).unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("hung"), "{err}");
        assert!(err.contains("starting"), "{err}");
    }

    #[tokio::test]
    async fn spawn_fails_early_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "echo \"cannot start: $1\" >&2; exit 3");
        let started = std::time::Instant::now();
        let err = Gateway::builder(bin).spawn().await.unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("cannot start: --config"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
