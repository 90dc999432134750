//! A fault-injecting HTTP/1.1 reverse proxy, placed between a process under test and ClickHouse
//! or S3, for failures a SIGKILL cannot produce: a response lost after the server committed, a
//! write held past the client's deadline and then released, a connection reset.
//!
//! Every request is read whole before anything else happens, then matched against the rules
//! (first match wins, else the default action). Forwarding runs in a detached task, so a
//! request that reached the proxy reaches the server even when the client has gone away.
//! Bodies and end-to-end headers, `Host`, `Content-Length` and `Transfer-Encoding` included,
//! pass through unchanged: S3 signatures cover `Host`. Faults close the client connection
//! without a response; so does any client or upstream error.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderName, CONNECTION};
use hyper::http::{request, response};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward it and return the response.
    Pass,
    /// Wait, then forward it; the wait happens in the detached task, so the request reaches
    /// the server late even when the client gave up meanwhile.
    Delay(Duration),
    /// Keep it until [`RuleHandle::release`] (or the proxy is dropped, or its rule cleared or
    /// replaced), then forward it even if the client has gone away; a client still waiting
    /// gets the response.
    Hold,
    /// Forward it, read the whole response (the server has committed), then close the client
    /// connection without sending a byte of it.
    DropResponseAfterForward,
    /// Close the client connection; nothing reaches the server.
    Reset,
}

/// Applies `action` to requests whose text contains `matcher`.
#[derive(Debug, Clone)]
pub struct Rule {
    matcher: String,
    times: Option<usize>,
    action: Action,
}

impl Rule {
    /// Matches requests whose percent-decoded `METHOD /path?query` (`+` read as a space), or
    /// whose body when it is UTF-8, contains `matcher`. The official ClickHouse client puts the
    /// SQL of an insert in the `query=` parameter (table and columns in backticks, e.g.
    /// ``INSERT INTO `ingest_checkpoints`(`partition`,…``) and the SQL of any other statement
    /// in the body; an empty matcher matches everything.
    pub fn new(matcher: impl Into<String>, action: Action) -> Rule {
        Rule {
            matcher: matcher.into(),
            times: None,
            action,
        }
    }

    /// Applies to the first `times` matching requests only; later ones fall through.
    pub fn times(mut self, times: usize) -> Rule {
        self.times = Some(times);
        self
    }
}

/// One request the proxy received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// Numbers the client connections in accept order: equal numbers mean a kept-alive
    /// connection was reused.
    pub connection: u64,
    pub method: Method,
    /// Percent-decoded path and query.
    pub target: String,
    pub action: Action,
}

/// Observes and controls one rule (or the default action).
#[derive(Debug, Clone)]
pub struct RuleHandle {
    state: Arc<RuleState>,
}

#[derive(Debug)]
struct RuleState {
    hits: watch::Sender<usize>,
    released: watch::Sender<bool>,
    held_forwarded: watch::Sender<usize>,
}

impl RuleState {
    fn new() -> Arc<RuleState> {
        Arc::new(RuleState {
            hits: watch::Sender::new(0),
            released: watch::Sender::new(false),
            held_forwarded: watch::Sender::new(0),
        })
    }
}

impl RuleHandle {
    /// Lets every request this rule holds, now or later, go upstream.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    /// How many requests matched the rule.
    pub fn hits(&self) -> usize {
        *self.state.hits.borrow()
    }

    /// Waits until a request matched the rule (then it is wholly inside the proxy); false when
    /// `timeout` passed first.
    pub async fn wait_for_hit(&self, timeout: Duration) -> bool {
        self.wait_for_hits(1, timeout).await
    }

    /// Waits until `count` requests matched the rule; false when `timeout` passed first.
    pub async fn wait_for_hits(&self, count: usize, timeout: Duration) -> bool {
        wait_for_count(&self.state.hits, count, timeout).await
    }

    /// How many held requests, once released, got their response from upstream.
    pub fn held_forwarded(&self) -> usize {
        *self.state.held_forwarded.borrow()
    }

    /// Waits until `count` held requests, once released, got their response from upstream;
    /// false when `timeout` passed first.
    pub async fn wait_for_held_forwarded(&self, count: usize, timeout: Duration) -> bool {
        wait_for_count(&self.state.held_forwarded, count, timeout).await
    }
}

async fn wait_for_count(counter: &watch::Sender<usize>, count: usize, timeout: Duration) -> bool {
    let mut receiver = counter.subscribe();
    let reached = tokio::time::timeout(timeout, receiver.wait_for(|value| *value >= count))
        .await
        .is_ok_and(|changed| changed.is_ok());
    reached
}

