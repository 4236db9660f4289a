//! A property test of the state machine against the real server: proptest generates
//! sequences of TransitionJob calls from several workers (random targets, `expected_status`
//! and `attempt` fencing right or wrong, request_ids fresh or reused, some steps raced
//! concurrently) and an in-memory model predicts each call's gRPC code, ErrorInfo reason,
//! and the job and events it returns.
//!
//! The model is written from the spec (§3 of the contract) and docs/decisions.md (the
//! order of the checks, the retry budget, request_id replay), never from the server's
//! `ledger::machine`: a shared mistake would otherwise pass unnoticed.
//!
//! Racing calls are judged by linearizability: their outcomes must be those of SOME
//! serial order of them (so of two competing compare-and-set calls exactly one wins).
//! Every order that fits is kept as a candidate history, and later calls, GetJob and the
//! event history narrow them down; at the end of a case one candidate must match GetJob
//! and the job's stored events (StreamEvents, history_only) exactly, and the invariant
//! checker must find nothing.
//!
//! One server for the whole test, fresh jobs per case. 48 cases by default (a few
//! seconds); `PROPTEST_CASES=1000 cargo nextest run --test api model --no-capture` for
//! more.

use std::{collections::BTreeMap, fmt::Write as _, sync::Mutex, time::Duration};

use futures::{future::join_all, StreamExt};
use jobledger::proto::{self, job_ledger_client::JobLedgerClient, JobStatus as S};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};
use tonic::{transport::Channel, Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{spawn_app, TestApp};

/// Workers: each has its own HTTP/2 connection and reports as `actor = worker-N`.
const WORKERS: usize = 4;
/// Default number of cases (PROPTEST_CASES overrides it).
const DEFAULT_CASES: u32 = 48;
/// The longest any one call may take before the case fails.
const CALL_LIMIT: Duration = Duration::from_secs(30);

const STATUSES: [S; 6] = [
    S::Queued,
    S::Running,
    S::Succeeded,
    S::Failed,
    S::Canceled,
    S::DeadLetter,
];

// ---------------------------------------------------------------------------------
// The model, from the spec
// ---------------------------------------------------------------------------------

/// The spec's table (§3): where a job may go from `from`. SUCCEEDED and CANCELED are final.
fn allowed_next(from: S) -> &'static [S] {
    match from {
        S::Queued => &[S::Running, S::Canceled],
        S::Running => &[S::Queued, S::Running, S::Succeeded, S::Failed, S::Canceled],
        S::Failed => &[S::Queued, S::Running, S::Canceled, S::DeadLetter],
        S::DeadLetter => &[S::Queued],
        S::Succeeded | S::Canceled | S::Unspecified => &[],
    }
}

/// `finished_at` is set iff the job is in one of these.
fn is_finished(s: S) -> bool {
    matches!(s, S::Succeeded | S::Failed | S::Canceled | S::DeadLetter)
}

/// Who wrote an event, as its `detail` tells.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Writer {
    /// The creation event (prev UNSPECIFIED).
    Create,
    /// A TransitionJob call: `detail.actor`.
    Worker(String),
    /// The server moving a job whose last attempt failed on to DEAD_LETTER.
    AutoDeadLetter,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelEvent {
    prev: S,
    next: S,
    attempt: i32,
    writer: Writer,
}

/// (prev_status, next_status, attempt) of an event.
type Step3 = (S, S, i32);

/// The recorded outcome of a request_id applied to a job.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Recorded {
    to: S,
    status: S,
    attempt: i32,
    events: Vec<Step3>,
    /// The ids of the events the original call returned (a replay returns the same ones).
    event_ids: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct JobModel {
    id: String,
    max_attempts: i32,
    status: S,
    attempt: i32,
    /// Entered RUNNING at least once (`started_at` is set).
    started: bool,
    stage: String,
    progress: i32,
    last_error_code: String,
    path: Vec<ModelEvent>,
    requests: BTreeMap<String, Recorded>,
}

/// One TransitionJob call, with every choice made.
#[derive(Clone, Debug)]
struct Call {
    job: usize,
    worker: usize,
    to: S,
    expected: Option<S>,
    attempt: Option<i32>,
    request_id: Option<String>,
    stage: Option<String>,
    progress: Option<i32>,
    error_code: Option<String>,
}

impl Call {
    fn actor(&self) -> String {
        format!("worker-{}", self.worker)
    }
}

