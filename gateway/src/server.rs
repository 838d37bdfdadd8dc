//! HTTP/1.1 (hyper) in front of [`crate::exec`]: routing, the body limit,
//! admission control, the gateway's own endpoints, the access log and the
//! drain on SIGTERM.
//!
//! Admission: a route runs at most `concurrency` VMs; a request beyond
//! that waits in the route's queue (at most `queue` of them, each at most
//! `queue_timeout`), and with a `memory_budget` it also waits for the guest
//! memory of its VM to fit in what the running VMs leave. A request that
//! finds the queue full or waits too long is answered 503 with
//! Retry-After, before any VM starts. The permits travel with the request
//! into its VM's thread and are released when that VM is gone — not when
//! the response head is sent.
//!
//! The body: a request whose Content-Length is over the route's
//! `max_body` is answered 413 before anything starts, and a body of known
//! length is streamed to the command's stdin. A chunked body is read first,
//! up to `max_body` (413 beyond), because CGI gives the script its length
//! (CONTENT_LENGTH) before it starts.
//!
//! The client hanging up drops the request's future (hyper closes a
//! connection at EOF unless half-close is asked for), or its response
//! body; both hold a guard that then cancels the request, which kills its
//! VM. A response body that ends without its VM's output complete (the
//! deadline, a crash after the head) fails the connection instead of
//! ending the body, so a client never takes a cut response for a whole one.
//!
//! Drain: on SIGTERM the listener closes, `/healthz` answers 503, idle
//! connections close, requests in flight get the grace period to finish;
//! then the VMs still running are killed, and the gateway returns once
//! every VM thread is done.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use mu2_microvm::record::{Owner, OwnerKind};
use mu2_microvm::{Accel, GuestImage};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, Route};
use crate::exec::{self, BodyEnd, Cancel, Failure, Job, Outcome, Reason, Registry};
use crate::image::{self, ImageError, RoutePlan};
use crate::metrics::{Metrics, Rejection};

/// Longest a client may take to send a request's head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the grace period the killed VMs get to be reaped.
pub const REAP_WAIT: Duration = Duration::from_secs(20);
/// Size of the chunks a request body is sent to stdin in.
const STDIN_CHUNK: usize = 64 * 1024;
/// Request header naming the request in the log and in responses.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Response header naming the VM that answered.
pub const VM_HEADER: &str = "x-mu2-vm";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot find the guest image")]
    Guest(#[from] mu2_microvm::guest::GuestImageError),
    #[error("cannot read the mu2 host configuration")]
    HostConfig(#[from] mu2_microvm::jail::config::ConfigError),
    #[error("route {route} (line {line}): its vm needs {need} MiB, more than the whole memory_budget of {budget} MiB")]
    Budget {
        route: String,
        line: usize,
        need: u32,
        budget: u64,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// How the gateway starts VMs.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub qemu: PathBuf,
    pub accel: Accel,
    pub guest_dir: Option<PathBuf>,
}

struct RouteState {
    route: Route,
    plan: RoutePlan,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    specs: exec::SpecMaker,
    /// The route's warm set, once serving started (`warm` > 0).
    warm: std::sync::OnceLock<Arc<exec::Warm>>,
}

/// The gateway: its routes, ready, and what every request shares.
pub struct Gateway {
    config: Config,
    routes: Vec<RouteState>,
    /// Guest memory left for new VMs, in MiB.
    budget: Option<Arc<Semaphore>>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    draining: AtomicBool,
    requests: AtomicU64,
}

/// Gives back a queue place when the waiting ends, however it ends.
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Cancels its request when dropped armed: the client went away.
struct ClientGuard(Option<Arc<Cancel>>);

impl ClientGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel(Reason::ClientGone);
        }
    }
}

/// A response body: a fixed text, or a VM's output as it comes.
pub enum GwBody {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<Bytes>,
        end: Arc<BodyEnd>,
        guard: ClientGuardBox,
    },
}

/// The client guard inside a body (kept opaque).
pub struct ClientGuardBox(ClientGuard);

