//! What a reverse-proxied request tells its upstream (protocol §9, "Forwarding").
//!
//! - `X-Forwarded-For`: from a peer outside `limits.trusted_proxies` exactly the peer's
//!   address (whatever the client sent is replaced, and its `Forwarded` and `X-Real-IP`
//!   are removed: an untrusted client cannot name itself); from a trusted proxy, the
//!   chain it sent with the proxy's own address appended.
//! - `X-Forwarded-Proto`: `https` on the TLS listener, `http` otherwise;
//!   `X-Forwarded-Host`: the request's `Host`.
//! - The gateway's `access_token` query parameter is removed, however its name is
//!   percent-encoded: the token is not the upstream's business, and URLs end up in logs.

use std::net::IpAddr;

use pingora::http::RequestHeader;

/// The forwarding headers and the query for the upstream's copy of a request.
pub fn prepare(
    upstream: &mut RequestHeader,
    peer: IpAddr,
    peer_trusted: bool,
    tls: bool,
) -> pingora::Result<()> {
    let chain = if peer_trusted {
        let sent: Vec<String> = upstream
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        if sent.is_empty() {
            peer.to_string()
        } else {
            format!("{}, {peer}", sent.join(", "))
        }
    } else {
        upstream.remove_header("forwarded");
        upstream.remove_header("x-real-ip");
        peer.to_string()
    };
    upstream.insert_header("X-Forwarded-For", chain)?;
    upstream.insert_header("X-Forwarded-Proto", if tls { "https" } else { "http" })?;
    if let Some(host) = upstream.headers.get("host").cloned() {
        upstream.insert_header("X-Forwarded-Host", host)?;
    }
    strip_token(upstream)
}

/// Removes the token parameter from the upstream request's query.
fn strip_token(upstream: &mut RequestHeader) -> pingora::Result<()> {
    let Some(query) = upstream.uri.query() else {
        return Ok(());
    };
    let Some(kept) = sse_auth::strip_from_query(query) else {
        return Ok(());
    };
    let path = upstream.uri.path();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{kept}")
    };
    let uri = target.parse().map_err(|_| {
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "cannot rewrite the request target",
        )
    })?;
    upstream.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn values(r: &RequestHeader, name: &str) -> Vec<String> {
        r.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn an_untrusted_peer_cannot_name_itself() {
        let mut r = request(
            "/a",
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-For", "7.7.7.7"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Real-IP", "6.6.6.6"),
                ("Host", "gw.example"),
            ],
        );
        prepare(&mut r, "127.0.0.1".parse().unwrap(), false, false).unwrap();
        assert_eq!(values(&r, "x-forwarded-for"), ["127.0.0.1"]);
        assert!(values(&r, "forwarded").is_empty());
        assert!(values(&r, "x-real-ip").is_empty());
        assert_eq!(values(&r, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&r, "x-forwarded-host"), ["gw.example"]);
    }

    #[test]
    fn a_trusted_proxy_gets_itself_appended() {
        let mut r = request(
            "/a",
            &[("X-Forwarded-For", "203.0.113.7"), ("X-Real-IP", "x")],
        );
        prepare(&mut r, "10.0.0.2".parse().unwrap(), true, true).unwrap();
        assert_eq!(values(&r, "x-forwarded-for"), ["203.0.113.7, 10.0.0.2"]);
        assert_eq!(values(&r, "x-real-ip"), ["x"]);
        assert_eq!(values(&r, "x-forwarded-proto"), ["https"]);
    }

    #[test]
    fn the_token_never_reaches_the_upstream() {
        let mut r = request("/a/b?x=1&access%5Ftoken=LEAK&y=2", &[]);
        prepare(&mut r, "127.0.0.1".parse().unwrap(), false, false).unwrap();
        assert_eq!(r.uri.to_string(), "/a/b?x=1&y=2");
        let mut r = request("/a?access_token=LEAK", &[]);
        prepare(&mut r, "127.0.0.1".parse().unwrap(), false, false).unwrap();
        assert_eq!(r.uri.to_string(), "/a");
    }
}
