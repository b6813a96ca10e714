//! Who may connect: the kernel's word on each peer (`SO_PEERCRED`),
//! checked against the runner's own uid and the allowed ones.

use tracing::warn;

/// Who may connect: the runner's own effective uid and the allowed ones.
pub(crate) struct PeerCheck {
    /// The uids admitted, sorted.
    pub allowed: Vec<u32>,
}

impl PeerCheck {
    /// Admits the runner's effective uid and `allowed`.
    pub fn new(mut allowed: Vec<u32>) -> PeerCheck {
        allowed.insert(0, nix::unistd::geteuid().as_raw());
        allowed.sort_unstable();
        allowed.dedup();
        PeerCheck { allowed }
    }

    /// True when the peer's uid (from the kernel, `SO_PEERCRED`) is allowed.
    /// Otherwise logs the uid and pid and returns false: the caller drops
    /// the stream, which closes it before anything is read or answered.
    /// The socket's mode is the first gate; this one still holds when the
    /// mode was opened wide (`EXTPLUG_SOCKET_MODE=0666`).
    pub fn admits(&self, stream: &tokio::net::UnixStream) -> bool {
        match stream.peer_cred() {
            Ok(cred) if self.allowed.contains(&cred.uid()) => true,
            Ok(cred) => {
                warn!(
                    uid = cred.uid(),
                    pid = cred.pid(),
                    allowed = ?self.allowed,
                    "closing a connection from a uid that is not allowed (see EXTPLUG_ALLOWED_UIDS)"
                );
                false
            }
            Err(e) => {
                warn!(cause = %e, "closing a connection whose credentials cannot be read");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn our_own_uid_is_always_admitted() {
        let me = nix::unistd::geteuid().as_raw();
        let check = PeerCheck::new(vec![me, 12345, 12345]);
        assert_eq!(check.allowed.iter().filter(|u| **u == me).count(), 1);
        assert_eq!(check.allowed.iter().filter(|u| **u == 12345).count(), 1);
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        assert!(PeerCheck::new(vec![]).admits(&a));
    }
}
