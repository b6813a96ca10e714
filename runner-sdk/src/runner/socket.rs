//! The listening socket's life: stale socket removed (never another kind of
//! file), created under a umask of at least 0177, widened to its mode
//! without a chmod by path, file removed when the runner stops (if still ours).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The path exists and is not a socket: refusing to delete it.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
    /// Another process accepts connections on the socket.
    #[error("{0} is in use: another process is listening on it")]
    InUse(PathBuf),
    /// A system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The socket file, removed when this is dropped (after the listener is
/// closed and the connections drained), if it is still the one we bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// The device and inode of the socket we bound: a file at the path with
    /// others is someone else's (a runner started on the same path after
    /// ours was removed) and is left alone.
    id: Option<(u64, u64)>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && Some((m.dev(), m.ino())) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `path` with file mode `mode`, first removing a stale socket there.
///
/// # Errors
/// The path holds something other than a socket, a live runner listens
/// there, or a system call failed.
pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), SocketError> {
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| SocketError::Io {
            action,
            path,
            source,
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("removing stale socket"))?;
        }
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting")(e)),
    }
    // bind() creates the file with 0777 & !umask: under the usual umask of
    // 022 the socket would be connectable by anyone until a chmod. Bind
    // under a umask of at least 0177 that also takes off what `mode` does
    // not have, so the socket is never wider than asked nor than 0600. The
    // umask is process-wide: restored at once, bound at start, before the
    // runner creates any other file, and never looser than 0177 (a file
    // another thread made meanwhile would be private, never open).
    warn_if_shared_dir(path);
    let mode = mode & 0o777;
    let created = mode & 0o600;
    let listener = {
        let _umask = Umask::set(0o777 & !created);
        UnixListener::bind(path).map_err(io("binding"))?
    };
    let meta = std::fs::symlink_metadata(path).map_err(io("inspecting"))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: Some((meta.dev(), meta.ino())),
    };
    // Wider than 0600 (or a default ACL on the directory, which overrides
    // the umask): a chmod, but never by path, as in a directory others can
    // write (a runner run by hand in /tmp) the path could be swapped for a
    // symbolic link meanwhile, and the chmod would change its target.
    if meta.permissions().mode() & 0o777 != mode {
        chmod_socket(path, (meta.dev(), meta.ino()), mode).map_err(io("setting the mode of"))?;
    }
    Ok((listener, file))
}

/// Sets `mode` on the socket at `path` if it is still the one with `id`
/// (device, inode): opened without following a link (`O_PATH|O_NOFOLLOW`),
/// checked, then changed through `/proc/self/fd`, which names that very
/// inode whatever the path holds by then.
fn chmod_socket(path: &Path, id: (u64, u64), mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOFOLLOW)
        .open(path)?;
    let meta = handle.metadata()?;
    if !meta.file_type().is_socket() || (meta.dev(), meta.ino()) != id {
        return Err(std::io::Error::other(
            "the socket was replaced by another file right after it was bound",
        ));
    }
    let by_fd = format!("/proc/self/fd/{}", handle.as_raw_fd());
    std::fs::set_permissions(by_fd, std::fs::Permissions::from_mode(mode))
}

/// Warns when the socket's directory may be written by other users and has
/// no sticky bit (a runner run by hand in such a place): they could remove
/// the socket and put their own in its place, and the host would talk to
/// them. The host's own directory is private (0700); the runner does not
/// refuse other places, as a deployment may have reasons of its own.
fn warn_if_shared_dir(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:04o}", mode & 0o7777),
            "the socket's directory is writable by other users (group or others, no sticky bit): they could replace the socket; use a private directory (0700)"
        );
    }
}

/// A umask in force until dropped, then the previous one again.
struct Umask(nix::sys::stat::Mode);

impl Umask {
    fn set(mask: u32) -> Umask {
        use nix::sys::stat::{umask, Mode};
        Umask(umask(Mode::from_bits_truncate(mask as nix::libc::mode_t)))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        nix::sys::stat::umask(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bound_with_the_mode_asked_and_the_umask_restored() {
        let dir = tempfile::tempdir().unwrap();
        let before = Umask::set(0o022);
        for mode in [0o600, 0o660, 0o666, 0o777, 0o200] {
            let path = dir.path().join(format!("s{mode:o}.sock"));
            let (_listener, _file) = bind(&path, mode).unwrap();
            let got = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode);
            // The umask in force again is the one before the bind.
            let now = Umask::set(0o022);
            assert_eq!(now.0, nix::sys::stat::Mode::from_bits_truncate(0o022));
        }
        drop(before);
    }
}
