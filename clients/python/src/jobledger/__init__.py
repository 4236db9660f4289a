"""jobledger: the Python client and worker library of jobledger, the durable ledger and
dispatcher of asynchronous jobs.

- `Client` (blocking) and `AsyncClient` (asyncio): create, read, list, count, move,
  cancel and follow jobs; errors are the classes of `jobledger.errors`.
- `Worker`: `@worker.handler(type)` functions run on the jobs the server hands out, under
  leases, with heartbeats, retries, dead letters and a graceful shutdown.
"""

from jobledger._models import (
    ClaimedJob,
    Counts,
    CreateResult,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    RetryPolicy,
    TransitionResult,
)
from jobledger._settings import TLS, Retries, new_request_id, transition_request
from jobledger.aio import AsyncClient
from jobledger.client import Client
from jobledger.errors import (
    AlreadyExists,
    FailedPrecondition,
    IdempotencyKeyReused,
    InvalidArgument,
    InvalidTransition,
    JobledgerError,
    JobNotFound,
    JobNotRunning,
    StaleAttempt,
    Unavailable,
)
from jobledger.worker import (
    AsyncJobContext,
    Fail,
    JobContext,
    JobLost,
    Retry,
    Worker,
    WorkerStats,
)

__all__ = [
    "TLS",
    "AlreadyExists",
    "AsyncClient",
    "AsyncJobContext",
    "ClaimedJob",
    "Client",
    "Counts",
    "CreateResult",
    "Fail",
    "FailedPrecondition",
    "IdempotencyKeyReused",
    "InvalidArgument",
    "InvalidTransition",
    "Job",
    "JobContext",
    "JobEvent",
    "JobLost",
    "JobNotFound",
    "JobNotRunning",
    "JobSpec",
    "JobStatus",
    "JobledgerError",
    "Retries",
    "Retry",
    "RetryPolicy",
    "StaleAttempt",
    "TransitionResult",
    "Unavailable",
    "Worker",
    "WorkerStats",
    "new_request_id",
    "transition_request",
]
