//! Topic patterns and when one pattern covers another.
//!
//! A pattern is a [`TopicName`](crate::TopicName) with wildcards allowed: `*` is exactly
//! one token, a last `>` one or more. A topic without wildcards is a pattern that matches
//! only itself.
//!
//! [`covers`]`(p, q)` holds when every subject `q` can match is matched by `p`. It is what
//! the authorizer asks of a claim pattern `p` and a requested topic `q`, which may itself
//! be a wildcard subscription; for a literal `q` it is [`matches`].

/// Whether every subject that pattern `q` matches is also matched by pattern `p`.
///
/// Both must be valid patterns (`TopicName::parse(_, true)`); for a literal `q` this is
/// plain matching. Walking both token by token:
///
/// - a `>` in `p` covers whatever non-empty rest `q` has (`*` tokens and `>` included);
/// - a `*` in `p` covers one literal or `*` of `q`, but not a `>` (that may stand for
///   several tokens);
/// - a literal in `p` covers only the same literal (a `*` in `q` may be any token);
/// - both must run out together.
pub fn covers(p: &str, q: &str) -> bool {
    let mut p = p.split('.');
    let mut q = q.split('.');
    loop {
        match (p.next(), q.next()) {
            (None, None) | (Some(">"), Some(_)) => return true,
            (Some("*"), Some(qt)) if qt != ">" => {}
            (Some(pt), Some(qt)) if pt == qt && pt != "*" => {}
            _ => return false,
        }
    }
}

