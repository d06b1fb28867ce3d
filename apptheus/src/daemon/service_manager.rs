//! Telling systemd how the agent is (`Type=notify`, `WatchdogSec=`): ready once the launcher
//! socket and the HTTP listener are bound, stopping at shutdown, and a watchdog ping only while
//! the sampling thread answers. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Startup is complete: launchers can connect and `/metrics` answers.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: running containers keep running")]);
}

/// The watchdog period systemd asked for (`WatchdogSec=`), if any, for this process.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Ping the watchdog every half `period` while `alive()` resolves to true within that half;
/// a sampling thread stuck in the kernel stops the pings, and systemd restarts the agent.
pub async fn feed_watchdog<F, Fut>(period: Duration, shutdown: CancellationToken, alive: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let half = period / 2;
    let mut ticker = tokio::time::interval(half);
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match tokio::time::timeout(half, alive()).await {
            Ok(true) => {
                if stalled {
                    tracing::info!("the sampling thread answers again; watchdog pings resume");
                    stalled = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            _ => {
                if !stalled {
                    tracing::error!(period = ?period, "the sampling thread does not answer; watchdog pings withheld");
                    stalled = true;
                }
            }
        }
    }
}

/// Outside systemd (no `NOTIFY_SOCKET`) sd-notify sends nothing and says Ok.
fn send(state: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        tracing::warn!(%err, "cannot notify systemd");
    }
}
