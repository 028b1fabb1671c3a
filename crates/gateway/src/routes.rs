//! Reverse-proxy routes: `[[routes]]` path prefixes → upstream pools.
//!
//! Each route is a Pingora `LoadBalancer` (round robin over the healthy upstreams) with
//! an active health check: an HTTP GET of `health_check` expecting 2xx when configured, a
//! TCP connect otherwise, every second, run by a task per pool that lives as long as the
//! route set is the configured one (a reload starts the new set's and stops the old's).
//! The longest matching prefix wins.

use std::sync::Arc;
use std::time::Duration;

use pingora::lb::LoadBalancer;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::prelude::HttpPeer;
use tokio::sync::watch;

use crate::config::RouteSettings;

/// How often upstreams are checked.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// One route.
pub struct Route {
    /// Path prefix (`/api/orders` matches `/api/orders` and `/api/orders/…`).
    pub prefix: String,
    /// The pool.
    pub pool: Arc<LoadBalancer<RoundRobin>>,
    /// Connect timeout per upstream attempt.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes from the upstream.
    pub read_timeout: Duration,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Whether `path` is under this route's prefix.
    pub fn matches(&self, path: &str) -> bool {
        let prefix = self.prefix.trim_end_matches('/');
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/') || prefix.is_empty())
    }

    /// A healthy upstream, round robin; `None` when every one is down.
    pub fn peer(&self) -> Option<Box<HttpPeer>> {
        let backend = self.pool.select(b"", 256)?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        Some(Box::new(peer))
    }
}

/// Every route, longest prefix first.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Arc<Route>>,
    /// Set (when the set is dropped) to stop its health checks.
    stop: watch::Sender<bool>,
}

impl Routes {
    /// The index of the route serving `path`.
    pub fn index_of(&self, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(path))
    }

    /// The route at `index`.
    pub fn get(&self, index: usize) -> Option<&Arc<Route>> {
        self.routes.get(index)
    }

    /// Starts checking every pool's upstreams (on the current runtime), for as long as
    /// this set lives.
    pub fn start_health_checks(&self) {
        for route in &self.routes {
            let route = route.clone();
            let stop = self.stop.subscribe();
            tokio::spawn(async move { route.pool.run(stop, None).await });
        }
    }
}

impl Drop for Routes {
    /// A set replaced by a reload stops checking its upstreams once its last reader
    /// lets go of it.
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// The routes' pools; their health checks start with [`Routes::start_health_checks`].
pub fn build(settings: &[RouteSettings]) -> anyhow::Result<Routes> {
    let mut routes = Vec::new();
    for s in settings {
        let mut pool =
            LoadBalancer::<RoundRobin>::try_from_iter(s.upstreams.iter().map(String::as_str))
                .map_err(|e| anyhow::anyhow!("route {}: upstreams: {e}", s.prefix))?;
        match &s.health_check {
            Some(path) => {
                let mut check = HttpHealthCheck::new("localhost", false);
                check.req.set_uri(
                    path.parse()
                        .map_err(|e| anyhow::anyhow!("route {}: health_check: {e}", s.prefix))?,
                );
                check.validator = Some(Box::new(|resp| {
                    if resp.status.is_success() {
                        Ok(())
                    } else {
                        Err(pingora::Error::explain(
                            pingora::ErrorType::HTTPStatus(resp.status.as_u16()),
                            "health check answered with a non-2xx status",
                        ))
                    }
                }));
                pool.set_health_check(Box::new(check));
            }
            None => pool.set_health_check(TcpHealthCheck::new()),
        }
        pool.health_check_frequency = Some(HEALTH_EVERY);
        routes.push(Arc::new(Route {
            prefix: s.prefix.clone(),
            pool: Arc::new(pool),
            connect_timeout: s.connect_timeout,
            read_timeout: s.read_timeout,
        }));
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok(Routes {
        routes,
        stop: watch::channel(false).0,
    })
}
