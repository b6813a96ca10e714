//! `say`: answers the client with a fixed status, headers and body.
//!
//! Conf: `{"body": string (required), "status": int (default 200),
//! "headers": {name: value}}`.

use runner_sdk::{
    async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request, StatusCode, Stop,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The `say` plugin.
pub struct Say;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SayConf {
    body: String,
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    200
}

/// The configured filter: the answer, built once.
struct SayFilter(Stop);

impl Plugin for Say {
    fn name(&self) -> &str {
        "say"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: SayConf = parse_conf(conf)?;
        let status = StatusCode::from_u16(conf.status)
            .ok()
            .filter(|s| s.as_u16() >= 200)
            .ok_or_else(|| {
                ConfError::new(format!(
                    "status {} is not a final HTTP status (200-999)",
                    conf.status
                ))
            })?;
        let mut stop = Stop::new(status).body(conf.body);
        for (name, value) in conf.headers {
            stop = stop.header(name, value);
        }
        // Refused now, not on every call: a header that is not HTTP.
        if let Some(invalid) = stop.invalid() {
            return Err(ConfError::new(format!("`headers`: {invalid}")));
        }
        Ok(Box::new(SayFilter(stop)))
    }
}

#[async_trait]
impl Filter for SayFilter {
    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        req.stop(self.0.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::{TestError, TestRequest};
    use runner_sdk::{Registry, RequestOutcome};

    #[tokio::test]
    async fn stops_with_the_configured_answer() {
        let plugins = Registry::new().plugin(Say);
        let conf = r#"{"body":"hello","status":418,"headers":{"x-a":"1"}}"#;
        let outcome = TestRequest::get("/")
            .run(&plugins, &[("say", conf)])
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RequestOutcome::Stop(
                Stop::new(StatusCode::IM_A_TEAPOT)
                    .header("x-a", "1")
                    .body("hello")
            )
        );
    }

    #[tokio::test]
    async fn a_header_that_is_not_http_is_refused_at_configure() {
        let plugins = Registry::new().plugin(Say);
        let conf = r#"{"body":"hi","headers":{"x a":"1"}}"#;
        let err = TestRequest::get("/")
            .run(&plugins, &[("say", conf)])
            .await
            .unwrap_err();
        assert!(matches!(err, TestError::Prepare(_)), "{err}");
        assert!(
            err.to_string()
                .contains(r#"`headers`: invalid header name "x a""#),
            "{err}"
        );
    }

    #[tokio::test]
    async fn status_defaults_to_200() {
        let plugins = Registry::new().plugin(Say);
        let outcome = TestRequest::get("/")
            .run(&plugins, &[("say", r#"{"body":"hi"}"#)])
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RequestOutcome::Stop(Stop::new(StatusCode::OK).body("hi"))
        );
    }

    #[tokio::test]
    async fn bad_confs_are_refused_with_the_plugin_name() {
        let plugins = Registry::new().plugin(Say);
        for conf in [
            r#"{}"#,
            r#"{"body":1}"#,
            r#"{"body":"x","status":"200"}"#,
            "not json",
            r#"{"body":"x","status":42}"#,
        ] {
            let err = TestRequest::get("/")
                .run(&plugins, &[("say", conf)])
                .await
                .unwrap_err();
            assert!(matches!(&err, TestError::Prepare(_)), "{conf}: {err}");
            assert!(err.to_string().contains("plugin \"say\""), "{err}");
        }
    }
}
