//! SIGTERM and SIGINT as a graceful stop.

use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT (the runner's way to
/// start a graceful stop).
///
/// The handlers are installed when this is called, not when the returned
/// future is first polled: a signal that arrives while the process is still
/// starting (before the spawned task runs) stops it gracefully instead of
/// killing it. Must be called within a tokio runtime; if the handlers cannot
/// be installed, the error is logged and the future ends at once without
/// cancelling.
pub fn stop_on_signal(
    shutdown: CancellationToken,
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
