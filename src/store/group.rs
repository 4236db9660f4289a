//! Group commit for CreateJob. Calls that arrive while earlier ones are being written
//! queue up; the next free writer takes everything queued (up to a cap) and writes it
//! with `Store::create_jobs`: one statement, one commit, each caller answered after that
//! commit with exactly the outcome its own CreateJob would have had (idempotency
//! included). Nothing waits for a batch to fill: a lone call is written at once, alone.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use super::{jobs::CreateOutcome, Store};
use crate::ledger::{LedgerError, NewJob};

type Pending = (NewJob, oneshot::Sender<CreateOutcome>);

/// The CreateJob front of the store when group commit is on.
#[derive(Clone, Debug)]
pub struct GroupCommit {
    queue: mpsc::Sender<Pending>,
}

impl GroupCommit {
    /// Starts `writers` writer tasks (each holds at most one pool connection at a time)
    /// writing at most `max_batch` jobs per statement.
    pub fn start(store: Store, writers: usize, max_batch: usize) -> GroupCommit {
        let (queue, rx) = mpsc::channel::<Pending>(max_batch.max(1) * writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(store.clone(), rx.clone(), max_batch.max(1)));
        }
        GroupCommit { queue }
    }

    pub async fn create_job(&self, new: NewJob) -> CreateOutcome {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((new, reply))
            .await
            .map_err(|_| LedgerError::ShuttingDown)?;
        answer.await.map_err(|_| LedgerError::Internal {
            cause: "group commit writer went away".into(),
        })?
    }
}

async fn write_batches(store: Store, rx: Arc<Mutex<mpsc::Receiver<Pending>>>, max_batch: usize) {
    loop {
        // Collect under the lock (wait for the first, take what else is queued), write
        // without it, so the next writer collects while this one writes.
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        }
        let (jobs, replies): (Vec<NewJob>, Vec<_>) = batch.into_iter().unzip();
        if jobs.len() == 1 {
            let outcome = store.create_job(&jobs[0]).await;
            for reply in replies {
                let _ = reply.send(outcome.clone());
            }
            continue;
        }
        match store.create_jobs(&jobs).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            // A value PostgreSQL refused (validation should have caught it) fails the
            // whole statement: write each on its own, so it fails only its own caller.
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
}
