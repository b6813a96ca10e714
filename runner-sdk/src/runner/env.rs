//! The runner's environment: `APISIX_LISTEN_ADDRESS`, `APISIX_CONF_EXPIRE_TIME`
//! and extplug's optional extras.

use std::path::PathBuf;
use std::time::Duration;

/// The socket path the runner must listen on (`unix:<path>`).
pub const LISTEN_ADDRESS: &str = "APISIX_LISTEN_ADDRESS";
/// Seconds a host keeps a conf token; the runner keeps entries 1.2 x that.
pub const CONF_EXPIRE_TIME: &str = "APISIX_CONF_EXPIRE_TIME";
/// extplug extra: the socket file's mode, in octal (default 0600).
pub const SOCKET_MODE: &str = "EXTPLUG_SOCKET_MODE";
/// extplug extra: the largest frame payload accepted, in bytes (default and
/// maximum 16,777,215).
pub const MAX_FRAME: &str = "EXTPLUG_MAX_FRAME";

/// extplug extra: the most EXTRA_INFO round trips one call may make
/// (default [`DEFAULT_MAX_EXTRA_INFO`]); past it the call fails.
pub const MAX_EXTRA_INFO: &str = "EXTPLUG_MAX_EXTRA_INFO";
/// extplug extra: the most host connections served at once (default
/// [`DEFAULT_MAX_CONNECTIONS`]); past it the runner stops accepting until
/// one closes.
pub const MAX_CONNECTIONS: &str = "EXTPLUG_MAX_CONNECTIONS";
/// extplug extra: user ids allowed to connect besides the runner's own,
/// comma-separated (`1000,1001`).
pub const ALLOWED_UIDS: &str = "EXTPLUG_ALLOWED_UIDS";

/// extplug extra: the one wire the runner speaks, `apisix` (APISIX's
/// FlatBuffers) or `capnp` (extplug's Cap'n Proto). Unset or empty: both,
/// told apart per connection from its first frame
/// (`extplug::wire::Protocol::detect`).
pub const RUNNER_PROTOCOL: &str = "EXTPLUG_RUNNER_PROTOCOL";

/// The default of `EXTPLUG_MAX_EXTRA_INFO`.
pub const DEFAULT_MAX_EXTRA_INFO: u32 = 64;
/// The default of `EXTPLUG_MAX_CONNECTIONS`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The largest value `EXTPLUG_MAX_EXTRA_INFO` and `EXTPLUG_MAX_CONNECTIONS` take.
pub const MAX_LIMIT: usize = 1_000_000;

/// The default of `APISIX_CONF_EXPIRE_TIME`, in seconds.
pub const DEFAULT_CONF_EXPIRE_SECS: u64 = 3600;

/// A bad runner environment; the message names the variable and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// `APISIX_LISTEN_ADDRESS` is not set.
    #[error(
        "{LISTEN_ADDRESS} is not set: a runner is normally started by `extplug proxy` (the \
         `cmd` of its `ext-plugin`) or by APISIX, which set it; to start one by hand, set it \
         to `unix:` followed by a socket path (`{LISTEN_ADDRESS}=unix:/tmp/runner.sock`)"
    )]
    MissingListen,
    /// `APISIX_LISTEN_ADDRESS` is not `unix:<path>`.
    #[error("{LISTEN_ADDRESS}={0:?} is not `unix:` followed by a socket path")]
    BadListen(String),
    /// `APISIX_CONF_EXPIRE_TIME` is not a positive integer.
    #[error("{CONF_EXPIRE_TIME}={0:?} is not a positive whole number of seconds")]
    BadExpire(String),
    /// `EXTPLUG_SOCKET_MODE` is not an octal mode, or one without the owner's
    /// write bit (the host could not connect).
    #[error("{SOCKET_MODE}={0:?} is not an octal file mode from 0200 to 0777 with the owner's write bit (0200), such as 600 or 0660")]
    BadSocketMode(String),
    /// `EXTPLUG_MAX_FRAME` is not a size in range.
    #[error("{MAX_FRAME}={0:?} is not a byte count from 1 to 16777215")]
    BadMaxFrame(String),
    /// `EXTPLUG_MAX_EXTRA_INFO` is not a count in range.
    #[error("{MAX_EXTRA_INFO}={0:?} is not a whole number from 0 to {MAX_LIMIT}")]
    BadMaxExtraInfo(String),
    /// `EXTPLUG_MAX_CONNECTIONS` is not a count in range.
    #[error("{MAX_CONNECTIONS}={0:?} is not a whole number from 1 to {MAX_LIMIT}")]
    BadMaxConnections(String),
    /// `EXTPLUG_ALLOWED_UIDS` is not a comma-separated list of user ids.
    #[error("{ALLOWED_UIDS}={value:?}: {item:?} is not a user id (a comma-separated list of numbers such as 1000,1001 is expected)")]
    BadAllowedUids {
        /// The whole value.
        value: String,
        /// The entry that is not a uid.
        item: String,
    },
    /// `EXTPLUG_RUNNER_PROTOCOL` is neither `apisix` nor `capnp`.
    #[error("{RUNNER_PROTOCOL}={0:?} is not `apisix` or `capnp` (leave it unset or empty to speak both)")]
    BadProtocol(String),
}

