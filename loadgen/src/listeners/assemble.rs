//! Putting the listeners' deliveries together: one list of [`Play`]s in arrival order, built
//! on every core.

use std::sync::Arc;

use super::ids::{event_id, song_id};
use super::random::mix64;
use super::week::Delivery;
use super::{Listener, Play};

/// The most threads [`in_parallel`] starts: runs are numbered in 4 bits of a
/// [`DeliveryKey`].
const MAX_THREADS: usize = 16;

/// The [`Play`]s of every run's deliveries, in arrival order.
pub(super) fn plays_in_arrival_order(
    seed: u64,
    listeners: &[Listener],
    runs: &[Vec<Delivery>],
    threads: usize,
) -> Vec<Play> {
    let order = arrival_order(runs);
    let id_salt = mix64(seed);
    let spelled = in_parallel(
        threads,
        &order,
        |_| 1,
        |_, keys| spell_out(id_salt, listeners, runs, keys),
    );
    let mut spelled = spelled.into_iter();
    let mut plays = spelled.next().unwrap_or_default();
    plays.reserve_exact(order.len() - plays.len());
    for mut part in spelled {
        plays.append(&mut part);
    }
    plays
}

/// Runs `work` on consecutive runs of `items` of about equal total `weight`, on up to
/// `threads` threads, and returns the results in order. `work` gets the index of its run's
/// first item.
pub(super) fn in_parallel<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    weight: impl Fn(&T) -> u64,
    work: impl Fn(usize, &[T]) -> R + Sync,
) -> Vec<R> {
    let total: u64 = items.iter().map(&weight).sum();
    // Every run but the last weighs at least this, so there are at most `threads` runs.
    let per_thread = total.div_ceil(threads.clamp(1, MAX_THREADS) as u64).max(1);
    let mut runs = Vec::new();
    let (mut start, mut run_weight) = (0, 0);
    for (index, item) in items.iter().enumerate() {
        run_weight += weight(item);
        if run_weight >= per_thread {
            runs.push(start..index + 1);
            (start, run_weight) = (index + 1, 0);
        }
    }
    if start < items.len() || runs.is_empty() {
        runs.push(start..items.len());
    }
    debug_assert!(runs.len() <= MAX_THREADS);
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| scope.spawn(move || work(run.start, &items[run])))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a listener generator thread panicked"))
            .collect()
    })
}

/// A delivery's place in the arrival order: arrival time (from the earliest) in the high
/// half; its run (4 bits) and index in the run (28 bits) in the low half, so that equal
/// arrivals keep the order the deliveries were generated in (listener, then play, a first
/// delivery before its resend) and the order is total.
type DeliveryKey = u64;

fn delivery_at(runs: &[Vec<Delivery>], key: DeliveryKey) -> &Delivery {
    &runs[((key >> 28) & 0xf) as usize][(key & 0x0fff_ffff) as usize]
}

/// The keys of all deliveries in arrival order, by a radix sort: a comparison sort of
/// millions of deliveries takes seconds in unoptimised test builds.
fn arrival_order(runs: &[Vec<Delivery>]) -> Vec<DeliveryKey> {
    let all = || runs.iter().flatten();
    let earliest_ms = all().map(|delivery| delivery.arrival_ms).min().unwrap_or(0);
    let latest_ms = all().map(|delivery| delivery.arrival_ms).max().unwrap_or(0);
    let span_ms =
        u32::try_from(latest_ms.abs_diff(earliest_ms)).expect("deliveries span less than 49 days");
    let mut keys: Vec<DeliveryKey> = Vec::with_capacity(runs.iter().map(Vec::len).sum());
    for (run_index, run) in runs.iter().enumerate() {
        assert!(
            run.len() < 1 << 28,
            "a run holds fewer than 2^28 deliveries"
        );
        for (index, delivery) in run.iter().enumerate() {
            let arrival = delivery.arrival_ms.abs_diff(earliest_ms);
            keys.push((arrival << 32) | ((run_index << 28) | index) as u64);
        }
    }
    let mut scratch = vec![0; keys.len()];
    let mut slots = vec![0usize; 1 << 16];
    for shift in [32, 48] {
        if shift == 48 && span_ms >> 16 == 0 {
            break;
        }
        let (from, to, slots) = (&keys[..], &mut scratch[..], &mut slots[..]);
        slots.fill(0);
        for key in from {
            slots[((key >> shift) & 0xffff) as usize] += 1;
        }
        let mut next_slot = 0;
        for slot in slots.iter_mut() {
            (*slot, next_slot) = (next_slot, next_slot + *slot);
        }
        for key in from {
            let slot = &mut slots[((key >> shift) & 0xffff) as usize];
            to[*slot] = *key;
            *slot += 1;
        }
        std::mem::swap(&mut keys, &mut scratch);
    }
    keys
}

/// The [`Play`]s of the deliveries named by `keys`, in that order.
fn spell_out(
    id_salt: u64,
    listeners: &[Listener],
    runs: &[Vec<Delivery>],
    keys: &[DeliveryKey],
) -> Vec<Play> {
    // Per thread: threads sharing one reference count cost more than these allocations.
    let user_ids: Vec<Arc<str>> = listeners
        .iter()
        .map(|listener| Arc::from(listener.user_id.as_str()))
        .collect();
    let mut plays = Vec::with_capacity(keys.len());
    for key in keys {
        let delivery = delivery_at(runs, *key);
        let listener = delivery.listener as usize;
        plays.push(Play {
            event_id: event_id(id_salt, &listeners[listener], delivery.seq),
            user_id: Arc::clone(&user_ids[listener]),
            song_id: song_id(delivery.song),
            ts_ms: delivery.ts_ms,
            arrival_ms: delivery.arrival_ms,
            retry: delivery.retry,
        });
    }
    plays
}
