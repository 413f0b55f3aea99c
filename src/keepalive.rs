//! TCP keepalive on both legs of a connection (`--tcp-keepalive`).
//!
//! A laptop that vanishes without a FIN or RST leaves a half-open socket: the
//! kernel believes the peer is there for as long as nothing is sent, and
//! retransmits unacknowledged data for about fifteen minutes when something
//! is. With `--tcp-keepalive T`, every downstream and upstream socket gets
//! `SO_KEEPALIVE` with `TCP_KEEPIDLE = T`, `TCP_KEEPINTVL = max(1s, T/3)` and
//! `TCP_KEEPCNT = 3`, plus `TCP_USER_TIMEOUT` of the same total, so a dead
//! peer is found within about twice `T` whether the line is idle or busy. The
//! tunnel then sees the error and closes the other leg.
//!
//! A side module: the accept stage and upstream selection call [`apply`].

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Probes sent before the peer is declared dead.
pub(crate) const PROBES: u32 = 3;

/// The interval between probes for an idle time `idle`.
pub(crate) fn interval(idle: Duration) -> Duration {
    (idle / 3).max(Duration::from_secs(1))
}

/// How long a dead peer can go unnoticed: idle time plus every probe.
pub(crate) fn detection_bound(idle: Duration) -> Duration {
    idle.saturating_add(interval(idle).saturating_mul(PROBES))
}

/// Turn keepalive on for `stream` with idle time `idle`.
pub(crate) fn apply(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    let socket = SockRef::from(stream);
    let params = TcpKeepalive::new()
        .with_time(idle)
        .with_interval(interval(idle))
        .with_retries(PROBES);
    socket.set_tcp_keepalive(&params)?;
    socket.set_tcp_user_timeout(Some(detection_bound(idle)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_a_third_of_idle_but_at_least_a_second() {
        assert_eq!(interval(Duration::from_secs(9)), Duration::from_secs(3));
        assert_eq!(interval(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(
            detection_bound(Duration::from_secs(9)),
            Duration::from_secs(18)
        );
    }

    #[tokio::test]
    async fn the_options_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        apply(&stream, Duration::from_secs(6)).unwrap();
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(6));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), PROBES);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(12))
        );
    }
}
