//! `fault`: fails on purpose, to see how a runner and a gateway handle a
//! failing plugin (the call fails, nothing else does).
//!
//! Conf: `{"mode": "error" | "panic" | "configure-panic" | "needs-panic" |
//! "stop-status" | "response-status", "status": 700}`:
//! - `error`, `panic`: the request phase fails or panics;
//! - `configure-panic`, `needs-panic`: panics while the chain is prepared;
//! - `stop-status`, `response-status`: answers with `status` (default 700),
//!   which the runner refuses unless it is in 200..=599.

use runner_sdk::{
    async_trait, parse_conf, ConfError, Filter, Needs, Plugin, PluginError, Request, Response, Stop,
};
use serde::Deserialize;

/// The `fault` plugin.
pub struct Fault;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Error,
    Panic,
    #[serde(rename = "configure-panic")]
    ConfigurePanic,
    #[serde(rename = "needs-panic")]
    NeedsPanic,
    #[serde(rename = "stop-status")]
    StopStatus,
    #[serde(rename = "response-status")]
    ResponseStatus,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultConf {
    mode: Mode,
    #[serde(default = "default_status")]
    status: u16,
}

fn default_status() -> u16 {
    700
}

impl FaultConf {
    /// The configured status; any number `http` accepts (100..=999).
    fn status(&self) -> Result<runner_sdk::StatusCode, PluginError> {
        Ok(runner_sdk::StatusCode::from_u16(self.status)?)
    }
}

impl Plugin for Fault {
    fn name(&self) -> &str {
        "fault"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: FaultConf = parse_conf(conf)?;
        if matches!(conf.mode, Mode::ConfigurePanic) {
            panic!("panicking in configure on purpose");
        }
        Ok(Box::new(conf))
    }
}

#[async_trait]
impl Filter for FaultConf {
    fn needs(&self) -> Needs {
        if matches!(self.mode, Mode::NeedsPanic) {
            panic!("panicking in needs on purpose");
        }
        Needs::default()
    }

    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        match self.mode {
            Mode::Error => Err("failing on purpose".into()),
            Mode::Panic => panic!("panicking on purpose"),
            Mode::StopStatus => {
                req.stop(Stop::new(self.status()?));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
        if matches!(self.mode, Mode::ResponseStatus) {
            resp.set_status(self.status()?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::{TestError, TestRequest};
    use runner_sdk::{CallError, Registry};

    #[tokio::test]
    async fn errors_and_panics_fail_the_call() {
        let plugins = Registry::new().plugin(Fault);
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

    #[tokio::test]
    async fn panics_while_preparing_and_bad_statuses_are_errors() {
        let plugins = Registry::new().plugin(Fault);
        for mode in ["configure-panic", "needs-panic"] {
            let conf = format!(r#"{{"mode":"{mode}"}}"#);
            let err = TestRequest::get("/")
                .run(&plugins, &[("fault", &conf)])
                .await
                .unwrap_err();
            assert!(matches!(err, TestError::Prepare(_)), "{err}");
        }
        let err = TestRequest::get("/")
            .run(
                &plugins,
                &[("fault", r#"{"mode":"stop-status","status":101}"#)],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                TestError::Call(CallError::BadStatus { status: 101, .. })
            ),
            "{err}"
        );
    }
}
