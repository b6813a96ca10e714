//! The runner's private socket directory, and the sweep of the ones a killed
//! host left behind.
//!
//! The directory is `$TMPDIR/extplug-<pid>-XXXXXX` (`<pid>`: the host that
//! owns it), mode 0700, owned by us, and holds a `lock` file that its owner
//! keeps locked (`flock`) for as long as it lives. A host that was killed
//! with SIGKILL cannot remove its directory; the next host to start removes
//! it: a directory of ours whose pid is gone and whose lock is free (or
//! missing) is stale. The pid is checked even when the lock is free: a host
//! starting right now has created its lock file but not locked it yet. Only sockets and the lock file are ever deleted
//! from it: anything else keeps the directory (with a warning).

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// The name prefix of every runner directory.
const PREFIX: &str = "extplug-";
/// The file whose lock says "my owner is alive".
const LOCK: &str = "lock";

/// A private directory for the runner's sockets, removed when dropped.
#[derive(Debug)]
pub struct RunnerDir {
    // Field order matters: the lock is released before the directory goes.
    _lock: Flock<File>,
    dir: tempfile::TempDir,
}

impl RunnerDir {
    /// Removes stale runner directories from the temp dir (`$TMPDIR`), then
    /// creates ours there.
    ///
    /// # Errors
    /// See [`RunnerDir::create_in`].
    pub fn create() -> io::Result<RunnerDir> {
        let parent = std::env::temp_dir();
        sweep_stale(&parent);
        Self::create_in(&parent)
    }

    /// Creates `extplug-<our pid>-XXXXXX` in `parent`, mode 0700 whatever
    /// the umask, then checks it: a directory (not a symlink), owned by our
    /// user, mode exactly 0700; and locks it for our lifetime.
    ///
    /// # Errors
    /// The directory or its lock file cannot be created, or the check fails;
    /// the message names the path and what was wrong.
    pub fn create_in(parent: &Path) -> io::Result<RunnerDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .permissions(Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(|e| with_path(e, "cannot create a directory in", parent))?;
        // The umask may have taken bits off (or, with a strange umask, left
        // us without access): set the mode explicitly, then check the result.
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o700))
            .map_err(|e| with_path(e, "cannot set mode 0700 on", dir.path()))?;
        verify(dir.path())?;
        let lock_path = dir.path().join(LOCK);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| with_path(e, "cannot create", &lock_path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| with_path(io::Error::from(errno), "cannot lock", &lock_path))?;
        Ok(RunnerDir { _lock: lock, dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Checks that `path` is a real directory (not a symlink), owned by our
/// effective user, with mode 0700: nobody else can put a socket there or
/// connect to ours.
///
/// # Errors
/// `PermissionDenied` naming the path and what is wrong, or the `lstat` error.
pub fn verify(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| with_path(e, "cannot inspect", path))?;
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a private directory: {why}", path.display()),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!(
            "it is owned by uid {}, not by us (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o700 {
        return refuse(format!("its mode is {mode:04o}, not 0700"));
    }
    Ok(())
}

/// The owner pid in a runner directory's name, `extplug-<pid>-<suffix>`.
fn owner_pid(name: &str) -> Option<i32> {
    let (pid, suffix) = name.strip_prefix(PREFIX)?.split_once('-')?;
    if suffix.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0)
}

/// True while a process with this pid exists (ours or not).
fn alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Removes the runner directories in `parent` whose owner is gone; returns
/// the paths removed. Leaves alone everything that is not a directory of ours
/// named `extplug-<pid>-*` (symbolic links included), directories whose owner
/// still holds the lock, and directories whose pid lives even with a free
/// lock (one being created right now, between creating its lock file and
/// locking it; or, rarely, a pid reused since: that leftover waits for a
/// later sweep). Never fails: what cannot be removed is left, with
/// a warning.
pub fn sweep_stale(parent: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return removed;
    };
    let me = nix::unistd::geteuid().as_raw();
    let our_pid = std::process::id() as i32;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if pid == our_pid {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_dir() || meta.uid() != me {
            continue;
        }
        // Opened without following a symlink: the lock must be the file in
        // this directory, not something a link points to.
        let lock = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path.join(LOCK));
        let held = match lock {
            Ok(file) => match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                // A free lock is not enough: its owner may be about to take it.
                Ok(_) if alive(pid) => continue,
                Ok(held) => Some(held),
                Err(_) => continue, // its owner is alive
            },
            Err(_) if alive(pid) => continue,
            Err(_) => None,
        };
        if remove(&path) {
            info!(dir = %path.display(), owner_pid = pid, "removed a runner directory left by a host that is gone");
            removed.push(path);
        }
        drop(held);
    }
    removed
}

