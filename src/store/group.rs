//! Group commit for CreateJob and TransitionJob. Calls that arrive while earlier ones are
//! being written queue up; the next free writer takes everything queued (up to a cap)
//! and writes it in one transaction: each caller is answered after that commit with
//! exactly the outcome its own call would have had (idempotency, request_id replays and
//! the state machine's refusals included; one bad call never fails its neighbours).
//! Nothing waits for a batch to fill. A call that arrives when no other call of its kind
//! is in flight runs at once in its caller's task, on the same path as without group
//! commit (no hand-off to a writer task: one caller is not slowed down); calls that
//! arrive while others are in flight queue for the writers.
//!
//! Claims (ClaimJobs) are grouped the same way: concurrent claims of the same queues are
//! one transaction (`Store::claim_together`), so workers of one pool stop skipping each
//! other's locked rows and committing one by one.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Instant,
};

use tokio::sync::{mpsc, oneshot, Mutex};

use super::{jobs::CreateOutcome, Claim, ClaimRequest, Store, TransitionResult};
use crate::ledger::{LedgerError, NewJob, Transition};

type Pending<T, R> = (T, oneshot::Sender<R>);

/// A queue drained by writer tasks, each taking whatever is queued as one batch.
#[derive(Debug)]
struct Batcher<T, R> {
    queue: mpsc::Sender<Pending<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// `writers` tasks, each holding at most one batch (and so one transaction) at a time.
    fn start<F, Fut>(writers: usize, max_batch: usize, write: F) -> Self
    where
        F: Fn(Vec<Pending<T, R>>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let max_batch = max_batch.max(1);
        let (queue, rx) = mpsc::channel::<Pending<T, R>>(max_batch * writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let (rx, write) = (rx.clone(), write.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&rx, max_batch).await {
                    write(batch).await;
                }
            });
        }
        Batcher { queue }
    }

    async fn submit(&self, item: T) -> Result<R, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| LedgerError::ShuttingDown)?;
        answer.await.map_err(|_| LedgerError::Internal {
            cause: "group commit writer went away".into(),
        })
    }
}

/// Waits for the first queued call, then takes what else is queued (under the lock, so
/// the next writer collects while this one writes). Calls whose caller has gone (deadline
/// passed, cancelled) are dropped unwritten. None when the queue is closed.
async fn next_batch<T, R>(
    rx: &Mutex<mpsc::Receiver<Pending<T, R>>>,
    max_batch: usize,
) -> Option<Vec<Pending<T, R>>> {
    let mut rx = rx.lock().await;
    loop {
        let mut batch = vec![rx.recv().await?];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        batch.retain(|(_, reply)| !reply.is_closed());
        if !batch.is_empty() {
            return Some(batch);
        }
    }
}

/// Counts the calls of one kind in flight; a call that finds none runs inline.
#[derive(Clone, Debug, Default)]
struct InFlight(Arc<AtomicUsize>);

/// One call counted in flight until dropped (answered, or abandoned by its caller).
struct Counted<'a>(&'a AtomicUsize);

