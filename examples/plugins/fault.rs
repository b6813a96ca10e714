//! `fault`: fails on purpose, to see how a runner and a gateway handle a
//! failing plugin (the call fails, nothing else does).
//!
//! Conf: `{"mode": "error" | "panic"}`.

use runner_sdk::{async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request};
use serde::Deserialize;

/// The `fault` plugin.
pub struct Fault;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Error,
    Panic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultConf {
    mode: Mode,
}

impl Plugin for Fault {
    fn name(&self) -> &str {
        "fault"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: FaultConf = parse_conf(conf)?;
        Ok(Box::new(conf))
    }
}

#[async_trait]
impl Filter for FaultConf {
    async fn request(&self, _req: &mut Request<'_>) -> Result<(), PluginError> {
        match self.mode {
            Mode::Error => Err("failing on purpose".into()),
            Mode::Panic => panic!("panicking on purpose"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::{TestError, TestRequest};
    use runner_sdk::{CallError, Registry};

    #[tokio::test]
    async fn errors_and_panics_fail_the_call() {
        let plugins = Registry::new().with(Fault);
        let err = TestRequest::get("/")
            .run(&plugins, &[("fault", r#"{"mode":"error"}"#)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, TestError::Call(CallError::Failed { .. })),
            "{err}"
        );
        let err = TestRequest::get("/")
            .run(&plugins, &[("fault", r#"{"mode":"panic"}"#)])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TestError::Call(CallError::Panicked { message, .. }) if message == "panicking on purpose"),
            "{err}"
        );
    }
}