/// What the model predicts a call returns.
#[derive(Clone, Debug, PartialEq)]
enum Prediction {
    Ok {
        status: S,
        attempt: i32,
        events: Vec<Step3>,
        /// A replay: the events must be the original call's, by id.
        replay_of: Option<Vec<String>>,
    },
    Err {
        code: Code,
        reason: &'static str,
        fields: Vec<String>,
    },
}

/// What the server returned.
#[derive(Clone, Debug)]
enum Observed {
    Ok {
        status: S,
        attempt: i32,
        events: Vec<Step3>,
        event_ids: Vec<String>,
    },
    Err {
        code: Code,
        reason: String,
        fields: Vec<String>,
        message: String,
    },
}

fn status_of(v: i32) -> S {
    S::try_from(v).unwrap_or(S::Unspecified)
}

impl Observed {
    fn from_result(result: Result<proto::TransitionJobResponse, Status>) -> Observed {
        match result {
            Ok(r) => {
                let job = r.job.unwrap_or_default();
                Observed::Ok {
                    status: status_of(job.status),
                    attempt: job.attempt,
                    events: r
                        .events
                        .iter()
                        .map(|e| {
                            (
                                status_of(e.prev_status),
                                status_of(e.next_status),
                                e.attempt,
                            )
                        })
                        .collect(),
                    event_ids: r.events.into_iter().map(|e| e.id).collect(),
                }
            }
            Err(status) => {
                let mut fields: Vec<String> = status
                    .get_details_bad_request()
                    .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
                    .unwrap_or_default();
                fields.sort();
                Observed::Err {
                    code: status.code(),
                    reason: status
                        .get_details_error_info()
                        .map(|i| i.reason)
                        .unwrap_or_else(|| "<no ErrorInfo>".into()),
                    fields,
                    message: status.message().to_owned(),
                }
            }
        }
    }
}

fn agrees(predicted: &Prediction, observed: &Observed) -> bool {
    match (predicted, observed) {
        (
            Prediction::Ok {
                status,
                attempt,
                events,
                replay_of,
            },
            Observed::Ok {
                status: s,
                attempt: a,
                events: e,
                event_ids,
            },
        ) => {
            status == s
                && attempt == a
                && events == e
                && replay_of.as_ref().is_none_or(|ids| ids == event_ids)
        }
        (
            Prediction::Err {
                code,
                reason,
                fields,
            },
            Observed::Err {
                code: c,
                reason: r,
                fields: f,
                ..
            },
        ) => code == c && reason == r && fields == f,
        _ => false,
    }
}

fn refused(code: Code, reason: &'static str) -> Prediction {
    Prediction::Err {
        code,
        reason,
        fields: Vec::new(),
    }
}

impl JobModel {
    fn new(id: String, max_attempts: i32) -> JobModel {
        JobModel {
            id,
            // Spec §2: 0 = the default, 5.
            max_attempts: if max_attempts == 0 { 5 } else { max_attempts },
            status: S::Queued,
            attempt: 0,
            started: false,
            stage: String::new(),
            progress: 0,
            last_error_code: String::new(),
            path: vec![ModelEvent {
                prev: S::Unspecified,
                next: S::Queued,
                attempt: 0,
                writer: Writer::Create,
            }],
            requests: BTreeMap::new(),
        }
    }

