//! The reader threads: one single-threaded tokio runtime per thread, connections dealt
//! round-robin over them.
//!
//! Independent runtimes rather than one work-stealing runtime: each thread has its own
//! epoll set, timer and run queue, so a readiness event never wakes another thread, no
//! task migrates, and no futex is touched on the hot path. The connections are uniform,
//! so dealing them evenly is all the balancing they need.
//!
//! `read_coalesce`: before a thread blocks waiting for readiness it first sleeps this
//! long, so that one wake-up finds more sockets ready and more bytes per socket. Fewer
//! wake-ups and reads per event, at the price of up to that much added latency.

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The reader threads of this process.
#[derive(Debug)]
pub struct ReaderPool {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl ReaderPool {
    /// Starts `threads` reader threads.
    pub fn new(threads: usize, read_coalesce: Duration) -> anyhow::Result<Self> {
        let mut pool = Self {
            handles: Vec::with_capacity(threads),
            stops: Vec::with_capacity(threads),
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            if !read_coalesce.is_zero() {
                builder.on_thread_park(move || std::thread::sleep(read_coalesce));
            }
            let rt = builder.build().context("building a reader runtime")?;
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            pool.handles.push(rt.handle().clone());
            pool.stops.push(stop_tx);
            let thread = std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                })
                .context("spawning a reader thread")?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// The runtimes, to spawn connection tasks on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for ReaderPool {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_every_thread() {
        let pool = ReaderPool::new(2, Duration::from_micros(10)).expect("pool");
        let names: Vec<String> = pool
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let _ = tx.send(std::thread::current().name().unwrap_or("").to_string());
                });
                rx.recv_timeout(Duration::from_secs(5)).expect("task ran")
            })
            .collect();
        assert_eq!(names, ["reader-0", "reader-1"]);
    }
}