/// The runner's settings, as read from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerEnv {
    /// Where to create the listening socket.
    pub socket_path: PathBuf,
    /// `APISIX_CONF_EXPIRE_TIME`.
    pub conf_expire: Duration,
    /// `EXTPLUG_SOCKET_MODE`, when set.
    pub socket_mode: Option<u32>,
    /// `EXTPLUG_MAX_FRAME`, when set.
    pub max_frame: Option<usize>,
    /// `EXTPLUG_MAX_EXTRA_INFO`, when set.
    pub max_extra_info: Option<u32>,
    /// `EXTPLUG_MAX_CONNECTIONS`, when set.
    pub max_connections: Option<usize>,
    /// `EXTPLUG_ALLOWED_UIDS` (empty when unset).
    pub allowed_uids: Vec<u32>,
    /// `EXTPLUG_RUNNER_PROTOCOL`, when set and not empty.
    pub protocol: Option<extplug::wire::Protocol>,
}

impl RunnerEnv {
    /// Reads the process environment.
    ///
    /// # Errors
    /// The first variable that is missing or malformed.
    pub fn from_env() -> Result<RunnerEnv, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (for tests and embedders).
    ///
    /// # Errors
    /// The first variable that is missing or malformed.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<RunnerEnv, EnvError> {
        let listen = lookup(LISTEN_ADDRESS).ok_or(EnvError::MissingListen)?;
        let socket_path = match listen.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => return Err(EnvError::BadListen(listen)),
        };
        let conf_expire = match lookup(CONF_EXPIRE_TIME) {
            None => Duration::from_secs(DEFAULT_CONF_EXPIRE_SECS),
            Some(text) => match text.trim().parse::<u64>() {
                Ok(secs) if secs > 0 => Duration::from_secs(secs),
                _ => return Err(EnvError::BadExpire(text)),
            },
        };
        let socket_mode = match lookup(SOCKET_MODE) {
            None => None,
            Some(text) => Some(parse_socket_mode(&text)?),
        };
        let max_frame = match lookup(MAX_FRAME) {
            None => None,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if (1..=extplug::wire::MAX_PAYLOAD).contains(&n) => Some(n),
                _ => return Err(EnvError::BadMaxFrame(text)),
            },
        };
        let max_extra_info = match lookup(MAX_EXTRA_INFO) {
            None => None,
            Some(text) => match text.trim().parse::<u32>() {
                Ok(n) if n as usize <= MAX_LIMIT => Some(n),
                _ => return Err(EnvError::BadMaxExtraInfo(text)),
            },
        };
        let max_connections = match lookup(MAX_CONNECTIONS) {
            None => None,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Some(n),
                _ => return Err(EnvError::BadMaxConnections(text)),
            },
        };
        let allowed_uids = match lookup(ALLOWED_UIDS) {
            None => Vec::new(),
            Some(text) => parse_uids(&text)?,
        };
        let protocol = match lookup(RUNNER_PROTOCOL) {
            None => None,
            Some(text) if text.is_empty() => None,
            Some(text) => match extplug::wire::Protocol::from_name(&text) {
                Some(p) => Some(p),
                None => return Err(EnvError::BadProtocol(text)),
            },
        };
        Ok(RunnerEnv {
            socket_path,
            conf_expire,
            socket_mode,
            max_frame,
            max_extra_info,
            max_connections,
            allowed_uids,
            protocol,
        })
    }
}

/// Reads `EXTPLUG_SOCKET_MODE`: octal digits only (no sign), at most 0777,
/// and with the owner's write bit (0200), without which not even the
/// runner's own user (the host) could connect (connecting needs write
/// permission on the socket): the host would wait for a socket it can never
/// use, and time out without saying why.
fn parse_socket_mode(text: &str) -> Result<u32, EnvError> {
    let digits = text.trim();
    let octal = !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if octal && mode <= 0o777 && mode & 0o200 != 0 => Ok(mode),
        _ => Err(EnvError::BadSocketMode(text.to_owned())),
    }
}

