//! `key-auth`: lets a request through only with a known key in a header.
//!
//! Conf: `{"header": string (default "x-api-key"), "keys": [string, at least one]}`.
//! A request without the header, or with a value not in `keys`, is answered
//! 401 with `{"error":"missing or invalid key"}`; otherwise nothing changes.

use runner_sdk::{
    async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request, StatusCode, Stop,
};
use serde::Deserialize;
use std::collections::HashSet;

/// The `key-auth` plugin.
pub struct KeyAuth;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAuthConf {
    #[serde(default = "default_header")]
    header: String,
    keys: Vec<String>,
}

fn default_header() -> String {
    "x-api-key".to_owned()
}

struct KeyAuthFilter {
    header: String,
    keys: HashSet<String>,
}

impl Plugin for KeyAuth {
    fn name(&self) -> &str {
        "key-auth"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: KeyAuthConf = parse_conf(conf)?;
        if conf.keys.is_empty() {
            return Err(ConfError::new("`keys` must list at least one key"));
        }
        if conf.header.is_empty() {
            return Err(ConfError::new("`header` must not be empty"));
        }
        Ok(Box::new(KeyAuthFilter {
            header: conf.header.to_ascii_lowercase(),
            keys: conf.keys.into_iter().collect(),
        }))
    }
}

#[async_trait]
impl Filter for KeyAuthFilter {
    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        let ok = req
            .header(&self.header)
            .is_some_and(|k| self.keys.contains(k));
        if !ok {
            let error = serde_json::json!({"error": "missing or invalid key"});
            req.stop(Stop::json(StatusCode::UNAUTHORIZED, &error));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::TestRequest;
    use runner_sdk::{Registry, RequestOutcome};

    const CONF: &str = r#"{"keys":["k1","k2"]}"#;

    fn denied() -> RequestOutcome {
        RequestOutcome::Stop(
            Stop::new(StatusCode::UNAUTHORIZED)
                .header("content-type", "application/json")
                .body(r#"{"error":"missing or invalid key"}"#),
        )
    }

    #[tokio::test]
    async fn a_known_key_passes_unchanged() {
        let plugins = Registry::new().plugin(KeyAuth);
        let req = TestRequest::get("/").header("X-Api-Key", "k2");
        assert_eq!(
            req.run(&plugins, &[("key-auth", CONF)]).await.unwrap(),
            RequestOutcome::Continue
        );
    }

    #[tokio::test]
    async fn missing_or_wrong_keys_are_refused() {
        let plugins = Registry::new().plugin(KeyAuth);
        let none = TestRequest::get("/");
        assert_eq!(
            none.run(&plugins, &[("key-auth", CONF)]).await.unwrap(),
            denied()
        );
        let wrong = TestRequest::get("/").header("x-api-key", "k3");
        assert_eq!(
            wrong.run(&plugins, &[("key-auth", CONF)]).await.unwrap(),
            denied()
        );
    }

    #[tokio::test]
    async fn the_header_is_configurable() {
        let plugins = Registry::new().plugin(KeyAuth);
        let conf = r#"{"header":"Authorization","keys":["secret"]}"#;
        let req = TestRequest::get("/").header("authorization", "secret");
        assert_eq!(
            req.run(&plugins, &[("key-auth", conf)]).await.unwrap(),
            RequestOutcome::Continue
        );
        let req = TestRequest::get("/").header("x-api-key", "secret");
        assert_eq!(
            req.run(&plugins, &[("key-auth", conf)]).await.unwrap(),
            denied()
        );
    }

    #[tokio::test]
    async fn bad_confs_are_refused_with_the_plugin_name() {
        let plugins = Registry::new().plugin(KeyAuth);
        for conf in [
            r#"{}"#,
            r#"{"keys":[]}"#,
            r#"{"keys":"k"}"#,
            r#"{"keys":["k"],"header":5}"#,
            "?",
        ] {
            let err = TestRequest::get("/")
                .run(&plugins, &[("key-auth", conf)])
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("plugin \"key-auth\""),
                "{conf}: {err}"
            );
        }
    }
}
