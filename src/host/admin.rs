//! The admin listener (`"admin": {"listen": ADDR}`), apart from the
//! proxy's traffic:
//! - `GET /metrics`: every metric, Prometheus text format ([`crate::host::metrics`]);
//! - `GET /healthz`: 200 while the proxy runs;
//! - `GET /readyz`: 200 when every runner is ready and the routes are
//!   loaded, else 503 with the reason in the body;
//! - `POST /reload`, `POST /runners/restart`: run the host's hooks
//!   ([`AdminHooks`]); 501 when the host has none.
//!
//! It binds before the runner starts, so that `/readyz` tells "starting"
//! while it does, and it answers until the host has stopped. Every request
//! passes [`AdminAccess`] first (its `Host`, a POST's `Origin`, the
//! optional token).

use crate::host::edge::admin_access::AdminAccess;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What a hook's future gives: the text of a 200 answer, or why it failed.
pub type HookFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
/// An action the admin listener can trigger (reload, restart runners).
pub type Hook = Arc<dyn Fn() -> HookFuture + Send + Sync>;
/// Whether the host is ready to serve: `Err` says why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the host lets the admin listener do and ask.
#[derive(Clone)]
pub struct AdminHooks {
    /// `POST /reload`: re-reads the configuration file and swaps it in;
    /// `Err` is the refusal (the same message as `extplug check`), a 400.
    pub reload: Option<Hook>,
    /// `POST /runners/restart`: replaces every runner process without
    /// downtime (the binary was replaced at the same path); `Err` is a 500.
    pub restart_runners: Option<Hook>,
    /// `GET /readyz`.
    pub readiness: Readiness,
}

impl Default for AdminHooks {
    /// No actions (501), and never ready.
    fn default() -> Self {
        AdminHooks {
            reload: None,
            restart_runners: None,
            readiness: Arc::new(|| Err("no readiness check".to_owned())),
        }
    }
}

/// Binds the admin listener's address.
///
/// # Errors
/// The address cannot be bound (in use, not local, no permission).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin endpoints on `listener` until `shutdown`, in a task,
/// with the default [`AdminAccess`] (the listener's address and
/// `localhost` in `Host`, same-origin POSTs, no token).
pub fn spawn(
    listener: TcpListener,
    hooks: AdminHooks,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    spawn_with_access(listener, hooks, AdminAccess::default(), shutdown)
}

/// [`spawn`] with these access rules.
pub fn spawn_with_access(
    listener: TcpListener,
    hooks: AdminHooks,
    access: AdminAccess,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let hooks = Arc::new(hooks);
    let access = Arc::new(access);
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin listening");
    }
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: try again shortly
                        // rather than spin or give up.
                        warn!(cause = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let (hooks, access) = (hooks.clone(), access.clone());
            let shutdown = shutdown.clone();
            let Ok(local) = stream.local_addr() else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let hooks = hooks.clone();
                    let checked = access.check(&req, local);
                    async move {
                        match checked {
                            Ok(()) => answer(hooks, req).await,
                            Err(refusal) => {
                                warn!(client = %peer, status = refusal.status.as_u16(), reason = %refusal.message, "admin request refused");
                                let mut resp = text(refusal.status, line(&refusal.message));
                                if refusal.status == StatusCode::UNAUTHORIZED {
                                    resp.headers_mut().insert(
                                        header::WWW_AUTHENTICATE,
                                        header::HeaderValue::from_static("Bearer"),
                                    );
                                }
                                Ok(resp)
                            }
                        }
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            debug!(client = %peer, cause = %e, "admin connection ended with an error");
                        }
                    }
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `message` ending with a newline (for `curl`).
fn line(message: &str) -> String {
    format!("{}\n", message.trim_end())
}

async fn answer(
    hooks: Arc<AdminHooks>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (get, post) = (Method::GET, Method::POST);
    let path = req.uri().path();
    let allowed = match path {
        "/metrics" | "/healthz" | "/readyz" => &get,
        "/reload" | "/runners/restart" => &post,
        _ => {
            return Ok(text(
                StatusCode::NOT_FOUND,
                line(&format!(
                    "no admin endpoint {path}: try GET /metrics, /healthz, /readyz, or POST /reload, /runners/restart"
                )),
            ))
        }
    };
    let head_of_get = allowed == Method::GET && req.method() == Method::HEAD;
    if req.method() != allowed && !head_of_get {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            line(&format!("{path} takes {allowed}, not {}", req.method())),
        );
        if let Ok(v) = header::HeaderValue::from_str(allowed.as_str()) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return Ok(resp);
    }
    let resp = match path {
        "/metrics" => match crate::host::metrics::render() {
            Ok(body) => {
                let mut resp = text(StatusCode::OK, body);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(crate::host::metrics::CONTENT_TYPE),
                );
                resp
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, line(&e)),
        },
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match (hooks.readiness)() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                line(&format!("not ready: {why}")),
            ),
        },
        "/reload" => run_hook(&hooks.reload, "reload", StatusCode::BAD_REQUEST).await,
        _ => {
            run_hook(
                &hooks.restart_runners,
                "runner restart",
                StatusCode::INTERNAL_SERVER_ERROR,
            )
            .await
        }
    };
    Ok(resp)
}

/// Runs `hook`: 200 with its text, `failed` with its error, 501 without one.
async fn run_hook(hook: &Option<Hook>, what: &str, failed: StatusCode) -> Response<Full<Bytes>> {
    let Some(hook) = hook else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            line(&format!("{what} is not available in this host")),
        );
    };
    info!("admin: {what} asked");
    match hook().await {
        Ok(done) => text(StatusCode::OK, line(&done)),
        Err(why) => {
            warn!("admin: {what} failed: {why}");
            text(failed, line(&format!("{what} failed: {why}")))
        }
    }
}