impl InFlight {
    /// Counts a call in; true when no other call of its kind was in flight.
    fn enter(&self) -> (Counted<'_>, bool) {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        (Counted(&self.0), before == 0)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The CreateJob and TransitionJob front of the store when group commit is on.
#[derive(Clone, Debug)]
pub(crate) struct GroupCommit {
    store: Store,
    creates: Batcher<NewJob, CreateOutcome>,
    creates_in_flight: InFlight,
    transitions: Batcher<(Transition, Option<Instant>), TransitionResult>,
    transitions_in_flight: InFlight,
}

impl GroupCommit {
    /// Starts `writers` writer tasks for each kind of call (each holds at most one pool
    /// connection at a time), writing at most `max_batch` calls per transaction.
    pub(crate) fn start(store: Store, writers: usize, max_batch: usize) -> GroupCommit {
        let creates = {
            let store = store.clone();
            Batcher::start(writers, max_batch, move |batch| {
                write_creates(store.clone(), batch)
            })
        };
        let transitions = {
            let store = store.clone();
            Batcher::start(writers, max_batch, move |batch| {
                write_transitions(store.clone(), batch)
            })
        };
        GroupCommit {
            store,
            creates,
            creates_in_flight: InFlight::default(),
            transitions,
            transitions_in_flight: InFlight::default(),
        }
    }

    pub(crate) async fn create_job(&self, new: NewJob) -> CreateOutcome {
        let (_counted, alone) = self.creates_in_flight.enter();
        if alone {
            return self.store.create_job(&new).await;
        }
        self.creates.submit(new).await?
    }

    pub(crate) async fn transition_job(
        &self,
        t: Transition,
        deadline: Option<Instant>,
    ) -> TransitionResult {
        let (_counted, alone) = self.transitions_in_flight.enter();
        if alone {
            return self.store.transition_job(&t, deadline).await;
        }
        self.transitions.submit((t, deadline)).await?
    }
}

async fn write_creates(store: Store, batch: Vec<Pending<NewJob, CreateOutcome>>) {
    let (jobs, replies): (Vec<NewJob>, Vec<_>) = batch.into_iter().unzip();
    match store.create_jobs(&jobs).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        // A value PostgreSQL refused (validation should have caught it) fails the whole
        // statement: write each on its own, so it fails only its own caller.
        Err(LedgerError::InvalidArgument(_)) => {
            for (job, reply) in jobs.iter().zip(replies) {
                let _ = reply.send(store.create_job(job).await);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn write_transitions(
    store: Store,
    batch: Vec<Pending<(Transition, Option<Instant>), TransitionResult>>,
) {
    // A batch of one takes the batch path too: it never waits for a lock, so a busy job
    // never stalls this writer (and the calls queued behind it).
    let transitions: Vec<Transition> = batch.iter().map(|((t, _), _)| t.clone()).collect();
    let results = match store.transition_jobs_or_alone(&transitions).await {
        Ok(results) => results,
        Err(e) => vec![Some(Err(e)); batch.len()],
    };
    for (((t, deadline), reply), result) in batch.into_iter().zip(results) {
        match result {
            Some(result) => {
                let _ = reply.send(result);
            }
            // Alone, on a task of its own: it may wait for a busy job's lock (up to its
            // deadline), and this writer must not wait with it.
            None => {
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = reply.send(store.transition_job(&t, deadline).await);
                });
            }
        }
    }
}

/// Most jobs one grouped claim takes (the sum of its requests' `max_jobs`).
const MAX_GROUP_CLAIM_JOBS: usize = 1000;

/// A claim with less time than this before its caller's deadline is not grouped: it
/// runs alone, under a statement timeout of its own deadline.
const MIN_GROUPED_CLAIM_TIME: std::time::Duration = std::time::Duration::from_secs(1);

type ClaimResult = Result<Claim, LedgerError>;

/// ClaimJobs' front of the store: concurrent claims of the same queues in one
/// transaction (see the module's doc).
#[derive(Clone, Debug)]
pub(crate) struct GroupClaims {
    store: Store,
    claims: Batcher<(ClaimRequest, Option<Instant>), ClaimResult>,
    in_flight: InFlight,
}

impl GroupClaims {
    /// Starts `writers` writer tasks (each holds at most one pool connection at a time).
    pub(crate) fn start(store: Store, writers: usize) -> GroupClaims {
        let claims = {
            let store = store.clone();
            // Claims of different queues in one batch become one transaction per queue.
            Batcher::start(writers, MAX_GROUP_CLAIM_JOBS, move |batch| {
                write_claims(store.clone(), batch)
            })
        };
        GroupClaims {
            store,
            claims,
            in_flight: InFlight::default(),
        }
    }

    /// One claim attempt (as `Store::claim_jobs`).
    pub(crate) async fn claim(
        &self,
        request: &ClaimRequest,
        deadline: Option<Instant>,
    ) -> ClaimResult {
        let (_counted, alone) = self.in_flight.enter();
        let hurried = deadline
            .is_some_and(|d| d.saturating_duration_since(Instant::now()) < MIN_GROUPED_CLAIM_TIME);
        if alone || hurried {
            return self.store.claim_jobs(request, deadline).await;
        }
        self.claims.submit((request.clone(), deadline)).await?
    }
}

/// Writes a batch of claims: those of the same queues together, in arrival order, at
/// most MAX_GROUP_CLAIM_JOBS jobs per transaction; the transactions concurrently.
async fn write_claims(
    store: Store,
    batch: Vec<Pending<(ClaimRequest, Option<Instant>), ClaimResult>>,
) {
    let mut groups: Vec<(_, usize, Vec<_>)> = Vec::new();
    for pending in batch {
        let key = pending.0 .0.group_key();
        let jobs = pending.0 .0.max_jobs;
        match groups
            .iter_mut()
            .find(|(k, n, _)| *k == key && n + jobs <= MAX_GROUP_CLAIM_JOBS)
        {
            Some((_, n, members)) => {
                *n += jobs;
                members.push(pending);
            }
            None => groups.push((key, jobs, vec![pending])),
        }
    }
    let writes = groups
        .into_iter()
        .map(|(_, _, members)| write_claim_group(&store, members));
    futures::future::join_all(writes).await;
}

async fn write_claim_group(
    store: &Store,
    members: Vec<Pending<(ClaimRequest, Option<Instant>), ClaimResult>>,
) {
    let (calls, replies): (Vec<_>, Vec<_>) = members.into_iter().unzip();
    let requests: Vec<ClaimRequest> = calls.iter().map(|(r, _)| r.clone()).collect();
    // The group ends with its earliest deadline (each was at least
    // MIN_GROUPED_CLAIM_TIME away when it was queued).
    let deadline = calls.iter().filter_map(|(_, d)| *d).min();
    let result = store.claim_together(&requests, deadline).await;
    match super::past_deadline(result, deadline) {
        Ok(claims) => {
            for (reply, claim) in replies.into_iter().zip(claims) {
                let _ = reply.send(Ok(claim));
            }
        }
        // The earliest deadline cancelled the transaction (nothing was claimed): the
        // others try alone, each until its own deadline.
        Err(LedgerError::DeadlineExceeded) if requests.len() > 1 => {
            for ((request, deadline), reply) in calls.iter().zip(replies) {
                let _ = reply.send(store.claim_jobs(request, *deadline).await);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
