//! Every key of a configuration with its value, for telling what a reload (or a new
//! file, `--check-config --against`) changes, and whether the change applies live.
//!
//! Values are compared as the file gives them or by default (`"15s"`, `["a", "b"]`);
//! `[[routes]]` is one key. Secrets (`admin.token`, `auth.hs256_secret`,
//! `auth.ticket_secret`) are held as a SHA-256 fingerprint, never as themselves, so the
//! keys can be shown by the admin API and logged by name.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::RawConfig;

/// Keys whose value is a secret.
const SECRETS: [&str; 3] = ["admin.token", "auth.hs256_secret", "auth.ticket_secret"];

/// Keys that apply while the gateway runs (protocol §12): to new requests, and
/// `sse.heartbeat`/`sse.retry` to open streams too. A key not matched here needs a
/// restart. An entry ending in `.` covers the section.
const LIVE: [&str; 11] = [
    "limits.",
    "auth.hs256_secret",
    "auth.public_key_file",
    "auth.cookie",
    "auth.public_topics",
    "auth.ticket_secret",
    "cors.",
    "routes",
    "sse.heartbeat",
    "sse.retry",
    "log.level",
];

/// Live-looking keys that are not: the ring budget is the hub's, fixed at start.
const NOT_LIVE: [&str; 1] = ["limits.max_ring_bytes"];

/// Keys that are live when they change but not when they appear or disappear (auth's
/// kind of key and whether tickets exist are fixed at start).
const LIVE_ONLY_WHILE_SET: [&str; 3] = [
    "auth.hs256_secret",
    "auth.public_key_file",
    "auth.ticket_secret",
];

/// A configuration's keys and values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Keys(BTreeMap<String, String>);

/// How a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// From the reload on.
    Live,
    /// Only after a restart (or an upgrade); a reload keeps the old value.
    Restart,
}

impl Keys {
    /// The keys of `raw`, defaults included.
    pub fn of(raw: &RawConfig) -> Self {
        let mut keys = BTreeMap::new();
        // Serialising plain data into a TOML value cannot fail; an empty set would only
        // make every key look changed.
        if let Ok(toml::Value::Table(table)) = toml::Value::try_from(raw) {
            flatten("", &table, &mut keys);
        }
        Self(keys)
    }

    /// Takes `key`'s value (or its absence) from `new`.
    pub fn take(&mut self, new: &Keys, key: &str) {
        match new.0.get(key) {
            Some(value) => self.0.insert(key.to_owned(), value.clone()),
            None => self.0.remove(key),
        };
    }

    /// Every key that differs between `self` and `new`, sorted, with how it applies.
    pub fn changes(&self, new: &Keys) -> Vec<(String, Change)> {
        let mut names: Vec<&String> = self.0.keys().chain(new.0.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|key| {
                let (old, new) = (self.0.get(key), new.0.get(key));
                (old != new).then(|| (key.clone(), classify(key, old.is_some(), new.is_some())))
            })
            .collect()
    }
}

fn classify(key: &str, was_set: bool, is_set: bool) -> Change {
    let live = LIVE
        .iter()
        .any(|k| key == *k || (k.ends_with('.') && key.starts_with(k)))
        && !NOT_LIVE.contains(&key)
        && (!LIVE_ONLY_WHILE_SET.contains(&key) || (was_set && is_set));
    if live { Change::Live } else { Change::Restart }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            value => {
                let shown = if SECRETS.contains(&key.as_str()) {
                    fingerprint(value)
                } else {
                    value.to_string()
                };
                out.insert(key, shown);
            }
        }
    }
}

/// `sha256:` and the first 16 hex digits of the value's digest.
fn fingerprint(value: &toml::Value) -> String {
    let text = value.to_string();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut shown = String::from("sha256:");
    for byte in &digest.as_ref()[..8] {
        let _ = write!(shown, "{byte:02x}");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Keys {
        Keys::of(&RawConfig::parse(text, "test.toml").unwrap())
    }

    #[test]
    fn defaults_are_keys_too() {
        let k = keys("");
        assert_eq!(
            k.0.get("sse.heartbeat").map(String::as_str),
            Some("\"15s\"")
        );
        assert_eq!(
            k.0.get("server.listen").map(String::as_str),
            Some("\"0.0.0.0:8080\"")
        );
        assert!(
            !k.0.contains_key("tls.listen"),
            "an absent section has no keys"
        );
        // Saying a default changes nothing.
        assert!(k.changes(&keys("[sse]\nheartbeat = \"15s\"\n")).is_empty());
    }

    #[test]
    fn changes_are_named_and_classified() {
        let old = keys("[limits]\nconnect_rate_per_ip = 5\n[sse]\nreplay_window = 10\n");
        let new = keys(
            "[limits]\nconnect_rate_per_ip = 6\nmax_ring_bytes = 2000000\n[sse]\nreplay_window = 11\nretry = \"1s\"\n[server]\nlisten = \"127.0.0.1:1\"\n[cors]\nallowed_origins = [\"https://a.example\"]\n[[routes]]\nprefix = \"/a\"\nupstreams = [\"127.0.0.1:1\"]\n",
        );
        assert_eq!(
            old.changes(&new),
            [
                ("cors.allowed_origins".to_owned(), Change::Live),
                ("limits.connect_rate_per_ip".to_owned(), Change::Live),
                ("limits.max_ring_bytes".to_owned(), Change::Restart),
                ("routes".to_owned(), Change::Live),
                ("server.listen".to_owned(), Change::Restart),
                ("sse.replay_window".to_owned(), Change::Restart),
                ("sse.retry".to_owned(), Change::Live),
            ]
        );
    }

    #[test]
    fn secrets_are_fingerprints_and_their_kind_is_fixed() {
        let secret = "s".repeat(40);
        let old = keys(&format!(
            "[auth]\nenabled = true\nhs256_secret = \"{secret}\"\n"
        ));
        let shown = old.0.get("auth.hs256_secret").unwrap();
        assert!(
            shown.starts_with("sha256:") && !shown.contains(&secret),
            "{shown}"
        );
        let rotated = keys(&format!(
            "[auth]\nenabled = true\nhs256_secret = \"{}\"\n",
            "t".repeat(40)
        ));
        assert_eq!(
            old.changes(&rotated),
            [("auth.hs256_secret".to_owned(), Change::Live)]
        );
        // Tickets switched on: not live.
        let tickets = keys(&format!(
            "[auth]\nenabled = true\nhs256_secret = \"{secret}\"\nticket_secret = \"{secret}\"\n"
        ));
        assert_eq!(
            old.changes(&tickets),
            [("auth.ticket_secret".to_owned(), Change::Restart)]
        );
    }

    #[test]
    fn keys_survive_json_for_the_admin_api() {
        let k = keys("[limits]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
        let back: Keys = serde_json::from_str(&serde_json::to_string(&k).unwrap()).unwrap();
        assert_eq!(back, k);
    }
}
