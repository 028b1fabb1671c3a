//! [`NatsServer`]: a real `nats-server` process for one test.
//!
//! Each guard runs its own server on free loopback ports (client and HTTP monitoring),
//! with JetStream on and its store, log and everything else in its own temporary
//! directory. Dropping the guard kills the process and deletes the directory. Tests never
//! touch a NATS server they did not start.
//!
//! The binary is `$NATS_SERVER_BIN`, else `nats-server` on `PATH`, else
//! `/usr/sbin/nats-server` or `/usr/bin/nats-server`; without one the test panics with an
//! install hint.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;

use crate::http;
use crate::wait::free_ports;

/// How long a (re)starting server may take to answer `/healthz` with 200.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`NatsServer::restart`] keeps retrying while the old ports are still taken.
const RESTART_RETRY: Duration = Duration::from_secs(5);
/// Fresh port sets [`NatsServer::start`] (and `NatsCluster::start`) try when a picked
/// port was taken meanwhile.
pub(crate) const START_ATTEMPTS: usize = 5;

/// A running `nats-server`; see the [module docs](self).
#[derive(Debug)]
pub struct NatsServer {
    process: ServerProcess,
    // Dropped after `process`, which kills the server on drop.
    _dir: TempDir,
}

/// Everything needed to (re)start the same server.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) bin: PathBuf,
    pub(crate) port: u16,
    pub(crate) monitor_port: u16,
    pub(crate) store_dir: PathBuf,
    pub(crate) log_path: PathBuf,
    /// Start with `-c <file> -l <log>` instead of command-line flags; the file must set
    /// the same client and monitoring ports and store directory.
    pub(crate) config_file: Option<PathBuf>,
    /// The readiness probe: `/healthz`, possibly with query parameters.
    pub(crate) healthz_path: &'static str,
}

/// Why a launch failed.
pub(crate) enum LaunchError {
    /// The process exited before it was ready (typically: a port was taken).
    Exited(anyhow::Error),
    /// Anything else.
    Other(anyhow::Error),
}

/// One server process that can be killed and restarted with the same [`Launch`]. Dropping
/// it kills the process.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    // A mutex so that `is_alive(&self)` can reap an exited process.
    child: Mutex<Option<Child>>,
    launch: Launch,
}

impl NatsServer {
    /// Starts a server and waits (up to 15 s, polling `/healthz`) until it is ready.
    ///
    /// Blocking, so it also works outside a runtime; inside one it blocks the thread for
    /// the start-up time only. Panics when no `nats-server` binary is found.
    pub fn start() -> anyhow::Result<NatsServer> {
        let bin = nats_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("sse-testkit-nats-")
            .tempdir()
            .context("create a temporary directory for nats-server")?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(2);
            let launch = Launch {
                bin: bin.clone(),
                port: ports[0],
                monitor_port: ports[1],
                store_dir: dir.path().join("js"),
                log_path: dir.path().join("nats-server.log"),
                config_file: None,
                healthz_path: "/healthz",
            };
            match launch.run(Instant::now() + READY_TIMEOUT) {
                Ok(child) => {
                    return Ok(NatsServer {
                        process: ServerProcess::new(child, launch),
                        _dir: dir,
                    });
                }
                Err(LaunchError::Exited(e)) => last_error = Some(e),
                Err(LaunchError::Other(e)) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "nats-server failed {START_ATTEMPTS} times to start"
            )))
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.process.launch.port
    }

    /// The HTTP monitoring port (`/healthz`, `/connz`, `/varz`, …).
    pub fn monitor_port(&self) -> u16 {
        self.process.launch.monitor_port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.process.launch.url()
    }

    /// The JetStream store directory (kept across [`Self::restart`]).
    pub fn store_dir(&self) -> &Path {
        &self.process.launch.store_dir
    }

    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// A new client connection to this server.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::connect(self.url())
            .await
            .with_context(|| format!("connect to {}", self.url()))
    }

    /// Kills the server with SIGKILL and waits for it to exit. Idempotent. Clients see a
    /// dropped connection; [`Self::restart`] brings the server back.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the server if it runs, then starts it again on the same ports with the same
    /// JetStream store, retrying for a few seconds while a port is still taken, and waits
    /// until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart().await
    }

    /// `GET /connz?subs=1` from the monitoring port, as JSON.
    pub async fn connz(&self) -> anyhow::Result<serde_json::Value> {
        self.monitor("/connz?subs=1").await
    }

    /// Every subscription subject of every client connection (`connections[]
    /// .subscriptions_list` of `/connz?subs=1`), in server order, duplicates kept.
    pub async fn subscriptions(&self) -> anyhow::Result<Vec<String>> {
        let connz = self.connz().await?;
        subscriptions_of(&connz)
    }

    /// The subjects of every subscription under `prefix` (e.g. `"sse."`), sorted: the
    /// gateway's topic subscriptions without the clients' request inboxes.
    pub async fn subjects_under(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut subjects: Vec<String> = self
            .subscriptions()
            .await?
            .into_iter()
            .filter(|s| s.starts_with(prefix))
            .collect();
        subjects.sort();
        Ok(subjects)
    }

    /// `GET path` from the monitoring port, as JSON; non-200 is an error.
    pub async fn monitor(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.process.monitor(path).await
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.process.log()
    }
}