struct RuleEntry {
    rule: Rule,
    state: Arc<RuleState>,
}

struct Shared {
    upstream: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    rules: Mutex<Vec<RuleEntry>>,
    default: Mutex<RuleEntry>,
    log: Mutex<Vec<SeenRequest>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a single push, pop or assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// The action for a request and the rule (or default) that chose it.
    fn choose(&self, request_line: &str, body_text: Option<&str>) -> (Action, Arc<RuleState>) {
        let matches = |matcher: &str| {
            request_line.contains(matcher) || body_text.is_some_and(|body| body.contains(matcher))
        };
        let mut rules = lock(&self.rules);
        let chosen = rules
            .iter_mut()
            .find(|entry| entry.rule.times != Some(0) && matches(&entry.rule.matcher));
        match chosen {
            Some(entry) => {
                if let Some(times) = entry.rule.times.as_mut() {
                    *times -= 1;
                }
                (entry.rule.action.clone(), Arc::clone(&entry.state))
            }
            None => {
                let default = lock(&self.default);
                (default.rule.action.clone(), Arc::clone(&default.state))
            }
        }
    }
}

/// The proxy; dropping it stops the listener, closes client connections and releases held
/// requests (they still go upstream while the runtime lives).
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    listener: JoinHandle<()>,
    // Never sent on: dropping it is the signal every task watches for.
    _closed: watch::Sender<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, e.g. `http://127.0.0.1:18123`.
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream: Uri = upstream
            .parse()
            .unwrap_or_else(|error| panic!("upstream url {upstream:?}: {error}"));
        assert!(
            upstream.scheme_str() == Some("http") && upstream.authority().is_some(),
            "the upstream must be an http://host:port url, got {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("listener address");
        // No pooling upstream: a pooled connection the server has just closed would fail a
        // forwarded request, a fault nobody asked for.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        let shared = Arc::new(Shared {
            upstream,
            client,
            rules: Mutex::new(Vec::new()),
            default: Mutex::new(RuleEntry {
                rule: Rule::new("", Action::Pass),
                state: RuleState::new(),
            }),
            log: Mutex::new(Vec::new()),
        });
        let (closed, closed_receiver) = watch::channel(());
        let listener = tokio::spawn(accept_loop(listener, Arc::clone(&shared), closed_receiver));
        FaultProxy {
            address,
            shared,
            listener,
            _closed: closed,
        }
    }

    /// The proxy's base url, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Appends a rule; rules are checked in the order they were added.
    pub fn add_rule(&self, rule: Rule) -> RuleHandle {
        let state = RuleState::new();
        lock(&self.shared.rules).push(RuleEntry {
            rule,
            state: Arc::clone(&state),
        });
        RuleHandle { state }
    }

    /// Removes every rule, releasing the requests they hold.
    pub fn clear_rules(&self) {
        let removed = std::mem::take(&mut *lock(&self.shared.rules));
        for entry in removed {
            entry.state.released.send_replace(true);
        }
    }

    /// The action for requests no rule matches (initially [`Action::Pass`]); releases the
    /// requests the previous default holds.
    pub fn set_default(&self, action: Action) -> RuleHandle {
        let state = RuleState::new();
        let previous = std::mem::replace(
            &mut *lock(&self.shared.default),
            RuleEntry {
                rule: Rule::new("", action),
                state: Arc::clone(&state),
            },
        );
        previous.state.released.send_replace(true);
        RuleHandle { state }
    }

    /// How many requests the proxy has received (whole, body included).
    pub fn requests_seen(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// Every request received so far, with the action taken.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.log).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, closed: watch::Receiver<()>) {
    let connection_ids = AtomicU64::new(0);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection = connection_ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve_connection(
            stream,
            connection,
            Arc::clone(&shared),
            closed.clone(),
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    connection: u64,
    shared: Arc<Shared>,
    mut closed: watch::Receiver<()>,
) {
    let service_closed = closed.clone();
    let service = service_fn(move |request| {
        handle(
            Arc::clone(&shared),
            service_closed.clone(),
            connection,
            request,
        )
    });
    let serving =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = serving => {
            if let Err(error) = result {
                tracing::debug!(connection, %error, "fault proxy client connection closed");
            }
        }
        _ = closed.changed() => {}
    }
}

/// Returned by the service to make hyper close the client connection without a response.
#[derive(Debug)]
struct CloseConnection;

impl fmt::Display for CloseConnection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("closed by the fault proxy")
    }
}

impl std::error::Error for CloseConnection {}

