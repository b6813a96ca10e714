//! Start-up wiring: bind the listeners, start the gateway, follow etcd,
//! handle the signals (SIGHUP reloads, SIGUSR2 upgrades the runners,
//! SIGTERM and SIGINT stop), serve until shutdown, stop in order.

use crate::host::config::Config;
use crate::host::edge::admin_access::AdminAccess;
use crate::host::error::HostError;
use crate::host::gateway::{self, Gateway};
use crate::host::{admin, server, source};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Where the host listens, once it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// The proxy.
    pub proxy: SocketAddr,
    /// The admin listener, when configured.
    pub admin: Option<SocketAddr>,
    /// The TLS listener, when configured (`tls`).
    pub tls: Option<SocketAddr>,
}

/// Runs the proxy for `config` until `shutdown`, without reloads from a
/// file; see [`run_from`].
///
/// # Errors
/// As for [`run_from`].
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(Listening),
) -> Result<(), HostError> {
    run_from(config, None, shutdown, on_listening).await
}

/// Runs the proxy for `config` until `shutdown`: binds the proxy's and the
/// admin listener's addresses (the admin listener answers from then on,
/// `/readyz` with 503 until the runners are ready and the routes loaded),
/// starts the runners and has them prepare every chain
/// ([`Gateway::start`]), calls `on_listening` with the bound
/// addresses, serves, then finishes requests in flight, stops the runners,
/// and returns. SIGHUP and `POST /reload` reload the configuration from
/// `source` ([`Gateway::reload`]); SIGUSR2 and
/// `POST /runners/restart` upgrade every runner in place. With an `etcd`
/// section, the routes come from etcd ([`source::etcd::follow`]): none
/// until the first read (`/readyz` says 503 meanwhile), then live.
///
/// # Errors
/// An address cannot be bound, a runner's directory cannot be created,
/// a runner does not start, or one refuses a route's chain: then
/// `on_listening` is never called.
pub async fn run_from(
    config: Config,
    source: Option<gateway::ConfigSource>,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(Listening),
) -> Result<(), HostError> {
    // First: SIGHUP's default action ends the process, and an operator may
    // send one while the runners start.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    // The same for SIGUSR2 (runner upgrades).
    let upgrades = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| HostError::Listen {
            addr: config.listen,
            source,
        })?;
    let tls_listener = match &config.tls {
        None => None,
        Some(t) => Some((
            tokio::net::TcpListener::bind(t.listen)
                .await
                .map_err(|source| HostError::Listen {
                    addr: t.listen,
                    source,
                })?,
            t.handshake_timeout,
        )),
    };
    let (limits, grace, listen, routes) = (
        server::fd_limit::fit(&config),
        config.shutdown_grace,
        config.listen,
        config.routes.len(),
    );
    let etcd = config.etcd.clone();
    // Stopped last, after the runners: `/healthz` answers while we run.
    let admin_stop = CancellationToken::new();
    let _stop_admin = admin_stop.clone().drop_guard();
    let started: Arc<std::sync::OnceLock<Arc<Gateway>>> = Arc::default();
    let admin_addr = match &config.admin {
        None => None,
        Some(conf) => {
            let admin_listener =
                admin::bind(conf.listen)
                    .await
                    .map_err(|source| HostError::AdminListen {
                        addr: conf.listen,
                        source,
                    })?;
            let addr = admin_listener.local_addr().unwrap_or(conf.listen);
            admin::spawn_with_access(
                admin_listener,
                admin_hooks(started.clone(), shutdown.clone()),
                AdminAccess::new(&conf.hosts, conf.token.clone()),
                admin_stop.clone(),
            );
            Some(addr)
        }
    };
    let Some(gateway) = Gateway::start(config, source, shutdown.clone()).await? else {
        info!("stopped while starting");
        return Ok(());
    };
    let gateway = Arc::new(gateway);
    let _ = started.set(gateway.clone());
    // Routes from etcd: none until the first read, then live.
    let follower = etcd.map(|conf| {
        info!(endpoints = ?conf.endpoints, prefix = %conf.prefix, "the routes come from etcd");
        tokio::spawn(source::etcd::follow(
            conf,
            gateway.clone(),
            shutdown.clone(),
        ))
    });
    match hangups {
        Ok(mut hangups) => {
            let (gateway, shutdown) = (gateway.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        got = hangups.recv() => if got.is_none() { break },
                    }
                    info!(signal = "SIGHUP", "reloading the configuration");
                    // Logged by `reload` either way.
                    let _ = gateway.reload().await;
                }
            });
        }
        Err(e) => {
            tracing::warn!(cause = %e, "cannot install the SIGHUP handler: no reload on SIGHUP")
        }
    }
    match upgrades {
        Ok(signal) => {
            tokio::spawn(upgrade_on_signal(signal, gateway.clone(), shutdown.clone()));
        }
        Err(e) => tracing::error!("cannot install the SIGUSR2 handler (runner upgrades): {e}"),
    }
    let addr = listener.local_addr().unwrap_or(listen);
    info!(%addr, routes, "proxy listening");
    let tls = tls_listener.map(|(listener, handshake_timeout)| server::TlsListener {
        listener,
        config: server::tls::server_config(gateway.certs(), true),
        handshake_timeout,
    });
    let tls_addr = tls.as_ref().and_then(|t| t.listener.local_addr().ok());
    if let Some(addr) = tls_addr {
        info!(%addr, "TLS listening");
    }
    on_listening(Listening {
        proxy: addr,
        admin: admin_addr,
        tls: tls_addr,
    });
    server::serve_all(gateway.current(), listener, tls, limits, shutdown, grace).await;
    if let Some(follower) = follower {
        // It stops at `shutdown`; awaited so that no apply races the stop.
        let _ = follower.await;
    }
    gateway.stop().await;
    info!("proxy stopped");
    Ok(())
}