    /// Applies `call` (if the spec lets it through) and predicts its answer. The checks
    /// run in the order docs/decisions.md gives: validation, request_id replay,
    /// expected_status, a holder's report of a job no longer RUNNING, attempt, the table,
    /// the retry budget.
    fn apply(&mut self, call: &Call) -> Prediction {
        let mut fields = Vec::new();
        if call.attempt.is_some_and(|a| a < 0) {
            fields.push("attempt".to_owned());
        }
        if call.progress.is_some_and(|p| !(0..=100).contains(&p)) {
            fields.push("progress".to_owned());
        }
        if !fields.is_empty() {
            fields.sort();
            return Prediction::Err {
                code: Code::InvalidArgument,
                reason: "INVALID_ARGUMENT",
                fields,
            };
        }
        if let Some(rid) = &call.request_id {
            if let Some(rec) = self.requests.get(rid) {
                return if rec.to == call.to {
                    Prediction::Ok {
                        status: rec.status,
                        attempt: rec.attempt,
                        events: rec.events.clone(),
                        replay_of: Some(rec.event_ids.clone()),
                    }
                } else {
                    refused(Code::AlreadyExists, "REQUEST_ID_REUSED")
                };
            }
        }
        if call.expected.is_some_and(|e| e != self.status) {
            return refused(Code::Aborted, "STATUS_MISMATCH");
        }
        // Spec §7, fencing after a lease is lost: a report into RUNNING with an attempt
        // and no expected status comes from the holder of that attempt; from any status
        // but RUNNING it is refused, never taken as a start or retry.
        if call.to == S::Running
            && call.attempt.is_some_and(|a| a >= 1)
            && call.expected.is_none()
            && self.status != S::Running
        {
            return refused(Code::FailedPrecondition, "JOB_NOT_RUNNING");
        }
        if call.attempt.is_some_and(|a| a != self.attempt) {
            return refused(Code::Aborted, "STALE_ATTEMPT");
        }
        let from = self.status;
        let to = call.to;
        if !allowed_next(from).contains(&to) {
            return refused(Code::FailedPrecondition, "INVALID_TRANSITION");
        }
        // "A retry (from FAILED) is refused while attempt >= max_attempts"; decisions.md:
        // FAILED -> QUEUED is a retry as well.
        if from == S::Failed
            && matches!(to, S::Running | S::Queued)
            && self.attempt >= self.max_attempts
        {
            return refused(Code::FailedPrecondition, "MAX_ATTEMPTS_EXHAUSTED");
        }
        if to == S::Running && from != S::Running {
            self.attempt += 1;
            self.started = true;
        }
        if from == S::DeadLetter && to == S::Queued {
            self.attempt = 0;
        }
        let mut events = vec![(from, to, self.attempt)];
        self.path.push(ModelEvent {
            prev: from,
            next: to,
            attempt: self.attempt,
            writer: Writer::Worker(call.actor()),
        });
        self.status = to;
        if let Some(stage) = &call.stage {
            self.stage = stage.clone();
        }
        if let Some(p) = call.progress {
            self.progress = p;
        }
        if to == S::Failed {
            self.last_error_code = call.error_code.clone().unwrap_or_default();
            // The failed attempt was the last one: on to DEAD_LETTER, same transaction.
            if from == S::Running && self.attempt >= self.max_attempts {
                events.push((S::Failed, S::DeadLetter, self.attempt));
                self.path.push(ModelEvent {
                    prev: S::Failed,
                    next: S::DeadLetter,
                    attempt: self.attempt,
                    writer: Writer::AutoDeadLetter,
                });
                self.status = S::DeadLetter;
            }
        }
        if let Some(rid) = &call.request_id {
            self.requests.insert(
                rid.clone(),
                Recorded {
                    to,
                    status: self.status,
                    attempt: self.attempt,
                    events: events.clone(),
                    event_ids: Vec::new(),
                },
            );
        }
        Prediction::Ok {
            status: self.status,
            attempt: self.attempt,
            events,
            replay_of: None,
        }
    }

    /// After an applied call agreed with what the server returned: remember the event ids
    /// its request_id must replay.
    fn note(&mut self, call: &Call, observed: &Observed) {
        if let (Some(rid), Observed::Ok { event_ids, .. }) = (&call.request_id, observed) {
            if let Some(rec) = self.requests.get_mut(rid) {
                if rec.event_ids.is_empty() {
                    rec.event_ids = event_ids.clone();
                }
            }
        }
    }

    /// Where GetJob and the stored events disagree with this model ("" when they agree).
    fn differences(&self, job: &proto::Job, events: &[proto::JobEvent]) -> String {
        let mut d = String::new();
        let mut field = |name: &str, model: String, server: String| {
            if model != server {
                let _ = writeln!(d, "  {name}: model {model}, server {server}");
            }
        };
        field(
            "status",
            format!("{:?}", self.status),
            format!("{:?}", status_of(job.status)),
        );
        field("attempt", self.attempt.to_string(), job.attempt.to_string());
        field(
            "max_attempts",
            self.max_attempts.to_string(),
            job.max_attempts.to_string(),
        );
        field("stage", self.stage.clone(), job.stage.clone());
        field(
            "progress",
            self.progress.to_string(),
            job.progress.to_string(),
        );
        field(
            "last_error_code",
            self.last_error_code.clone(),
            job.last_error_code.clone(),
        );
        field(
            "finished_at set",
            is_finished(self.status).to_string(),
            job.finished_at.is_some().to_string(),
        );
        field(
            "started_at set",
            self.started.to_string(),
            job.started_at.is_some().to_string(),
        );
        let stored: Vec<String> = events.iter().map(describe_event).collect();
        let modelled: Vec<String> = self.path.iter().map(describe_model_event).collect();
        field("events", modelled.join(" "), stored.join(" "));
        d
    }
}

