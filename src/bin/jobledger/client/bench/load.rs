//! The load: callers over a few HTTP/2 connections, each timing its own calls, and the
//! CPU and memory of the server under it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use jobledger::proto::{
    self, job_ledger_client::JobLedgerClient, json::json_to_struct, JobStatus as S,
};
use tonic::transport::Channel;

use super::{Complete, Latency, LoadArgs, Measurement, ServerUsage, Workload};

/// Where the load goes: clients over `connections` HTTP/2 connections.
pub struct Target {
    clients: Vec<JobLedgerClient<Channel>>,
    pid: Option<u32>,
    /// Jobs the GetJob workload reads (created on first use unless set).
    pub get_ids: Vec<String>,
    run: String,
}

impl Target {
    pub async fn connect(addr: &str, connections: u16, pid: Option<u32>) -> anyhow::Result<Target> {
        let mut clients = Vec::new();
        for _ in 0..connections {
            let channel = Channel::from_shared(addr.to_owned())
                .with_context(|| format!("{addr:?} is not a URI"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            clients.push(JobLedgerClient::new(channel));
        }
        Ok(Target {
            clients,
            pid,
            get_ids: Vec::new(),
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        })
    }

    /// One call of each kind, so idle memory is measured on a server that has served.
    pub async fn touch(&self) -> anyhow::Result<()> {
        let mut client = self.clients[0].clone();
        let job = client
            .create_job(create_request(format!("{}-touch", self.run)))
            .await?
            .into_inner()
            .job
            .context("no job")?;
        client.get_job(get_request(&job.id)).await?;
        client
            .transition_job(transition_request(&job.id, S::Running, None))
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// `n` new QUEUED jobs, made with CreateJobs.
    async fn create_queued(&self, n: usize, tag: &str) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        let mut client = self.clients[0].clone();
        let mut made = 0;
        while made < n {
            let size = (n - made).min(1000);
            let jobs = (made..made + size)
                .map(|i| create_request(format!("{}-{tag}-{i}", self.run)))
                .collect();
            let response = client
                .create_jobs(proto::CreateJobsRequest { jobs })
                .await
                .context("creating jobs for the workload")?
                .into_inner();
            for r in response.results {
                ids.push(r.job.context("a setup job failed")?.id);
            }
            made += size;
        }
        Ok(ids)
    }
}

fn create_request(key: String) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        r#type: "bench".into(),
        idempotency_key: key,
        requested_by: "bench".into(),
        params: Some(json_to_struct(&serde_json::json!({"bench": true}))),
        ..Default::default()
    }
}

fn get_request(id: &str) -> proto::GetJobRequest {
    proto::GetJobRequest {
        job_id: id.to_owned(),
        ..Default::default()
    }
}

fn transition_request(id: &str, to: S, attempt: Option<i32>) -> proto::TransitionJobRequest {
    let mut request = proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: to as i32,
        attempt,
        actor: "bench".into(),
        ..Default::default()
    };
    match (to, attempt) {
        (S::Running, None) => request.expected_status = Some(S::Queued as i32),
        (S::Running, Some(_)) => {
            request.stage = "bench".into();
            request.progress = Some(50);
        }
        (S::Succeeded, _) => {
            request.result = Some(json_to_struct(&serde_json::json!({"bench": true})))
        }
        _ => {}
    }
    request
}

/// What one caller saw.
struct Tally {
    latency_us: Histogram<u64>,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    /// A failed call; counted when it started inside the measured window.
    fn failed(&mut self, status: &tonic::Status, counted: bool) {
        if counted {
            self.errors += 1;
        }
        self.first_error
            .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.add(&other.latency_us).ok();
        self.requests += other.requests;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            requests: 0,
            errors: 0,
            first_error: None,
        }
    }
}

/// Times one call; counts it only if it started inside the measured window.
struct Clock {
    measure_from: Instant,
    end: Instant,
}

impl Clock {
    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    /// Whether a call that started at `started` is measured.
    fn counts(&self, started: Instant) -> bool {
        started >= self.measure_from
    }

