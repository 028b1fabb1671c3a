//! Where a request carries its token: header, then cookie, then query (protocol §6).

use std::borrow::Cow;

/// Query parameter that may carry the token, for clients (`EventSource`) that can set
/// neither headers nor cookies.
pub const QUERY_PARAM: &str = "access_token";

/// Where a request carried its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer …`: only script can set it, so another site cannot.
    Header,
    /// The auth cookie: a browser sends it on its own, also on requests other sites make.
    Cookie,
    /// `?access_token=`.
    Query,
}

/// The first token found: `Authorization: Bearer`, then the cookie `cookie_name` in any
/// of the `Cookie` headers, then `access_token` in the raw query string. Empty values
/// count as absent, so a later source is still tried.
pub(crate) fn find<'a>(
    cookie_name: &str,
    authorization: Option<&'a [u8]>,
    cookies: &[&'a [u8]],
    query: Option<&'a str>,
) -> Option<Cow<'a, str>> {
    find_with_source(cookie_name, authorization, cookies, query).map(|(token, _)| token)
}

/// [`find`], telling where the token was.
pub(crate) fn find_with_source<'a>(
    cookie_name: &str,
    authorization: Option<&'a [u8]>,
    cookies: &[&'a [u8]],
    query: Option<&'a str>,
) -> Option<(Cow<'a, str>, TokenSource)> {
    if let Some(token) = authorization.and_then(bearer) {
        return Some((Cow::Borrowed(token), TokenSource::Header));
    }
    if let Some(token) = cookies.iter().find_map(|h| cookie(h, cookie_name)) {
        return Some((Cow::Borrowed(token), TokenSource::Cookie));
    }
    query
        .and_then(query_param)
        .map(|token| (token, TokenSource::Query))
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, RFC 7235).
fn bearer(value: &[u8]) -> Option<&str> {
    let value = value.trim_ascii();
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let rest = &value[6..];
    if !rest.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    non_empty(rest.trim_ascii())
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`), unquoted.
fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a str> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        if pair[..eq].trim_ascii() != name.as_bytes() {
            return None;
        }
        let value = pair[eq + 1..].trim_ascii();
        let value = value
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(value);
        non_empty(value)
    })
}

/// `access_token` from a raw query string, percent-decoded.
fn query_param(query: &str) -> Option<Cow<'_, str>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, value)| key == QUERY_PARAM && !value.is_empty())
        .map(|(_, value)| value)
}

/// Whether one raw query pair (`name=value`, still encoded) is a token or a ticket
/// parameter, however its name is spelled: `access_token`, `access%5Ftoken`,
/// `%61ccess_token` … are all the name [`find`] reads.
fn is_token_pair(pair: &str) -> bool {
    form_urlencoded::parse(pair.as_bytes())
        .next()
        .is_some_and(|(key, _)| key == QUERY_PARAM || key == crate::TICKET_PARAM)
}

/// The raw query without its token and ticket parameters (any percent-encoding of the
/// name), for a request passed on to another service; `None` when it holds none. The
/// other pairs keep their order and their encoding.
pub fn strip_from_query(query: &str) -> Option<String> {
    if !query.split('&').any(is_token_pair) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_token_pair(p)).collect();
    Some(kept.join("&"))
}

fn non_empty(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found<'a>(
        authorization: Option<&'a str>,
        cookies: &[&'a str],
        query: Option<&'a str>,
    ) -> Option<String> {
        let cookies: Vec<&[u8]> = cookies.iter().map(|c| c.as_bytes()).collect();
        find(
            "sse_token",
            authorization.map(str::as_bytes),
            &cookies,
            query,
        )
        .map(Cow::into_owned)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn the_token_is_stripped_in_any_spelling() {
        for query in [
            "access_token=x",
            "access%5Ftoken=x",
            "access%5ftoken=x",
            "%61ccess_token=x",
            "%61%63%63%65%73%73%5F%74%6F%6B%65%6E=x",
        ] {
            // Every spelling the finder reads is one the stripper removes.
            assert_eq!(found(None, &[], Some(query)), some("x"), "{query}");
            assert_eq!(strip_from_query(query).as_deref(), Some(""), "{query}");
        }
        assert_eq!(strip_from_query("access_token").as_deref(), Some(""));
        assert_eq!(
            strip_from_query("a=1&access%5Ftoken=x&b=%20&access_token=y").as_deref(),
            Some("a=1&b=%20")
        );
        assert_eq!(strip_from_query("a=1&token=2"), None);
        assert_eq!(strip_from_query("t%69cket=x&a=1").as_deref(), Some("a=1"));
        assert_eq!(strip_from_query("access_tokens=1"), None);
    }

    #[test]
    fn header_comes_first() {
        let got = found(
            Some("Bearer h.h.h"),
            &["sse_token=c.c.c"],
            Some("access_token=q.q.q"),
        );
        assert_eq!(got, some("h.h.h"));
    }

    #[test]
    fn bearer_scheme_forms() {
        assert_eq!(found(Some("bearer   t.t.t  "), &[], None), some("t.t.t"));
        assert_eq!(found(Some("BEARER\tt.t.t"), &[], None), some("t.t.t"));
        assert_eq!(found(Some("Bearert.t.t"), &[], None), None);
        assert_eq!(found(Some("Bearer "), &[], None), None);
        assert_eq!(found(Some("Bearer"), &[], None), None);
        assert_eq!(found(Some("Basic dXNlcjpwYXNz"), &[], None), None);
    }

    #[test]
    fn another_scheme_or_empty_bearer_falls_through_to_the_cookie() {
        assert_eq!(
            found(Some("Basic dXNlcjpwYXNz"), &["sse_token=c.c.c"], None),
            some("c.c.c")
        );
        assert_eq!(
            found(Some("Bearer "), &["sse_token=c.c.c"], None),
            some("c.c.c")
        );
    }

    #[test]
    fn cookie_among_several_cookies_and_headers() {
        let got = found(
            None,
            &["theme=dark; sse_tokenx=no", "a=1;sse_token=c.c.c; b=2"],
            Some("access_token=q.q.q"),
        );
        assert_eq!(got, some("c.c.c"));
        assert_eq!(
            found(None, &["x=1; sse_token=\"c.c.c\""], None),
            some("c.c.c")
        );
        assert_eq!(found(None, &["sse_token = c.c.c "], None), some("c.c.c"));
        // Cookie names are case-sensitive; an empty value counts as absent.
        assert_eq!(found(None, &["SSE_TOKEN=c.c.c"], None), None);
        assert_eq!(
            found(None, &["sse_token=; other=1"], Some("access_token=q")),
            some("q")
        );
        assert_eq!(found(None, &["sse_token"], None), None);
    }

    #[test]
    fn query_is_percent_decoded() {
        assert_eq!(
            found(
                None,
                &["other=1"],
                Some("topic=a&access_token=ey%4A.p%2Eq.s_-")
            ),
            some("eyJ.p.q.s_-")
        );
        assert_eq!(found(None, &[], Some("access%5Ftoken=k")), some("k"));
        assert_eq!(
            found(None, &[], Some("access_token=&access_token=second")),
            some("second")
        );
        assert_eq!(found(None, &[], Some("topic=a")), None);
        assert_eq!(found(None, &[], Some("")), None);
        assert_eq!(found(None, &[], None), None);
    }

    #[test]
    fn borrowed_unless_decoding_was_needed() {
        let plain = find("sse_token", None, &[], Some("access_token=a.b.c"));
        assert!(matches!(plain, Some(Cow::Borrowed("a.b.c"))));
        let header = find("sse_token", Some(b"Bearer a.b.c"), &[], None);
        assert!(matches!(header, Some(Cow::Borrowed("a.b.c"))));
        let cookie = find("sse_token", None, &[b"sse_token=a.b.c"], None);
        assert!(matches!(cookie, Some(Cow::Borrowed("a.b.c"))));
    }
}
