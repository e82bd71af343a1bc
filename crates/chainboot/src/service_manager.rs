//! Telling systemd (Type=notify) when the server is ready and when it stops, so that
//! `systemctl start` returns only once every listener is bound and ordering after
//! chainboot.service means "machines can boot now". Without NOTIFY_SOCKET (not under
//! systemd) nothing is sent.

use sd_notify::NotifyState;

/// Every listener is bound and the signal loop runs.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Shutting down (transfers in flight get their grace period).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("telling the service manager: {e}");
    }
}