impl Body for GwBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            GwBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GwBody::Stream { rx, end, guard } => match rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(None) if end.complete() => {
                    guard.0.disarm();
                    Poll::Ready(None)
                }
                Poll::Ready(None) => {
                    guard.0.disarm();
                    Poll::Ready(Some(Err(std::io::Error::other(
                        "the response was cut short",
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, GwBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GwBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GwBody::Full(None) => SizeHint::with_exact(0),
            GwBody::Stream { .. } => SizeHint::default(),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<GwBody> {
    let mut r = Response::new(GwBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn failure(status: StatusCode, what: &str, request: &str) -> Response<GwBody> {
    let reason = status.canonical_reason().unwrap_or("");
    text(
        status,
        format!("{} {reason}: {what} (request {request})\n", status.as_u16()),
    )
}

impl Gateway {
    /// Loads every route's image and checks the host: nothing listens
    /// before all of it is ready.
    pub fn new(config: Config, vm: VmOptions) -> Result<Gateway, ServerError> {
        let guest = GuestImage::locate(vm.guest_dir.as_deref())?;
        let host = mu2_microvm::config::HostConfig::load()?;
        let budget_mib = config.memory_budget.map(|b| b >> 20);
        let mut routes = Vec::new();
        for route in &config.routes {
            let plan = image::prepare(
                route,
                &config.cache_dir,
                &image::ContainerdSource {
                    address: &config.containerd_address,
                    namespace: &config.containerd_namespace,
                },
            )?;
            if let Some(budget) = budget_mib {
                if u64::from(plan.plan.memory_mib) > budget {
                    return Err(ServerError::Budget {
                        route: route.path.clone(),
                        line: route.line,
                        need: plan.plan.memory_mib,
                        budget,
                    });
                }
            }
            log::info!(
                "route {}: image {} ({}), rootfs {}, {} MiB per vm",
                route.path,
                match &route.image {
                    crate::config::ImageRef::Layout { dir, tag } => format!(
                        "oci:{}{}",
                        dir.display(),
                        tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
                    ),
                    crate::config::ImageRef::Containerd { reference } =>
                        format!("containerd:{reference}"),
                },
                plan.digest,
                plan.rootfs.display(),
                plan.plan.memory_mib
            );
            let specs: exec::SpecMaker = {
                let (plan, guest, vm, host) =
                    (plan.plan.clone(), guest.clone(), vm.clone(), host.clone());
                Arc::new(move |id: String| {
                    let mut spec = plan.vm_spec(
                        id,
                        &guest,
                        vm.qemu.clone(),
                        vm.accel,
                        host.jail.clone(),
                        host.deadlines,
                        Owner::this_process(OwnerKind::Gateway),
                    );
                    spec.templates = host.templates.clone();
                    spec.pool = host.pool.clone();
                    spec
                })
            };
            routes.push(RouteState {
                slots: Arc::new(Semaphore::new(route.concurrency)),
                route: route.clone(),
                plan,
                queued: AtomicUsize::new(0),
                specs,
                warm: std::sync::OnceLock::new(),
            });
        }
        let budget = budget_mib.map(|b| {
            Arc::new(Semaphore::new(
                usize::try_from(b).unwrap_or(Semaphore::MAX_PERMITS),
            ))
        });
        Ok(Gateway {
            config,
            routes,
            budget,
            metrics: Arc::new(Metrics::default()),
            registry: Arc::new(Registry::default()),
            draining: AtomicBool::new(false),
            requests: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn route_for(&self, path: &str) -> Option<&RouteState> {
        self.routes
            .iter()
            .filter(|r| crate::config::prefix_matches(&r.route.path, path))
            .max_by_key(|r| r.route.path.len())
    }

    /// Serves on `listener` until `shutdown` resolves, then drains.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        for (i, rs) in self.routes.iter().enumerate() {
            if rs.route.warm > 0 {
                let prefix = format!("gw-{}-w{i}-", std::process::id());
                let w = exec::Warm::start(
                    rs.route.warm,
                    prefix,
                    Arc::clone(&rs.specs),
                    Arc::clone(&self.metrics),
                );
                let _ = rs.warm.set(w);
            }
        }
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait a
                        // moment rather than spin.
                        log::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let local = stream.local_addr().unwrap_or_else(|_| self.config.listen);
            let gw = Arc::clone(&self);
            let service = hyper::service::service_fn(move |req| {
                let gw = Arc::clone(&gw);
                async move { Ok::<_, Infallible>(gw.handle(req, remote, local).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    log::debug!("connection from {remote}: {e}");
                }
            });
        }
        drop(listener);
        self.draining.store(true, Ordering::SeqCst);
        let warm: Vec<&Arc<exec::Warm>> = self.routes.iter().filter_map(|r| r.warm.get()).collect();
        for w in &warm {
            w.close();
        }
        log::info!(
            "draining: {} request(s) in flight, grace {:?}",
            self.registry.len(),
            self.config.grace
        );
        tokio::select! {
            () = graceful.shutdown() => log::info!("drained: every connection is closed"),
            () = tokio::time::sleep(self.config.grace) => {
                log::warn!("grace period over: killing the vms still running");
                self.registry.cancel_all(Reason::Shutdown);
            }
        }
        let end = Instant::now() + REAP_WAIT;
        let left = || self.registry.len() + warm.iter().map(|w| w.keepers()).sum::<usize>();
        while left() > 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if left() > 0 {
            log::warn!("{} vm thread(s) still running at exit", left());
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Response<GwBody> {
        let t0 = Instant::now();
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let request = format!("{}-{n}", std::process::id());
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let (route, mut resp) = match path.as_str() {
            "/healthz" if self.draining.load(Ordering::SeqCst) => (
                String::new(),
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
            ),
            "/healthz" => (String::new(), text(StatusCode::OK, "ok\n".into())),
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.metrics.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                (String::new(), r)
            }
            _ => match self.route_for(&path) {
                None => (
                    String::new(),
                    failure(StatusCode::NOT_FOUND, "no route", &request),
                ),
                Some(rs) => {
                    self.metrics.in_flight(1);
                    let r = self.serve_route(rs, req, remote, local, &request, t0).await;
                    self.metrics.in_flight(-1);
                    (rs.route.path.clone(), r)
                }
            },
        };
        if let Ok(v) = HeaderValue::from_str(&request) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        let status = resp.status().as_u16();
        self.metrics.request(&route, status, t0.elapsed());
        log::info!(
            "access {request} {remote} \"{method} {path}\" {status} {}ms route={}",
            t0.elapsed().as_millis(),
            if route.is_empty() { "-" } else { &route },
        );
        resp
    }

    /// Admission: a place among the route's running VMs (waiting in its
    /// bounded queue if need be) and room in the memory budget.
    async fn admit(&self, rs: &RouteState) -> Result<Vec<OwnedSemaphorePermit>, Rejection> {
        let deadline = tokio::time::Instant::now() + rs.route.queue_timeout;
        let slot = match Arc::clone(&rs.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if rs.queued.fetch_add(1, Ordering::SeqCst) >= rs.route.queue {
                    rs.queued.fetch_sub(1, Ordering::SeqCst);
                    return Err(Rejection::QueueFull);
                }
                let _place = QueuePlace(&rs.queued);
                match tokio::time::timeout_at(deadline, Arc::clone(&rs.slots).acquire_owned()).await
                {
                    Ok(Ok(p)) => p,
                    _ => return Err(Rejection::QueueTimeout),
                }
            }
        };
        let mut permits = vec![slot];
        if let Some(budget) = &self.budget {
            let mib = rs.plan.plan.memory_mib;
            let p = match Arc::clone(budget).try_acquire_many_owned(mib) {
                Ok(p) => p,
                Err(_) => {
                    match tokio::time::timeout_at(
                        deadline,
                        Arc::clone(budget).acquire_many_owned(mib),
                    )
                    .await
                    {
                        Ok(Ok(p)) => p,
                        _ => return Err(Rejection::QueueTimeout),
                    }
                }
            };
            permits.push(p);
        }
        Ok(permits)
    }

    fn reject(&self, rs: &RouteState, why: Rejection, request: &str) -> Response<GwBody> {
        self.metrics.rejected(&rs.route.path, why);
        let what = match why {
            Rejection::QueueFull => "every vm of the route is busy and its queue is full",
            Rejection::QueueTimeout => "no vm of the route became free in time",
            Rejection::Draining => "the gateway is shutting down",
            Rejection::BodyTooLarge => {
                return failure(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body is over {} bytes", rs.route.max_body),
                    request,
                )
            }
        };
        let mut r = failure(StatusCode::SERVICE_UNAVAILABLE, what, request);
        let secs = rs.route.queue_timeout.as_secs_f64().ceil().max(1.0) as u64;
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        r
    }

    async fn serve_route(
        &self,
        rs: &RouteState,
        req: Request<Incoming>,
        remote: SocketAddr,
        local: SocketAddr,
        request: &str,
        t0: Instant,
    ) -> Response<GwBody> {
        if self.draining.load(Ordering::SeqCst) {
            return self.reject(rs, Rejection::Draining, request);
        }
        let route = &rs.route;
        let declared: Option<u64> = match req.headers().get(header::CONTENT_LENGTH) {
            Some(v) => match v.to_str().ok().and_then(|v| v.parse().ok()) {
                Some(n) => Some(n),
                None => return failure(StatusCode::BAD_REQUEST, "bad Content-Length", request),
            },
            None => None,
        };
        if declared.is_some_and(|n| n > route.max_body) {
            return self.reject(rs, Rejection::BodyTooLarge, request);
        }
        let (parts, body) = req.into_parts();
        // Known length (or none at all): streamed. Chunked: read first.
        let chunked = declared.is_none() && body.size_hint().exact() != Some(0);
        let (content_length, whole, streamed) = if chunked {
            match http_body_util::Limited::new(body, route.max_body as usize)
                .collect()
                .await
            {
                Ok(b) => {
                    let b = b.to_bytes();
                    (Some(b.len() as u64), Some(b), None)
                }
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return self.reject(rs, Rejection::BodyTooLarge, request)
                }
                Err(_) => return failure(StatusCode::BAD_REQUEST, "cannot read the body", request),
            }
        } else {
            (declared, None, Some(body))
        };
        let path = parts.uri.path();
        let protocol = format!("{:?}", parts.version);
        let meta = match crate::cgi::meta_variables(&crate::cgi::Request {
            method: parts.method.as_str(),
            route: &route.path,
            path,
            query: parts.uri.query(),
            headers: &parts.headers,
            remote,
            local,
            protocol: &protocol,
            content_length,
        }) {
            Ok(m) => m,
            Err(e) => return failure(StatusCode::BAD_REQUEST, &e.to_string(), request),
        };
        let permits = match self.admit(rs).await {
            Ok(p) => p,
            Err(why) => return self.reject(rs, why, request),
        };
        let mut run = rs.plan.plan.run.clone();
        run.process.env = crate::cgi::environment(&run.process.env, &route.env, &meta);
        let spec = (rs.specs)(format!("gw-{request}"));
        let (body_tx, body_rx) = mpsc::channel::<Bytes>(exec::BODY_QUEUE);
        match whole {
            Some(b) => {
                tokio::spawn(async move {
                    let mut b: Bytes = b;
                    while !b.is_empty() {
                        let piece = b.split_to(b.len().min(STDIN_CHUNK));
                        if body_tx.send(piece).await.is_err() {
                            return;
                        }
                    }
                });
            }
            None => match streamed {
                Some(body) if declared.unwrap_or(0) > 0 => {
                    tokio::spawn(stream_body(body, body_tx, route.max_body));
                }
                _ => drop(body_tx),
            },
        }
        let cancel = Arc::new(Cancel::default());
        let mut guard = ClientGuard(Some(Arc::clone(&cancel)));
        let job = Job {
            request: request.to_string(),
            spec,
            run,
            deadline: t0 + route.timeout,
            body: Mutex::new(Some(body_rx)),
            cancel,
            metrics: Arc::clone(&self.metrics),
            registry: Arc::clone(&self.registry),
            permits,
        };
        let dispatched = match rs.warm.get() {
            Some(w) => w.dispatch(job),
            None => Err(Box::new(job)),
        };
        let handle = match dispatched.or_else(|job| exec::spawn(*job)) {
            Ok(h) => h,
            Err(e) => {
                guard.disarm();
                log::error!("request {request}: cannot start a thread: {e}");
                return failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot start a vm",
                    request,
                );
            }
        };
        let outcome = handle.outcome.await;
        let (head, rx) = match outcome {
            Ok(Outcome::Head { head, body }) => (head, body),
            Ok(Outcome::Failed(f)) => {
                guard.disarm();
                return match f {
                    Failure::BadGateway(_) => failure(
                        StatusCode::BAD_GATEWAY,
                        "the command did not give a valid CGI response",
                        request,
                    ),
                    Failure::Timeout => failure(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("the command ran past its {:?} deadline", route.timeout),
                        request,
                    ),
                    Failure::Unavailable(_) => failure(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot start a vm",
                        request,
                    ),
                    Failure::Shutdown => failure(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the gateway is shutting down",
                        request,
                    ),
                    // Nobody reads this.
                    Failure::ClientGone => failure(StatusCode::BAD_REQUEST, "gone", request),
                };
            }
            Err(_) => {
                guard.disarm();
                return failure(StatusCode::BAD_GATEWAY, "the vm thread ended", request);
            }
        };
        let handle_vm = handle.vm.clone();
        let mut resp = Response::new(GwBody::Stream {
            rx,
            end: handle.body_end,
            guard: ClientGuardBox(guard),
        });
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        if let Ok(v) = HeaderValue::from_str(&handle_vm) {
            resp.headers_mut().insert(VM_HEADER, v);
        }
        if parts.method == Method::HEAD {
            log::debug!("request {request}: HEAD, the body is not sent");
        }
        resp
    }
}

/// Copies a request body of declared length to the VM's stdin channel.
async fn stream_body(mut body: Incoming, tx: mpsc::Sender<Bytes>, max: u64) {
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The client went away mid-body: its guard ends the VM.
            return;
        };
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > max || tx.send(data).await.is_err() {
                return;
            }
        }
    }
}
