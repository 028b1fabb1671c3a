//! A request as every handler sees it, whichever reader parsed it: the front's own head
//! reader (HTTP/1) or Pingora (HTTP/2, and requests handed to the proxy).

use crate::front::head::RequestHead;

/// The HTTP version a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: no chunked bodies; a stream ends with the connection.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2: the transport frames bodies.
    Http2,
}

/// Read access to a request head.
pub trait RequestView: Sync {
    /// The method, as sent.
    fn method(&self) -> &str;
    /// The path, still percent-encoded.
    fn path(&self) -> &str;
    /// The raw query, if any.
    fn query(&self) -> Option<&str>;
    /// The first value of header `name` (lower-case).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// Every value of header `name` (lower-case), in order.
    fn header_values(&self, name: &str) -> Vec<&[u8]>;
    /// The version.
    fn version(&self) -> Version;
}

impl RequestView for RequestHead {
    fn method(&self) -> &str {
        &self.method
    }

    fn path(&self) -> &str {
        RequestHead::path(self)
    }

    fn query(&self) -> Option<&str> {
        RequestHead::query(self)
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        RequestHead::header(self, name)
    }

    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn version(&self) -> Version {
        if self.minor_version == 0 {
            Version::Http10
        } else {
            Version::Http11
        }
    }
}

impl RequestView for pingora::http::RequestHeader {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }

    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect()
    }

    fn version(&self) -> Version {
        match self.version {
            http::Version::HTTP_2 => Version::Http2,
            http::Version::HTTP_10 | http::Version::HTTP_09 => Version::Http10,
            _ => Version::Http11,
        }
    }
}
