//! Which handler serves a path, and the paths no handler may see (protocol §9, "Routes").
//!
//! Paths are matched as sent (percent-encoded), so a path must not be able to mean one
//! thing here and another to a hop that normalises it: before any matching, a path
//! holding a dot segment (`.` or `..`, also percent-encoded in any case mix, also with a
//! `;` parameter as some servers read `..;`), an encoded slash or backslash (`%2F`,
//! `%5C`), a raw backslash, or `%00` is refused `400 bad_path`. Route prefixes then match
//! whole segments only.

use crate::publish::is_publish_path;
use crate::request::is_events_path;
use crate::routes::Routes;
use crate::stream_control::is_stream_control_path;
use crate::tickets::TICKETS_PATH;

use super::error::ApiError;

/// The browser demo page.
pub const DEMO_PATH: &str = "/demo";

/// The JavaScript client module.
pub const CLIENT_PATH: &str = "/client.js";

/// Who serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `GET /events…`: an event stream.
    Events,
    /// `POST /publish/{topic}`.
    Publish,
    /// `POST /tickets`.
    Tickets,
    /// `POST /streams/{id}`: a stream's topics change.
    StreamControl,
    /// The demo page.
    Demo,
    /// The JavaScript client.
    Client,
    /// A reverse-proxy route (its index in [`Routes`]).
    Route(usize),
    /// Nothing: 404.
    NotFound,
}

/// The handler of `path`.
pub fn target(path: &str, routes: &Routes) -> Target {
    if is_events_path(path) {
        Target::Events
    } else if is_publish_path(path) {
        Target::Publish
    } else if path == TICKETS_PATH {
        Target::Tickets
    } else if is_stream_control_path(path) {
        Target::StreamControl
    } else if path == DEMO_PATH {
        Target::Demo
    } else if path == CLIENT_PATH {
        Target::Client
    } else if let Some(index) = routes.index_of(path) {
        Target::Route(index)
    } else {
        Target::NotFound
    }
}

/// Refuses paths that could escape a route prefix on a hop that normalises them.
pub fn check(path: &str) -> Result<(), ApiError> {
    if path.contains('\\') {
        return Err(ApiError::bad_path("the path holds a backslash"));
    }
    let bytes = path.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|&(_, &b)| b == b'%') {
        let code = bytes.get(i + 1..i + 3).map(|h| h.to_ascii_uppercase());
        match code.as_deref() {
            Some(b"2F") | Some(b"5C") => {
                return Err(ApiError::bad_path(
                    "the path holds an encoded slash or backslash",
                ));
            }
            Some(b"00") => return Err(ApiError::bad_path("the path holds an encoded NUL")),
            _ => {}
        }
    }
    if path.split('/').any(is_dot_segment) {
        return Err(ApiError::bad_path("the path holds a '.' or '..' segment"));
    }
    Ok(())
}

/// Whether a raw segment means `.` or `..` once its dots are decoded (`%2e`, any case)
/// and a `;` parameter is cut off.
fn is_dot_segment(segment: &str) -> bool {
    let segment = segment.split(';').next().unwrap_or_default();
    let mut dots = 0;
    let mut rest = segment.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'2'
            && rest[2].eq_ignore_ascii_case(&b'e')
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_in_every_spelling() {
        for path in [
            "/api/orders/../../internal/admin",
            "/api/orders/%2e%2e/%2e%2e/internal/admin",
            "/api/orders/%2E%2e/x",
            "/api/orders/.%2e/x",
            "/api/orders/%2e./x",
            "/api/orders/..%2f..%2finternal",
            "/api/orders/..%2F..%2Finternal",
            "/api/orders/a%5cb",
            "/api/orders/a\\b",
            "/api/orders/a%00",
            "/api/orders/./x",
            "/api/orders/%2e/x",
            "/api/orders/..;/admin",
            "/api/orders/..",
            "/..",
        ] {
            let e = check(path).unwrap_err();
            assert_eq!((e.status, e.code), (400, "bad_path"), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "/api/orders",
            "/api/orders/",
            "/api/orders/42",
            "/api/orders/a.b",
            "/api/orders/...",
            "/api/orders/.hidden",
            "/api/orders/a%20b",
            "/api/orders//x",
            "/events/orders.42",
            "/api/%2e%2e%2e",
        ] {
            assert!(check(path).is_ok(), "{path}");
        }
    }
}
