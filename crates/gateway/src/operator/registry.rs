//! Every open stream, by id, for the operator API: who holds it (address, token
//! subject), its topics, its progress, and the handle that closes it; and the blocks an
//! operator put on a subject or an address.
//!
//! Streams are spread over shards, each under its own lock, held only to copy out
//! references: listing 20,000 streams never holds a lock while anything is serialised,
//! and registering a stream contends with 1/16 of the others at most.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sse_hub::{CloseReason, StreamControl, TopicName};
use tokio::time::Instant;

/// Shards of the stream table.
const SHARDS: usize = 16;

/// A stream's id: 128 random bits, shown as 32 hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId([u8; 16]);

impl StreamId {
    /// A fresh id from the operating system's generator.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // No generator: fall back to a weaker mix (ids stay unique, not secret).
            bytes[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
            bytes[8..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        Self(bytes)
    }

    /// The id written as 32 hexadecimal digits (either case).
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            bytes[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(Self(bytes))
    }

    fn shard(&self) -> usize {
        usize::from(self.0[0]) % SHARDS
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One open stream.
#[derive(Debug)]
pub struct StreamEntry {
    /// Its id.
    pub id: StreamId,
    /// The client's address (as forwarded by a trusted proxy).
    pub ip: IpAddr,
    /// The `sub` of the token (or ticket) that authorized it.
    pub sub: Option<String>,
    /// Its topics.
    pub topics: Mutex<Vec<TopicName>>,
    /// Held while its topics change: one change at a time.
    pub changing: tokio::sync::Mutex<()>,
    /// When it was admitted.
    pub opened_at: SystemTime,
    /// Closes it; counts what it sent.
    pub control: Arc<StreamControl>,
}

impl StreamEntry {
    /// Records its topics after a change.
    pub fn set_topics(&self, topics: Vec<TopicName>) {
        *self.topics.lock().unwrap_or_else(PoisonError::into_inner) = topics;
    }

    /// Its topics now.
    pub fn topics(&self) -> Vec<TopicName> {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Which streams an operator means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every stream.
    All,
    /// Streams holding this topic.
    Topic(String),
    /// Streams of this token subject.
    Sub(String),
    /// Streams of this client address.
    Ip(IpAddr),
}

impl Filter {
    fn matches(&self, entry: &StreamEntry) -> bool {
        match self {
            Self::All => true,
            Self::Topic(topic) => entry
                .topics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|t| t.as_str() == topic),
            Self::Sub(sub) => entry.sub.as_deref() == Some(sub.as_str()),
            Self::Ip(ip) => entry.ip == *ip,
        }
    }
}

/// What a block applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BlockKey {
    /// A token subject.
    Sub(String),
    /// A client address.
    Ip(IpAddr),
}

/// The open streams and the blocks.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<HashMap<StreamId, Arc<StreamEntry>>>>,
    blocks: Mutex<HashMap<BlockKey, Instant>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            blocks: Mutex::default(),
        }
    }
}

impl Registry {
    /// Lists `entry` until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, entry: StreamEntry) -> Registered {
        let entry = Arc::new(entry);
        self.shard(&entry.id).insert(entry.id, entry.clone());
        Registered {
            registry: self.clone(),
            entry,
        }
    }

    /// The stream with this id.
    pub fn get(&self, id: &StreamId) -> Option<Arc<StreamEntry>> {
        self.shard(id).get(id).cloned()
    }

    /// The streams `filter` selects with an id after `after`, ordered by id, at most
    /// `limit`.
    pub fn select(
        &self,
        filter: &Filter,
        after: Option<StreamId>,
        limit: usize,
    ) -> Vec<Arc<StreamEntry>> {
        let mut found: Vec<Arc<StreamEntry>> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            found.extend(
                shard
                    .values()
                    .filter(|e| after.is_none_or(|a| e.id > a) && filter.matches(e))
                    .cloned(),
            );
        }
        found.sort_unstable_by_key(|e| e.id);
        found.truncate(limit);
        found
    }

    /// Closes every stream `filter` selects with `reason`; returns how many it closed
    /// (streams already closing are not counted again).
    pub fn close(&self, filter: &Filter, reason: CloseReason) -> usize {
        self.select(filter, None, usize::MAX)
            .iter()
            .filter(|e| e.control.close(reason))
            .count()
    }

    /// Refuses new streams of `key` for `period`.
    pub fn block(&self, key: BlockKey, period: Duration) {
        let until = Instant::now() + period;
        let mut blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        blocks.retain(|_, until| *until > now);
        let entry = blocks.entry(key).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// How much longer a stream of `sub` from `ip` is refused, when it is.
    pub fn blocked(&self, sub: Option<&str>, ip: IpAddr) -> Option<Duration> {
        let blocks = self.blocks.lock().unwrap_or_else(PoisonError::into_inner);
        if blocks.is_empty() {
            return None;
        }
        let now = Instant::now();
        let by_sub = sub.and_then(|s| blocks.get(&BlockKey::Sub(s.to_owned())));
        let by_ip = blocks.get(&BlockKey::Ip(ip));
        by_sub
            .into_iter()
            .chain(by_ip)
            .filter(|until| **until > now)
            .map(|until| *until - now)
            .max()
    }

    /// Streams listed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn shard(
        &self,
        id: &StreamId,
    ) -> std::sync::MutexGuard<'_, HashMap<StreamId, Arc<StreamEntry>>> {
        self.shards[id.shard()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A listed stream; dropping it takes the stream off the list.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    entry: Arc<StreamEntry>,
}

