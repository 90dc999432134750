//! The project's binaries as child processes, for tests that kill and restart them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The path of a workspace binary next to the running test executable
/// (`target/debug/deps/it-…` → `target/debug/NAME`). `scripts/test.sh` builds them first
/// with `cargo build --workspace --bins`.
pub fn binary_path(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running child process, killed when dropped so no test leaves strays.
pub struct ChildProcess {
    pub name: String,
    child: Child,
    /// The log file, shared with earlier processes of the same label (appended to).
    pub log_path: PathBuf,
    /// Where this process's output starts in the log file.
    log_start: u64,
}

impl ChildProcess {
    /// Starts `binary` with `args` and extra `env`, output appended to a log file.
    pub fn start(binary: &str, label: &str, args: &[String], env: &[(String, String)]) -> Self {
        let log_dir = std::env::temp_dir().join("topk-tests");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log_path = log_dir.join(format!("{label}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let log_start = log.metadata().map_or(0, |metadata| metadata.len());
        let child = Command::new(binary_path(binary))
            .args(args)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {binary}: {error}"));
        Self {
            name: label.to_owned(),
            child,
            log_path,
            log_start,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or commit.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP`, `CONT`, `TERM`, ...) without waiting.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// SIGTERM, then waits up to `timeout` for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait_for_exit(timeout)
    }

    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory in bytes (Linux /proc), if the process still runs.
    pub fn resident_bytes(&self) -> Option<u64> {
        resident_bytes_of(self.child.id())
    }

    /// What this process has logged so far (not the earlier runs' lines in the same file, so
    /// a test that looks for a line cannot pass on an earlier run's).
    pub fn log(&self) -> String {
        use std::io::{Read, Seek};
        let mut text = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&self.log_path) {
            if file.seek(std::io::SeekFrom::Start(self.log_start)).is_ok() {
                let _ = file.read_to_end(&mut text);
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// The last lines of the process's log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill_hard();
        }
    }
}

/// Resident memory of a process in bytes (Linux /proc), if it runs.
pub fn resident_bytes_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A free loopback port, for a process's metrics or HTTP endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("local address")
        .port()
}

/// `GET path` on 127.0.0.1:`port` over a real socket (HTTP/1.1, `Connection: close`):
/// (status, body), or `None` while nothing answers there.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Some((status, body))
}

impl ChildProcess {
    /// Waits until this process listens on 127.0.0.1:`port`; panics (naming its log) after
    /// `timeout`.
    pub async fn wait_until_listening(&self, port: u16, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not listen on port {port} in {timeout:?}; see {}",
                self.name,
                self.log_path.display()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
