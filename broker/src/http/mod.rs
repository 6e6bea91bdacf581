//! The HTTP listener (`[http] bind`): Prometheus metrics, health checks,
//! the admin JSON API and the live dashboard.
//!
//! | path                              | what                                  | auth  |
//! |-----------------------------------|---------------------------------------|-------|
//! | `GET /metrics`                    | Prometheus / OpenMetrics text (`prom`) | none  |
//! | `GET /healthz`                    | 200 while the process serves          | none  |
//! | `GET /readyz`                     | 200 while accepting, 503 in shutdown  | none  |
//! | `GET /`, `/dashboard.js`, `.css`  | the dashboard (`dashboard/`)          | none  |
//! | `/api/...`                        | the admin API (`api`)                 | token |
//!
//! "token": `Authorization: Bearer <http.token>`; with no token configured,
//! only peers on a loopback address. Anything else gets 401.
//!
//! Owns its accept loop and one task per HTTP connection (hyper, HTTP/1.1
//! with keep-alive), at most [`MAX_CONNECTIONS`] at once. It reads the
//! broker through the shared [`Context`] and changes it only through the
//! registry (a kick) and the router (a publish), like a client would. It is
//! started after the MQTT listeners, so `/readyz` can answer 200 as soon
//! as it answers at all; it keeps serving (`/readyz` 503) while the broker
//! drains at shutdown, and is stopped just before the store is closed.
//!
//! A reload ([`Http::reload`], from `Broker::reload`) changes it in place:
//!
//! | `[http]` change             | what happens                                      |
//! |-----------------------------|---------------------------------------------------|
//! | `token`                     | the next request is checked against the new one    |
//! | `bind` to another address   | the new one is bound first; then the old stops accepting (its open connections get [`STOP_GRACE`]) |
//! | `bind` to an address in use | `error` line; the old listener stays               |
//! | `bind` to `""` / from `""`  | the listener stops / starts                        |
//! | `bind` naming the address bound now, or unchanged | untouched               |

mod api;
pub(crate) mod prom;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::HttpSettings;
use crate::connection::Context;
use crate::registry::lock;

/// HTTP connections served at once; a connection beyond it is closed at
/// once.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this (slowloris), also between
/// two requests of a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body read (`POST /api/publish`), besides
/// `limits.max_packet_size`, whichever is smaller.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long shutdown waits for open HTTP requests to finish.
const STOP_GRACE: Duration = Duration::from_secs(2);

const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// What every request handler shares, the same across rebinds.
#[derive(Debug)]
pub(crate) struct State {
    pub ctx: Arc<Context>,
    /// `http.token`; empty: loopback peers only. A reload swaps it; a
    /// request clones the `Arc` (the lock is held for that only).
    token: RwLock<Arc<str>>,
    started: Instant,
    metrics: prom::Exporter,
}

impl State {
    fn token(&self) -> Arc<str> {
        let token = self
            .token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&token)
    }
}

/// The HTTP listener: what it serves, where it serves it now (nowhere when
/// `http.bind` is `""`), and the listeners a reload moved away from.
#[derive(Debug)]
pub struct Http {
    state: Arc<State>,
    /// Locked for a few lines, never across `.await`.
    serving: Mutex<Option<Serving>>,
    /// Accept loops a reload stopped: no longer accepting, their open
    /// connections ending within [`STOP_GRACE`]. Shutdown waits for them.
    retired: Mutex<Vec<JoinHandle<()>>>,
    /// One reload at a time (held across the bind).
    reloading: tokio::sync::Mutex<()>,
}

/// One bound listener's accept loop.
#[derive(Debug)]
struct Serving {
    /// `http.bind` as configured (`127.0.0.1:0`), to tell a change.
    bind: String,
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Serving {
    fn start(bind: &str, listener: TcpListener, state: &Arc<State>) -> std::io::Result<Serving> {
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, Arc::clone(state), stop.clone()));
        info!(%addr, "http listening");
        Ok(Serving {
            bind: bind.to_owned(),
            addr,
            stop,
            task,
        })
    }
}

