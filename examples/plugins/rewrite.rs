//! `rewrite`: changes the request's path, headers and query arguments, and
//! adds response headers.
//!
//! Conf (all optional): `{"path": string, "headers": {name: string or null},
//! "args": {name: string or null}, "resp_headers": {name: value}}`; null deletes.

use runner_sdk::{async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The `rewrite` plugin.
pub struct RewritePlugin;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteConf {
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, Option<String>>,
    #[serde(default)]
    args: BTreeMap<String, Option<String>>,
    #[serde(default)]
    resp_headers: BTreeMap<String, String>,
}

impl Plugin for RewritePlugin {
    fn name(&self) -> &str {
        "rewrite"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: RewriteConf = parse_conf(conf)?;
        if let Some(path) = &conf.path {
            if !path.starts_with('/') {
                return Err(ConfError::new(format!("path {path:?} must start with `/`")));
            }
        }
        Ok(Box::new(conf))
    }
}

#[async_trait]
impl Filter for RewriteConf {
    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        if let Some(path) = &self.path {
            req.set_path(path.as_str());
        }
        for (name, value) in &self.headers {
            match value {
                Some(value) => req.set_header(name, value.as_str()),
                None => req.remove_header(name),
            }
        }
        for (name, value) in &self.args {
            match value {
                Some(value) => req.set_arg(name, value.as_str()),
                None => req.remove_arg(name),
            }
        }
        for (name, value) in &self.resp_headers {
            req.set_resp_header(name, value.as_str());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::TestRequest;
    use runner_sdk::{Registry, RequestOutcome, Rewrite};

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[tokio::test]
    async fn every_kind_of_change() {
        let plugins = Registry::new().plugin(RewritePlugin);
        let conf = r#"{"path":"/new","headers":{"x-del":null,"x-set":"v"},
                       "args":{"a":"1","gone":null},"resp_headers":{"x-r":"r"}}"#;
        let outcome = TestRequest::get("/old")
            .run(&plugins, &[("rewrite", conf)])
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RequestOutcome::Rewrite(Rewrite {
                path: Some(s("/new")),
                headers: vec![(s("x-del"), None), (s("x-set"), Some(s("v")))],
                args: vec![(s("a"), Some(s("1"))), (s("gone"), None)],
                resp_headers: vec![(s("x-r"), s("r"))],
                body: None,
            })
        );
    }

    #[tokio::test]
    async fn an_empty_conf_changes_nothing() {
        let plugins = Registry::new().plugin(RewritePlugin);
        let outcome = TestRequest::get("/")
            .run(&plugins, &[("rewrite", "{}")])
            .await
            .unwrap();
        assert_eq!(outcome, RequestOutcome::Continue);
    }

    #[tokio::test]
    async fn bad_confs_are_refused_with_the_plugin_name() {
        let plugins = Registry::new().plugin(RewritePlugin);
        for conf in [
            r#"{"path":1}"#,
            r#"{"headers":{"a":1}}"#,
            r#"{"path":"relative"}"#,
            r#"{"nope":1}"#,
            "[",
        ] {
            let err = TestRequest::get("/")
                .run(&plugins, &[("rewrite", conf)])
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("plugin \"rewrite\""),
                "{conf}: {err}"
            );
        }
    }
}
