//! `limit-count`: at most `count` requests per key in each fixed window of
//! `time_window` seconds; past it, 429 with `retry-after`.
//!
//! Conf: `{"count": int > 0, "time_window": seconds > 0,
//! "key": "remote_addr" or "header:NAME"}` (`key` defaults to
//! `remote_addr`). A request without the header counts under the empty key.
//! The counters belong to the prepared conf, so all connections share them.

use runner_sdk::{
    async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request, StatusCode, Stop,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `limit-count` plugin.
pub struct LimitCount;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitCountConf {
    count: u64,
    time_window: u64,
    #[serde(default = "default_key")]
    key: String,
}

fn default_key() -> String {
    "remote_addr".to_owned()
}

enum KeySource {
    RemoteAddr,
    Header(String),
}

struct Window {
    started: Instant,
    used: u64,
}

struct LimitCountFilter {
    count: u64,
    window: Duration,
    key: KeySource,
    /// Key -> its current window. A short critical section per request.
    windows: Mutex<HashMap<String, Window>>,
}

/// Windows kept before stale ones are swept.
const SWEEP_AT: usize = 10_000;

impl Plugin for LimitCount {
    fn name(&self) -> &str {
        "limit-count"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: LimitCountConf = parse_conf(conf)?;
        if conf.count == 0 {
            return Err(ConfError::new("`count` must be greater than 0"));
        }
        if conf.time_window == 0 {
            return Err(ConfError::new("`time_window` must be greater than 0"));
        }
        let key = match conf.key.as_str() {
            "remote_addr" => KeySource::RemoteAddr,
            other => match other.strip_prefix("header:") {
                Some(name) if !name.is_empty() => KeySource::Header(name.to_ascii_lowercase()),
                _ => {
                    return Err(ConfError::new(format!(
                        "`key` {other:?} must be \"remote_addr\" or \"header:NAME\""
                    )))
                }
            },
        };
        Ok(Box::new(LimitCountFilter {
            count: conf.count,
            window: Duration::from_secs(conf.time_window),
            key,
            windows: Mutex::new(HashMap::new()),
        }))
    }
}

#[async_trait]
impl Filter for LimitCountFilter {
    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        let key = match &self.key {
            KeySource::RemoteAddr => req.src_ip().to_string(),
            KeySource::Header(name) => req.header(name).unwrap_or("").to_owned(),
        };
        let now = Instant::now();
        let retry_after = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            if windows.len() >= SWEEP_AT {
                windows.retain(|_, w| now.duration_since(w.started) < self.window);
            }
            let w = windows.entry(key).or_insert(Window {
                started: now,
                used: 0,
            });
            if now.duration_since(w.started) >= self.window {
                *w = Window {
                    started: now,
                    used: 0,
                };
            }
            if w.used < self.count {
                w.used += 1;
                None
            } else {
                let left = self.window.saturating_sub(now.duration_since(w.started));
                Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
            }
        };
        if let Some(secs) = retry_after {
            req.stop(
                Stop::new(StatusCode::TOO_MANY_REQUESTS)
                    .header("retry-after", secs.max(1).to_string())
                    .header("content-type", "application/json")
                    .body(r#"{"error":"too many requests"}"#),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::TestRequest;
    use runner_sdk::{Chain, Registry, RequestOutcome};
    use std::net::IpAddr;

    async fn run(chain: &Chain, req: TestRequest) -> RequestOutcome {
        req.run_chain(chain).await.unwrap().0
    }

    #[tokio::test]
    async fn counts_per_remote_addr_and_refuses_past_the_count() {
        let plugins = Registry::new().plugin(LimitCount);
        let chain = Chain::prepare(
            &plugins,
            [("limit-count", r#"{"count":2,"time_window":60}"#)],
        )
        .unwrap();
        let a = || TestRequest::get("/").src_ip("10.0.0.1".parse::<IpAddr>().unwrap());
        let b = || TestRequest::get("/").src_ip("10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(run(&chain, a()).await, RequestOutcome::Continue);
        assert_eq!(run(&chain, a()).await, RequestOutcome::Continue);
        let RequestOutcome::Stop(stop) = run(&chain, a()).await else {
            panic!("third request passed")
        };
        assert_eq!(stop.status, StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = stop
            .headers
            .iter()
            .find(|(n, _)| n == "retry-after")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(
            run(&chain, b()).await,
            RequestOutcome::Continue,
            "another address has its own count"
        );
    }

    #[tokio::test]
    async fn counts_per_header_value() {
        let plugins = Registry::new().plugin(LimitCount);
        let conf = r#"{"count":1,"time_window":60,"key":"header:X-User"}"#;
        let chain = Chain::prepare(&plugins, [("limit-count", conf)]).unwrap();
        let u = |name: &str| TestRequest::get("/").header("x-user", name);
        assert_eq!(run(&chain, u("ann")).await, RequestOutcome::Continue);
        assert!(matches!(
            run(&chain, u("ann")).await,
            RequestOutcome::Stop(_)
        ));
        assert_eq!(run(&chain, u("bob")).await, RequestOutcome::Continue);
    }

    #[tokio::test]
    async fn a_new_window_starts_afresh() {
        let plugins = Registry::new().plugin(LimitCount);
        let chain = Chain::prepare(
            &plugins,
            [("limit-count", r#"{"count":1,"time_window":1}"#)],
        )
        .unwrap();
        assert_eq!(
            run(&chain, TestRequest::get("/")).await,
            RequestOutcome::Continue
        );
        assert!(matches!(
            run(&chain, TestRequest::get("/")).await,
            RequestOutcome::Stop(_)
        ));
        std::thread::sleep(Duration::from_millis(1050));
        assert_eq!(
            run(&chain, TestRequest::get("/")).await,
            RequestOutcome::Continue
        );
    }

    #[tokio::test]
    async fn bad_confs_are_refused_with_the_plugin_name() {
        let plugins = Registry::new().plugin(LimitCount);
        for conf in [
            r#"{"time_window":1}"#,
            r#"{"count":0,"time_window":1}"#,
            r#"{"count":1,"time_window":0}"#,
            r#"{"count":-1,"time_window":1}"#,
            r#"{"count":1,"time_window":1,"key":"cookie"}"#,
            "",
        ] {
            let err = TestRequest::get("/")
                .run(&plugins, &[("limit-count", conf)])
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("plugin \"limit-count\""),
                "{conf}: {err}"
            );
        }
    }
}
