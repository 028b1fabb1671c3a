//! OTLP/HTTP export of the gateway's spans (`[tracing]`), with OpenTelemetry's SDK.
//!
//! The libraries record spans with `sse-trace` (no SDK there); this module is the
//! [`Exporter`] they are handed. A finished span is turned into the SDK's `SpanData` and
//! given to the SDK's batch span processor, which queues it in a bounded channel (full:
//! the span is dropped, and the drop counted in the processor's shutdown log) and exports
//! batches from a thread of its own, as OTLP/HTTP with JSON bodies, through reqwest's
//! blocking client. Nothing here runs on a tokio worker but the conversion and a
//! `try_send`: no stream, no ingest ever waits for the collector.
//!
//! The exporter is configured from `[tracing]`: the file's endpoint, protocol and timeout
//! override the `OTEL_EXPORTER_OTLP_*` variables the SDK reads for them, and the queue
//! settings below its `OTEL_BSP_*`; `OTEL_EXPORTER_OTLP_HEADERS` is still sent (a hosted
//! collector's API key).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks,
    SpanProcessor as _,
};

use sse_trace::{Exporter, Kind, SpanRecord, Tracer, Value};

use crate::config::TracingSettings;

/// How long finished spans may wait before they are sent (a batch also goes when full).
const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// Spans per POST at most.
const EXPORT_BATCH: usize = 512;

/// While exports fail, a warning at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The running exporter: the [`Tracer`] to hand to the hub's feeders and the publish
/// API, and what flushes the queue at exit.
#[derive(Debug)]
pub struct Traces {
    tracer: Tracer,
    processor: Arc<BatchSpanProcessor>,
    counts: Arc<Counts>,
}

impl Traces {
    /// Starts the export thread. Nothing is sent before the first span.
    pub fn start(settings: &TracingSettings) -> anyhow::Result<Self> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(settings.traces_url.as_str())
            .with_timeout(settings.export_timeout)
            .build()
            .context("tracing: building the OTLP/HTTP exporter")?;
        let counts = Arc::new(Counts {
            // What may wait in the queue and in the batch being filled.
            in_flight: (settings.max_queued_spans + EXPORT_BATCH) as u64,
            ..Counts::default()
        });
        let exporter = Logged {
            inner: exporter,
            counts: counts.clone(),
        };
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queued_spans)
            .with_max_export_batch_size(EXPORT_BATCH.min(settings.max_queued_spans))
            .with_scheduled_delay(EXPORT_DELAY)
            .build();
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batches)
            .build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let processor = Arc::new(processor);
        let scope = InstrumentationScope::builder("sse-gateway")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = Tracer::new(
            Otlp {
                processor: processor.clone(),
                scope,
                counts: counts.clone(),
            },
            settings.sampling_ratio,
        );
        tracing::info!(
            endpoint = %settings.traces_url,
            sampling_ratio = settings.sampling_ratio,
            service = %settings.service_name,
            "exporting traces over OTLP/HTTP"
        );
        Ok(Self {
            tracer,
            processor,
            counts,
        })
    }

    /// The tracer spans are recorded with.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// Sends what is queued (at most the export timeout) and stops the export thread.
    pub fn shutdown(&self) {
        if let Err(e) = self.processor.shutdown() {
            tracing::warn!(error = %e, "tracing: the last spans may not have been exported");
        }
        let queued = self.counts.queued.load(Ordering::Acquire);
        let handed = self.counts.handed.load(Ordering::Acquire);
        if queued > handed {
            tracing::warn!(
                dropped = queued - handed,
                "tracing: spans were dropped because the export queue was full \
                 (tracing.max_queued_spans, tracing.sampling_ratio)"
            );
        }
    }
}

/// What went into the export queue and what came out of it, for the logs.
#[derive(Debug, Default)]
struct Counts {
    /// Spans given to the batch processor.
    queued: AtomicU64,
    /// Spans the processor handed to the exporter (sent or failed).
    handed: AtomicU64,
    /// The most spans that can be queued and batched at once.
    in_flight: u64,
    /// Drops were reported.
    drops_told: AtomicBool,
    /// Exports fail: since when, and when that was last logged.
    failing: Mutex<Option<(Instant, Instant)>>,
}

impl Counts {
    /// One batch went out (or failed): logs the first failure, then at most every
    /// [`WARN_EVERY`], the recovery, and the first sign of a full queue.
    fn exported(&self, spans: usize, result: &OTelSdkResult) {
        let handed = self.handed.fetch_add(spans as u64, Ordering::AcqRel) + spans as u64;
        let queued = self.queued.load(Ordering::Acquire);
        // More given to the queue than it can hold beyond what came out: dropped.
        if queued.saturating_sub(handed) > self.in_flight
            && !self.drops_told.swap(true, Ordering::AcqRel)
        {
            tracing::warn!(
                "tracing: the export queue is full and spans are being dropped \
                 (tracing.max_queued_spans, tracing.sampling_ratio); the count is logged at exit"
            );
        }
        let mut failing = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        match (result, *failing) {
            (Ok(()), Some((since, _))) => {
                tracing::info!(failed_for = ?since.elapsed(), "tracing: exports succeed again");
                *failing = None;
            }
            (Ok(()), None) => {}
            (Err(e), None) => {
                tracing::warn!(error = %e, spans, "tracing: exporting spans failed; they are lost");
                *failing = Some((Instant::now(), Instant::now()));
            }
            (Err(e), Some((since, told))) => {
                if told.elapsed() >= WARN_EVERY {
                    tracing::warn!(error = %e, failing_for = ?since.elapsed(),
                        "tracing: exporting spans still fails");
                    *failing = Some((since, Instant::now()));
                }
            }
        }
    }
}

/// The OTLP exporter, counting what it is handed and logging its failures (the SDK's
/// own logs are not compiled in).
#[derive(Debug)]
struct Logged {
    inner: opentelemetry_otlp::SpanExporter,
    counts: Arc<Counts>,
}

impl SpanExporter for Logged {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.counts.exported(spans, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The [`Exporter`] the tracer is given: into the batch processor's queue.
#[derive(Debug)]
struct Otlp {
    processor: Arc<BatchSpanProcessor>,
    scope: InstrumentationScope,
    counts: Arc<Counts>,
}

impl Exporter for Otlp {
    fn export(&self, span: SpanRecord) {
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        self.processor.on_end(span_data(span, &self.scope));
    }
}

/// The SDK's form of a finished span.
fn span_data(span: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let SpanRecord {
        context,
        parent,
        parent_is_remote,
        name,
        kind,
        start,
        end,
        attributes,
        events,
        error,
    } = span;
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(context.trace_id.to_bytes()),
            SpanId::from_bytes(context.span_id.to_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent.map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.to_bytes())),
        parent_span_is_remote: parent_is_remote,
        span_kind: match kind {
            Kind::Internal => SpanKind::Internal,
            Kind::Server => SpanKind::Server,
            Kind::Consumer => SpanKind::Consumer,
        },
        name: name.into(),
        start_time: start,
        end_time: end,
        attributes: attributes
            .into_iter()
            .map(|(key, value)| match value {
                Value::Str(s) => KeyValue::new(key, s),
                Value::Int(n) => KeyValue::new(key, n),
            })
            .collect(),
        dropped_attributes_count: 0,
        events: {
            let mut list = SpanEvents::default();
            list.events = events
                .into_iter()
                .map(|e| Event::new(e.name, e.time, Vec::new(), 0))
                .collect();
            list
        },
        links: SpanLinks::default(),
        status: error.map_or(Status::Unset, Status::error),
        instrumentation_scope: scope.clone(),
    }
}