impl ServerProcess {
    pub(crate) fn new(child: Child, launch: Launch) -> ServerProcess {
        ServerProcess {
            child: Mutex::new(Some(child)),
            launch,
        }
    }

    pub(crate) fn launch(&self) -> &Launch {
        &self.launch
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The process id, unless killed (also while a crashed process is not yet reaped by
    /// [`Self::kill`] or [`Self::restart`]).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// True while the process runs: started, not killed and not exited by itself.
    pub(crate) fn is_alive(&self) -> bool {
        match self.child().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and wait for the exit. Idempotent.
    pub(crate) fn kill(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            // Errors mean it already exited; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the process if it runs, then starts it again with the same launch (ports,
    /// store, config), retrying for a few seconds while a port is still taken, and waits
    /// until `/healthz` is 200.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let launch = self.launch.clone();
        let child = tokio::task::spawn_blocking(move || {
            let retry_until = Instant::now() + RESTART_RETRY;
            loop {
                match launch.run(Instant::now() + READY_TIMEOUT) {
                    Ok(child) => return Ok(child),
                    Err(LaunchError::Exited(e)) if Instant::now() < retry_until => {
                        drop(e);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(LaunchError::Exited(e) | LaunchError::Other(e)) => return Err(e),
                }
            }
        })
        .await
        .context("restart task failed")??;
        *self.child.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// `GET path` from the monitoring port, as JSON; non-200 is an error.
    pub(crate) async fn monitor(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.launch.monitor_port));
        let response = http::get(addr, path, &[]).await?;
        if response.status != 200 {
            bail!(
                "nats-server monitor {path}: status {}: {}",
                response.status,
                response.text()
            );
        }
        response.json()
    }

    /// The log so far.
    pub(crate) fn log(&self) -> String {
        read_log(&self.launch.log_path)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Extracts all `connections[].subscriptions_list` entries from a `/connz?subs=1` answer.
fn subscriptions_of(connz: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    let connections = connz
        .get("connections")
        .and_then(serde_json::Value::as_array)
        .with_context(|| format!("connz has no connections array: {connz}"))?;
    let mut subjects = Vec::new();
    for connection in connections {
        // The server omits the list when a connection has no subscriptions.
        let Some(list) = connection.get("subscriptions_list") else {
            continue;
        };
        let list = list
            .as_array()
            .with_context(|| format!("subscriptions_list is not an array: {list}"))?;
        for subject in list {
            subjects.push(
                subject
                    .as_str()
                    .with_context(|| format!("subscription is not a string: {subject}"))?
                    .to_owned(),
            );
        }
    }
    Ok(subjects)
}

impl Launch {
    /// `nats://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Spawns the server and waits until `/healthz` answers 200 or `deadline` passes.
    pub(crate) fn run(&self, deadline: Instant) -> Result<Child, LaunchError> {
        let child = self.spawn().map_err(LaunchError::Other)?;
        self.wait_ready(child, deadline)
    }

    /// Polls the readiness probe (`healthz_path`) of the spawned `child` until it answers 200. Kills the child when
    /// `deadline` passes first; an exit during start-up is [`LaunchError::Exited`].
    pub(crate) fn wait_ready(
        &self,
        mut child: Child,
        deadline: Instant,
    ) -> Result<Child, LaunchError> {
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(LaunchError::Exited(anyhow::anyhow!(
                        "nats-server (ports {}/{}) exited during start-up with {status}; log:\n{}",
                        self.port,
                        self.monitor_port,
                        read_log(&self.log_path)
                    )));
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LaunchError::Other(
                        anyhow::Error::new(e).context("wait for nats-server"),
                    ));
                }
            }
            if healthz_ok(self.monitor_port, self.healthz_path) {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let last = healthz_text(self.monitor_port, self.healthz_path);
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Other(anyhow::anyhow!(
                    "nats-server (ports {}/{}) not healthy within {:?}; last {}: {last}; log:\n{}",
                    self.port,
                    self.monitor_port,
                    started.elapsed(),
                    self.healthz_path,
                    read_log(&self.log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn spawn(&self) -> anyhow::Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let log_err = log.try_clone().context("clone log file handle")?;
        let mut command = Command::new(&self.bin);
        match &self.config_file {
            Some(config_file) => command.arg("-c").arg(config_file),
            None => command
                .arg("-a")
                .arg("127.0.0.1")
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-m")
                .arg(self.monitor_port.to_string())
                .arg("-js")
                .arg("-sd")
                .arg(&self.store_dir),
        };
        command
            .arg("-l")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))
    }
}

/// One blocking `GET <path>` (`/healthz…`) on the monitoring port; true on status 200.
fn healthz_ok(monitor_port: u16, path: &str) -> bool {
    healthz_get(monitor_port, path).is_ok_and(|response| {
        response.starts_with(b"HTTP/1.1 200 ") || response.starts_with(b"HTTP/1.0 200 ")
    })
}

/// The body of one blocking `GET <path>` (`/healthz…`), or why it failed, for error
/// messages: e.g. `JetStream has not established contact with a meta leader`.
fn healthz_text(monitor_port: u16, path: &str) -> String {
    match healthz_get(monitor_port, path) {
        Ok(response) => {
            let response = String::from_utf8_lossy(&response);
            match response.split_once("\r\n\r\n") {
                Some((_, body)) => body.trim().to_owned(),
                None => response.into_owned(),
            }
        }
        Err(e) => format!("<{e}>"),
    }
}

/// The raw response of one blocking `GET <path>` on the monitoring port.
fn healthz_get(monitor_port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], monitor_port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(response)
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    match File::open(path) {
        Ok(mut f) => match f.read_to_string(&mut text) {
            Ok(_) => text,
            Err(e) => format!("<cannot read {}: {e}>", path.display()),
        },
        Err(e) => format!("<cannot open {}: {e}>", path.display()),
    }
}

/// The `nats-server` binary to run: `$NATS_SERVER_BIN`, else `nats-server` on `PATH`,
/// else `/usr/sbin/nats-server` or `/usr/bin/nats-server`.
///
/// # Panics
///
/// When none exists, with an install hint.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "NATS_SERVER_BIN={} does not name a file",
            bin.display()
        );
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"));
    let fixed = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .map(PathBuf::from);
    on_path
        .chain(fixed)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found (looked at $NATS_SERVER_BIN, PATH, /usr/sbin, /usr/bin). \
             Install it, e.g. `apt-get install -y nats-server`, or download a release from \
             https://github.com/nats-io/nats-server/releases and set NATS_SERVER_BIN"
            )
        })
}

