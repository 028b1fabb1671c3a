//! What a configuration reload swaps while requests read it.
//!
//! A [`Live`] holds the current value of one part of the configuration (the authorizer,
//! the CORS policy, the routes): a request takes the value as it is when it starts and
//! keeps it to its end; a reload puts a new value in for the requests after it. Reading
//! is lock-free (`arc-swap`); nothing holds a lock across an await.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The current value of one live part, shared by its readers and the reloader.
pub struct Live<T>(Arc<ArcSwap<T>>);

impl<T> Live<T> {
    /// A part holding `value`.
    pub fn new(value: T) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(value)))
    }

    /// The value now, kept by the caller for as long as it needs it.
    pub fn current(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// Puts `value` in for every later [`Live::current`].
    pub fn replace(&self, value: T) {
        self.0.store(Arc::new(value));
    }
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: fmt::Debug> fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Live").field(&self.0.load()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_taken_stays_while_later_readers_see_the_new_one() {
        let live = Live::new(1);
        let reader = live.clone();
        let taken = reader.current();
        live.replace(2);
        assert_eq!((*taken, *reader.current()), (1, 2));
    }
}