fn describe_model_event(e: &ModelEvent) -> String {
    let by = match &e.writer {
        Writer::Create => "create".to_owned(),
        Writer::Worker(actor) => actor.clone(),
        Writer::AutoDeadLetter => "max_attempts_exhausted".to_owned(),
    };
    format!("{:?}->{:?}@{}[{by}]", e.prev, e.next, e.attempt)
}

fn detail_string(e: &proto::JobEvent, key: &str) -> Option<String> {
    match e.detail.as_ref()?.fields.get(key)?.kind.as_ref()? {
        prost_types::value::Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A stored event in the model's notation: who wrote it is read from its detail.
fn describe_event(e: &proto::JobEvent) -> String {
    let prev = status_of(e.prev_status);
    let by = if prev == S::Unspecified {
        "create".to_owned()
    } else if detail_string(e, "reason").as_deref() == Some("max_attempts_exhausted") {
        "max_attempts_exhausted".to_owned()
    } else {
        detail_string(e, "actor").unwrap_or_else(|| "?".into())
    };
    format!(
        "{:?}->{:?}@{}[{by}]",
        prev,
        status_of(e.next_status),
        e.attempt
    )
}

/// The jobs of one case, as one candidate history has them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct World {
    jobs: Vec<JobModel>,
}

// ---------------------------------------------------------------------------------
// What proptest generates
// ---------------------------------------------------------------------------------

/// The target status: one the table allows from the job's current status (picked by
/// index), or any status at all.
#[derive(Clone, Debug)]
enum Target {
    Allowed(u8),
    Any(S),
}

/// `expected_status`: absent, the job's current status, or another one.
#[derive(Clone, Debug)]
enum Guess {
    Absent,
    Right,
    Wrong(u8),
}

/// `attempt`: absent, the job's current attempt, or off by `n` (possibly negative:
/// then the request is INVALID_ARGUMENT).
#[derive(Clone, Debug)]
enum Fence {
    Absent,
    Right,
    Off(i32),
}

/// `request_id`: absent, new, or one sent before in this case (to any job).
#[derive(Clone, Debug)]
enum Rid {
    Absent,
    Fresh,
    Reuse(u8),
}

#[derive(Clone, Debug)]
struct Op {
    job: u8,
    worker: u8,
    to: Target,
    expected: Guess,
    attempt: Fence,
    request_id: Rid,
    stage: Option<u8>,
    progress: Option<i32>,
}

#[derive(Clone, Debug)]
enum Step {
    /// One call, answered before the next step.
    Call(Op),
    /// 2 to 4 calls on one job (the first op's), sent at once from their workers.
    Race(Vec<Op>),
}

#[derive(Clone, Debug)]
struct Case {
    /// One job per entry, created with this `max_attempts` (0 = the default 5).
    max_attempts: Vec<i32>,
    steps: Vec<Step>,
}

fn op() -> impl Strategy<Value = Op> {
    (
        any::<u8>(),
        0..WORKERS as u8,
        prop_oneof![
            5 => any::<u8>().prop_map(Target::Allowed),
            1 => prop::sample::select(STATUSES.to_vec()).prop_map(Target::Any),
        ],
        prop_oneof![
            3 => Just(Guess::Absent),
            2 => Just(Guess::Right),
            1 => any::<u8>().prop_map(Guess::Wrong),
        ],
        prop_oneof![
            3 => Just(Fence::Absent),
            2 => Just(Fence::Right),
            1 => prop_oneof![-2..=-1i32, 1..=2i32].prop_map(Fence::Off),
        ],
        prop_oneof![
            3 => Just(Rid::Absent),
            2 => Just(Rid::Fresh),
            2 => any::<u8>().prop_map(Rid::Reuse),
        ],
        prop::option::of(0..4u8),
        prop::option::weighted(
            0.3,
            prop_oneof![16 => 0..=100i32, 1 => Just(-1), 1 => Just(101)],
        ),
    )
        .prop_map(
            |(job, worker, to, expected, attempt, request_id, stage, progress)| Op {
                job,
                worker,
                to,
                expected,
                attempt,
                request_id,
                stage,
                progress,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    let step = prop_oneof![
        3 => op().prop_map(Step::Call),
        1 => prop::collection::vec(op(), 2..=4).prop_map(Step::Race),
    ];
    (
        prop::collection::vec(prop_oneof![1 => Just(0), 4 => 1..=3i32], 1..=3),
        prop::collection::vec(step, 1..=24),
    )
        .prop_map(|(max_attempts, steps)| Case {
            max_attempts,
            steps,
        })
}

// ---------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------

/// Counts over the whole run, printed at the end (and checked: the generator must reach
/// every outcome, or the property says little).
#[derive(Default, Debug)]
struct Tally {
    cases: u64,
    calls: u64,
    races: u64,
    /// Races after which more than one serial order explained what was seen.
    ambiguous_races: u64,
    /// Races on a CAS claim (`expected_status` = the current status) with 2+ claimants.
    contested_claims: u64,
    dead_letters: u64,
    replays: u64,
    outcomes: BTreeMap<String, u64>,
}

struct Ctx<'a> {
    app: &'a TestApp,
    workers: &'a [JobLedgerClient<Channel>],
    tally: &'a Mutex<Tally>,
}

/// Fills in `op`'s choices from `world` (a race's ops all from the state before it).
fn resolve(
    op: &Op,
    job: usize,
    world: &World,
    sent_ids: &mut Vec<String>,
    serial: &mut u32,
) -> Call {
    let m = &world.jobs[job];
    *serial += 1;
    let n = *serial;
    let to = match op.to {
        Target::Allowed(i) => {
            // Final statuses end a job's walk: pick them a quarter as often as the others.
            let weighted: Vec<S> = allowed_next(m.status)
                .iter()
                .flat_map(|&s| {
                    let weight = if matches!(s, S::Succeeded | S::Canceled) {
                        1
                    } else {
                        4
                    };
                    std::iter::repeat_n(s, weight)
                })
                .collect();
            if weighted.is_empty() {
                STATUSES[i as usize % STATUSES.len()]
            } else {
                weighted[i as usize % weighted.len()]
            }
        }
        Target::Any(s) => s,
    };
    let expected = match op.expected {
        Guess::Absent => None,
        Guess::Right => Some(m.status),
        Guess::Wrong(i) => {
            let others: Vec<S> = STATUSES.into_iter().filter(|s| *s != m.status).collect();
            Some(others[i as usize % others.len()])
        }
    };
    let attempt = match op.attempt {
        Fence::Absent => None,
        Fence::Right => Some(m.attempt),
        Fence::Off(d) => Some(m.attempt + d),
    };
    let request_id = match op.request_id {
        Rid::Absent => None,
        Rid::Reuse(i) if !sent_ids.is_empty() => {
            Some(sent_ids[i as usize % sent_ids.len()].clone())
        }
        Rid::Fresh | Rid::Reuse(_) => {
            let id = format!("rq-{n}");
            sent_ids.push(id.clone());
            Some(id)
        }
    };
    Call {
        job,
        worker: op.worker as usize % WORKERS,
        to,
        expected,
        attempt,
        request_id,
        stage: op.stage.map(|s| format!("stage-{s}")),
        progress: op.progress,
        error_code: (to == S::Failed).then(|| format!("E{n}")),
    }
}

fn request(call: &Call, world: &World) -> proto::TransitionJobRequest {
    proto::TransitionJobRequest {
        job_id: world.jobs[call.job].id.clone(),
        to_status: call.to as i32,
        expected_status: call.expected.map(|s| s as i32),
        attempt: call.attempt,
        stage: call.stage.clone().unwrap_or_default(),
        progress: call.progress,
        error_code: call.error_code.clone().unwrap_or_default(),
        actor: call.actor(),
        request_id: call.request_id.clone().unwrap_or_default(),
        ..Default::default()
    }
}

async fn send(ctx: &Ctx<'_>, call: &Call, world: &World) -> Result<Observed, String> {
    let mut client = ctx.workers[call.worker].clone();
    let req = request(call, world);
    match tokio::time::timeout(CALL_LIMIT, client.transition_job(req)).await {
        Ok(result) => Ok(Observed::from_result(result.map(|r| r.into_inner()))),
        Err(_) => Err(format!("{call:?} took over {CALL_LIMIT:?}")),
    }
}

/// Every order of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut p = rest.clone();
            p.insert(at, n - 1);
            out.push(p);
        }
    }
    out
}

