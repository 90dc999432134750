//! Coalescing: requests that wait at the same time share one ClickHouse query.
//!
//! A request joins a queue. At most `max_batches_in_flight` workers take batches from it: a
//! batch is the oldest waiting request and up to `max_batch - 1` more for the same window
//! (users read once each, however many requests name them), read by one
//! [`Reader::read_batch`] and answered each with its own result, or each with a copy of the
//! batch's error (same status as a lone request's).
//!
//! A lone request pays almost nothing: when no batch is being read, a worker takes what waits
//! at once. Only while another batch is being read does a worker wait up to `window` for more
//! requests (or until a batch is full) before it starts its own, so that under load queries
//! carry many users and at low load none waits. Requests whose caller gave up (its timeout)
//! are dropped from the queue unread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};
use topk_core::window::Window;

use super::{Reader, WindowSongs};
use crate::error::AppError;

/// How requests are coalesced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceOptions {
    /// Most requests one query serves.
    pub max_batch: usize,
    /// Longest a batch waits for more requests while another batch is being read.
    pub window: Duration,
    /// Most batches read at once.
    pub max_batches_in_flight: usize,
}

/// What coalescing has done since the store was made (also in the metrics
/// `api_coalesced_batch_requests` and `api_coalesce_wait_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoalesceCounts {
    /// Batches read (each one query, two with truncated days).
    pub batches: u64,
    /// Requests they served.
    pub requests: u64,
}

#[derive(Debug)]
pub(super) struct Coalescer {
    options: CoalesceOptions,
    queue: Mutex<Queue>,
    /// Woken at each arrival: a worker waiting for its batch to fill.
    arrivals: Notify,
    batches: AtomicU64,
    requests: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    /// Workers alive (at most `max_batches_in_flight`).
    workers: usize,
    /// Workers reading a batch now.
    reading: usize,
}

#[derive(Debug)]
struct Waiter {
    user_id: String,
    window: Window,
    enqueued_at: Instant,
    reply: oneshot::Sender<Result<WindowSongs, AppError>>,
}

/// The requests one query serves, all for `window`.
struct Batch {
    window: Window,
    waiters: Vec<Waiter>,
}

