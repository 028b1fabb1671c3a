//! Waiting with deadlines instead of sleeping, and free loopback ports.

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use tokio::time::Instant;

/// How long anything a test waits for may take (a response, an event, a metric to
/// reach a value) unless the test says otherwise: long enough for a loaded 2-core CI
/// machine, short enough that a broken gateway fails a test instead of hanging it. The
/// one bound of every test suite of the workspace.
pub const WAIT: Duration = Duration::from_secs(15);

/// The default bound of the testkit's own network waits: [`WAIT`].
pub const DEFAULT_TIMEOUT: Duration = WAIT;

/// Pause between two attempts of [`eventually`].
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Calls `f` until it returns `Ok`, at most until `timeout` has passed, pausing 25 ms
/// between attempts. One attempt that hangs is cut at the deadline too.
///
/// The error names `what`, the number of attempts and the last attempt's error, e.g.
/// `timed out after 5s waiting for sse_topics_active == 0 (40 attempts); last error: …`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last_error = match tokio::time::timeout_at(deadline, f()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("the last attempt was still running"),
        };
        let now = Instant::now();
        if now >= deadline {
            let last = format!("{last_error:#}");
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what} ({attempts} attempts); \
                 last error: {last}"
            );
        }
        tokio::time::sleep_until((now + POLL_INTERVAL).min(deadline)).await;
    }
}

/// A loopback TCP port that was free a moment ago (bound on 127.0.0.1:0 and released).
///
/// Another process may take it before it is used; callers that start servers retry with
/// a new port when the bind fails. Panics if no port can be bound at all.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free loopback ports: all are held while picking, so they differ from each
/// other. Same caveat as [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    // Outside the kernel's ephemeral range (32768-60999 on Linux), so that sockets other
    // tests bind to port 0 meanwhile cannot take a port handed out here before its
    // process binds it.
    const RANGE: std::ops::Range<u16> = 20_000..32_000;
    let mut held: Vec<TcpListener> = Vec::with_capacity(n);
    let mut seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
    while held.len() < n {
        // xorshift: different tests (processes, threads) pick different ports.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = RANGE.start + (seed % u64::from(RANGE.end - RANGE.start)) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| {
            l.local_addr()
                .expect("a bound listener has an address")
                .port()
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[tokio::test]
    async fn eventually_returns_first_success() {
        let mut calls = 0;
        let v = eventually(Duration::from_secs(5), "third call", || {
            calls += 1;
            let c = calls;
            async move {
                if c < 3 {
                    anyhow::bail!("call {c}")
                }
                Ok(c)
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_names_what_and_last_error() {
        let err = eventually(Duration::from_secs(1), "the moon", || async {
            anyhow::bail!("not yet") as anyhow::Result<()>
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("the moon"), "{err}");
        assert!(err.contains("not yet"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_cuts_a_hanging_attempt() {
        let err = eventually(Duration::from_secs(1), "a hang", || {
            std::future::pending::<anyhow::Result<()>>()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("still running"), "{err}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(8);
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 8);
        assert_ne!(free_port(), 0);
    }
}
