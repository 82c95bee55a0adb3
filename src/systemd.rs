//! The systemd notification protocol (sd_notify), spoken directly: one datagram per state to
//! `$NOTIFY_SOCKET`. READY=1 once connected and migrated, WATCHDOG=1 while healthy, STOPPING=1
//! on shutdown. Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is enabled for this process.
    pub watchdog_interval: Option<Duration>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let watchdog_for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog_interval = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|us| us.parse::<u64>().ok())
            .filter(|us| *us > 0 && watchdog_for_us)
            .map(|us| Duration::from_micros(us / 2));
        Notifier {
            socket,
            watchdog_interval,
        }
    }

    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
                log::warn!("systemd notification {state:?}: {e}");
            }
        }
    }
}