/// The candidates that `calls` (in `order`) turn into ones agreeing with `observed`.
fn advance(
    candidates: &[World],
    calls: &[Call],
    observed: &[Observed],
    orders: &[Vec<usize>],
) -> Vec<World> {
    let mut next: Vec<World> = Vec::new();
    for world in candidates {
        for order in orders {
            let mut w = world.clone();
            let fits = order.iter().all(|&i| {
                let job = &mut w.jobs[calls[i].job];
                let predicted = job.apply(&calls[i]);
                let ok = agrees(&predicted, &observed[i]);
                if ok {
                    job.note(&calls[i], &observed[i]);
                }
                ok
            });
            if fits && !next.contains(&w) {
                next.push(w);
            }
        }
    }
    next
}

fn explain(candidates: &[World], calls: &[Call], observed: &[Observed]) -> String {
    let mut s = String::from("no serial order of the calls explains what the server answered\n");
    for (c, o) in calls.iter().zip(observed) {
        let _ = writeln!(s, "  call {c:?}\n    -> {o:?}");
    }
    let world = &candidates[0];
    let _ = writeln!(
        s,
        "model before (first of {} candidates):",
        candidates.len()
    );
    for order in permutations(calls.len()) {
        let mut w = world.clone();
        let predictions: Vec<String> = order
            .iter()
            .map(|&i| format!("#{i}: {:?}", w.jobs[calls[i].job].apply(&calls[i])))
            .collect();
        let _ = writeln!(s, "  order {order:?} predicts {}", predictions.join("; "));
    }
    for j in &world.jobs {
        let _ = writeln!(
            s,
            "  job {}: {:?} attempt {}/{} path {}",
            j.id,
            j.status,
            j.attempt,
            j.max_attempts,
            j.path
                .iter()
                .map(describe_model_event)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    s
}

async fn run_case(ctx: &Ctx<'_>, case: &Case) -> Result<(), String> {
    let mut world = World { jobs: Vec::new() };
    let mut client = ctx.app.client.clone();
    for &max_attempts in &case.max_attempts {
        let created = client
            .create_job(proto::CreateJobRequest {
                r#type: "model".into(),
                max_attempts,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("create_job: {s:?}"))?
            .into_inner()
            .job
            .ok_or("no job")?;
        let model = JobModel::new(created.id.clone(), max_attempts);
        if (
            status_of(created.status),
            created.attempt,
            created.max_attempts,
        ) != (S::Queued, 0, model.max_attempts)
        {
            return Err(format!(
                "a new job is not QUEUED, attempt 0/{max_attempts}: {created:?}"
            ));
        }
        world.jobs.push(model);
    }
    let mut candidates = vec![world];
    let mut sent_ids = Vec::new();
    let mut serial = 0;
    let mut local = Tally::default();
    for step in &case.steps {
        let ops: Vec<&Op> = match step {
            Step::Call(op) => vec![op],
            Step::Race(ops) => ops.iter().collect(),
        };
        let job = ops[0].job as usize % candidates[0].jobs.len();
        let calls: Vec<Call> = ops
            .iter()
            .map(|op| resolve(op, job, &candidates[0], &mut sent_ids, &mut serial))
            .collect();
        let observed: Vec<Observed> = join_all(calls.iter().map(|c| send(ctx, c, &candidates[0])))
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        for o in &observed {
            if let Observed::Err {
                code: code @ (Code::Internal | Code::Unknown),
                message,
                ..
            } = o
            {
                return Err(format!("{code:?} is a bug: {message}"));
            }
        }
        let next = advance(&candidates, &calls, &observed, &permutations(calls.len()));
        if next.is_empty() {
            return Err(explain(&candidates, &calls, &observed));
        }
        local.calls += calls.len() as u64;
        if calls.len() > 1 {
            local.races += 1;
            if next.len() > 1 {
                local.ambiguous_races += 1;
            }
            let before = &candidates[0].jobs[job];
            let claims = calls
                .iter()
                .filter(|c| c.expected == Some(before.status) && c.to != before.status)
                .count();
            if claims >= 2 {
                local.contested_claims += 1;
            }
        }
        for (c, o) in calls.iter().zip(&observed) {
            let key = match o {
                Observed::Ok { .. } => "OK".to_owned(),
                Observed::Err { reason, .. } => reason.clone(),
            };
            *local.outcomes.entry(key).or_default() += 1;
            if c.request_id.is_some()
                && matches!(o, Observed::Ok { .. })
                && candidates[0].jobs[job]
                    .requests
                    .contains_key(c.request_id.as_ref().unwrap())
            {
                local.replays += 1;
            }
        }
        candidates = next;
    }

    // GetJob and the stored events of every job, against the candidates left.
    let mut stored = Vec::new();
    for id in candidates[0].jobs.iter().map(|j| j.id.clone()) {
        let job = client
            .get_job(proto::GetJobRequest {
                job_id: id.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| format!("get_job: {s:?}"))?
            .into_inner()
            .job
            .ok_or("no job")?;
        let mut stream = client
            .stream_events(proto::StreamEventsRequest {
                job_id: id.clone(),
                history_only: true,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("stream_events: {s:?}"))?
            .into_inner();
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(CALL_LIMIT, stream.next()).await {
                Err(_) => return Err(format!("history of {id} did not end")),
                Ok(None) => break,
                Ok(Some(Ok(e))) => events.push(e),
                Ok(Some(Err(s))) => return Err(format!("history of {id}: {s:?}")),
            }
        }
        stored.push((job, events));
    }
    let agreeing: Vec<&World> = candidates
        .iter()
        .filter(|w| {
            w.jobs
                .iter()
                .zip(&stored)
                .all(|(m, (job, events))| m.differences(job, events).is_empty())
        })
        .collect();
    let Some(world) = agreeing.first() else {
        let mut s = format!(
            "GetJob / the stored events agree with none of {} candidate histories; the first:\n",
            candidates.len()
        );
        for (m, (job, events)) in candidates[0].jobs.iter().zip(&stored) {
            let _ = write!(s, "job {}:\n{}", m.id, m.differences(job, events));
        }
        return Err(s);
    };
    local.dead_letters += world
        .jobs
        .iter()
        .flat_map(|j| &j.path)
        .filter(|e| e.writer == Writer::AutoDeadLetter)
        .count() as u64;

    let report = jobledger::tools::check::check(&ctx.app.db)
        .await
        .map_err(|e| format!("the checker failed: {e:#}"))?;
    if !report.ok {
        return Err(format!("invariants violated:\n{}", report.to_text()));
    }

    let mut tally = ctx.tally.lock().unwrap();
    tally.cases += 1;
    tally.calls += local.calls;
    tally.races += local.races;
    tally.ambiguous_races += local.ambiguous_races;
    tally.contested_claims += local.contested_claims;
    tally.dead_letters += local.dead_letters;
    tally.replays += local.replays;
    for (k, v) in local.outcomes {
        *tally.outcomes.entry(k).or_default() += v;
    }
    Ok(())
}

#[test]
fn transitions_from_racing_workers_agree_with_a_model_of_the_spec() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(spawn_app());
    let workers: Vec<JobLedgerClient<Channel>> =
        rt.block_on(async { join_all((0..WORKERS).map(|_| app.new_client())).await });
    let mut config = Config {
        // Nothing is written next to the sources: a failure prints its minimal case.
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    let cases = config.cases;
    let tally = Mutex::new(Tally::default());
    let ctx = Ctx {
        app: &app,
        workers: &workers,
        tally: &tally,
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |case| {
        rt.block_on(run_case(&ctx, &case))
            .map_err(TestCaseError::fail)
    });
    let tally = tally.into_inner().unwrap();
    eprintln!("model test: {cases} cases requested; {tally:#?}");
    drop(workers);
    drop(app);
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, case)) => {
            panic!("the server disagrees with the model: {reason}\nminimal case: {case:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("proptest aborted: {reason}"),
    }
    // The property says little if the generator never reached these.
    if cases >= 32 {
        for outcome in [
            "OK",
            "INVALID_ARGUMENT",
            "STATUS_MISMATCH",
            "STALE_ATTEMPT",
            "INVALID_TRANSITION",
            "REQUEST_ID_REUSED",
        ] {
            assert!(
                tally.outcomes.get(outcome).copied().unwrap_or(0) > 0,
                "no call ended {outcome} in {cases} cases: {tally:#?}"
            );
        }
        assert!(tally.dead_letters > 0, "no job dead-lettered: {tally:#?}");
        assert!(tally.replays > 0, "no request_id was replayed: {tally:#?}");
        assert!(
            tally.contested_claims > 0,
            "no contested claim raced: {tally:#?}"
        );
    }
}
