//! Checks the runner's program before it is first started, so that a wrong
//! `ext-plugin.cmd` is refused at start with a clear message instead of
//! failing every restart.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Finds `program` as `execvp` would: a name with a `/` is used as it is
/// (relative to the working directory); a bare name is looked up in the
/// directories of `path_var` (the runner's `PATH`), an empty entry meaning
/// the working directory. The file must be a regular file that we may
/// execute.
///
/// # Errors
/// The program is missing, not a file, or not executable; the message says
/// which, with the file's mode or the directories searched.
pub fn resolve(program: &str, path_var: Option<&OsStr>) -> Result<PathBuf, String> {
    if program.contains('/') {
        let path = Path::new(program);
        return executable(path).map(|()| path.to_path_buf());
    }
    let dirs = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let mut not_executable = None;
    for dir in std::env::split_paths(dirs) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        if !candidate.exists() {
            continue;
        }
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(why) => {
                not_executable.get_or_insert(format!("{}: {why}", candidate.display()));
            }
        }
    }
    Err(match not_executable {
        Some(why) => why,
        None => format!(
            "not found in the runner's PATH ({})",
            dirs.to_string_lossy()
        ),
    })
}

/// Whether `path` is a regular file we may execute; why not otherwise.
fn executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        _ => e.to_string(),
    })?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_err() {
        return Err(format!(
            "not executable (mode {:04o})",
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_plain_and_non_executable_programs_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve(plain.to_str().unwrap(), None).unwrap_err();
        assert_eq!(err, "not executable (mode 0644)");
        let missing = dir.path().join("missing");
        let err = resolve(missing.to_str().unwrap(), None).unwrap_err();
        assert_eq!(err, "no such file");
        let err = resolve(dir.path().to_str().unwrap(), None).unwrap_err();
        assert_eq!(err, "not a regular file");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(resolve(plain.to_str().unwrap(), None).unwrap(), plain);
        // Bare names go through PATH.
        let path_var = dir.path().as_os_str();
        assert_eq!(resolve("plain", Some(path_var)).unwrap(), plain);
        let err = resolve("missing", Some(path_var)).unwrap_err();
        assert!(err.starts_with("not found in the runner's PATH"), "{err}");
    }
}
