//! Single use of tickets across gateway instances (protocol §11): a JetStream key-value
//! bucket where redeeming a ticket is creating its key. Creation succeeds once per key
//! cluster-wide; the bucket forgets keys after the ticket lifetime (`max_age`), so it
//! holds at most the tickets redeemed within one lifetime.

use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream::kv::{CreateErrorKind, Store};
use async_nats::jetstream::stream;
use tokio::sync::{OnceCell, watch};

/// The bucket of redeemed tickets: `<jetstream.stream>_TICKETS`.
pub fn ticket_bucket(stream: &str) -> String {
    format!("{stream}_TICKETS")
}

/// Why a ticket could not be checked against the shared ledger (it is not spent then).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Not connected to NATS yet.
    #[error("not connected to NATS")]
    NotConnected,
    /// The bucket could not be opened or created.
    #[error("the ticket bucket {bucket} is unavailable: {reason}")]
    Bucket {
        /// Its name.
        bucket: String,
        /// What the server or client said.
        reason: String,
    },
    /// Writing the key failed (other than it existing already).
    #[error("cannot record the ticket: {0}")]
    Write(String),
}

/// Redeems tickets in a JetStream key-value bucket shared by every instance.
#[derive(Debug)]
pub struct TicketLedger {
    client: watch::Receiver<Option<Client>>,
    bucket: String,
    ttl: Duration,
    store: OnceCell<Store>,
}

impl TicketLedger {
    pub(crate) fn new(
        client: watch::Receiver<Option<Client>>,
        bucket: String,
        ttl: Duration,
    ) -> Self {
        Self {
            client,
            bucket,
            ttl,
            store: OnceCell::new(),
        }
    }

    /// Redeems ticket `id`: `Ok(true)` the first time any instance does, `Ok(false)`
    /// after that.
    pub async fn redeem(&self, id: &str) -> Result<bool, LedgerError> {
        let store = self.store.get_or_try_init(|| self.open()).await?;
        match store.create(id, bytes::Bytes::new()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(LedgerError::Write(e.to_string())),
        }
    }

    /// Opens the bucket, creating it when missing.
    async fn open(&self) -> Result<Store, LedgerError> {
        let Some(client) = self.client.borrow().clone() else {
            return Err(LedgerError::NotConnected);
        };
        let js = async_nats::jetstream::new(client);
        let bucket = |reason: String| LedgerError::Bucket {
            bucket: self.bucket.clone(),
            reason,
        };
        if let Ok(store) = js.get_key_value(&self.bucket).await {
            return Ok(store);
        }
        // The bucket's stream, made as the client library makes a key-value bucket (its
        // own `create_key_value` first asks for account details that servers before 2.10
        // answer in a form it cannot read).
        let max_age = self.ttl + Duration::from_secs(5);
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{}", self.bucket),
            description: Some("sse-gateway: tickets redeemed (single use across instances)".into()),
            subjects: vec![format!("$KV.{}.>", self.bucket)],
            max_messages_per_subject: 1,
            max_age,
            duplicate_window: max_age.min(Duration::from_secs(120)),
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..stream::Config::default()
        })
        .await
        .map_err(|e| bucket(e.to_string()))?;
        js.get_key_value(&self.bucket)
            .await
            .map_err(|e| bucket(e.to_string()))
    }
}