    async fn call<T>(
        &self,
        tally: &mut Tally,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        let started = Instant::now();
        let result = call.await;
        let counted = started >= self.measure_from;
        match result {
            Ok(value) => {
                if counted {
                    let us = started.elapsed().as_micros() as u64;
                    tally.latency_us.saturating_record(us.max(1));
                    tally.requests += 1;
                }
                Some(value)
            }
            Err(status) => {
                if counted {
                    tally.errors += 1;
                }
                tally
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                None
            }
        }
    }
}

/// Jobs the GetJob workload reads (created before it starts).
const GET_JOBS: usize = 1_000;

/// What a workload's callers share: jobs to read, queued jobs to start.
struct Workset {
    get_ids: Vec<String>,
    queued: Mutex<Vec<String>>,
    /// Workload work: the job type of this measurement, and jobs created and completed
    /// (the producer keeps the backlog between them bounded).
    work_type: String,
    created: AtomicU64,
    completed: AtomicU64,
}

impl Workset {
    async fn prepare(
        target: &Target,
        workload: Workload,
        tag: &str,
        jobs_to_start: usize,
    ) -> anyhow::Result<Workset> {
        let get_ids = match workload {
            Workload::Get if target.get_ids.is_empty() => {
                target
                    .create_queued(GET_JOBS, &format!("{tag}-get"))
                    .await?
            }
            Workload::Get => target.get_ids.clone(),
            _ => Vec::new(),
        };
        // Fresh QUEUED jobs for the transition workload to start (more are made on the
        // way if they run out; those creates are not counted).
        let queued = if workload == Workload::Transition {
            target
                .create_queued(jobs_to_start, &format!("{tag}-q"))
                .await?
        } else {
            Vec::new()
        };
        Ok(Workset {
            get_ids,
            queued: Mutex::new(queued),
            work_type: format!("bench-work-{}-{tag}", target.run),
            created: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        })
    }
}

/// One workload at one concurrency: `concurrency` callers for the warm-up and the
/// measured window, then their tallies merged with the CPU the client and the server
/// used in the window.
pub async fn measure(
    target: &Target,
    workload: Workload,
    concurrency: usize,
    load: &LoadArgs,
) -> anyhow::Result<Measurement> {
    let total = load.warmup + load.duration;
    let tag = format!("{}-{concurrency}", workload.name());
    let estimate = (total * 400.0 + 20.0 * concurrency as f64) as usize;
    let workset = Arc::new(Workset::prepare(target, workload, &tag, estimate).await?);
    let started = Instant::now();
    let clock = Arc::new(Clock {
        measure_from: started + Duration::from_secs_f64(load.warmup),
        end: started + Duration::from_secs_f64(total),
    });
    let usage_before = tokio::spawn(usage_at(clock.measure_from, target.pid));
    let producer = (workload == Workload::Work).then(|| {
        tokio::spawn(produce(
            target.clients[0].clone(),
            workset.clone(),
            clock.clone(),
        ))
    });
    let callers: Vec<_> = (0..concurrency)
        .map(|w| {
            let caller = Caller {
                client: target.clients[w % target.clients.len()].clone(),
                clock: clock.clone(),
                workset: workset.clone(),
                key_prefix: format!("{}-{tag}-{w}", target.run),
                batch_size: load.batch_size,
                claim_batch: load.claim_batch,
                complete: load.complete,
                rng: XorShift::new(w as u64 + 1),
            };
            tokio::spawn(caller.run(workload))
        })
        .collect();
    let mut tally = Tally::new();
    for caller in callers {
        tally.merge(caller.await?);
    }
    if let Some(producer) = producer {
        producer.await??;
    }
    let usage_before = usage_before.await?;
    Ok(Measurement::new(
        workload,
        concurrency,
        load,
        tally,
        usage_before,
        target.pid,
    ))
}

