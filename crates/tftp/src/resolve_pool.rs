//! Path resolution on a few threads of the TFTP server's own, off the async workers.
//!
//! Resolvers touch the file system (and render templates), so they must not run on the
//! runtime's workers. They used to go through the blocking pool behind a 16-permit semaphore,
//! and each permit then cycled only as fast as the runtime polled the next waiting transfer:
//! in a 10 000-machine storm, with thousands of transfers and HTTP bodies runnable, that was a
//! few dozen resolutions a second against 333 new machines a second, and the wait before a
//! transfer's first datagram grew to 20 s and more, past the firmware's patience (busy-machine
//! run in bench/README.md "## Storm"). Here a fixed set of threads takes jobs from a queue as
//! fast as they come; a transfer waits for the runtime only once, when its answer is ready.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// A queue of jobs and the threads that run them; the threads end once the pool is dropped.
pub struct ResolvePool {
    jobs: mpsc::Sender<Job>,
}

impl ResolvePool {
    /// Starts `threads` threads (at least one).
    pub fn start(threads: usize) -> io::Result<ResolvePool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("tftp-resolve".into())
                .spawn(move || loop {
                    // One thread waits in `recv` holding the lock; the others wait for the
                    // lock. A job runs after the lock is released.
                    let job = match queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    // A resolver that panics fails its own request (its answer channel is
                    // dropped), not the thread.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                })?;
        }
        Ok(ResolvePool { jobs })
    }

    /// Runs `f` on a pool thread; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pool_and_a_panic_fails_only_its_own_job() {
        let pool = ResolvePool::start(2).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await;
        assert_eq!(name, Some(Some("tftp-resolve".to_string())));
        assert_eq!(pool.run(|| -> u32 { panic!("resolver bug") }).await, None);
        let answers: Vec<_> = futures_join((0..50).map(|i| pool.run(move || i * 2))).await;
        assert_eq!(answers, (0..50).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }

    async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut out = Vec::new();
        for f in fs.collect::<Vec<_>>() {
            out.push(f.await);
        }
        out
    }
}
