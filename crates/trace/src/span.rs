//! Spans: open ones ([`Span`]) and finished ones as exporters get them ([`SpanRecord`]).

use std::borrow::Cow;
use std::time::SystemTime;

use crate::context::{SpanContext, SpanId};
use crate::tracer::{Parent, Tracer};

/// What a span stands for (OpenTelemetry's span kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work inside the process.
    Internal,
    /// Serving a request from outside (the publish API).
    Server,
    /// A message received from a broker.
    Consumer,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(Cow<'static, str>),
    /// A whole number.
    Int(i64),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Self::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Self::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Self::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Self::Int(i64::from(n))
    }
}

/// A moment in a span's life, named.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub name: &'static str,
    /// When.
    pub time: SystemTime,
}

/// A finished, sampled span: what an [`crate::Exporter`] is given.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Its ids (`sampled` is always set).
    pub context: SpanContext,
    /// Its parent in the same trace, if any.
    pub parent: Option<SpanId>,
    /// The parent is another process's (it came in a `traceparent`).
    pub parent_is_remote: bool,
    /// `publish`, `ingest`, `fanout`.
    pub name: &'static str,
    /// What it stands for.
    pub kind: Kind,
    /// When it started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Its attributes, in the order they were set.
    pub attributes: Vec<(&'static str, Value)>,
    /// Named moments inside it.
    pub events: Vec<Event>,
    /// Set when it failed: why.
    pub error: Option<String>,
}

/// A span being recorded, or one that is not (not sampled).
///
/// Either way it has a context to hand on ([`Span::context`]). Only a sampled span
/// allocates, records attributes and is exported: when it ends ([`Span::end`],
/// [`Span::end_at`], or when dropped).
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    recording: Option<Box<Recording>>,
}

#[derive(Debug)]
struct Recording {
    tracer: Tracer,
    record: SpanRecord,
}

impl Span {
    /// A span that records nothing but hands `context` on.
    pub(crate) fn unsampled(context: SpanContext) -> Self {
        Self {
            context,
            recording: None,
        }
    }

    /// A recording span, started now.
    pub(crate) fn recording(
        tracer: Tracer,
        name: &'static str,
        kind: Kind,
        context: SpanContext,
        parent: Option<(SpanId, bool)>,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            context,
            recording: Some(Box::new(Recording {
                tracer,
                record: SpanRecord {
                    context,
                    parent: parent.map(|(id, _)| id),
                    parent_is_remote: parent.is_some_and(|(_, remote)| remote),
                    name,
                    kind,
                    start: now,
                    end: now,
                    attributes: Vec::new(),
                    events: Vec::new(),
                    error: None,
                },
            })),
        }
    }

    /// Its context: what a child, or a message sent on its behalf, carries.
    pub fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether it is recorded (sampled).
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Where children of this span are made, when it is recorded.
    pub fn parent(&self) -> Option<Parent> {
        let recording = self.recording.as_ref()?;
        Some(Parent::new(recording.tracer.clone(), self.context))
    }

    /// Sets an attribute (nothing when not recording). Build costly values only when
    /// [`Span::is_recording`].
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(recording) = &mut self.recording {
            recording.record.attributes.push((key, value.into()));
        }
    }

    /// Records a named moment.
    pub fn add_event(&mut self, name: &'static str, time: SystemTime) {
        if let Some(recording) = &mut self.recording {
            recording.record.events.push(Event { name, time });
        }
    }

    /// Marks it failed.
    pub fn set_error(&mut self, message: impl Into<String>) {
        if let Some(recording) = &mut self.recording {
            recording.record.error = Some(message.into());
        }
    }

    /// When it started (the moment it was made, when not recording).
    pub fn start_time(&self) -> Option<SystemTime> {
        self.recording.as_ref().map(|r| r.record.start)
    }

    /// Ends it now.
    pub fn end(self) {
        drop(self);
    }

    /// Ends it at `time` (not before its start).
    pub fn end_at(mut self, time: SystemTime) {
        if let Some(recording) = self.recording.take() {
            let Recording { tracer, mut record } = *recording;
            record.end = time.max(record.start);
            tracer.export(record);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(recording) = self.recording.take() {
            let Recording { tracer, mut record } = *recording;
            record.end = SystemTime::now().max(record.start);
            tracer.export(record);
        }
    }
}
