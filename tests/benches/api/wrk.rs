//! Driving a target with `wrk` (and `api.lua`), with the CPU it cost.

use std::collections::HashMap;
use std::process::Command;

use anyhow::Context;

#[derive(Clone)]
pub struct WrkTarget {
    pub url: String,
    pub method: &'static str,
    pub path: String,
    pub body: String,
    pub authorization: String,
}

#[derive(Debug)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub not_ok: u64,
    /// CPU seconds of this process (the API, when it is the target).
    pub this_process_seconds: f64,
    /// Busy share of all cores, 0..=1.
    pub machine_busy: f64,
}

impl WrkResult {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// Rounds together: requests over time, the median round's percentiles.
    pub fn combine(rounds: &[WrkResult]) -> WrkResult {
        let median = |value: fn(&WrkResult) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(value).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let seconds: f64 = rounds.iter().map(|round| round.seconds).sum();
        WrkResult {
            requests: rounds.iter().map(|round| round.requests).sum(),
            seconds,
            p50_ms: median(|round| round.p50_ms),
            p99_ms: median(|round| round.p99_ms),
            not_ok: rounds.iter().map(|round| round.not_ok).sum(),
            this_process_seconds: rounds.iter().map(|round| round.this_process_seconds).sum(),
            machine_busy: rounds
                .iter()
                .map(|round| round.machine_busy * round.seconds)
                .sum::<f64>()
                / seconds,
        }
    }

    pub fn print(&self, label: &str) {
        println!(
            "{label:<28} {:>8.0} {:>8.2} {:>8.2} {:>13.0} {:>11.0} %",
            self.requests_per_second(),
            self.p50_ms,
            self.p99_ms,
            self.this_process_seconds * 1e6 / self.requests as f64,
            self.machine_busy * 100.0,
        );
    }
}

impl WrkTarget {
    /// Runs `wrk` against the target for users `u{users.start}..u{users.end - 1}`.
    pub fn run(
        &self,
        users: std::ops::Range<u64>,
        connections: u64,
        seconds: u64,
    ) -> anyhow::Result<WrkResult> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/api.lua");
        let cpu_before = CpuTicks::now()?;
        let output = Command::new("wrk")
            .args([
                "-t",
                &connections.min(2).to_string(),
                "-c",
                &connections.to_string(),
            ])
            .args([
                "-d",
                &format!("{seconds}s"),
                "--timeout",
                "10s",
                "-s",
                script,
                &self.url,
            ])
            .env("BENCH_USER_FIRST", users.start.to_string())
            .env("BENCH_USERS", (users.end - users.start).to_string())
            .env("BENCH_METHOD", self.method)
            .env("BENCH_PATH", &self.path)
            .env("BENCH_BODY", &self.body)
            .env("BENCH_AUTHORIZATION", &self.authorization)
            .output()
            .context("running wrk")?;
        let cpu_after = CpuTicks::now()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find(|line| line.starts_with("wrk-result "))
            .with_context(|| {
                format!(
                    "no result from wrk: {stdout}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        let fields: HashMap<&str, u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|pair| pair.split_once('='))
            .filter_map(|(key, value)| Some((key, value.parse().ok()?)))
            .collect();
        let field = |name: &str| {
            fields
                .get(name)
                .copied()
                .with_context(|| format!("{name} missing in {line}"))
        };
        let machine_ticks = (cpu_after.machine_total - cpu_before.machine_total).max(1);
        Ok(WrkResult {
            requests: field("requests")?,
            seconds: field("duration_us")? as f64 / 1e6,
            p50_ms: field("p50_us")? as f64 / 1000.0,
            p99_ms: field("p99_us")? as f64 / 1000.0,
            not_ok: field("unavailable")? + field("other")? + field("socket_errors")?,
            this_process_seconds: (cpu_after.this_process - cpu_before.this_process) as f64
                / CpuTicks::PER_SECOND,
            machine_busy: (cpu_after.machine_busy - cpu_before.machine_busy) as f64
                / machine_ticks as f64,
        })
    }
}

/// CPU ticks of this process and of the whole machine, from /proc.
struct CpuTicks {
    this_process: u64,
    pub machine_busy: u64,
    machine_total: u64,
}

impl CpuTicks {
    const PER_SECOND: f64 = 100.0;

    fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // After the ")" closing the command name, utime and stime are the 12th and 13th fields.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after_name
            .split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        let this_process =
            fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        let machine = std::fs::read_to_string("/proc/stat")?;
        let cpu: Vec<u64> = machine
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        let machine_total: u64 = cpu.iter().sum();
        let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
        Ok(Self {
            this_process,
            machine_busy: machine_total - idle,
            machine_total,
        })
    }
}
