//! The overview's figures: jobs by queue, kind and state, the last hour's activity and
//! enqueue-to-start latency, and the health report. Each is a pass over the jobs table (about a
//! second in all with a million jobs), so they are taken in the background and the page is served
//! from the last set taken, with its age shown. A request finding the set older than
//! [`FRESH`] starts one refresh (never two at once) and is answered with what is there; the first
//! request waits up to [`FIRST_WAIT`] for the first set and otherwise says the figures are being
//! counted (the page refreshes itself). Nothing is taken while nobody looks at the overview.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chainsync_engine::queue::{GroupCount, Latency, MinuteActivity, QueueError};
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tracing::warn;

use crate::{app::App, health::HealthReport};

/// A set younger than this is served without a refresh (the page polls every 5 s).
pub const FRESH: Duration = Duration::from_secs(4);
/// How long the first request waits for the first set.
pub const FIRST_WAIT: Duration = Duration::from_millis(150);

/// One set of figures and when it was taken.
#[derive(Debug)]
pub struct Figures {
    pub groups: Vec<GroupCount>,
    pub activity: Vec<MinuteActivity>,
    pub latency: Latency,
    pub health: HealthReport,
    pub taken_at: DateTime<Utc>,
}

impl Figures {
    async fn take(app: &App) -> Result<Self, QueueError> {
        let taken_at = Utc::now();
        let since = taken_at - chrono::Duration::hours(1);
        let q = &app.queue;
        let (groups, activity, latency, health) = tokio::join!(
            q.group_counts(),
            q.activity(since),
            q.start_latency(since),
            crate::health::report(app),
        );
        Ok(Self {
            groups: groups?,
            activity: activity?,
            latency: latency?,
            health,
            taken_at,
        })
    }
}

/// The last set taken, shared by the console's requests.
#[derive(Default)]
pub struct FiguresCache {
    last: Mutex<Option<(Instant, Arc<Figures>)>>,
    refreshing: AtomicBool,
    taken: Notify,
}

impl FiguresCache {
    fn last(&self) -> Option<(Instant, Arc<Figures>)> {
        self.last.lock().ok().and_then(|g| g.clone())
    }

    /// The figures to show: the last set (refreshed in the background when older than
    /// [`FRESH`]), or `None` while the first set is still being taken.
    pub async fn get(self: &Arc<Self>, app: &App) -> Option<Arc<Figures>> {
        if let Some((at, figures)) = self.last() {
            if at.elapsed() >= FRESH {
                self.refresh(app);
            }
            return Some(figures);
        }
        let taken = self.taken.notified();
        self.refresh(app);
        let _ = tokio::time::timeout(FIRST_WAIT, taken).await;
        self.last().map(|(_, f)| f)
    }

    /// The last set (refreshed in the background when older than [`FRESH`]) without waiting:
    /// `None` while the first set is being taken.
    pub fn peek(self: &Arc<Self>, app: &App) -> Option<Arc<Figures>> {
        let last = self.last();
        if last.as_ref().is_none_or(|(at, _)| at.elapsed() >= FRESH) {
            self.refresh(app);
        }
        last.map(|(_, f)| f)
    }

    /// Starts one refresh unless one is running.
    fn refresh(self: &Arc<Self>, app: &App) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, app) = (Arc::clone(self), app.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            match Figures::take(&app).await {
                Ok(f) => {
                    if let Ok(mut g) = me.last.lock() {
                        *g = Some((started, Arc::new(f)));
                    }
                }
                Err(e) => warn!(error = %e, "console: overview figures not taken"),
            }
            me.refreshing.store(false, Ordering::Release);
            me.taken.notify_waiters();
        });
    }
}