impl Coalescer {
    pub(super) fn new(options: CoalesceOptions) -> Self {
        Self {
            options: CoalesceOptions {
                max_batch: options.max_batch.max(1),
                max_batches_in_flight: options.max_batches_in_flight.max(1),
                ..options
            },
            queue: Mutex::new(Queue::default()),
            arrivals: Notify::new(),
            batches: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    pub(super) fn counts(&self) -> CoalesceCounts {
        CoalesceCounts {
            batches: self.batches.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// `user_id`'s songs in `window`, read in a batch with whatever requests wait alongside.
    pub(super) async fn songs_in_window(
        self: &Arc<Self>,
        reader: &Arc<Reader>,
        user_id: &str,
        window: &Window,
    ) -> Result<WindowSongs, AppError> {
        let (reply, answer) = oneshot::channel();
        let start_worker = {
            let mut queue = self.queue();
            queue.waiting.push_back(Waiter {
                user_id: user_id.to_owned(),
                window: *window,
                enqueued_at: Instant::now(),
                reply,
            });
            let start = queue.workers < self.options.max_batches_in_flight;
            if start {
                queue.workers += 1;
            }
            start
        };
        if start_worker {
            tokio::spawn(Arc::clone(self).work(Arc::clone(reader)));
        } else {
            self.arrivals.notify_waiters();
        }
        answer.await.unwrap_or_else(|_| {
            Err(AppError::Internal(
                "the batch reading this request ended without an answer".to_owned(),
            ))
        })
    }

    /// One worker: batches until the queue is empty.
    async fn work(self: Arc<Self>, reader: Arc<Reader>) {
        while let Some(batch) = self.next_batch().await {
            let served = batch.waiters.len();
            self.batches.fetch_add(1, Ordering::Relaxed);
            self.requests.fetch_add(served as u64, Ordering::Relaxed);
            metrics::histogram!("api_coalesced_batch_requests").record(served as f64);
            // On a task of its own: a panic reading one batch fails its requests (their
            // replies are dropped), not the worker.
            let coalescer = Arc::clone(&self);
            let batch_reader = Arc::clone(&reader);
            let read = tokio::spawn(async move { coalescer.read(&batch_reader, batch).await });
            if let Err(error) = read.await {
                tracing::error!(%error, "reading a batch failed");
            }
            self.queue().reading -= 1;
        }
    }

    /// Reads `batch` and answers each of its requests.
    async fn read(&self, reader: &Reader, batch: Batch) {
        let Batch { window, waiters } = batch;
        let now = Instant::now();
        for waiter in &waiters {
            metrics::histogram!("api_coalesce_wait_seconds")
                .record(now.duration_since(waiter.enqueued_at).as_secs_f64());
        }
        let mut users: Vec<&str> = waiters
            .iter()
            .map(|waiter| waiter.user_id.as_str())
            .collect();
        users.sort_unstable();
        users.dedup();
        // Nobody waits longer than their own timeout: the batch stops at the last deadline.
        let deadline = waiters
            .iter()
            .map(|waiter| waiter.enqueued_at)
            .max()
            .unwrap_or(now)
            + reader.query_timeout;
        let result = match tokio::time::timeout_at(
            deadline.into(),
            reader.read_batch(&window, &users),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(AppError::QueryTimeout(reader.query_timeout)),
        };
        match result {
            Ok(mut answers) => {
                let mut requests_left = vec![0usize; users.len()];
                let indexes: Vec<usize> = waiters
                    .iter()
                    .map(|waiter| {
                        let index = users
                            .binary_search(&waiter.user_id.as_str())
                            .expect("every waiter's user is read");
                        requests_left[index] += 1;
                        index
                    })
                    .collect();
                for (waiter, index) in waiters.into_iter().zip(indexes) {
                    // The last request for a user takes the answer, earlier ones a copy.
                    requests_left[index] -= 1;
                    let answer = if requests_left[index] == 0 {
                        std::mem::take(&mut answers[index])
                    } else {
                        answers[index].clone()
                    };
                    let _ = waiter.reply.send(Ok(answer));
                }
            }
            Err(error) => {
                for waiter in waiters {
                    let _ = waiter.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// The next batch to read, or `None` (and this worker ends) when nothing waits.
    async fn next_batch(&self) -> Option<Batch> {
        let mut waited = false;
        loop {
            let arrival = self.arrivals.notified();
            {
                let mut queue = self.queue();
                // Callers that gave up (their timeout) are not read.
                queue.waiting.retain(|waiter| !waiter.reply.is_closed());
                if queue.waiting.is_empty() {
                    queue.workers -= 1;
                    return None;
                }
                let full = same_window_count(&queue.waiting) >= self.options.max_batch;
                if waited || full || queue.reading == 0 || self.options.window.is_zero() {
                    queue.reading += 1;
                    return Some(take_batch(&mut queue.waiting, self.options.max_batch));
                }
            }
            // Another batch is being read: give requests up to `window` to join this one.
            let deadline = tokio::time::Instant::now() + self.options.window;
            let mut arrival = std::pin::pin!(arrival);
            loop {
                if tokio::time::timeout_at(deadline, arrival.as_mut())
                    .await
                    .is_err()
                {
                    break;
                }
                arrival.set(self.arrivals.notified());
                if same_window_count(&self.queue().waiting) >= self.options.max_batch {
                    break;
                }
            }
            waited = true;
        }
    }
}

/// Whether two windows read the same rows: the queries name the window's end in whole
/// seconds, so requests of the same second share a batch (and read what each would alone).
fn same_read(a: &Window, b: &Window) -> bool {
    a.from == b.from && a.to.timestamp() == b.to.timestamp()
}

/// How many waiting requests share the oldest one's window.
fn same_window_count(waiting: &VecDeque<Waiter>) -> usize {
    let Some(first) = waiting.front() else {
        return 0;
    };
    waiting
        .iter()
        .filter(|waiter| same_read(&waiter.window, &first.window))
        .count()
}

/// The oldest waiting request and up to `max_batch - 1` more for the same window, in order.
fn take_batch(waiting: &mut VecDeque<Waiter>, max_batch: usize) -> Batch {
    let window = waiting.front().expect("a waiting request").window;
    let mut waiters = Vec::new();
    let mut others = VecDeque::with_capacity(waiting.len());
    while let Some(waiter) = waiting.pop_front() {
        if waiters.len() < max_batch && same_read(&waiter.window, &window) {
            waiters.push(waiter);
        } else {
            others.push_back(waiter);
        }
    }
    *waiting = others;
    Batch { window, waiters }
}
