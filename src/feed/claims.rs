//! Wake-ups of waiting claims (ClaimJobs with `wait`), by queue: an org's jobs of one
//! type, or one type in every org (a claim of all orgs). A waiting claim registers one
//! `Notify` under each of its queues; an announcement that may make a job of a queue
//! claimable wakes one waiter there (a woken claim that took a full batch wakes the next
//! one itself), so one new job does not send every waiting worker to the database.
//! `Notify` keeps a wake-up that arrives while its claim is busy querying: no wake-up is
//! lost between a claim finding nothing and starting to wait.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use tokio::sync::Notify;
use uuid::Uuid;

use super::announcement::Announcement;
use crate::ledger::JobStatus;

/// A queue as waiting claims see it: (Some(org), type), or (None, type) for all orgs.
pub(crate) type QueueKey = (Option<Uuid>, String);

#[derive(Default)]
pub(crate) struct ClaimWakeups {
    waiters: Mutex<HashMap<QueueKey, VecDeque<Arc<Notify>>>>,
    /// Limited queues a claim found at their limit: a job leaving RUNNING there frees a
    /// slot, which is worth a wake-up.
    full: Mutex<HashSet<(Uuid, String)>>,
}

/// A registered waiting claim; deregisters when dropped.
pub(crate) struct ClaimWaiter {
    hub: Arc<ClaimWakeups>,
    keys: Vec<QueueKey>,
    notify: Arc<Notify>,
}

impl ClaimWaiter {
    /// Resolves when one of the claim's queues may have a claimable job (at once if a
    /// wake-up came since the last wait).
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl Drop for ClaimWaiter {
    fn drop(&mut self) {
        let mut waiters = lock(&self.hub.waiters);
        for key in &self.keys {
            if let Some(list) = waiters.get_mut(key) {
                list.retain(|n| !Arc::ptr_eq(n, &self.notify));
                if list.is_empty() {
                    waiters.remove(key);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClaimWakeups {
    /// Registers a claim waiting on `keys`.
    pub(crate) fn register(self: &Arc<Self>, keys: Vec<QueueKey>) -> ClaimWaiter {
        let notify = Arc::new(Notify::new());
        let mut waiters = lock(&self.waiters);
        for key in &keys {
            waiters
                .entry(key.clone())
                .or_default()
                .push_back(notify.clone());
        }
        ClaimWaiter {
            hub: self.clone(),
            keys,
            notify,
        }
    }

    /// Wakes one waiting claim of (org, type) and one of (every org, type), taking turns
    /// among the waiters of a queue.
    pub(crate) fn ready(&self, org_id: Uuid, job_type: &str) {
        self.wake_one(&(Some(org_id), job_type.to_owned()));
        self.wake_one(&(None, job_type.to_owned()));
    }

    /// Wakes one waiting claim of `key`, taking turns among them.
    pub(crate) fn wake_one(&self, key: &QueueKey) {
        let mut waiters = lock(&self.waiters);
        if let Some(list) = waiters.get_mut(key) {
            if let Some(next) = list.pop_front() {
                next.notify_one();
                list.push_back(next);
            }
        }
    }

    /// Wakes whatever a committed change may interest.
    pub(crate) fn announced(&self, announcement: &Announcement) {
        let (org_id, job_type) = match announcement {
            Announcement::Event {
                org_id, job_type, ..
            }
            | Announcement::Queue { org_id, job_type } => (*org_id, job_type),
        };
        let slot_freed = matches!(announcement, Announcement::Event { prev: Some(JobStatus::Running), next, .. } if *next != JobStatus::Running)
            && lock(&self.full).remove(&(org_id, job_type.clone()));
        if announcement.may_make_claimable() || slot_freed {
            self.ready(org_id, job_type);
        }
    }

    /// A claim found this limited queue at its limit.
    pub(crate) fn mark_full(&self, org_id: Uuid, job_type: String) {
        lock(&self.full).insert((org_id, job_type));
    }

    /// Wakes every waiting claim (announcements may have been missed).
    pub(crate) fn wake_all(&self) {
        for list in lock(&self.waiters).values() {
            for notify in list {
                notify.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_up_reaches_one_waiter_of_the_queue_and_is_kept_until_waited_for() {
        let hub = Arc::new(ClaimWakeups::default());
        let org = Uuid::new_v4();
        let a = hub.register(vec![(Some(org), "t".into())]);
        let b = hub.register(vec![(Some(org), "t".into())]);
        let every_org = hub.register(vec![(None, "t".into())]);
        let other = hub.register(vec![(Some(org), "u".into())]);
        hub.ready(org, "t");
        let now = std::time::Duration::from_millis(50);
        // Kept although nobody was waiting yet.
        assert!(tokio::time::timeout(now, a.woken()).await.is_ok());
        assert!(tokio::time::timeout(now, b.woken()).await.is_err());
        assert!(tokio::time::timeout(now, every_org.woken()).await.is_ok());
        assert!(tokio::time::timeout(now, other.woken()).await.is_err());
        // Taking turns: the next wake-up goes to b.
        hub.ready(org, "t");
        assert!(tokio::time::timeout(now, b.woken()).await.is_ok());
        drop((a, b, every_org, other));
        assert!(lock(&hub.waiters).is_empty());
    }

    #[tokio::test]
    async fn a_job_leaving_running_wakes_only_a_full_queue() {
        let hub = Arc::new(ClaimWakeups::default());
        let org = Uuid::new_v4();
        let w = hub.register(vec![(Some(org), "t".into())]);
        let done = Announcement::Event {
            org_id: org,
            job_id: Uuid::new_v4(),
            job_type: "t".into(),
            prev: Some(JobStatus::Running),
            next: JobStatus::Succeeded,
        };
        let now = std::time::Duration::from_millis(50);
        hub.announced(&done);
        assert!(tokio::time::timeout(now, w.woken()).await.is_err());
        hub.mark_full(org, "t".into());
        hub.announced(&done);
        assert!(tokio::time::timeout(now, w.woken()).await.is_ok());
    }
}