/// Reads `EXTPLUG_ALLOWED_UIDS`: numbers separated by commas (spaces around
/// them allowed). An empty value allows no one else.
fn parse_uids(text: &str) -> Result<Vec<u32>, EnvError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|item| {
            item.trim()
                .parse::<u32>()
                .map_err(|_| EnvError::BadAllowedUids {
                    value: text.to_owned(),
                    item: item.to_owned(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<RunnerEnv, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RunnerEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let env = read(&[(LISTEN_ADDRESS, "unix:/tmp/x.sock")]).unwrap();
        assert_eq!(env.socket_path, PathBuf::from("/tmp/x.sock"));
        assert_eq!(env.conf_expire, Duration::from_secs(3600));
        assert_eq!(env.socket_mode, None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(read(&[]), Err(EnvError::MissingListen));
        for bad in ["/tmp/x.sock", "tcp:127.0.0.1:1", "unix:"] {
            let err = read(&[(LISTEN_ADDRESS, bad)]).unwrap_err();
            assert!(err.to_string().contains(LISTEN_ADDRESS), "{err}");
        }
        for bad in ["0", "-1", "abc", "1.5", ""] {
            let err = read(&[(LISTEN_ADDRESS, "unix:/s"), (CONF_EXPIRE_TIME, bad)]).unwrap_err();
            assert_eq!(err, EnvError::BadExpire(bad.into()));
        }
        let err = read(&[(LISTEN_ADDRESS, "unix:/s"), (SOCKET_MODE, "999")]).unwrap_err();
        assert_eq!(err, EnvError::BadSocketMode("999".into()));
        let ok = read(&[(LISTEN_ADDRESS, "unix:/s"), (SOCKET_MODE, "0660")]).unwrap();
        assert_eq!(ok.socket_mode, Some(0o660));
    }

    /// Modes no one could connect through (not even the host: connecting
    /// needs write permission), signs and empty values are refused; 0777 is
    /// allowed (the peer check still holds).
    #[test]
    fn socket_modes_the_host_cannot_use_are_refused() {
        for bad in [
            "0", "000", "0400", "0477", "+600", "-600", "", " ", "0o600", "1777",
        ] {
            let err = read(&[(LISTEN_ADDRESS, "unix:/s"), (SOCKET_MODE, bad)]).unwrap_err();
            assert_eq!(err, EnvError::BadSocketMode(bad.into()));
            assert!(err.to_string().contains("owner's write bit"), "{err}");
        }
        for (ok, mode) in [("0777", 0o777), ("200", 0o200), (" 0600 ", 0o600)] {
            let env = read(&[(LISTEN_ADDRESS, "unix:/s"), (SOCKET_MODE, ok)]).unwrap();
            assert_eq!(env.socket_mode, Some(mode));
        }
    }

    #[test]
    fn the_protocol_is_pinned_by_name_and_empty_counts_as_unset() {
        use extplug::wire::Protocol;
        let env = read(&[(LISTEN_ADDRESS, "unix:/s")]).unwrap();
        assert_eq!(env.protocol, None);
        for (text, want) in [
            ("", None),
            ("apisix", Some(Protocol::Apisix)),
            ("capnp", Some(Protocol::Capnp)),
        ] {
            let env = read(&[(LISTEN_ADDRESS, "unix:/s"), (RUNNER_PROTOCOL, text)]).unwrap();
            assert_eq!(env.protocol, want, "{text:?}");
        }
        for bad in ["APISIX", "flatbuffers", " apisix", "both"] {
            let err = read(&[(LISTEN_ADDRESS, "unix:/s"), (RUNNER_PROTOCOL, bad)]).unwrap_err();
            assert_eq!(err, EnvError::BadProtocol(bad.into()));
            assert!(err.to_string().contains(RUNNER_PROTOCOL), "{err}");
        }
    }

    #[test]
    fn limits_and_allowed_uids() {
        let env = read(&[(LISTEN_ADDRESS, "unix:/s")]).unwrap();
        assert_eq!(
            (env.max_extra_info, env.max_connections, env.allowed_uids),
            (None, None, vec![])
        );
        let env = read(&[
            (LISTEN_ADDRESS, "unix:/s"),
            (MAX_EXTRA_INFO, "0"),
            (MAX_CONNECTIONS, " 8 "),
            (ALLOWED_UIDS, "1000, 65534"),
        ])
        .unwrap();
        assert_eq!(env.max_extra_info, Some(0));
        assert_eq!(env.max_connections, Some(8));
        assert_eq!(env.allowed_uids, vec![1000, 65534]);
        for bad in ["-1", "x", "1000001"] {
            let err = read(&[(LISTEN_ADDRESS, "unix:/s"), (MAX_EXTRA_INFO, bad)]).unwrap_err();
            assert_eq!(err, EnvError::BadMaxExtraInfo(bad.into()));
        }
        for bad in ["0", "many", ""] {
            let err = read(&[(LISTEN_ADDRESS, "unix:/s"), (MAX_CONNECTIONS, bad)]).unwrap_err();
            assert_eq!(err, EnvError::BadMaxConnections(bad.into()));
        }
        for (bad, item) in [("1000,bob", "bob"), ("1,,2", ""), ("-5", "-5")] {
            let err = read(&[(LISTEN_ADDRESS, "unix:/s"), (ALLOWED_UIDS, bad)]).unwrap_err();
            assert!(
                err.to_string().contains(ALLOWED_UIDS)
                    && err
                        .to_string()
                        .contains(&format!("{item:?} is not a user id")),
                "{err}"
            );
        }
    }
}
