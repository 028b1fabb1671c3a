//! Topic names: the syntax of the protocol (§2) and its validation.
//!
//! A topic is 1–256 bytes of dot-separated tokens; each token is one or more of
//! `[A-Za-z0-9_-]`. With wildcards allowed, a token may instead be `*` (exactly one
//! token) or, as the last token only, `>` (one or more tokens). These are the NATS
//! subject wildcards, so a topic maps one-to-one onto the subject `<prefix>.<topic>`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// A validated topic name. Cheap to clone (one reference count).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

/// Why a string is not a topic name.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Nothing at all.
    #[error("topic is empty")]
    Empty,
    /// More than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is {len} bytes long; at most {MAX_TOPIC_LEN} are allowed")]
    TooLong {
        /// Length of the rejected name in bytes.
        len: usize,
    },
    /// Two dots in a row, or a dot at either end.
    #[error("topic has an empty token (a leading, trailing or doubled '.')")]
    EmptyToken,
    /// A byte outside `[A-Za-z0-9_-]` and the wildcards.
    #[error(
        "topic has a character not allowed in a topic ({ch:?} at byte {at}); use A-Z a-z 0-9 _ - and '.'"
    )]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// `*` or `>` while wildcards are disabled.
    #[error("wildcards ('*', '>') are not enabled on this gateway")]
    WildcardNotAllowed,
    /// `>` not in the last token, or a wildcard mixed with other characters in a token.
    #[error("misplaced wildcard: '*' must be a whole token and '>' must be the whole last token")]
    MisplacedWildcard,
}

impl TopicName {
    /// Validates `s` as a topic; wildcards are accepted only when `allow_wildcards`.
    pub fn parse(s: &str, allow_wildcards: bool) -> Result<Self, TopicError> {
        validate(s, allow_wildcards)?;
        Ok(Self(Arc::from(s)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the name contains `*` or `>` tokens.
    pub fn is_wildcard(&self) -> bool {
        self.0.split('.').any(|t| t == "*" || t == ">")
    }

    /// Whether a message on `subject` (a topic name without wildcards) belongs to this
    /// topic: `*` matches one token, a last `>` one or more.
    pub fn matches(&self, subject: &str) -> bool {
        crate::pattern::matches(&self.0, subject)
    }

    /// Whether some subject belongs to both topics.
    pub fn overlaps(&self, other: &TopicName) -> bool {
        let mut a = self.0.split('.');
        let mut b = other.0.split('.');
        loop {
            match (a.next(), b.next()) {
                // `>` takes one or more tokens: whatever the other has left from here.
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

fn validate(s: &str, allow_wildcards: bool) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong { len: s.len() });
    }
    let mut offset = 0;
    let mut tokens = s.split('.').peekable();
    while let Some(token) = tokens.next() {
        let last = tokens.peek().is_none();
        match token {
            "" => return Err(TopicError::EmptyToken),
            "*" | ">" if !allow_wildcards => return Err(TopicError::WildcardNotAllowed),
            "*" => {}
            ">" if last => {}
            ">" => return Err(TopicError::MisplacedWildcard),
            _ => {
                for (i, ch) in token.char_indices() {
                    if ch == '*' || ch == '>' {
                        return Err(if allow_wildcards {
                            TopicError::MisplacedWildcard
                        } else {
                            TopicError::WildcardNotAllowed
                        });
                    }
                    if !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-') {
                        return Err(TopicError::InvalidChar { ch, at: offset + i });
                    }
                }
            }
        }
        offset += token.len() + 1;
    }
    Ok(())
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str, wild: bool) {
        assert!(TopicName::parse(s, wild).is_ok(), "{s:?} should be valid");
    }

    fn err(s: &str, wild: bool) -> TopicError {
        match TopicName::parse(s, wild) {
            Ok(_) => panic!("{s:?} should be invalid"),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_topics() {
        ok("orders", false);
        ok("orders.42", false);
        ok("a-b_c.D9", false);
        ok(&"x".repeat(256), false);
    }

    #[test]
    fn rejects_bad_syntax() {
        assert_eq!(err("", false), TopicError::Empty);
        assert_eq!(
            err(&"x".repeat(257), false),
            TopicError::TooLong { len: 257 }
        );
        assert_eq!(err("a..b", false), TopicError::EmptyToken);
        assert_eq!(err(".a", false), TopicError::EmptyToken);
        assert_eq!(err("a.", false), TopicError::EmptyToken);
        assert_eq!(
            err("a.b c", false),
            TopicError::InvalidChar { ch: ' ', at: 3 }
        );
        assert_eq!(err("é", false), TopicError::InvalidChar { ch: 'é', at: 0 });
        assert_eq!(
            err("a/b", false),
            TopicError::InvalidChar { ch: '/', at: 1 }
        );
    }

    #[test]
    fn overlapping_topics() {
        let t = |s: &str| TopicName::parse(s, true).expect("valid topic");
        for (a, b) in [
            ("a.b", "a.b"),
            ("a.*", "a.b"),
            ("a.>", "a.b.c"),
            ("*.b", "a.*"),
            (">", "x.y"),
            ("a.*.c", "a.b.>"),
        ] {
            assert!(t(a).overlaps(&t(b)), "{a} {b}");
            assert!(t(b).overlaps(&t(a)), "{b} {a}");
        }
        for (a, b) in [
            ("a.b", "a.c"),
            ("a.*", "a.b.c"),
            ("a.>", "a"),
            ("a.b", "b.>"),
        ] {
            assert!(!t(a).overlaps(&t(b)), "{a} {b}");
            assert!(!t(b).overlaps(&t(a)), "{b} {a}");
        }
        assert!(t("a.*").matches("a.b"));
        assert!(!t("a.*").matches("a.b.c"));
    }

    #[test]
    fn wildcards_only_when_enabled() {
        assert_eq!(err("orders.*", false), TopicError::WildcardNotAllowed);
        assert_eq!(err("orders.>", false), TopicError::WildcardNotAllowed);
        assert_eq!(err("orders.a*", false), TopicError::WildcardNotAllowed);
        ok("orders.*", true);
        ok("*.created", true);
        ok("orders.>", true);
        ok(">", true);
        assert_eq!(err("orders.>.x", true), TopicError::MisplacedWildcard);
        assert_eq!(err("orders.a*", true), TopicError::MisplacedWildcard);
        assert!(TopicName::parse("a.*", true).is_ok_and(|t| t.is_wildcard()));
        assert!(TopicName::parse("a.b", true).is_ok_and(|t| !t.is_wildcard()));
    }
}