impl Registered {
    /// The stream's entry.
    #[cfg(test)]
    pub fn entry(&self) -> &Arc<StreamEntry> {
        &self.entry
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.shard(&self.entry.id).remove(&self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: &str, sub: Option<&str>, topics: &[&str]) -> StreamEntry {
        StreamEntry {
            id: StreamId::random(),
            ip: ip.parse().unwrap(),
            sub: sub.map(str::to_owned),
            topics: Mutex::new(
                topics
                    .iter()
                    .map(|t| TopicName::parse(t, false).unwrap())
                    .collect(),
            ),
            changing: tokio::sync::Mutex::new(()),
            opened_at: SystemTime::now(),
            control: Arc::default(),
        }
    }

    #[test]
    fn ids_are_random_and_round_trip() {
        let a = StreamId::random();
        assert_ne!(a, StreamId::random());
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(StreamId::parse(&a.to_string()), Some(a));
        assert_eq!(StreamId::parse(&a.to_string().to_uppercase()), Some(a));
        for bad in [
            "",
            "xyz",
            &"g".repeat(32),
            &"0".repeat(31),
            "+1234567890123456789012345678901",
        ] {
            assert_eq!(StreamId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters_select_and_pages_follow_the_ids() {
        let registry = Arc::new(Registry::default());
        let held: Vec<Registered> = (0..40)
            .map(|i| {
                let sub = if i % 2 == 0 { "even" } else { "odd" };
                registry.register(entry(
                    &format!("10.0.0.{}", i % 4),
                    Some(sub),
                    &["a", &format!("t{i}")],
                ))
            })
            .collect();
        assert_eq!(registry.select(&Filter::All, None, usize::MAX).len(), 40);
        assert_eq!(
            registry
                .select(&Filter::Sub("even".into()), None, 100)
                .len(),
            20
        );
        assert_eq!(
            registry
                .select(&Filter::Topic("t7".into()), None, 100)
                .len(),
            1
        );
        assert_eq!(
            registry
                .select(&Filter::Ip("10.0.0.1".parse().unwrap()), None, 100)
                .len(),
            10
        );
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = registry.select(&Filter::All, after, 7);
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            paged.extend(page.iter().map(|e| e.id));
        }
        let mut all: Vec<StreamId> = held.iter().map(|r| r.entry().id).collect();
        all.sort();
        assert_eq!(paged, all);
        drop(held);
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn closing_by_sub_closes_exactly_those_streams_once() {
        let registry = Arc::new(Registry::default());
        let u1 = registry.register(entry("10.0.0.1", Some("u1"), &["a"]));
        let u2 = registry.register(entry("10.0.0.1", Some("u2"), &["a"]));
        assert_eq!(
            registry.close(&Filter::Sub("u1".into()), CloseReason::Revoked),
            1
        );
        assert_eq!(
            registry.close(&Filter::Sub("u1".into()), CloseReason::Revoked),
            0
        );
        assert_eq!(u1.entry().control.closed(), Some(CloseReason::Revoked));
        assert_eq!(u2.entry().control.closed(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn blocks_expire() {
        let registry = Registry::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(registry.blocked(Some("u1"), ip), None);
        registry.block(BlockKey::Sub("u1".into()), Duration::from_secs(60));
        registry.block(BlockKey::Ip(ip), Duration::from_secs(10));
        assert_eq!(
            registry.blocked(Some("u1"), "10.0.0.1".parse().unwrap()),
            Some(Duration::from_secs(60))
        );
        assert_eq!(registry.blocked(None, ip), Some(Duration::from_secs(10)));
        assert_eq!(
            registry.blocked(Some("u2"), "10.0.0.1".parse().unwrap()),
            None
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(registry.blocked(Some("u1"), ip), None);
    }
}