/// When a detached forward may go upstream.
enum Gate {
    Now,
    After(Duration),
    Released(Arc<RuleState>, watch::Receiver<()>),
}

async fn handle(
    shared: Arc<Shared>,
    closed: watch::Receiver<()>,
    connection: u64,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, CloseConnection> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::warn!(connection, %error, "fault proxy could not read the request body");
            return Err(CloseConnection);
        }
    };
    let raw_target = parts
        .uri
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let target = percent_decode(raw_target);
    let request_line = format!("{} {target}", parts.method);
    let (action, state) = shared.choose(&request_line, std::str::from_utf8(&body).ok());
    tracing::debug!(connection, %request_line, ?action, "fault proxy request");
    lock(&shared.log).push(SeenRequest {
        connection,
        method: parts.method.clone(),
        target,
        action: action.clone(),
    });
    // Counted after logging, so whoever waits for the hit finds the request in the log.
    state.hits.send_modify(|hits| *hits += 1);

    let gate = match action {
        Action::Reset => {
            tracing::info!(connection, %request_line, "fault proxy resets the connection");
            return Err(CloseConnection);
        }
        Action::Pass | Action::DropResponseAfterForward => Gate::Now,
        Action::Delay(delay) => Gate::After(delay),
        Action::Hold => Gate::Released(state, closed),
    };
    let forward = tokio::spawn(forward_when_allowed(Arc::clone(&shared), gate, parts, body));
    let (response_parts, response_body) = match forward.await {
        Ok(Some(response)) => response,
        Ok(None) => return Err(CloseConnection),
        Err(error) => {
            tracing::error!(connection, %error, "fault proxy forward task failed");
            return Err(CloseConnection);
        }
    };
    if action == Action::DropResponseAfterForward {
        tracing::info!(
            connection,
            %request_line,
            status = %response_parts.status,
            "fault proxy drops the upstream response"
        );
        return Err(CloseConnection);
    }
    Ok(Response::from_parts(
        response_parts,
        Full::new(response_body),
    ))
}

