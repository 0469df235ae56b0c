//! What each entry's checks need that depends only on its bytes and the site's issuing CA (the
//! leaf hash, the CBOR decoding and, for a certificate, [`device::verify_issued`]: most of
//! reconciliation's CPU), computed ahead on every core while the reconciling thread takes the
//! results strictly in log order.
//!
//! Memory is bounded by construction, not by the bundle: per chunk, the worker threads may claim an
//! entry only while it is fewer than [`window`] entries ahead of the one the reconciling thread
//! takes next, so at most `window + workers` results exist at any time (a few hundred kilobytes).
//! Nothing is queued without a bound. The reconciling thread never waits idle for an entry no one
//! has claimed: it computes that one itself.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use serde_bytes::ByteBuf;
use stamp_core::audit::{AuditError, Entry, Event};
use stamp_core::device::{self, DeviceCertError};
use stamp_core::merkle;
use x509_parser::certificate::X509Certificate;

/// Entries each worker thread may be ahead of the reconciling thread.
const AHEAD_PER_WORKER: usize = 64;

/// Worker threads: one per core (the reconciling thread helps too), at most 8.
pub(super) fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
}

/// How far ahead of the reconciling thread results may be: the bound on results held.
pub(super) fn window(workers: usize) -> usize {
    AHEAD_PER_WORKER * workers.max(1)
}

/// An entry's state-free checks.
pub(super) struct Prechecked {
    /// Its Merkle leaf hash.
    pub(super) leaf: merkle::Hash,
    /// Its decoding.
    pub(super) entry: Result<Entry, AuditError>,
    /// For a certificate (issued, handed out or renewed): its issuer and signature under the
    /// site's issuing CA.
    pub(super) issued: Option<Result<device::Issued, DeviceCertError>>,
}

impl Prechecked {
    pub(super) fn new(bytes: &[u8], ca: &X509Certificate<'_>) -> Prechecked {
        let entry = Entry::from_cbor(bytes);
        let issued = match &entry {
            Ok(Entry {
                event: Event::DeviceIssued(d) | Event::KeyHandedOut(d) | Event::DeviceRenewed(d),
                ..
            }) => Some(device::verify_issued(&d.certificate, ca)),
            _ => None,
        };
        Prechecked {
            leaf: merkle::leaf_hash(bytes),
            entry,
            issued,
        }
    }
}

/// Shared between the reconciling thread and the workers of one chunk.
struct State {
    /// The first entry no one has claimed.
    next: usize,
    /// Entries the reconciling thread has taken.
    taken: usize,
    /// Results of entries `taken..next`, in order; `None` while its worker computes it.
    ready: VecDeque<Option<Prechecked>>,
    /// Workers waiting for the window to move.
    idle_workers: usize,
    /// Whether the reconciling thread waits for `ready[0]`.
    taker_waits: bool,
    /// The reconciling thread stopped (an entry was rejected, or the chunk is done).
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the window moves or the work stops.
    workers: Condvar,
    /// Signalled when `ready[0]` is filled.
    taker: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking worker poisons the lock; the panic itself reaches the scope's join.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.workers.notify_all();
    }
}

/// Stops the workers however the reconciling thread leaves the scope.
struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Calls `take` with the [`Prechecked`] of each of `entries`, in order, stopping at its first
/// error; `workers` threads compute them ahead, at most [`window`] entries ahead of `take`.
pub(super) fn in_order<E>(
    entries: &[ByteBuf],
    ca: &X509Certificate<'_>,
    workers: usize,
    mut take: impl FnMut(Prechecked) -> Result<(), E>,
) -> Result<(), E> {
    if workers == 0 || entries.len() < 2 {
        for bytes in entries {
            take(Prechecked::new(bytes, ca))?;
        }
        return Ok(());
    }
    let window = window(workers);
    let shared = Shared {
        state: Mutex::new(State {
            next: 0,
            taken: 0,
            ready: VecDeque::with_capacity(window),
            idle_workers: 0,
            taker_waits: false,
            stop: false,
        }),
        workers: Condvar::new(),
        taker: Condvar::new(),
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| work(&shared, entries, ca, window));
        }
        let _stop = StopOnDrop(&shared);
        for bytes in entries {
            take(next(&shared, entries, bytes, ca, window))?;
        }
        Ok(())
    })
}

