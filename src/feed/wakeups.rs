//! Wake-ups: one watch channel per org or job someone is subscribed to, plus one for
//! "everyone" (after the listener reconnects, when notifications may have been missed).
//! A watch channel remembers that it changed, so a wake-up sent while a subscriber is
//! busy reading is not lost: its next wait returns at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;
use uuid::Uuid;

use super::{announcement::Announcement, claims::ClaimWakeups};

pub(crate) struct Wakeups {
    by_key: Mutex<HashMap<Uuid, watch::Sender<()>>>,
    everyone: watch::Sender<()>,
    /// Waiting claims, woken by the same announcements.
    pub(crate) claims: Arc<ClaimWakeups>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Wakeups {
            by_key: Mutex::new(HashMap::new()),
            everyone: watch::Sender::new(()),
            claims: Arc::default(),
        }
    }
}

impl Wakeups {
    /// Receivers for `key` (an org or job id) and for everyone.
    pub(crate) fn subscribe(&self, key: Uuid) -> (watch::Receiver<()>, watch::Receiver<()>) {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let own = map
            .entry(key)
            .or_insert_with(|| watch::Sender::new(()))
            .subscribe();
        (own, self.everyone.subscribe())
    }

    /// An event of `job_id` in `org_id` was committed.
    pub(crate) fn wake(&self, org_id: Uuid, job_id: Uuid) {
        let map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        for key in [org_id, job_id] {
            if let Some(sender) = map.get(&key) {
                sender.send_replace(());
            }
        }
    }

    /// Wakes the subscribers and waiting claims a committed change interests.
    pub(crate) fn announced(&self, announcement: &Announcement) {
        if let Announcement::Event { org_id, job_id, .. } = announcement {
            self.wake(*org_id, *job_id);
        }
        self.claims.announced(announcement);
    }

    /// Wakes every subscriber and waiting claim (announcements may have been missed).
    pub(crate) fn wake_everyone(&self) {
        self.everyone.send_replace(());
        self.claims.wake_all();
    }

    /// Forgets keys nobody is subscribed to any more.
    pub(crate) fn sweep(&self) {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, sender| sender.receiver_count() > 0);
    }
}
