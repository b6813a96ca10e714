//! my-plugins: an extplug runner with one plugin, `deny-header`.
//!
//! The gateway starts this binary (`ext-plugin.cmd` in gateway.json) and
//! calls the plugins that a route names in its `conf` list. Add a plugin:
//! write a `Plugin` (its name and its configuration) and a `Filter` (what
//! it does to each request), register it in `main`, test it with
//! `runner_sdk::testing`.

use runner_sdk::{
    async_trait, parse_conf, tracing, ConfError, Filter, IntoHeaderName, Plugin, PluginError,
    Request, Runner, Stop,
};
use serde::Deserialize;

/// `deny-header`: answers 403 to every request that has a given header.
///
/// Configuration: `{"header": "x-block"}`, and optionally the answer's body:
/// `{"header": "x-block", "body": "blocked\n"}`.
struct DenyHeader;

/// One route's configuration of `deny-header`, and the filter it runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyHeaderConf {
    /// The header that gets a request denied (any case).
    header: String,
    /// The body of the 403 answer.
    #[serde(default = "default_body")]
    body: String,
}

fn default_body() -> String {
    "denied\n".to_owned()
}

impl Plugin for DenyHeader {
    fn name(&self) -> &str {
        "deny-header"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: DenyHeaderConf = parse_conf(conf)?;
        // Refuse a name no request can have now, not on every call.
        conf.header
            .as_str()
            .into_header_name()
            .map_err(|e| ConfError::new(format!("`header`: {e}")))?;
        Ok(Box::new(conf))
    }
}

#[async_trait]
impl Filter for DenyHeaderConf {
    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        if req.header(&self.header).is_some() {
            // `tracing`, re-exported by the SDK: the runner's log (stderr,
            // `RUST_LOG`), relayed into the gateway's log.
            tracing::info!(header = %self.header, path = req.path(), "request denied");
            req.stop(
                Stop::new(403)
                    .header("x-denied-by", "deny-header")
                    .body(self.body.as_str()),
            );
        }
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    Runner::new().plugin(DenyHeader).run()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::TestRequest;
    use runner_sdk::{Registry, RequestOutcome};

    const CONF: &str = r#"{"header": "x-block"}"#;

    #[tokio::test]
    async fn a_request_with_the_header_gets_403() {
        let plugins = Registry::new().plugin(DenyHeader);
        let outcome = TestRequest::get("/anything")
            .header("X-Block", "yes")
            .run(&plugins, &[("deny-header", CONF)])
            .await
            .unwrap();
        let RequestOutcome::Stop(stop) = outcome else {
            panic!("not stopped: {outcome:?}")
        };
        assert_eq!(stop.status, 403);
        assert_eq!(
            stop.headers,
            vec![("x-denied-by".to_string(), "deny-header".to_string())]
        );
        assert_eq!(stop.body, b"denied\n");
    }

    #[tokio::test]
    async fn a_request_without_it_goes_on_unchanged() {
        let plugins = Registry::new().plugin(DenyHeader);
        let outcome = TestRequest::get("/anything")
            .header("x-other", "yes")
            .run(&plugins, &[("deny-header", CONF)])
            .await
            .unwrap();
        assert_eq!(outcome, RequestOutcome::Continue);
    }

    #[tokio::test]
    async fn a_bad_configuration_is_refused_with_the_reason() {
        let plugins = Registry::new().plugin(DenyHeader);
        let err = TestRequest::get("/")
            .run(&plugins, &[("deny-header", r#"{"header": "x block"}"#)])
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"conf[0]: plugin "deny-header": `header`: invalid header name "x block": not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"#
        );
    }
}
