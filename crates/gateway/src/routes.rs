//! Reverse-proxy routes: `[[routes]]` path prefixes → upstream pools.
//!
//! Each route is a Pingora `LoadBalancer` (round robin over the healthy upstreams) with
//! an active health check run as a background service: an HTTP GET of `health_check`
//! expecting 2xx when configured, a TCP connect otherwise, every second. The longest
//! matching prefix wins.

use std::sync::Arc;
use std::time::Duration;

use pingora::lb::LoadBalancer;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::prelude::{HttpPeer, background_service};
use pingora::services::background::GenBackgroundService;

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
#[derive(Debug, Default)]
pub struct Routes(Vec<Route>);

impl Routes {
    /// The index of the route serving `path`.
    pub fn index_of(&self, path: &str) -> Option<usize> {
        self.0.iter().position(|r| r.matches(path))
    }

    /// The route at `index`.
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.0.get(index)
    }
}

/// The routes' pools and the background services that health-check them.
pub fn build(
    settings: &[RouteSettings],
) -> anyhow::Result<(Routes, Vec<GenBackgroundService<LoadBalancer<RoundRobin>>>)> {
    let mut routes = Vec::new();
    let mut services = Vec::new();
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
        let service = background_service(&format!("health {}", s.prefix), pool);
        routes.push(Route {
            prefix: s.prefix.clone(),
            pool: service.task(),
            connect_timeout: s.connect_timeout,
            read_timeout: s.read_timeout,
        });
        services.push(service);
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    Ok((Routes(routes), services))
}