/// Deletes the sockets and the lock file in `dir`, then `dir` if that left
/// it empty.
fn remove(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ours = meta.file_type().is_socket()
            || (entry.file_name() == LOCK && meta.file_type().is_file());
        if ours {
            let _ = std::fs::remove_file(&path);
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => {
            warn!(dir = %dir.display(), "left a stale runner directory in place: it holds more than sockets ({e})");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids_come_from_our_names_only() {
        assert_eq!(owner_pid("extplug-123-abcDEF"), Some(123));
        assert_eq!(owner_pid("extplug-123-"), None);
        assert_eq!(owner_pid("extplug-abc-123"), None);
        assert_eq!(owner_pid("extplug--x"), None);
        assert_eq!(owner_pid("extplug-0-x"), None);
        assert_eq!(owner_pid("extplugin-1-x"), None);
        assert_eq!(owner_pid("extplug-99999999999-x"), None);
    }

    #[test]
    fn the_directory_is_private_and_locked() {
        let parent = tempfile::tempdir().unwrap();
        let dir = RunnerDir::create_in(parent.path()).unwrap();
        let meta = std::fs::symlink_metadata(dir.path()).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(owner_pid(name), Some(std::process::id() as i32));
        // Our own directory is never swept, even by another sweeper in this
        // process: the lock is held.
        assert!(sweep_stale(parent.path()).is_empty());
        assert!(dir.path().exists());
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists(), "removed when dropped");
    }

    #[test]
    fn verify_refuses_what_is_not_private() {
        let parent = tempfile::tempdir().unwrap();
        let open = parent.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, Permissions::from_mode(0o755)).unwrap();
        let err = verify(&open).unwrap_err().to_string();
        assert!(err.contains("0755") && err.contains("open"), "{err}");
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = verify(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn stale_directories_go_and_nothing_else() {
        let parent = tempfile::tempdir().unwrap();
        // A pid that is gone: a child we started and reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let mk = |name: &str| {
            let p = parent.path().join(name);
            std::fs::create_dir(&p).unwrap();
            p
        };
        // Stale, with a socket and a free lock.
        let stale = mk(&format!("extplug-{dead}-aaaaaa"));
        let _sock = std::os::unix::net::UnixListener::bind(stale.join("runner-1.sock")).unwrap();
        std::fs::write(stale.join(LOCK), "").unwrap();
        // Stale, without a lock, pid gone.
        let old = mk(&format!("extplug-{dead}-bbbbbb"));
        // Stale name but holding a file that is not ours: kept.
        let foreign = mk(&format!("extplug-{dead}-cccccc"));
        std::fs::write(foreign.join("notes.txt"), "keep me").unwrap();
        // No lock and the pid lives (pid 1): kept.
        let live = mk("extplug-1-dddddd");
        // A free lock but the pid lives: a host between creating its lock
        // file and locking it (two proxies starting at once): kept.
        let starting = mk("extplug-1-gggggg");
        std::fs::write(starting.join(LOCK), "").unwrap();
        // Not our name: kept.
        let other = mk(&format!("extplugx-{dead}-eeeeee"));
        // A symlink with our name pointing at a directory with a socket: kept,
        // and not followed.
        let target = mk("target");
        let _sock2 = std::os::unix::net::UnixListener::bind(target.join("s.sock")).unwrap();
        let link = parent.path().join(format!("extplug-{dead}-ffffff"));
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let mut removed = sweep_stale(parent.path());
        removed.sort();
        assert_eq!(removed, vec![stale.clone(), old.clone()]);
        assert!(!stale.exists() && !old.exists());
        assert!(foreign.join("notes.txt").exists());
        assert!(live.exists() && other.exists());
        assert!(
            starting.join(LOCK).exists(),
            "a starting host's directory was swept"
        );
        assert!(link.exists() && target.join("s.sock").exists());
    }
}