/// Whether a message on `subject` (a topic name without wildcards) belongs to the topic
/// `pattern`: `*` matches one token, a last `>` one or more.
pub fn matches(pattern: &str, subject: &str) -> bool {
    covers(pattern, subject)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MAX_TOPIC_LEN as MAX_PATTERN_LEN, TopicName};
    use proptest::prelude::*;

    fn is_valid(s: &str) -> bool {
        TopicName::parse(s, true).is_ok()
    }

    #[test]
    fn pattern_matching() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.c"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "x"));
        assert!(matches("*.b.>", "a.b.c.d"));
        assert!(!matches("a.b", "a.b.c"));
    }

    #[test]
    fn valid_and_invalid_patterns() {
        for ok in [
            "a",
            "orders.42",
            "a-b_c.D9",
            "*",
            ">",
            "orders.*",
            "orders.>",
            "*.*.>",
        ] {
            assert!(is_valid(ok), "{ok}");
        }
        let long = "a".repeat(MAX_PATTERN_LEN + 1);
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a.>.b",
            ">.a",
            "a*",
            "a.b>",
            "**",
            "a b",
            "a/b",
            "ä",
            long.as_str(),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        assert!(is_valid(&"a".repeat(MAX_PATTERN_LEN)));
    }

    #[test]
    fn covers_table() {
        // (claim pattern, requested topic, covered)
        let table = [
            // literals
            ("orders.42", "orders.42", true),
            ("orders.42", "orders.43", false),
            ("orders", "orders.42", false),
            ("orders.42", "orders", false),
            // a literal is covered by any pattern that matches it
            ("orders.*", "orders.42", true),
            ("orders.>", "orders.42", true),
            ("orders.>", "orders.42.items", true),
            (">", "orders.42", true),
            ("*.42", "orders.42", true),
            ("orders.*", "orders.42.items", false),
            ("orders.*", "orders", false),
            ("orders.>", "orders", false),
            ("*", "orders.42", false),
            // requested `*`
            ("orders.*", "orders.*", true),
            ("orders.>", "orders.*", true),
            (">", "orders.*", true),
            ("*.*", "orders.*", true),
            ("orders.42", "orders.*", false),
            ("orders.*.x", "orders.*", false),
            ("orders.*", "*.*", false),
            ("*.*", "*.*", true),
            ("*", "*", true),
            ("*.>", "*.*", true),
            // requested `>`
            ("orders.>", "orders.>", true),
            (">", "orders.>", true),
            ("*.>", "orders.>", true),
            ("orders.*", "orders.>", false),
            ("orders.*.>", "orders.>", false),
            ("orders.42", "orders.>", false),
            ("orders.>", "orders.*.>", true),
            ("orders.*.>", "orders.*.>", true),
            ("orders.*.>", "orders.x.>", true),
            ("orders.x.>", "orders.*.>", false),
            (">", ">", true),
            ("*", ">", false),
            ("*.>", ">", false),
            ("a.>", ">", false),
            (">", "*", true),
            (">", "a", true),
        ];
        for (p, q, want) in table {
            assert!(is_valid(p) && is_valid(q), "{p} {q}");
            assert_eq!(covers(p, q), want, "covers({p:?}, {q:?})");
        }
    }

    /// A token of a small alphabet, or a wildcard.
    fn pattern_strategy(wildcards: bool) -> impl Strategy<Value = String> {
        let token = if wildcards {
            prop_oneof![Just("a"), Just("b"), Just("*")].boxed()
        } else {
            prop_oneof![Just("a"), Just("b")].boxed()
        };
        (
            prop::collection::vec(token, 1..=4),
            prop::bool::weighted(if wildcards { 0.3 } else { 0.0 }),
        )
            .prop_map(|(mut tokens, tail)| {
                if tail {
                    let last = tokens.len() - 1;
                    tokens[last] = ">";
                }
                tokens.join(".")
            })
    }

    /// Every literal subject over {a, b, c} with 1..=5 tokens (`c` never appears in the
    /// generated patterns, so it plays "any other token").
    fn all_subjects() -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut level: Vec<String> = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for prefix in &level {
                for t in ["a", "b", "c"] {
                    let s = if prefix.is_empty() {
                        t.to_owned()
                    } else {
                        format!("{prefix}.{t}")
                    };
                    next.push(s);
                }
            }
            out.extend(next.iter().cloned());
            level = next;
        }
        out
    }

    /// Every pattern over {a, b} of 1..=3 tokens, with `*` anywhere and `>` last.
    fn all_small_patterns() -> Vec<String> {
        let mut out = Vec::new();
        let mut level: Vec<String> = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for prefix in &level {
                for t in ["a", "b", "*", ">"] {
                    let s = if prefix.is_empty() {
                        t.to_owned()
                    } else {
                        format!("{prefix}.{t}")
                    };
                    if t == ">" {
                        out.push(s);
                    } else {
                        next.push(s);
                    }
                }
            }
            out.extend(next.iter().cloned());
            level = next;
        }
        out
    }

    /// Exhaustive check on small patterns: `covers(p, q)` is exactly "every subject of q
    /// is a subject of p". Subjects up to 5 tokens over {a, b, c} suffice: when coverage
    /// fails, q with `c` for `*` and `c` or `c.c` for `>` (at most 4 tokens) is a witness.
    #[test]
    fn covers_agrees_with_subject_sets_exhaustively() {
        let patterns = all_small_patterns();
        assert_eq!(patterns.len(), 4 + 12 + 36);
        let subjects = all_subjects();
        for p in &patterns {
            assert!(is_valid(p), "{p}");
            for q in &patterns {
                let by_subjects = subjects.iter().all(|s| !covers(q, s) || covers(p, s));
                assert_eq!(covers(p, q), by_subjects, "covers({p:?}, {q:?})");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn covers_is_sound(p in pattern_strategy(true), q in pattern_strategy(true)) {
            if covers(&p, &q) {
                for s in all_subjects() {
                    if covers(&q, &s) {
                        prop_assert!(covers(&p, &s), "{p} covers {q} but not {s}");
                    }
                }
            }
        }

        #[test]
        fn covers_is_complete(p in pattern_strategy(true), q in pattern_strategy(true)) {
            // When p does not cover q, some subject of q escapes p: take `*` and `>` as a
            // token the patterns never name, `>` once as one and once as two tokens.
            if !covers(&p, &q) {
                let one = q.replace(['*', '>'], "c");
                let two = q.replace('*', "c").replace('>', "c.c");
                prop_assert!(covers(&q, &one) && covers(&q, &two));
                prop_assert!(!covers(&p, &one) || !covers(&p, &two), "{p} vs {q}");
            }
        }

        #[test]
        fn covers_is_a_preorder(
            p in pattern_strategy(true),
            q in pattern_strategy(true),
            r in pattern_strategy(true),
        ) {
            prop_assert!(covers(&p, &p));
            if covers(&p, &q) && covers(&q, &r) {
                prop_assert!(covers(&p, &r));
            }
        }

        #[test]
        fn literals_cover_only_themselves(p in pattern_strategy(false), q in pattern_strategy(false)) {
            prop_assert_eq!(covers(&p, &q), p == q);
        }
    }
}