impl Measurement {
    /// The callers' merged tally and what the processes used since `before` (this
    /// process's and the server's CPU seconds at the window's start).
    fn new(
        workload: Workload,
        concurrency: usize,
        load: &LoadArgs,
        tally: Tally,
        (client_cpu_before, server_cpu_before): (f64, Option<f64>),
        server_pid: Option<u32>,
    ) -> Measurement {
        let h = &tally.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Measurement {
            workload,
            concurrency,
            connections: load.connections,
            seconds: load.duration,
            requests: tally.requests,
            errors: tally.errors,
            throughput: tally.requests as f64 / load.duration,
            latency_ms: Latency {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: h.max() as f64 / 1000.0,
            },
            first_error: tally.first_error,
            client_cpu_seconds: cpu_seconds("self") - client_cpu_before,
            server: server_pid
                .zip(server_cpu_before)
                .map(|(pid, before)| ServerUsage {
                    cpu_seconds: cpu_seconds(&pid.to_string()) - before,
                    peak_rss_mib: rss_mib(pid, "VmHWM:"),
                }),
        }
    }
}

/// Workload work's producer: CreateJobs of 1,000 jobs at a time while the clock runs,
/// keeping at most `BACKLOG` jobs created and not yet completed.
async fn produce(
    mut client: JobLedgerClient<Channel>,
    workset: Arc<Workset>,
    clock: Arc<Clock>,
) -> anyhow::Result<()> {
    const BATCH: usize = 1000;
    const BACKLOG: u64 = 20_000;
    while clock.running() {
        let backlog = workset.created.load(Ordering::Relaxed)
            - workset
                .completed
                .load(Ordering::Relaxed)
                .min(workset.created.load(Ordering::Relaxed));
        if backlog >= BACKLOG {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let jobs = (0..BATCH)
            .map(|_| proto::CreateJobRequest {
                r#type: workset.work_type.clone(),
                params: Some(json_to_struct(&serde_json::json!({"bench": true}))),
                ..Default::default()
            })
            .collect();
        client
            .create_jobs(proto::CreateJobsRequest { jobs })
            .await
            .context("creating jobs for the work workload")?;
        workset.created.fetch_add(BATCH as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// At `at`: the CPU seconds this process and the server (if its pid is known) used so
/// far; the server's peak RSS is reset, so the next reading is the window's peak.
async fn usage_at(at: Instant, server_pid: Option<u32>) -> (f64, Option<f64>) {
    tokio::time::sleep_until(at.into()).await;
    let client_cpu = cpu_seconds("self");
    let server_cpu = server_pid.map(|pid| {
        reset_peak_rss(pid);
        cpu_seconds(&pid.to_string())
    });
    (client_cpu, server_cpu)
}

/// One concurrent caller: calls of its workload, one after another, until the clock ends.
struct Caller {
    client: JobLedgerClient<Channel>,
    clock: Arc<Clock>,
    workset: Arc<Workset>,
    key_prefix: String,
    batch_size: usize,
    claim_batch: i32,
    complete: Complete,
    rng: XorShift,
}

impl Caller {
    async fn run(mut self, workload: Workload) -> Tally {
        let mut tally = Tally::new();
        let mut i = 0u64;
        while self.clock.running() {
            i += 1;
            let key = format!("{}-{i}", self.key_prefix);
            match workload {
                Workload::Create => {
                    let call = self.client.create_job(create_request(key));
                    self.clock.call(&mut tally, call).await;
                }
                Workload::Get => {
                    let ids = &self.workset.get_ids;
                    let id = &ids[self.rng.below(ids.len())];
                    let call = self.client.get_job(get_request(id));
                    self.clock.call(&mut tally, call).await;
                }
                Workload::CreateBatch => self.create_batch(&mut tally, &key).await,
                Workload::Work => self.work(&mut tally, &key).await,
                Workload::Transition => {
                    let next = self.workset.queued.lock().expect("queue lock").pop();
                    let id = match next {
                        Some(id) => id,
                        None => match self.client.create_job(create_request(key)).await {
                            Ok(r) => r.into_inner().job.map(|j| j.id).unwrap_or_default(),
                            Err(_) => continue,
                        },
                    };
                    self.life_after_create(&mut tally, &id, false).await;
                }
                Workload::Mixed => {
                    let call = self.client.create_job(create_request(key));
                    let created = self.clock.call(&mut tally, call).await;
                    let Some(id) = created.and_then(|r| r.into_inner().job).map(|j| j.id) else {
                        continue;
                    };
                    self.life_after_create(&mut tally, &id, true).await;
                }
            }
        }
        tally
    }

    /// One worker round: claim up to `claim_batch` jobs, complete them; counts the jobs
    /// completed (the latency recorded is the whole round's).
    async fn work(&mut self, tally: &mut Tally, key: &str) {
        let claim = proto::ClaimJobsRequest {
            types: vec![self.workset.work_type.clone()],
            worker_id: key.to_owned(),
            max_jobs: self.claim_batch,
            wait: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        };
        let started = Instant::now();
        let counted = self.clock.counts(started);
        let jobs = match self.client.claim_jobs(claim).await {
            Ok(r) => r.into_inner().jobs,
            Err(status) => return tally.failed(&status, counted),
        };
        let done: Vec<proto::TransitionJobRequest> = jobs
            .iter()
            .filter_map(|c| c.job.as_ref())
            .map(|job| proto::TransitionJobRequest {
                job_id: job.id.clone(),
                to_status: S::Succeeded as i32,
                attempt: Some(job.attempt),
                actor: key.to_owned(),
                ..Default::default()
            })
            .collect();
        let completed = self.complete(done, tally, counted).await;
        self.workset
            .completed
            .fetch_add(completed as u64, Ordering::Relaxed);
        if completed > 0 && counted {
            let us = started.elapsed().as_micros() as u64;
            tally.latency_us.saturating_record(us.max(1));
            tally.requests += completed as u64;
        }
    }

    /// Completes claimed jobs as --complete says; how many succeeded.
    async fn complete(
        &mut self,
        done: Vec<proto::TransitionJobRequest>,
        tally: &mut Tally,
        counted: bool,
    ) -> usize {
        if done.is_empty() {
            return 0;
        }
        match self.complete {
            Complete::Batch => {
                let call = self
                    .client
                    .transition_jobs(proto::TransitionJobsRequest { transitions: done });
                match call.await {
                    Ok(r) => r
                        .into_inner()
                        .results
                        .iter()
                        .filter(|r| r.error.is_none())
                        .count(),
                    Err(status) => {
                        tally.failed(&status, counted);
                        0
                    }
                }
            }
            Complete::One => {
                let mut n = 0;
                for request in done {
                    match self.client.transition_job(request).await {
                        Ok(_) => n += 1,
                        Err(status) => tally.failed(&status, counted),
                    }
                }
                n
            }
        }
    }

    /// One CreateJobs call of `batch_size` jobs; counts jobs, not calls.
    async fn create_batch(&mut self, tally: &mut Tally, key: &str) {
        let jobs = (0..self.batch_size)
            .map(|j| create_request(format!("{key}-{j}")))
            .collect();
        let calls = tally.requests;
        let call = self.client.create_jobs(proto::CreateJobsRequest { jobs });
        self.clock.call(tally, call).await;
        if tally.requests > calls {
            tally.requests += self.batch_size as u64 - 1;
        }
    }

    /// start, progress, succeed (with a GetJob after each step but the first when `reads`).
    async fn life_after_create(&mut self, tally: &mut Tally, id: &str, reads: bool) {
        let steps = [
            (S::Running, None),
            (S::Running, Some(1)),
            (S::Succeeded, Some(1)),
        ];
        for (n, (to, attempt)) in steps.into_iter().enumerate() {
            // Mixed: create, get, start, get, progress, succeed, get.
            if reads && n < 2 {
                let call = self.client.get_job(get_request(id));
                self.clock.call(tally, call).await;
            }
            let call = self
                .client
                .transition_job(transition_request(id, to, attempt));
            let done = self.clock.call(tally, call).await;
            if done.is_none() {
                return;
            }
        }
        if reads {
            let call = self.client.get_job(get_request(id));
            self.clock.call(tally, call).await;
        }
    }
}

/// A small, fast generator for picking jobs (no cryptographic needs).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// utime + stime of a process (`self` or a pid), in seconds (USER_HZ = 100 on Linux).
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// A `/proc/<pid>/status` memory line (`VmRSS:`, `VmHWM:`) in MiB.
pub fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Resets VmHWM to the current RSS, so the next reading is this measurement's peak.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}
