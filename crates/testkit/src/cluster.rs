//! [`NatsCluster`]: a real cluster of `nats-server` processes for one test.
//!
//! Each node runs on its own free loopback ports (client, HTTP monitoring, cluster
//! route), with JetStream on, its own store directory, config file and log in the
//! cluster's temporary directory. Nodes are routed to each other as cluster `sse-test`
//! and are named `n0`, `n1`, … after their index. [`NatsCluster::start`] returns once the
//! JetStream meta group has a leader that every node knows, so streams can be created
//! right away. Dropping the guard kills every node and deletes the directory.
//!
//! The binary is the one [`nats_server_bin`](crate::nats_server_bin) finds.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use tempfile::TempDir;

use crate::nats::{Launch, LaunchError, START_ATTEMPTS, ServerProcess, nats_server_bin};
use crate::wait::{eventually, free_ports};

/// The cluster name every node is configured with.
pub const CLUSTER_NAME: &str = "sse-test";

/// How long [`NatsCluster::start`] may take until the JetStream meta leader is known.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The readiness probe of a node: in contact and current with the JetStream meta leader.
/// Without `js-server-only` nats-server 2.9 also wants every stream and consumer replica
/// on the node current, which an idle consumer's replica on a restarted node may never
/// report.
const HEALTHZ_PATH: &str = "/healthz?js-server-only=true";

