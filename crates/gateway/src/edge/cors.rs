//! CORS for `/events` (EventSource), `/publish` and `/tickets`: `[cors] allowed_origins`,
//! `allow_credentials`.
//!
//! Preflights (`OPTIONS`) always answer 204; an allowed `Origin` is echoed exactly in
//! `Access-Control-Allow-Origin` (never `*`), with `Vary: Origin`; other origins get no
//! CORS headers at all, so browsers refuse them. `"*"` in the list allows any origin
//! (still echoed exactly), and cannot be combined with `allow_credentials` (a
//! configuration error): credentials go only to origins listed by name.

use super::view::RequestView;

/// Response headers, name and value.
pub type Headers = Vec<(&'static str, String)>;

/// The CORS policy.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
    credentials: bool,
}

impl Cors {
    /// A policy allowing `origins` (`"*"` = any origin).
    pub fn new(origins: &[String], credentials: bool) -> Self {
        Self {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").cloned().collect(),
            credentials,
        }
    }

    /// The request's origin, when it is allowed.
    pub fn allowed<'a>(&self, origin: Option<&'a [u8]>) -> Option<&'a str> {
        let origin = std::str::from_utf8(origin?).ok()?.trim();
        if origin.is_empty() || origin.contains(['\r', '\n']) {
            return None;
        }
        (self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))).then_some(origin)
    }

    /// Whether `origin` may make credentialed (cookie) requests: listed by name (not
    /// through `"*"`) with `allow_credentials` on.
    pub fn allows_credentials_from(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = origin.trim();
        self.credentials && self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Headers for an actual response to an allowed `origin`.
    pub fn response_headers(&self, origin: &str) -> Headers {
        let mut headers = vec![
            ("Access-Control-Allow-Origin", origin.to_owned()),
            ("Vary", "Origin".to_owned()),
            ("Access-Control-Expose-Headers", "Retry-After".to_owned()),
        ];
        if self.credentials {
            headers.push(("Access-Control-Allow-Credentials", "true".to_owned()));
        }
        headers
    }

    /// Headers for a preflight from an allowed `origin`.
    pub fn preflight_headers(
        &self,
        origin: &str,
        methods: &'static str,
        requested_headers: Option<&[u8]>,
    ) -> Headers {
        let mut headers = self.response_headers(origin);
        headers.push(("Access-Control-Allow-Methods", methods.to_owned()));
        let requested = requested_headers
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| !h.contains(['\r', '\n']))
            .unwrap_or("Last-Event-ID, Authorization, Content-Type");
        headers.push(("Access-Control-Allow-Headers", requested.to_owned()));
        headers.push(("Access-Control-Max-Age", "600".to_owned()));
        headers
    }
}

/// Whether a browser sent this request on behalf of another site: its `Origin` is
/// neither this gateway's own (the `Host` it was sent to) nor one allowed to send
/// credentials by `[cors]`.
pub fn is_cross_site(cors: &Cors, req: &pingora::http::RequestHeader) -> bool {
    let Some(origin) = req.header("origin") else {
        // Browsers send Origin on every cross-site POST; without it, Sec-Fetch-Site tells.
        return req.header("sec-fetch-site") == Some(&b"cross-site"[..]);
    };
    if cors.allows_credentials_from(origin) {
        return false;
    }
    let authority = origin
        .strip_prefix(b"https://")
        .or_else(|| origin.strip_prefix(b"http://"));
    // HTTP/1 names the authority in `Host`, HTTP/2 in the request target.
    let host = req
        .header("host")
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    !matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_allowed_origins_only() {
        let cors = Cors::new(&["https://app.example".to_owned()], true);
        assert_eq!(
            cors.allowed(Some(b"https://app.example")),
            Some("https://app.example")
        );
        assert_eq!(cors.allowed(Some(b"https://evil.example")), None);
        assert_eq!(cors.allowed(None), None);
        let h = cors.response_headers("https://app.example");
        assert!(h.contains(&(
            "Access-Control-Allow-Origin",
            "https://app.example".to_owned()
        )));
        assert!(h.contains(&("Access-Control-Allow-Credentials", "true".to_owned())));
        assert!(!h.iter().any(|(_, v)| v == "*"));
    }

    #[test]
    fn star_allows_any_origin_but_echoes_it() {
        let cors = Cors::new(&["*".to_owned()], false);
        assert_eq!(cors.allowed(Some(b"http://x.test")), Some("http://x.test"));
        let h = cors.preflight_headers("http://x.test", "GET, OPTIONS", Some(b"last-event-id"));
        assert!(h.contains(&("Access-Control-Allow-Origin", "http://x.test".to_owned())));
        assert!(h.contains(&("Access-Control-Allow-Headers", "last-event-id".to_owned())));
        assert!(
            !h.iter()
                .any(|(n, _)| *n == "Access-Control-Allow-Credentials")
        );
    }

    #[test]
    fn no_list_no_cors() {
        let cors = Cors::default();
        assert_eq!(cors.allowed(Some(b"http://x.test")), None);
    }
}