/// Binds `http.bind`; `Ok(None)` when it is empty (no HTTP listener).
pub async fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
    match addr {
        Some(addr) => TcpListener::bind(addr).await.map(Some),
        None => Ok(None),
    }
}

impl Http {
    /// Starts serving on `listener` (bound from `ctx.settings.http.bind`);
    /// with `None`, an HTTP listener that is off until a reload binds one.
    pub fn start(listener: Option<TcpListener>, ctx: Arc<Context>) -> std::io::Result<Http> {
        let settings = &ctx.settings.http;
        let (bind, token) = (settings.bind.clone(), Arc::from(settings.token.as_str()));
        let state = Arc::new(State {
            token: RwLock::new(token),
            started: Instant::now(),
            metrics: prom::Exporter::new(Arc::clone(&ctx)),
            ctx,
        });
        let serving = match listener {
            Some(listener) => Some(Serving::start(&bind, listener, &state)?),
            None => None,
        };
        Ok(Http {
            state,
            serving: Mutex::new(serving),
            retired: Mutex::new(Vec::new()),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The address served now; `None` while off.
    pub fn addr(&self) -> Option<SocketAddr> {
        lock(&self.serving).as_ref().map(|serving| serving.addr)
    }

    /// Applies a reloaded `[http]` (see the module table). A new address
    /// is bound before the old one stops accepting; when it cannot be, the
    /// old one stays.
    pub async fn reload(&self, settings: &HttpSettings) {
        let _one_at_a_time = self.reloading.lock().await;
        self.set_token(&settings.token);
        let current = lock(&self.serving)
            .as_ref()
            .map(|serving| (serving.bind.clone(), serving.addr));
        let bind = settings.bind.as_str();
        if current.as_ref().map_or("", |(old, _)| old.as_str()) == bind {
            return;
        }
        if bind.is_empty() {
            let old = lock(&self.serving).take();
            if let Some(old) = old {
                info!(addr = %old.addr, "SIGHUP: http listener off");
                self.retire(old);
            }
            return;
        }
        let Ok(addr) = bind.parse::<SocketAddr>() else {
            error!(
                bind,
                "SIGHUP: http.bind is not an address; the HTTP listener stays as it was"
            );
            return;
        };
        if current.as_ref().map(|&(_, old)| old) == Some(addr) {
            // The address bound now, written out (a port 0 pinned).
            if let Some(serving) = lock(&self.serving).as_mut() {
                serving.bind = bind.to_owned();
            }
            return;
        }
        let started = match TcpListener::bind(addr).await {
            Ok(listener) => Serving::start(bind, listener, &self.state),
            Err(error) => Err(error),
        };
        let new = match started {
            Ok(new) => new,
            Err(error) => {
                error!(bind, %error, "SIGHUP: cannot listen on http.bind; the HTTP listener stays as it was");
                return;
            }
        };
        let new_addr = new.addr;
        let old = lock(&self.serving).replace(new);
        if let Some(old) = old {
            info!(old = %old.addr, new = %new_addr, "SIGHUP: http listener moved");
            self.retire(old);
        }
    }

    fn set_token(&self, new: &str) {
        let mut token = self
            .state
            .token
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if **token != *new {
            *token = Arc::from(new);
            info!(set = !new.is_empty(), "SIGHUP: http.token changed");
        }
    }

    /// Stops an accept loop; its open connections finish (or not) on
    /// their own, within [`STOP_GRACE`].
    fn retire(&self, old: Serving) {
        old.stop.cancel();
        let mut retired = lock(&self.retired);
        retired.retain(|task| !task.is_finished());
        retired.push(old.task);
    }

    /// Stops accepting, lets open requests finish (up to a short grace),
    /// and waits for every connection task, those of retired listeners
    /// included.
    pub async fn stop(self) {
        let mut tasks = self.retired.into_inner().unwrap_or_else(|p| p.into_inner());
        let serving = self.serving.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(serving) = serving {
            serving.stop.cancel();
            tasks.push(serving.task);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, mostly: wait, then retry.
                    warn!(%error, "http accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(10);
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            debug!(%peer, "http connection refused: {MAX_CONNECTIONS} open");
            continue;
        };
        let (state, stop) = (Arc::clone(&state), stop.clone());
        tracker.spawn(async move {
            serve_connection(stream, peer, state, stop).await;
            drop(permit);
        });
    }
    // Refuses new connections now, not after the grace below.
    drop(listener);
    tracker.close();
    if tokio::time::timeout(STOP_GRACE, tracker.wait())
        .await
        .is_err()
    {
        debug!("http connections still open after the grace period");
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(&state, peer, request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(error) = served {
                debug!(%peer, %error, "http connection ended");
            }
        }
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(STOP_GRACE, connection).await;
        }
    }
}

pub(crate) type Reply = Response<Full<Bytes>>;

/// Routes one request.
async fn handle(state: &State, peer: SocketAddr, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    if path.starts_with("/api/") {
        if !authorized(&state.token(), request.headers().get(AUTHORIZATION), peer) {
            let mut reply = api::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            reply.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return reply;
        }
        return api::handle(state, request).await;
    }
    let get = method == Method::GET || method == Method::HEAD;
    match path.as_str() {
        "/metrics" if get => text(
            StatusCode::OK,
            prom::CONTENT_TYPE,
            state.metrics.encode(state),
        ),
        "/healthz" if get => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" if get => match ready(state) {
            true => text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".into(),
            ),
            false => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "shutting down\n".into(),
            ),
        },
        "/" | "/index.html" if get => asset("text/html; charset=utf-8", DASHBOARD_HTML),
        "/dashboard.js" if get => asset("text/javascript; charset=utf-8", DASHBOARD_JS),
        "/dashboard.css" if get => asset("text/css; charset=utf-8", DASHBOARD_CSS),
        "/metrics" | "/healthz" | "/readyz" | "/" | "/index.html" | "/dashboard.js"
        | "/dashboard.css" => api::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => api::error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Accepting: the listeners run (they started before this one) and the
/// store was recovered; false once shutdown began.
fn ready(state: &State) -> bool {
    !state.ctx.shutdown.is_cancelled()
}

/// Whether a request may use the admin API: the configured bearer token,
/// compared in constant time; with none configured, a loopback peer.
fn authorized(token: &str, header: Option<&HeaderValue>, peer: SocketAddr) -> bool {
    if token.is_empty() {
        return peer.ip().to_canonical().is_loopback();
    }
    let Some(given) = header
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    use subtle::ConstantTimeEq;
    bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

fn asset(content_type: &'static str, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: [u8; 4]) -> SocketAddr {
        SocketAddr::from((ip, 40000))
    }

    #[test]
    fn without_a_token_only_loopback_peers_may_use_the_api() {
        assert!(authorized("", None, peer([127, 0, 0, 1])));
        assert!(authorized("", None, peer([127, 1, 2, 3])));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert!(authorized("", None, mapped));
        assert!(authorized("", None, "[::1]:1".parse().unwrap()));
        assert!(!authorized("", None, peer([10, 0, 0, 7])));
        assert!(!authorized(
            "",
            None,
            "[::ffff:10.0.0.7]:1".parse().unwrap()
        ));
    }

    #[test]
    fn with_a_token_every_peer_needs_it_loopback_included() {
        let right = HeaderValue::from_static("Bearer s3cret");
        let wrong = HeaderValue::from_static("Bearer s3cre");
        let basic = HeaderValue::from_static("Basic s3cret");
        assert!(authorized("s3cret", Some(&right), peer([10, 0, 0, 7])));
        assert!(!authorized("s3cret", Some(&wrong), peer([10, 0, 0, 7])));
        assert!(!authorized("s3cret", Some(&basic), peer([127, 0, 0, 1])));
        assert!(!authorized("s3cret", None, peer([127, 0, 0, 1])));
    }
}