/// What the admin listener may do: reload (`POST /reload`), upgrade every
/// runner (`POST /runners/restart`), and say whether the proxy is ready
/// (`GET /readyz`: not before the gateway has started, i.e. the runners are
/// ready and the routes loaded; not once `shutdown` is cancelled).
fn admin_hooks(
    started: Arc<std::sync::OnceLock<Arc<Gateway>>>,
    shutdown: CancellationToken,
) -> admin::AdminHooks {
    let not_yet = || "starting: the runners are not ready and the routes are not loaded yet";
    let for_reload = started.clone();
    let reload: admin::Hook = Arc::new(move || {
        let started = for_reload.clone();
        Box::pin(async move {
            let gateway = started.get().ok_or_else(|| not_yet().to_owned())?;
            gateway
                .reload()
                .await
                .map(|()| "configuration reloaded\n".to_owned())
                .map_err(|e| e.to_string())
        })
    });
    let for_restart = started.clone();
    let restart_runners: admin::Hook = Arc::new(move || {
        let started = for_restart.clone();
        Box::pin(async move {
            let gateway = started.get().ok_or_else(|| not_yet().to_owned())?;
            let mut done = Vec::new();
            for (name, runner) in gateway.restarters().await {
                runner
                    .upgrade()
                    .await
                    .map_err(|e| format!("runner {name}: {e}"))?;
                done.push(name);
            }
            Ok(format!("runners upgraded: {}\n", done.join(", ")))
        })
    });
    let readiness: admin::Readiness = Arc::new(move || {
        if shutdown.is_cancelled() {
            return Err("the proxy is stopping".into());
        }
        started.get().ok_or_else(|| not_yet().to_owned())?.ready()
    });
    admin::AdminHooks {
        reload: Some(reload),
        restart_runners: Some(restart_runners),
        readiness,
    }
}

/// Upgrades every runner on every SIGUSR2 (see
/// [`supervisor::Restarter::upgrade`]), until `shutdown`.
async fn upgrade_on_signal(
    mut signal: tokio::signal::unix::Signal,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            got = signal.recv() => if got.is_none() { return },
            _ = shutdown.cancelled() => return,
        }
        info!(signal = "SIGUSR2", "upgrading the runners");
        // Not awaited here: the supervisors queue upgrades themselves, and
        // a signal must never wait for the previous one.
        for (name, runner) in gateway.restarters().await {
            tokio::spawn(async move {
                if let Err(e) = runner.upgrade().await {
                    tracing::error!(runner = %name, "runner upgrade failed: {e}");
                }
            });
        }
    }
}
/// Cancels `shutdown` on the first SIGTERM or SIGINT (the host's and the
/// proxy's way to start a graceful stop). The runner has its own,
/// `runner_sdk::runner::stop_on_signal`: the host does not depend on the SDK.
///
/// The handlers are installed when this is called, not when the returned
/// future is first polled: a signal that arrives while the process is still
/// starting (before the spawned task runs) stops it gracefully instead of
/// killing it. Must be called within a tokio runtime.
pub fn stop_on_signal(
    shutdown: tokio_util::sync::CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = streams else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        // Logging cannot fail or panic (see `init_logging`), so say why first.
        tracing::info!(signal = name, "stopping");
        shutdown.cancel();
    }
}
