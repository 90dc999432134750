//! A client here that tells accepted (200) from shed (503 `overloaded`) answers: closed loop
//! (a fixed number of connections) or open loop (a fixed arrival rate).

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Latencies of one kind of response, in seconds.
#[derive(Default)]
pub struct Latencies(pub Vec<f64>);

impl Latencies {
    pub fn percentile(&self, percent: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let index = ((percent / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[index]
    }
}

pub struct DriveReport {
    pub seconds: f64,
    pub ok: Latencies,
    pub shed: Latencies,
    /// Accepted but failed (e.g. 503 database_unavailable after the query timeout), or other.
    pub failed: usize,
}

/// What one response was: 200, shed (503 `overloaded`), or anything else.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Shed,
    Failed,
}

async fn outcome_of(response: hyper::Response<hyper::body::Incoming>) -> anyhow::Result<Outcome> {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(match status {
        200 => Outcome::Ok,
        503 if body.windows(12).any(|window| window == b"\"overloaded\"") => Outcome::Shed,
        _ => Outcome::Failed,
    })
}

impl DriveReport {
    fn new(samples: Vec<(Outcome, f64)>, seconds: f64) -> Self {
        let mut report = Self {
            seconds,
            ok: Latencies::default(),
            shed: Latencies::default(),
            failed: 0,
        };
        for (outcome, latency) in samples {
            match outcome {
                Outcome::Ok => report.ok.0.push(latency),
                Outcome::Shed => report.shed.0.push(latency),
                Outcome::Failed => report.failed += 1,
            }
        }
        report
    }

    pub fn print(&self, label: &str) {
        let rate = |latencies: &Latencies| latencies.0.len() as f64 / self.seconds;
        println!(
            "{label:<42} {:>7.0} {:>8.2} {:>8.2} {:>7.0} {:>8.2} {:>8.2}{}",
            rate(&self.ok),
            self.ok.percentile(50.0) * 1000.0,
            self.ok.percentile(99.0) * 1000.0,
            rate(&self.shed),
            self.shed.percentile(50.0) * 1000.0,
            self.shed.percentile(99.0) * 1000.0,
            if self.failed > 0 {
                format!("  ({} accepted but failed)", self.failed)
            } else {
                String::new()
            }
        );
    }
}

/// The API as a client here sees it (on a thread and runtime of its own, so that its work
/// does not queue behind the server's).
#[derive(Clone)]
pub struct Target {
    pub port: u16,
    pub authorization: String,
    pub users: u64,
}

impl Target {
    fn request(&self, rng: &mut StdRng) -> anyhow::Result<hyper::Request<Empty<Bytes>>> {
        let user = rng.random_range(0..self.users);
        Ok(hyper::Request::get(format!(
            "http://127.0.0.1:{}/v1/users/u{user}/top-songs",
            self.port
        ))
        .header("authorization", &self.authorization)
        .body(Empty::new())?)
    }

    fn on_own_thread<F>(
        &self,
        work: impl FnOnce(Target) -> F + Send + 'static,
    ) -> anyhow::Result<DriveReport>
    where
        F: std::future::Future<Output = anyhow::Result<DriveReport>>,
    {
        let target = self.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(work(target))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    }

    fn client() -> Client<HttpConnector, Empty<Bytes>> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    }

    /// `connections` clients, each sending its next request as soon as it has an answer.
    pub fn closed_loop(&self, connections: usize, seconds: u64) -> anyhow::Result<DriveReport> {
        self.on_own_thread(move |target| async move {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for seed in 0..connections as u64 {
                let target = target.clone();
                tasks.spawn(async move {
                    // One keep-alive connection per client: a pool of one.
                    let client = Target::client();
                    let mut rng = StdRng::seed_from_u64(seed);
                    let mut samples = Vec::new();
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        let response = client.request(target.request(&mut rng)?).await?;
                        let outcome = outcome_of(response).await?;
                        samples.push((outcome, sent.elapsed().as_secs_f64()));
                    }
                    anyhow::Ok(samples)
                });
            }
            let mut samples = Vec::new();
            while let Some(result) = tasks.join_next().await {
                samples.extend(result??);
            }
            Ok(DriveReport::new(samples, started.elapsed().as_secs_f64()))
        })
    }

    /// Requests arriving at `rate` per second whatever the answers (latency counted from the
    /// scheduled arrival, so a stalled client cannot hide a slow server).
    pub fn open_loop(&self, rate: f64, seconds: u64) -> anyhow::Result<DriveReport> {
        self.on_own_thread(move |target| async move {
            let client = Target::client();
            let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
            let started = Instant::now();
            let deadline = started + Duration::from_secs(seconds);
            let mut rng = StdRng::seed_from_u64(7);
            let mut tasks = tokio::task::JoinSet::new();
            let mut next = started;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                let request = target.request(&mut rng)?;
                let client = client.clone();
                let scheduled = next;
                tasks.spawn(async move {
                    let response = client.request(request).await?;
                    let outcome = outcome_of(response).await?;
                    anyhow::Ok((outcome, scheduled.elapsed().as_secs_f64()))
                });
                next += interval;
            }
            let mut samples = Vec::new();
            while let Some(result) = tasks.join_next().await {
                samples.push(result??);
            }
            Ok(DriveReport::new(samples, started.elapsed().as_secs_f64()))
        })
    }
}