/// Waits for the gate, then forwards; runs detached so it outlives the client. `None` when the
/// upstream exchange failed (already logged).
async fn forward_when_allowed(
    shared: Arc<Shared>,
    gate: Gate,
    parts: request::Parts,
    body: Bytes,
) -> Option<(response::Parts, Bytes)> {
    let held = match gate {
        Gate::Now => None,
        Gate::After(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Gate::Released(state, mut closed) => {
            let mut released = state.released.subscribe();
            tokio::select! {
                _ = released.wait_for(|released| *released) => {}
                // Resolves (with an error) once the proxy is dropped.
                _ = closed.changed() => {}
            }
            Some(state)
        }
    };
    let response = forward(&shared, parts, body).await;
    if let (Some(state), Some(_)) = (held, &response) {
        state.held_forwarded.send_modify(|count| *count += 1);
    }
    response
}

async fn forward(
    shared: &Shared,
    mut parts: request::Parts,
    body: Bytes,
) -> Option<(response::Parts, Bytes)> {
    let mut uri = shared.upstream.clone().into_parts();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = match Uri::from_parts(uri) {
        Ok(uri) => uri,
        Err(error) => {
            tracing::warn!(%error, "fault proxy could not build the upstream url");
            return None;
        }
    };
    remove_hop_by_hop_headers(&mut parts.headers);
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let response = match shared
        .client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(%method, %uri, error = %error_chain(&error), "fault proxy upstream request failed");
            return None;
        }
    };
    let (mut response_parts, response_body) = response.into_parts();
    let response_body = match response_body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::warn!(%method, %uri, %error, "fault proxy could not read the upstream response");
            return None;
        }
    };
    remove_hop_by_hop_headers(&mut response_parts.headers);
    Some((response_parts, response_body))
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Removes the headers that describe one connection rather than the message (RFC 9110 7.6.1).
/// `Transfer-Encoding` and `Content-Length` stay: the body is forwarded byte for byte, and
/// hyper frames it as those headers say.
fn remove_hop_by_hop_headers(headers: &mut HeaderMap) {
    let named_by_connection: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named_by_connection {
        headers.remove(name);
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// Decodes `%XX` escapes and `+` (a space in query strings); malformed escapes stay as they
/// are, invalid UTF-8 becomes U+FFFD.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' => {
                let escape = bytes
                    .get(index + 1..index + 3)
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                if let Some(byte) = escape {
                    decoded.push(byte);
                    index += 3;
                    continue;
                }
                decoded.push(b'%');
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hyper::StatusCode;

    use super::*;

    /// A request as the upstream received it.
    #[derive(Debug, Clone)]
    struct Received {
        target: String,
        headers: HeaderMap,
        body: Bytes,
    }

    type Inbox = Arc<Mutex<Vec<Received>>>;

    /// A local server that records each request and echoes its body.
    struct Upstream {
        url: String,
        inbox: Inbox,
        server: JoinHandle<()>,
    }

    impl Upstream {
        async fn start() -> Upstream {
            let inbox = Inbox::default();
            let app = axum::Router::new()
                .fallback(echo)
                .with_state(Arc::clone(&inbox));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let server = tokio::spawn(async move {
                axum::serve(listener, app).await.expect("upstream serves");
            });
            Upstream { url, inbox, server }
        }

        fn received(&self) -> Vec<Received> {
            lock(&self.inbox).clone()
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn echo(
        axum::extract::State(inbox): axum::extract::State<Inbox>,
        request: axum::extract::Request,
    ) -> Response<axum::body::Body> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.expect("request body").to_bytes();
        lock(&inbox).push(Received {
            target: parts.uri.to_string(),
            headers: parts.headers,
            body: body.clone(),
        });
        Response::builder()
            .header("x-upstream", "echo")
            .body(axum::body::Body::from(body))
            .unwrap()
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    fn test_client() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).build_http()
    }

    async fn send(
        client: &Client<HttpConnector, Full<Bytes>>,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, String> {
        let response = client
            .request(request)
            .await
            .map_err(|error| error_chain(&error))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    fn post(base: &str, target: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
        Request::post(format!("{base}{target}"))
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    }

    const PATIENCE: Duration = Duration::from_secs(5);

    #[test]
    fn percent_decode_reads_escapes_and_plus() {
        assert_eq!(
            percent_decode("/?query=INSERT+INTO+%60t%60%20FORMAT%2BX"),
            "/?query=INSERT INTO `t` FORMAT+X"
        );
        assert_eq!(percent_decode("%zz%4%+1%"), "%zz%4% 1%");
        assert_eq!(percent_decode("%C3%A9%FF"), "é\u{fffd}");
    }

    #[tokio::test]
    async fn pass_forwards_bodies_and_headers_unchanged() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        let client = test_client();
        let payload: Bytes = (0..=255u8)
            .cycle()
            .take(300_000)
            .collect::<Vec<u8>>()
            .into();
        let target = "/?database=d&query=INSERT+INTO+%60t%60%20FORMAT%20RowBinary";
        let chunked = Request::post(format!("{}{target}", proxy.url()))
            .header("transfer-encoding", "chunked")
            .header("x-clickhouse-user", "default")
            .body(Full::new(payload.clone()))
            .unwrap();
        let answer = send(&client, chunked).await.expect("passed through");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["x-upstream"], "echo");
        assert_eq!(answer.body, payload);
        let sized = send(&client, post(&proxy.url(), "/sized", b"hello"))
            .await
            .expect("passed through");
        assert_eq!(sized.body, "hello");

        let received = upstream.received();
        assert_eq!(received.len(), 2);
        assert_eq!(received[0].target, target, "the target is forwarded raw");
        assert_eq!(received[0].body, payload);
        assert_eq!(received[0].headers["transfer-encoding"], "chunked");
        assert_eq!(received[0].headers["x-clickhouse-user"], "default");
        let proxy_host = proxy.url().trim_start_matches("http://").to_owned();
        assert_eq!(
            received[0].headers["host"], proxy_host,
            "Host is kept: S3 signatures cover it"
        );
        assert_eq!(received[1].headers["content-length"], "5");
        assert_eq!(received[1].body, "hello");

        let seen = proxy.requests();
        assert_eq!(proxy.requests_seen(), 2);
        assert_eq!(
            seen[0].target,
            "/?database=d&query=INSERT INTO `t` FORMAT RowBinary"
        );
        assert_eq!(seen[0].action, Action::Pass);
        assert_eq!(
            seen[0].connection, seen[1].connection,
            "the client's kept-alive connection is reused"
        );
    }

    #[tokio::test]
    async fn delay_forwards_late() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        let rule = proxy.add_rule(Rule::new("slow", Action::Delay(Duration::from_millis(300))));
        let client = test_client();
        let started = Instant::now();
        let answer = send(&client, post(&proxy.url(), "/slow", b"late"))
            .await
            .expect("delayed, then answered");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(answer.body, "late");
        let started = Instant::now();
        send(&client, post(&proxy.url(), "/fast", b"now"))
            .await
            .expect("answered");
        assert!(started.elapsed() < Duration::from_millis(300));
        assert_eq!(rule.hits(), 1);
    }

    #[tokio::test]
    async fn held_request_reaches_upstream_after_the_client_gave_up() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        let rule = proxy.add_rule(Rule::new("hold me", Action::Hold));
        let client = test_client();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(300),
            send(
                &client,
                post(&proxy.url(), "/?query=hold+me", b"late write"),
            ),
        )
        .await;
        assert!(
            gave_up.is_err(),
            "the client times out while the request is held"
        );
        drop(client);
        assert!(rule.wait_for_hit(PATIENCE).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(upstream.received().is_empty(), "held, not forwarded");
        assert_eq!(rule.held_forwarded(), 0);

        rule.release();
        assert!(rule.wait_for_held_forwarded(1, PATIENCE).await);
        let received = upstream.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].body, "late write");
    }

    #[tokio::test]
    async fn released_request_answers_a_waiting_client() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        let rule = proxy.add_rule(Rule::new("POST /held", Action::Hold));
        let url = proxy.url();
        let waiting =
            tokio::spawn(async move { send(&test_client(), post(&url, "/held", b"body")).await });
        assert!(rule.wait_for_hit(PATIENCE).await);
        assert!(upstream.received().is_empty());
        rule.release();
        let answer = waiting.await.unwrap().expect("answered once released");
        assert_eq!(answer.body, "body");
        assert_eq!(rule.held_forwarded(), 1);
    }

    #[tokio::test]
    async fn dropping_the_proxy_releases_held_requests() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        let rule = proxy.add_rule(Rule::new("", Action::Hold));
        let url = proxy.url();
        let waiting =
            tokio::spawn(async move { send(&test_client(), post(&url, "/held", b"body")).await });
        assert!(rule.wait_for_hit(PATIENCE).await);
        drop(proxy);
        assert!(rule.wait_for_held_forwarded(1, PATIENCE).await);
        assert_eq!(upstream.received().len(), 1);
        assert!(
            waiting.await.unwrap().is_err(),
            "the client connection closed with the proxy"
        );
    }

    #[tokio::test]
    async fn dropped_response_reaches_upstream_but_not_the_client() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        let rule = proxy.add_rule(Rule::new("commit", Action::DropResponseAfterForward));
        let client = test_client();
        let error = send(&client, post(&proxy.url(), "/commit", b"row"))
            .await
            .err()
            .expect("the client gets no response");
        assert!(
            error.contains("connection closed before message completed"),
            "{error}"
        );
        assert_eq!(rule.hits(), 1);
        let received = upstream.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].body, "row");
    }

    #[tokio::test]
    async fn reset_never_reaches_upstream() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        proxy.add_rule(Rule::new("", Action::Reset));
        let result = send(&test_client(), post(&proxy.url(), "/lost", b"row")).await;
        assert!(result.is_err());
        assert_eq!(proxy.requests_seen(), 1);
        assert_eq!(proxy.requests()[0].action, Action::Reset);
        assert!(upstream.received().is_empty());
    }

    #[tokio::test]
    async fn times_limits_a_rule() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        let rule = proxy.add_rule(Rule::new("flaky", Action::Reset).times(2));
        let client = test_client();
        for _ in 0..2 {
            assert!(send(&client, post(&proxy.url(), "/flaky", b"x"))
                .await
                .is_err());
        }
        send(&client, post(&proxy.url(), "/flaky", b"x"))
            .await
            .expect("the rule is used up");
        assert_eq!(rule.hits(), 2);
        assert_eq!(upstream.received().len(), 1);
    }

    #[tokio::test]
    async fn first_matching_rule_wins_then_the_default() {
        let upstream = Upstream::start().await;
        let proxy = FaultProxy::start(&upstream.url).await;
        let by_body = proxy.add_rule(Rule::new("FROM allowed_table", Action::Pass));
        let shadowed = proxy.add_rule(Rule::new("FROM allowed_table", Action::Reset));
        let outage = proxy.set_default(Action::Reset);
        let client = test_client();
        send(
            &client,
            post(&proxy.url(), "/", b"SELECT 1 FROM allowed_table"),
        )
        .await
        .expect("the first rule passes it");
        assert!(send(&client, post(&proxy.url(), "/", b"SELECT 2"))
            .await
            .is_err());
        assert_eq!((by_body.hits(), shadowed.hits(), outage.hits()), (1, 0, 1));

        proxy.set_default(Action::Pass);
        proxy.clear_rules();
        send(&client, post(&proxy.url(), "/", b"SELECT 2"))
            .await
            .expect("the outage is over");
        assert_eq!(upstream.received().len(), 2);
    }
}
