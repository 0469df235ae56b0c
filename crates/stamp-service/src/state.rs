//! What every request handler and the server share: the engine, the site, its read connection,
//! configuration, metrics, limits, and the tracker a stop waits on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use stamp_core::SiteId;
use stamp_site::engine::Engine;
use stamp_site::entitlements::GrantStatus;
use stamp_site::{Site, SiteError, SiteStore};
use tokio::sync::{Notify, Semaphore};

use crate::config::Config;
use crate::metrics::Metrics;

/// Counts running tasks (connections, engine calls) so a stop can wait for them.
#[derive(Default)]
pub(crate) struct Tracker {
    count: AtomicUsize,
    idle: Notify,
}

/// One tracked task; dropping it ends the task.
pub(crate) struct TrackGuard(Arc<Tracker>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Tracker {
    /// Starts tracking a task.
    pub(crate) fn guard(self: &Arc<Self>) -> TrackGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        TrackGuard(self.clone())
    }

    /// Waits until no task is tracked.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Tasks running now.
    pub(crate) fn running(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// What every request handler shares.
pub(crate) struct AppState {
    pub(crate) engine: Arc<Engine>,
    pub(crate) site: Mutex<Site>,
    pub(crate) store: Mutex<SiteStore>,
    pub(crate) site_id: SiteId,
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    pub(crate) cacerts_p7: Vec<u8>,
    /// The chain's certificates (issuing CA, OEM root) as DER and PEM: encoded once, not per
    /// answer.
    pub(crate) chain_pem: Vec<(Vec<u8>, String)>,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) lanes: Arc<crate::lanes::Lanes>,
}

impl AppState {
    /// The read connection to the site database (stations, status).
    pub(crate) fn store(&self) -> MutexGuard<'_, SiteStore> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every grant's status now.
    pub(crate) fn statuses(&self) -> Result<Vec<GrantStatus>, SiteError> {
        stamp_site::entitlements::grant_statuses(&self.store(), crate::now())
    }

    pub(crate) fn engine_failed(&self) -> bool {
        self.engine.failed()
    }
}

impl crate::ops::Probe for AppState {
    fn health(&self) -> Result<(), String> {
        if self.engine_failed() {
            return Err("the audit log failed: the site service cannot issue until restarted".into());
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        crate::api::render_metrics(self)
    }
}