#[cfg(test)]
mod tests {

    use super::*;
    use futures::StreamExt as _;

    #[test]
    fn subscriptions_from_connz() {
        let connz = serde_json::json!({
            "connections": [
                {"cid": 1, "subscriptions_list": ["sse.a", "_INBOX.x.*"]},
                {"cid": 2},
                {"cid": 3, "subscriptions_list": ["sse.b"]}
            ]
        });
        assert_eq!(
            subscriptions_of(&connz).unwrap(),
            ["sse.a", "_INBOX.x.*", "sse.b"]
        );
        assert!(subscriptions_of(&serde_json::json!({})).is_err());
    }

    #[tokio::test]
    async fn real_server_round_trip_kill_and_restart() {
        let mut nats = NatsServer::start().unwrap();
        assert_ne!(nats.port(), 4222);
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
        let client = nats.client().await.unwrap();
        let mut sub = client.subscribe("testkit.a").await.unwrap();
        client.flush().await.unwrap();

        let subs = crate::eventually(Duration::from_secs(5), "the subscription in connz", || {
            let nats = &nats;
            async move {
                let subs = nats.subscriptions().await?;
                anyhow::ensure!(subs.iter().any(|s| s == "testkit.a"), "subs: {subs:?}");
                Ok(subs)
            }
        })
        .await
        .unwrap();
        assert!(subs.contains(&"testkit.a".to_owned()));

        crate::publish(&client, "testkit.a", "hello", Some("greeting"))
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&msg.payload[..], b"hello");
        let headers = msg.headers.unwrap();
        assert_eq!(headers.get("Sse-Event").unwrap().as_str(), "greeting");

        let old_pid = nats.pid().unwrap();
        nats.kill();
        assert_eq!(nats.pid(), None);
        nats.restart().await.unwrap();
        assert_ne!(nats.pid(), Some(old_pid));

        // The old client reconnects by itself and re-subscribes.
        crate::eventually(
            Duration::from_secs(10),
            "re-subscription after restart",
            || {
                let nats = &nats;
                async move {
                    let subs = nats.subscriptions().await?;
                    anyhow::ensure!(subs.iter().any(|s| s == "testkit.a"), "subs: {subs:?}");
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
        let fresh = nats.client().await.unwrap();
        crate::publish(&fresh, "testkit.a", "again", None)
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&msg.payload[..], b"again");
        assert!(nats.log().contains("Server is ready"), "{}", nats.log());
    }
}
