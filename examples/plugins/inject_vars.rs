//! `inject-vars`: adds one request header per variable that has a value, e.g.
//! `x-var-remote_addr: 127.0.0.1`.
//!
//! Conf: `{"vars": [names], "header_prefix": string (default "x-var-"),
//! "prefetch": bool (default true)}`. With `prefetch` the variables are
//! declared as needs and arrive with the call; without it each one costs an
//! EXTRA_INFO round trip (kept to measure the difference).

use runner_sdk::{async_trait, parse_conf, ConfError, Filter, Needs, Plugin, PluginError, Request};
use serde::Deserialize;

/// The `inject-vars` plugin.
pub struct InjectVars;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectVarsConf {
    vars: Vec<String>,
    #[serde(default = "default_prefix")]
    header_prefix: String,
    #[serde(default = "default_prefetch")]
    prefetch: bool,
}

fn default_prefix() -> String {
    "x-var-".to_owned()
}

fn default_prefetch() -> bool {
    true
}

impl Plugin for InjectVars {
    fn name(&self) -> &str {
        "inject-vars"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: InjectVarsConf = parse_conf(conf)?;
        if conf.vars.iter().any(String::is_empty) {
            return Err(ConfError::new("`vars` must not contain an empty name"));
        }
        Ok(Box::new(conf))
    }
}

#[async_trait]
impl Filter for InjectVarsConf {
    fn needs(&self) -> Needs {
        Needs {
            vars: if self.prefetch {
                self.vars.clone()
            } else {
                Vec::new()
            },
            ..Needs::default()
        }
    }

    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        for name in &self.vars {
            if let Some(value) = req.var_str(name).await? {
                req.set_header(format!("{}{name}", self.header_prefix), value);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::TestRequest;
    use runner_sdk::{Chain, Registry, RequestOutcome};

    #[tokio::test]
    async fn adds_a_header_per_known_var_in_one_round_trip() {
        let plugins = Registry::new().plugin(InjectVars);
        let conf = r#"{"vars":["remote_addr","nope"]}"#;
        let chain = Chain::prepare(&plugins, [("inject-vars", conf)]).unwrap();
        let req = TestRequest::get("/").var("remote_addr", "10.1.2.3");
        let (outcome, fetched) = req.run_chain(&chain).await.unwrap();
        let RequestOutcome::Rewrite(rw) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            rw.headers,
            vec![(
                "x-var-remote_addr".to_string(),
                Some("10.1.2.3".to_string())
            )]
        );
        assert!(fetched.is_empty(), "{fetched:?}");
    }

    #[tokio::test]
    async fn without_prefetch_each_var_is_fetched_once() {
        let plugins = Registry::new().plugin(InjectVars);
        let conf = r#"{"vars":["a","b"],"prefetch":false,"header_prefix":"x-"}"#;
        let chain = Chain::prepare(&plugins, [("inject-vars", conf)]).unwrap();
        let (outcome, fetched) = TestRequest::get("/")
            .var("a", "1")
            .run_chain(&chain)
            .await
            .unwrap();
        assert_eq!(fetched, vec!["a".to_string(), "b".to_string()]);
        let RequestOutcome::Rewrite(rw) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(rw.headers, vec![("x-a".to_string(), Some("1".to_string()))]);
    }

    #[tokio::test]
    async fn bad_confs_are_refused_with_the_plugin_name() {
        let plugins = Registry::new().plugin(InjectVars);
        for conf in ["{}", r#"{"vars":"a"}"#, r#"{"vars":[""]}"#, "x"] {
            let err = TestRequest::get("/")
                .run(&plugins, &[("inject-vars", conf)])
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("plugin \"inject-vars\""),
                "{conf}: {err}"
            );
        }
    }
}
