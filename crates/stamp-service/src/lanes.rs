//! Engine lanes: the engine calls of one connection run on a thread of their own.
//!
//! `Engine::issue` blocks until the audit entry is committed, so every call needs a thread to
//! wait on. Tokio's blocking pool hands every call to whichever of its threads is free through one
//! shared queue, lock and condition variable, which all the waiting threads contend for when a
//! group commit wakes them together. An HTTP/1.1 connection has at most one request in flight, so
//! a connection can keep one thread for all its engine calls instead: a lane, taken from the idle
//! lanes at the connection's first engine call and given back when the connection closes. A
//! request then costs one wake-up through the lane's own channel and touches no shared lock. At
//! most `max_in_flight` lanes exist; past that, calls go to the blocking pool as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

/// Work for a lane.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// A thread running jobs one after the other.
struct Lane {
    jobs: mpsc::Sender<Job>,
}

/// The service's lanes: the idle ones, and how many exist.
pub(crate) struct Lanes {
    idle: Mutex<Vec<Lane>>,
    alive: Arc<AtomicUsize>,
    max: usize,
}

impl Lanes {
    /// At most `max` lanes.
    pub(crate) fn new(max: usize) -> Arc<Lanes> {
        Arc::new(Lanes {
            idle: Mutex::new(Vec::new()),
            alive: Arc::new(AtomicUsize::new(0)),
            max,
        })
    }

    /// An idle lane, or a new one if there are fewer than the maximum.
    fn take(&self) -> Option<Lane> {
        if let Some(l) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Some(l);
        }
        if self.alive.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.alive.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let alive = self.alive.clone();
        let spawned = std::thread::Builder::new()
            .name("stamp-engine".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A call that panics drops its result channel (its request answers
                    // "unavailable"); the lane goes on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
                alive.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(_) => Some(Lane { jobs: tx }),
            Err(e) => {
                self.alive.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(error = %e, "cannot start an engine thread; using the blocking pool");
                None
            }
        }
    }

    fn give_back(&self, lane: Lane) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(lane);
    }
}

/// One connection's lane, taken at its first engine call, given back when the connection ends.
pub(crate) struct LaneSlot {
    lanes: Arc<Lanes>,
    lane: Mutex<Option<Lane>>,
}

impl LaneSlot {
    /// A slot for a new connection (no thread taken yet).
    pub(crate) fn new(lanes: Arc<Lanes>) -> Arc<LaneSlot> {
        Arc::new(LaneSlot {
            lanes,
            lane: Mutex::new(None),
        })
    }

    /// Runs `job` on the connection's lane; gives it back if there is no lane to run it on.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        let mut slot = self.lane.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = self.lanes.take();
        }
        let Some(lane) = slot.as_ref() else {
            return Err(job);
        };
        lane.jobs.send(job).map_err(|mpsc::SendError(job)| {
            // The thread is gone (it cannot be, short of an abort): forget the lane.
            *slot = None;
            job
        })
    }
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        let lane = self.lane.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(l) = lane {
            self.lanes.give_back(l);
        }
    }
}

tokio::task_local! {
    /// The lane of the connection a request came on.
    pub(crate) static LANE: Arc<LaneSlot>;
}

/// Runs `job` on the current connection's lane, or on the blocking pool when there is none.
pub(crate) fn run(job: Job) {
    let job = match LANE.try_with(Arc::clone) {
        Ok(slot) => match slot.submit(job) {
            Ok(()) => return,
            Err(job) => job,
        },
        Err(_) => job,
    };
    drop(tokio::task::spawn_blocking(job));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
    }

    /// Runs `f` through [`run`] and returns its result with the name of the thread it ran on.
    async fn on_lane<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, String) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        run(Box::new(move || {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            let _ = tx.send((f(), name));
        }));
        rx.await.unwrap()
    }

    #[test]
    fn a_connection_keeps_its_lane_and_gives_it_back() {
        let lanes = Lanes::new(2);
        rt().block_on(async {
            let slot = LaneSlot::new(lanes.clone());
            let (a, name) = LANE
                .scope(slot.clone(), on_lane(|| std::thread::current().id()))
                .await;
            assert_eq!(name, "stamp-engine");
            let (b, _) = LANE
                .scope(slot.clone(), on_lane(|| std::thread::current().id()))
                .await;
            assert_eq!(a, b, "the same thread for every call of a connection");
            drop(slot);
            // The next connection gets the idle lane, not a new thread.
            let slot = LaneSlot::new(lanes.clone());
            let (c, _) = LANE.scope(slot, on_lane(|| std::thread::current().id())).await;
            assert_eq!(a, c);
        });
        assert_eq!(lanes.alive.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn past_the_maximum_and_outside_a_connection_calls_use_the_blocking_pool() {
        let lanes = Lanes::new(1);
        rt().block_on(async {
            let first = LaneSlot::new(lanes.clone());
            let (_, name) = LANE.scope(first.clone(), on_lane(|| ())).await;
            assert_eq!(name, "stamp-engine");
            let second = LaneSlot::new(lanes.clone());
            let (_, name) = LANE.scope(second, on_lane(|| ())).await;
            assert_ne!(name, "stamp-engine");
            let (_, name) = on_lane(|| ()).await;
            assert_ne!(name, "stamp-engine");
        });
    }

    #[test]
    fn a_panicking_call_fails_its_request_only() {
        let lanes = Lanes::new(1);
        rt().block_on(async {
            let slot = LaneSlot::new(lanes.clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            LANE.sync_scope(slot.clone(), || {
                run(Box::new(move || {
                    let _tx = tx;
                    panic!("engine call panicked");
                }))
            });
            assert!(rx.await.is_err());
            let (v, name) = LANE.scope(slot, on_lane(|| 7)).await;
            assert_eq!((v, name.as_str()), (7, "stamp-engine"));
        });
        assert_eq!(lanes.alive.load(Ordering::SeqCst), 1);
    }
}
