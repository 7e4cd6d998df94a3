//! A worker thread that owns some state (a hasher, say) and applies the closures it is sent,
//! in order. Hashing the same bytes several ways in parallel is how image builds stay bound by
//! hash throughput rather than by one core.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// How many jobs may wait for a worker; with 1 MiB chunks this bounds memory per worker.
const QUEUE_DEPTH: usize = 8;

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// A thread applying jobs to its state in the order they were sent.
pub struct Worker<T: Send + 'static> {
    jobs: Option<SyncSender<Job<T>>>,
    thread: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts a worker owning `state`.
    pub fn spawn(mut state: T) -> Self {
        let (jobs, queue) = sync_channel::<Job<T>>(QUEUE_DEPTH);
        let thread = std::thread::spawn(move || {
            for job in queue {
                job(&mut state);
            }
            state
        });
        Self {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// Queues `job`; blocks while the queue is full.
    pub fn run(&self, job: impl FnOnce(&mut T) + Send + 'static) {
        if let Some(jobs) = &self.jobs {
            // A send fails only if the thread died, which `finish` reports.
            let _ = jobs.send(Box::new(job));
        }
    }

    /// Waits for every queued job and returns the state.
    ///
    /// # Panics
    /// Re-raises a panic from a job.
    #[must_use]
    pub fn finish(mut self) -> T {
        drop(self.jobs.take());
        let thread = self.thread.take().expect("worker thread present until finished");
        match thread.join() {
            Ok(state) => state,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<T: Send + 'static> Drop for Worker<T> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_jobs_in_order() {
        let worker = Worker::spawn(Vec::new());
        for i in 0..100 {
            worker.run(move |v: &mut Vec<i32>| v.push(i));
        }
        assert_eq!(worker.finish(), (0..100).collect::<Vec<_>>());
    }
}
