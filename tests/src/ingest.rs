//! Driving `topk-ingest` in tests: its router in-process, requests to it, what it put on the
//! topic, and a private broker the tests may stop (the shared one is never stopped).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use rdkafka::message::Message;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use topk_ingest::config::IngestConfig;
use tower::ServiceExt;

/// The ingest router on `brokers`/`topic` with `configure` applied to the default options
/// (auth off).
pub fn app(brokers: &str, topic: &str, configure: impl FnOnce(&mut IngestConfig)) -> Router {
    let mut config = IngestConfig::with_kafka(brokers, topic);
    configure(&mut config);
    topk_ingest::app(topk_ingest::IngestState::from_config(&config).expect("ingest state"))
}

/// An answer: status, headers and the JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// `Retry-After` in seconds, if sent.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

/// `POST /v1/plays` with `body` as `content_type`, and a bearer token if given.
pub async fn post(
    app: &Router,
    body: impl Into<Body>,
    content_type: &str,
    token: Option<&str>,
) -> Answer {
    let mut request = Request::post("/v1/plays").header(header::CONTENT_TYPE, content_type);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Every record of `topic` (all `partitions`, from the start): reads until `at_least` arrived
/// and then a quiet second, so extras are seen too. Panics after `timeout`.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    at_least: usize,
    timeout: Duration,
) -> Vec<TopicRecord> {
    let consumer = crate::stack::consumer_from_beginning(
        brokers,
        &format!("{topic}-reader"),
        topic,
        partitions,
    );
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    let mut quiet_since = Instant::now();
    loop {
        assert!(
            Instant::now() < deadline,
            "read {} of at least {at_least} records of {topic} in {timeout:?}",
            records.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                quiet_since = Instant::now();
                records.push(TopicRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().unwrap_or_default().to_vec(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                });
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None if records.len() >= at_least && quiet_since.elapsed() > Duration::from_secs(1) => {
                return records
            }
            None => {}
        }
    }
}

/// A tansu broker of the test's own (memory storage) behind a TCP proxy, advertised at the
/// proxy's address so that every connection a client makes passes the proxy: [`Self::cut`]
/// makes the broker unreachable (open connections dropped, new ones closed at once) while it
/// keeps its state, [`Self::restore`] brings it back. The shared broker is never touched.
///
/// Not a broker restart: tansu 0.6.0 with SQLite storage, killed and restarted, panics in its
/// idempotent-producer check (`tansu_storage::lite`, "more or less than one row") on the
/// first produce of a producer registered before the restart, and answers every later
/// request `UnableToSend` (checked 2026-11-30), so nothing could be produced to it again.
pub struct PrivateBroker {
    proxy: TcpProxy,
    child: Child,
    dir: PathBuf,
}

impl PrivateBroker {
    /// The tansu binary `scripts/stack.sh` installs.
    fn binary() -> PathBuf {
        let cache = std::env::var("TOPK_CACHE_DIR").map_or_else(
            |_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/topk"),
            PathBuf::from,
        );
        let path = cache.join("tools/tansu-0.6.0/bin/tansu");
        assert!(
            path.exists(),
            "{} is missing: scripts/stack.sh up installs it",
            path.display()
        );
        path
    }

    pub async fn start(label: &str) -> Self {
        let broker_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let proxy = TcpProxy::start(format!("127.0.0.1:{broker_port}")).await;
        let dir = std::env::temp_dir().join(format!("topk-tests/{label}-broker-{broker_port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("broker dir");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("broker log");
        let child = Command::new(Self::binary())
            .current_dir(&dir)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{broker_port}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://{}", proxy.address()),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", broker_port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen in 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { proxy, child, dir }
    }

    /// Where clients reach the broker (the proxy).
    pub fn address(&self) -> String {
        self.proxy.address()
    }

    /// The broker becomes unreachable.
    pub fn cut(&self) {
        self.proxy.set_open(false);
    }

    /// The broker is reachable again.
    pub fn restore(&self) {
        self.proxy.set_open(true);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Kept after a failure: its log says what the broker did.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A TCP proxy to one upstream that can be cut and restored.
struct TcpProxy {
    address: std::net::SocketAddr,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let address = listener.local_addr().expect("proxy address");
        let open = watch::Sender::new(true);
        let task = tokio::spawn({
            let open = open.clone();
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    let mut open_now = open.subscribe();
                    if !*open_now.borrow_and_update() {
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = open_now.wait_for(|open| !*open) => {}
                        }
                    });
                }
            }
        });
        Self {
            address,
            open,
            task,
        }
    }

    fn address(&self) -> String {
        self.address.to_string()
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