/// The reconciling thread's next result: ready, computed by a worker, or computed here. While
/// a worker still computes it, this thread computes entries further ahead.
fn next(
    shared: &Shared,
    entries: &[ByteBuf],
    bytes: &[u8],
    ca: &X509Certificate<'_>,
    window: usize,
) -> Prechecked {
    let mut st = shared.lock();
    loop {
        if let Some(Some(_)) = st.ready.front() {
            let pre = st.ready.pop_front().flatten();
            st.taken += 1;
            let wake = st.idle_workers > 0;
            drop(st);
            if wake {
                shared.workers.notify_one();
            }
            if let Some(pre) = pre {
                return pre;
            }
            // Unreachable (the front was Some); computing it here gives the same result.
            return Prechecked::new(bytes, ca);
        }
        if st.next == st.taken {
            // No worker has claimed it: compute it here rather than wait.
            st.next += 1;
            st.taken += 1;
            let wake = st.idle_workers > 0;
            drop(st);
            if wake {
                shared.workers.notify_one();
            }
            return Prechecked::new(bytes, ca);
        }
        if st.next < entries.len() && st.next < st.taken + window {
            // A worker computes this one: compute the next unclaimed one meanwhile, like a
            // worker, rather than sleep.
            let index = st.next;
            st.next += 1;
            st.ready.push_back(None);
            drop(st);
            let pre = entries.get(index).map(|b| Prechecked::new(b, ca));
            st = shared.lock();
            let at = index - st.taken;
            if let (Some(slot), Some(pre)) = (st.ready.get_mut(at), pre) {
                *slot = Some(pre);
            }
            continue;
        }
        st.taker_waits = true;
        st = shared.taker.wait(st).unwrap_or_else(PoisonError::into_inner);
        st.taker_waits = false;
    }
}

/// A worker: claims the next entry inside the window, computes it, stores the result.
fn work(shared: &Shared, entries: &[ByteBuf], ca: &X509Certificate<'_>, window: usize) {
    loop {
        let mut st = shared.lock();
        let index = loop {
            if st.stop || st.next >= entries.len() {
                return;
            }
            if st.next < st.taken + window {
                let i = st.next;
                st.next += 1;
                st.ready.push_back(None);
                break i;
            }
            st.idle_workers += 1;
            st = shared.workers.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.idle_workers -= 1;
        };
        drop(st);
        let Some(bytes) = entries.get(index) else {
            return;
        };
        let pre = Prechecked::new(bytes, ca);
        let mut st = shared.lock();
        if st.stop {
            return;
        }
        // The reconciling thread waits for every claimed entry before it moves past it, so
        // `index >= taken`.
        let slot = index - st.taken;
        if let Some(r) = st.ready.get_mut(slot) {
            *r = Some(pre);
        }
        let wake = slot == 0 && st.taker_waits;
        drop(st);
        if wake {
            shared.taker.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a certificate: every entry here prechecks without one, which is all the ordering test
    /// needs.
    fn entries(n: u64) -> Vec<ByteBuf> {
        (0..n)
            .map(|i| {
                let e = Entry {
                    index: i,
                    time_ms: i as i64,
                    event: Event::ExportMade {
                        previous_size: i,
                        bundle_id: ByteBuf::from(vec![0; 16]),
                    },
                };
                ByteBuf::from(e.to_cbor())
            })
            .collect()
    }

    fn ca() -> Vec<u8> {
        // Any certificate parses as "the CA" for entries that hold none.
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["ca".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn results_come_in_order_whatever_the_workers() {
        let der = ca();
        let ca = stamp_core::cert::parse(&der).unwrap();
        let list = entries(3000);
        for workers in [0, 1, 2, 3, 8] {
            let mut seen = Vec::new();
            in_order(&list, &ca, workers, |p| {
                let e = p.entry.unwrap();
                assert_eq!(p.leaf, merkle::leaf_hash(&list[e.index as usize]));
                assert!(p.issued.is_none());
                seen.push(e.index);
                Ok::<_, ()>(())
            })
            .unwrap();
            assert_eq!(seen, (0..3000).collect::<Vec<_>>(), "{workers} workers");
        }
    }

    #[test]
    fn the_first_error_stops_the_workers() {
        let der = ca();
        let ca = stamp_core::cert::parse(&der).unwrap();
        let list = entries(5000);
        let mut taken = 0u64;
        let r = in_order(&list, &ca, 2, |p| {
            taken += 1;
            match p.entry.unwrap().index {
                1234 => Err(1234),
                _ => Ok(()),
            }
        });
        assert_eq!(r, Err(1234));
        assert_eq!(taken, 1235);
    }
}
