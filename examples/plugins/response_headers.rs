//! `response-headers`: changes the upstream's answer in the response phase.
//!
//! Conf (all optional): `{"set": {name: value}, "remove": [names], "status": int}`.

use runner_sdk::{
    async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Response, StatusCode,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The `response-headers` plugin.
pub struct ResponseHeaders;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseHeadersConf {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
    status: Option<u16>,
}

struct ResponseHeadersFilter {
    set: BTreeMap<String, String>,
    remove: Vec<String>,
    status: Option<StatusCode>,
}

impl Plugin for ResponseHeaders {
    fn name(&self) -> &str {
        "response-headers"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: ResponseHeadersConf = parse_conf(conf)?;
        let status = match conf.status {
            None => None,
            Some(n) => Some(
                StatusCode::from_u16(n)
                    .ok()
                    .filter(|s| s.as_u16() >= 200)
                    .ok_or_else(|| {
                        ConfError::new(format!("status {n} is not a final HTTP status (200-999)"))
                    })?,
            ),
        };
        Ok(Box::new(ResponseHeadersFilter {
            set: conf.set,
            remove: conf.remove,
            status,
        }))
    }
}

#[async_trait]
impl Filter for ResponseHeadersFilter {
    async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
        for name in &self.remove {
            resp.remove_header(name);
        }
        for (name, value) in &self.set {
            resp.set_header(name, value.as_str());
        }
        if let Some(status) = self.status {
            resp.set_status(status);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::TestResponse;
    use runner_sdk::{Registry, ResponseOutcome};

    #[tokio::test]
    async fn sets_removes_and_changes_the_status() {
        let plugins = Registry::new().plugin(ResponseHeaders);
        let conf = r#"{"set":{"x-new":"1"},"remove":["x-old"],"status":203}"#;
        let resp = TestResponse::new(StatusCode::OK)
            .header("x-old", "a")
            .header("x-keep", "b");
        let outcome = resp
            .run(&plugins, &[("response-headers", conf)])
            .await
            .unwrap();
        assert_eq!(
            outcome.status,
            Some(StatusCode::NON_AUTHORITATIVE_INFORMATION)
        );
        assert_eq!(
            outcome.headers,
            Some(vec![
                ("x-keep".to_string(), "b".to_string()),
                ("x-new".to_string(), "1".to_string())
            ])
        );
        assert_eq!(outcome.body, None);
    }

    #[tokio::test]
    async fn an_empty_conf_keeps_the_answer() {
        let plugins = Registry::new().plugin(ResponseHeaders);
        let outcome = TestResponse::new(StatusCode::OK)
            .run(&plugins, &[("response-headers", "{}")])
            .await
            .unwrap();
        assert_eq!(outcome, ResponseOutcome::default());
    }

    #[tokio::test]
    async fn bad_confs_are_refused_with_the_plugin_name() {
        let plugins = Registry::new().plugin(ResponseHeaders);
        for conf in [
            r#"{"status":99}"#,
            r#"{"set":[]}"#,
            r#"{"remove":"x"}"#,
            "nope",
        ] {
            let err = TestResponse::new(StatusCode::OK)
                .run(&plugins, &[("response-headers", conf)])
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("plugin \"response-headers\""),
                "{conf}: {err}"
            );
        }
    }
}