/// A running cluster of `nats-server` nodes; see the [module docs](self).
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<ServerProcess>,
    // Dropped after `Drop::drop` has killed every node.
    dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` (at least 2; 3 for a cluster that survives losing a node) nodes on
    /// loopback, routed to each other as cluster `sse-test`, JetStream on each (own store
    /// directory, server name `n<index>`), and waits (up to 30 s) until every node answers
    /// `/healthz?js-server-only=true` with 200 (in contact and current with a meta leader),
    /// all report the same JetStream meta leader in `/jsz`, and the leader sees all other
    /// nodes as current. Retries with fresh ports when a node exits during start-up.
    ///
    /// Panics when no `nats-server` binary is found.
    pub async fn start(n: usize) -> anyhow::Result<NatsCluster> {
        ensure!(
            n >= 2,
            "a JetStream cluster needs at least 2 nodes (nats-server refuses a clustered \
             JetStream without routes), got {n}"
        );
        let bin = nats_server_bin();
        let dir = tempfile::Builder::new()
            .prefix("sse-testkit-nats-cluster-")
            .tempdir()
            .context("create a temporary directory for the nats-server cluster")?;
        let deadline = Instant::now() + START_TIMEOUT;
        let root = dir.path().to_owned();
        let nodes = tokio::task::spawn_blocking(move || launch_nodes(&bin, &root, n, deadline))
            .await
            .context("cluster start task failed")??;
        let cluster = NatsCluster { nodes, dir };
        // On error `cluster` is dropped, which kills every node.
        cluster.wait_meta_leader(deadline).await?;
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated in node order:
    /// `nats://127.0.0.1:<p0>,nats://127.0.0.1:<p1>,…` (the gateway's `nats.url` format).
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// `nats://127.0.0.1:<port>` of node `node`. Panics when `node >= self.len()`.
    pub fn url(&self, node: usize) -> String {
        self.node(node).launch().url()
    }

    /// The number of nodes, alive or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least 2 nodes (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// True while node `node` runs: not killed and not exited by itself.
    pub fn is_alive(&self, node: usize) -> bool {
        self.node(node).is_alive()
    }

    /// The process id of node `node`, unless it was killed.
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.node(node).pid()
    }

    /// The client port of node `node`.
    pub fn port(&self, node: usize) -> u16 {
        self.node(node).launch().port
    }

    /// The HTTP monitoring port of node `node`.
    pub fn monitor_port(&self, node: usize) -> u16 {
        self.node(node).launch().monitor_port
    }

    /// The JetStream store directory of node `node` (kept across [`Self::restart`]).
    pub fn store_dir(&self, node: usize) -> &Path {
        &self.node(node).launch().store_dir
    }

    /// The cluster's temporary directory (one `n<index>` subdirectory per node).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new client connection given all node URLs; it connects to one of the live nodes
    /// and fails over to the others by itself.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        self.client_with(async_nats::ConnectOptions::new()).await
    }

    /// Like [`Self::client`] with the caller's options (e.g. a connection `name` to find
    /// it with [`Self::node_with_client`]).
    pub async fn client_with(
        &self,
        options: async_nats::ConnectOptions,
    ) -> anyhow::Result<async_nats::Client> {
        options
            .connect(self.url_list().as_slice())
            .await
            .with_context(|| format!("connect to {}", self.urls()))
    }

    /// Kills node `node` with SIGKILL and waits for it to exit. Idempotent.
    pub fn kill(&mut self, node: usize) {
        self.node_mut(node).kill();
    }

    /// Kills node `node` if it runs, then starts it again on the same ports with the same
    /// config and JetStream store (retrying for a few seconds while a port is still
    /// taken), and waits (up to 15 s) until `/healthz?js-server-only=true` is 200: it is in
    /// contact and current with the meta leader. Its stream and consumer replicas may still
    /// be catching up then.
    pub async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        self.node_mut(node)
            .restart()
            .await
            .with_context(|| format!("restart node {node}"))
    }

    /// The live node holding a client connection whose name (`/connz`
    /// `connections[].name`) contains `name_part`; the lowest index if several do.
    pub async fn node_with_client(&self, name_part: &str) -> anyhow::Result<Option<usize>> {
        for (index, node) in self.nodes.iter().enumerate() {
            if !node.is_alive() {
                continue;
            }
            let connz = node
                .monitor("/connz?limit=100000")
                .await
                .with_context(|| format!("connz of node {index}"))?;
            if connection_names(&connz)?
                .iter()
                .any(|name| name.contains(name_part))
            {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// `GET path` from node `node`'s monitoring port, as JSON; non-200 is an error.
    pub async fn monitor(&self, node: usize, path: &str) -> anyhow::Result<serde_json::Value> {
        self.node(node).monitor(path).await
    }

    /// Node `node`'s log so far (for failure messages).
    pub fn log(&self, node: usize) -> String {
        self.node(node).log()
    }

    fn node(&self, node: usize) -> &ServerProcess {
        let len = self.nodes.len();
        self.nodes
            .get(node)
            .unwrap_or_else(|| panic!("node {node} out of range: the cluster has {len} nodes"))
    }

    fn node_mut(&mut self, node: usize) -> &mut ServerProcess {
        let len = self.nodes.len();
        self.nodes
            .get_mut(node)
            .unwrap_or_else(|| panic!("node {node} out of range: the cluster has {len} nodes"))
    }

    fn url_list(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.launch().url()).collect()
    }

    /// Polls every node's `/jsz` until all name the same meta leader, all see the full
    /// cluster size, and the leader reports every other node as a current replica.
    async fn wait_meta_leader(&self, deadline: Instant) -> anyhow::Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        eventually(
            timeout,
            "a JetStream meta leader known to every node",
            || async {
                let mut leaders = Vec::with_capacity(self.nodes.len());
                let mut jszs = Vec::with_capacity(self.nodes.len());
                for (index, node) in self.nodes.iter().enumerate() {
                    let jsz = node
                        .monitor("/jsz")
                        .await
                        .with_context(|| format!("jsz of node {index}"))?;
                    let meta = MetaCluster::of(&jsz)
                        .with_context(|| format!("node {index}: no meta leader in {jsz}"))?;
                    ensure!(
                        meta.cluster_size == self.nodes.len(),
                        "node {index} sees a cluster of {} nodes: {jsz}",
                        meta.cluster_size
                    );
                    leaders.push(meta.leader);
                    jszs.push(jsz);
                }
                let leader = &leaders[0];
                ensure!(
                    leaders.iter().all(|l| l == leader),
                    "the nodes disagree on the meta leader: {leaders:?}"
                );
                let leader_index = leader
                    .strip_prefix('n')
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < self.nodes.len())
                    .with_context(|| {
                        format!("the meta leader {leader:?} is no node of this cluster")
                    })?;
                let current = current_replicas(&jszs[leader_index]);
                ensure!(
                    current == self.nodes.len() - 1,
                    "the meta leader {leader} sees {current} of {} other nodes current: {}",
                    self.nodes.len() - 1,
                    jszs[leader_index]
                );
                Ok(())
            },
        )
        .await
        .map_err(|e| {
            let logs = (0..self.nodes.len())
                .map(|i| {
                    format!(
                        "--- node {i} log (tail) ---\n{}",
                        log_tail(&self.log(i), 40)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            e.context(format!("nats-server cluster not ready; logs:\n{logs}"))
        })
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// Spawns all `n` nodes (so that they can elect a meta leader together), then waits until
/// each answers its readiness probe with 200. Retries with fresh ports when a node exits during
/// start-up (typically: a picked port was taken meanwhile).
fn launch_nodes(
    bin: &Path,
    root: &Path,
    n: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<ServerProcess>> {
    let mut last_error = None;
    for _ in 0..START_ATTEMPTS {
        let ports = free_ports(3 * n);
        let launches = (0..n)
            .map(|index| node_launch(bin, root, index, &ports))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut children = Vec::with_capacity(n);
        for launch in &launches {
            match launch.spawn() {
                Ok(child) => children.push(child),
                Err(e) => {
                    kill_all(children);
                    return Err(e);
                }
            }
        }
        let mut ready = Vec::with_capacity(n);
        let mut failure = None;
        for (launch, child) in launches.into_iter().zip(children) {
            if failure.is_some() {
                kill_all(vec![child]);
                continue;
            }
            match launch.wait_ready(child, deadline) {
                // A `ServerProcess` kills its process when dropped.
                Ok(child) => ready.push(ServerProcess::new(child, launch)),
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            None => return Ok(ready),
            Some(LaunchError::Exited(e)) => last_error = Some(e),
            Some(LaunchError::Other(e)) => return Err(e.context("nats-server cluster start")),
        }
        // Kill the others before wiping their stores for the next attempt.
        drop(ready);
        for index in 0..n {
            let node_dir = root.join(node_name(index));
            std::fs::remove_dir_all(&node_dir)
                .with_context(|| format!("remove {}", node_dir.display()))?;
        }
    }
    Err(last_error
        .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
        .context(format!(
            "the nats-server cluster failed {START_ATTEMPTS} times to start"
        )))
}

/// `n<index>`: the server name and directory of a node.
fn node_name(index: usize) -> String {
    format!("n{index}")
}

/// Creates node `index`'s directory and config file. `ports` holds three ports per node:
/// client, monitoring, route.
fn node_launch(bin: &Path, root: &Path, index: usize, ports: &[u16]) -> anyhow::Result<Launch> {
    let node_dir = root.join(node_name(index));
    std::fs::create_dir_all(&node_dir).with_context(|| format!("create {}", node_dir.display()))?;
    let store_dir = node_dir.join("js");
    let config_file = node_dir.join("nats-server.conf");
    let node_count = ports.len() / 3;
    let routes = (0..node_count)
        .filter(|&other| other != index)
        .map(|other| format!("nats-route://127.0.0.1:{}", ports[3 * other + 2]))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{monitor}\n\
         jetstream {{ store_dir: {store} }}\n\
         cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n",
        name = node_name(index),
        client = ports[3 * index],
        monitor = ports[3 * index + 1],
        store = quoted(&store_dir)?,
        route = ports[3 * index + 2],
    );
    std::fs::write(&config_file, config)
        .with_context(|| format!("write {}", config_file.display()))?;
    Ok(Launch {
        bin: bin.to_owned(),
        port: ports[3 * index],
        monitor_port: ports[3 * index + 1],
        store_dir,
        log_path: node_dir.join("nats-server.log"),
        config_file: Some(config_file),
        healthz_path: HEALTHZ_PATH,
    })
}

/// `path` as a double-quoted config string.
fn quoted(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    if text.contains(['"', '\\', '\n']) {
        bail!("cannot quote {text:?} for a nats-server config");
    }
    Ok(format!("\"{text}\""))
}

fn kill_all(children: Vec<std::process::Child>) {
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The parts of `/jsz` `meta_cluster` that readiness needs.
struct MetaCluster {
    leader: String,
    cluster_size: usize,
}

impl MetaCluster {
    /// `None` while the node knows no leader.
    fn of(jsz: &serde_json::Value) -> Option<MetaCluster> {
        let meta = jsz.get("meta_cluster")?;
        let leader = meta.get("leader")?.as_str().filter(|l| !l.is_empty())?;
        let cluster_size = meta.get("cluster_size")?.as_u64()?;
        Some(MetaCluster {
            leader: leader.to_owned(),
            cluster_size: usize::try_from(cluster_size).ok()?,
        })
    }
}

/// How many `meta_cluster.replicas` are `current` (only the leader lists replicas).
fn current_replicas(jsz: &serde_json::Value) -> usize {
    jsz.pointer("/meta_cluster/replicas")
        .and_then(serde_json::Value::as_array)
        .map_or(0, |replicas| {
            replicas
                .iter()
                .filter(|r| r.get("current").and_then(serde_json::Value::as_bool) == Some(true))
                .count()
        })
}

/// All `connections[].name` of a `/connz` answer (unnamed connections omitted).
fn connection_names(connz: &serde_json::Value) -> anyhow::Result<Vec<&str>> {
    let connections = connz
        .get("connections")
        .and_then(serde_json::Value::as_array)
        .with_context(|| format!("connz has no connections array: {connz}"))?;
    Ok(connections
        .iter()
        .filter_map(|c| c.get("name").and_then(serde_json::Value::as_str))
        .collect())
}

/// The last `lines` lines of `log`.
fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {

    use super::*;
    use async_nats::jetstream;
    use futures::StreamExt as _;

    #[test]
    fn parses_monitor_answers() {
        let jsz = serde_json::json!({"meta_cluster": {
            "name": "sse-test", "leader": "n1", "cluster_size": 3,
            "replicas": [{"name": "n0", "current": true}, {"name": "n2", "current": false}]
        }});
        let meta = MetaCluster::of(&jsz).unwrap();
        assert_eq!((meta.leader.as_str(), meta.cluster_size), ("n1", 3));
        assert_eq!(current_replicas(&jsz), 1);
        let no_leader =
            serde_json::json!({"meta_cluster": {"name": "sse-test", "cluster_size": 2}});
        assert!(MetaCluster::of(&no_leader).is_none());

        let connz = serde_json::json!({"connections": [{"cid": 1, "name": "a-b"}, {"cid": 2}]});
        assert_eq!(connection_names(&connz).unwrap(), ["a-b"]);
        assert!(connection_names(&serde_json::json!({})).is_err());
        assert_eq!(log_tail("a\nb\nc\n", 2), "b\nc");
    }

    #[tokio::test]
    async fn rejects_a_single_node() {
        assert!(NatsCluster::start(1).await.is_err());
    }

    /// Publishes `m<i>` to `t.<i>` with message id `m<i>` (so a retried publish that was
    /// stored before is a duplicate, not a second copy), retrying until acked or the
    /// deadline passes. Returns the acked stream sequence.
    async fn publish_until_acked(js: &jetstream::Context, i: u64, deadline: Duration) -> u64 {
        let ack = eventually(deadline, &format!("an ack for m{i}"), || async {
            let publish = jetstream::message::PublishMessage::build()
                .payload(format!("m{i}").into())
                .message_id(format!("m{i}"));
            let ack = js.send_publish(format!("t.{i}"), publish).await?.await?;
            Ok(ack)
        })
        .await
        .unwrap();
        assert_eq!(ack.stream, "T");
        ack.sequence
    }

    #[tokio::test]
    async fn replicated_stream_survives_killing_the_clients_node() {
        let mut cluster = NatsCluster::start(3).await.unwrap();
        assert_eq!(cluster.len(), 3);
        let ports: Vec<u16> = (0..3).map(|i| cluster.port(i)).collect();
        assert!(!ports.contains(&4222), "{ports:?}");
        assert_eq!(
            cluster.urls(),
            format!(
                "nats://127.0.0.1:{},nats://127.0.0.1:{},nats://127.0.0.1:{}",
                ports[0], ports[1], ports[2]
            )
        );
        assert_eq!(cluster.url(1), format!("nats://127.0.0.1:{}", ports[1]));
        assert!((0..3).all(|i| cluster.is_alive(i)));

        let client = cluster
            .client_with(async_nats::ConnectOptions::new().name("testkit-cluster-client"))
            .await
            .unwrap();
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(2));
        js.create_stream(jetstream::stream::Config {
            name: "T".to_owned(),
            subjects: vec!["t.>".to_owned()],
            num_replicas: 3,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..10 {
            assert_eq!(
                publish_until_acked(&js, i, Duration::from_secs(5)).await,
                i + 1
            );
        }

        // Created before the kill, so that its (R3) leader election, if the victim led
        // it, runs alongside the stream's.
        let stream = js.get_stream("T").await.unwrap();
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("reader".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();

        let victim = cluster
            .node_with_client("testkit-cluster-client")
            .await
            .unwrap()
            .expect("the named client on some node");
        assert_eq!(client.server_info().port, cluster.port(victim));
        assert_eq!(
            cluster.node_with_client("no-such-client").await.unwrap(),
            None
        );
        let victim_pid = cluster.pid(victim).unwrap();
        cluster.kill(victim);
        assert!(!cluster.is_alive(victim));
        assert_eq!(cluster.pid(victim), None);

        // The client fails over to another node; the stream keeps a quorum (2 of 3).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
        for i in 10..20 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert_eq!(publish_until_acked(&js, i, left).await, i + 1);
        }
        let now_on = cluster
            .node_with_client("testkit-cluster-client")
            .await
            .unwrap()
            .expect("the named client reconnected");
        assert_ne!(now_on, victim);

        // Fetch in short batches, each cut after 1 s: a pull request sent while the
        // consumer has no leader (if the victim led it) gets no answer at all, and the
        // client would wait for it until `expires` + 5 s.
        let mut read = Vec::new();
        let read_until = tokio::time::Instant::now() + Duration::from_secs(15);
        while read.len() < 20 {
            assert!(
                tokio::time::Instant::now() < read_until,
                "only {} of 20 messages read: {read:?}",
                read.len()
            );
            let Ok(mut batch) = consumer
                .fetch()
                .max_messages(20 - read.len())
                .expires(Duration::from_millis(500))
                .messages()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while let Ok(Some(Ok(msg))) =
                tokio::time::timeout(Duration::from_secs(1), batch.next()).await
            {
                let sequence = msg.info().unwrap().stream_sequence;
                read.push((sequence, msg.subject.to_string(), msg.payload.clone()));
                msg.ack().await.unwrap();
            }
        }
        assert_eq!(read.len(), 20);
        for (i, (sequence, subject, payload)) in (0u64..).zip(&read) {
            assert_eq!(*sequence, i + 1);
            assert_eq!(subject, &format!("t.{i}"));
            assert_eq!(&payload[..], format!("m{i}").as_bytes());
        }

        cluster.restart(victim).await.unwrap();
        assert!(cluster.is_alive(victim));
        assert_ne!(cluster.pid(victim), Some(victim_pid));
        // The log file is appended to across restarts.
        assert_eq!(
            cluster.log(victim).matches("Server is ready").count(),
            2,
            "{}",
            cluster.log(victim)
        );
        // Same store: the restarted replica has (or catches up to) all 20 messages.
        eventually(
            Duration::from_secs(10),
            "the restarted node's replica",
            || {
                let cluster = &cluster;
                async move {
                    let jsz = cluster.monitor(victim, "/jsz").await?;
                    anyhow::ensure!(jsz["messages"] == 20, "jsz: {jsz}");
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
        let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).unwrap()).collect();
        let dir = cluster.dir().to_owned();
        drop(client);
        drop(cluster);
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "nats-server {pid} still running"
            );
        }
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
