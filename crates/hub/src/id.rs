//! Event ids: `<epoch>-<sequence>`.
//!
//! The sequence is the hub's ingest sequence: one counter for every topic, so a single
//! number says how far a client got on all the topics of its stream. The epoch names the
//! sequence's origin (one process run for core NATS topics), so an id from an earlier
//! run is recognised as unknown instead of being mistaken for a position in this one.
//! Clients treat ids as opaque.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest epoch accepted, in bytes.
pub(crate) const MAX_EPOCH_LEN: usize = 32;

/// The origin of a sequence of ids: `[0-9a-z]{1,32}`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

/// Why an epoch string was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("epoch must be 1-{MAX_EPOCH_LEN} characters of [0-9a-z], got {0:?}")]
pub struct EpochError(pub String);

impl Epoch {
    /// A fresh epoch for this process: the start time in nanoseconds mixed with the
    /// process id, in base 36. Two runs of the gateway never share one.
    pub fn generate() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let mixed = nanos ^ (u64::from(std::process::id())).rotate_left(40);
        Self::from_number(u128::from(mixed))
    }

    /// The epoch named by `n` in base 36 (at most 25 characters: always valid), e.g. a
    /// log's creation time.
    pub fn from_number(n: u128) -> Self {
        Self(Arc::from(base36(n).as_str()))
    }

    /// An epoch with a given name (tests, or ids derived from an external log).
    pub fn new(s: &str) -> Result<Self, EpochError> {
        if is_epoch(s) {
            Ok(Self(Arc::from(s)))
        } else {
            Err(EpochError(s.to_owned()))
        }
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_epoch(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_EPOCH_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(25);
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    out.into_iter().map(char::from).collect()
}

/// A parsed id: which epoch, which position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedId<'a> {
    /// The epoch part, validated as `[0-9a-z]{1,32}`.
    pub epoch: &'a str,
    /// The sequence number.
    pub seq: u64,
}

/// Parses `<epoch>-<seq>`; `None` when the text is not of that form.
pub fn parse_id(s: &str) -> Option<ParsedId<'_>> {
    let (epoch, seq) = s.trim().rsplit_once('-')?;
    if !is_epoch(epoch) || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq = seq.parse().ok()?;
    Some(ParsedId { epoch, seq })
}

/// Formats ids of one epoch without allocating: the `<epoch>-` prefix is kept and the
/// sequence is written after it into a stack buffer.
#[derive(Debug, Clone)]
pub struct IdFormatter {
    buf: [u8; MAX_EPOCH_LEN + 1 + 20],
    prefix_len: usize,
}

impl IdFormatter {
    /// A formatter for ids of `epoch`.
    pub fn new(epoch: &Epoch) -> Self {
        let mut buf = [0u8; MAX_EPOCH_LEN + 1 + 20];
        let e = epoch.as_str().as_bytes();
        buf[..e.len()].copy_from_slice(e);
        buf[e.len()] = b'-';
        Self {
            buf,
            prefix_len: e.len() + 1,
        }
    }

    /// The id of `seq`, valid until the next call.
    pub fn format(&mut self, seq: u64) -> &str {
        let mut digits = itoa::Buffer::new();
        let d = digits.format(seq).as_bytes();
        let end = self.prefix_len + d.len();
        self.buf[self.prefix_len..end].copy_from_slice(d);
        // Only ASCII was written: the epoch is [0-9a-z], then '-' and digits.
        std::str::from_utf8(&self.buf[..end]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_epochs_are_valid_and_distinct() {
        let a = Epoch::generate();
        assert!(is_epoch(a.as_str()), "{a}");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = Epoch::generate();
        assert_ne!(a, b);
    }

    #[test]
    fn numbered_epochs_are_base_36() {
        assert_eq!(Epoch::from_number(0).as_str(), "0");
        assert_eq!(Epoch::from_number(35).as_str(), "z");
        assert_eq!(Epoch::from_number(36).as_str(), "10");
        let max = Epoch::from_number(u128::MAX);
        assert!(is_epoch(max.as_str()), "{max}");
        assert_eq!(max.as_str().len(), 25);
    }

    #[test]
    fn format_and_parse_round_trip() {
        let epoch = Epoch::new("k3j9").expect("valid epoch");
        let mut f = IdFormatter::new(&epoch);
        assert_eq!(f.format(0), "k3j9-0");
        assert_eq!(f.format(u64::MAX), "k3j9-18446744073709551615");
        assert_eq!(f.format(42), "k3j9-42");
        let p = parse_id("k3j9-42").expect("parses");
        assert_eq!(
            p,
            ParsedId {
                epoch: "k3j9",
                seq: 42
            }
        );
    }

    #[test]
    fn malformed_ids() {
        for bad in [
            "",
            "42",
            "-42",
            "k3j9-",
            "k3j9-4x",
            "K3J9-4",
            "k3j9-+4",
            "k3j9-18446744073709551616",
            "a b-1",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        assert!(Epoch::new("").is_err());
        assert!(Epoch::new("UPPER").is_err());
        assert!(Epoch::new(&"a".repeat(33)).is_err());
    }
}
