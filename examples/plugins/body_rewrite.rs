//! `body-rewrite`: replaces the request body (request phase) and/or the
//! upstream's body (response phase).
//!
//! Conf: `{"request": string, "response": string}`, either optional.

use runner_sdk::{
    async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request, Response,
};
use serde::Deserialize;

/// The `body-rewrite` plugin.
pub struct BodyRewrite;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyRewriteConf {
    request: Option<String>,
    response: Option<String>,
}

impl Plugin for BodyRewrite {
    fn name(&self) -> &str {
        "body-rewrite"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: BodyRewriteConf = parse_conf(conf)?;
        Ok(Box::new(conf))
    }
}

#[async_trait]
impl Filter for BodyRewriteConf {
    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        if let Some(body) = &self.request {
            req.set_body(body.as_bytes());
        }
        Ok(())
    }

    async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
        if let Some(body) = &self.response {
            resp.set_body(body.as_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::{TestRequest, TestResponse};
    use runner_sdk::{Registry, RequestOutcome, StatusCode};

    #[tokio::test]
    async fn replaces_either_body() {
        let plugins = Registry::new().plugin(BodyRewrite);
        let conf = r#"{"request":"new request","response":"new response"}"#;
        let RequestOutcome::Rewrite(rw) = TestRequest::post("/")
            .body("old")
            .run(&plugins, &[("body-rewrite", conf)])
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(rw.body.as_deref(), Some(&b"new request"[..]));
        let out = TestResponse::new(StatusCode::OK)
            .body("old")
            .run(&plugins, &[("body-rewrite", conf)])
            .await
            .unwrap();
        assert_eq!(out.body.as_deref(), Some(&b"new response"[..]));
        assert_eq!((out.status, out.headers), (None, None));
    }

    #[tokio::test]
    async fn an_empty_conf_changes_nothing() {
        let plugins = Registry::new().plugin(BodyRewrite);
        let out = TestRequest::post("/")
            .run(&plugins, &[("body-rewrite", "{}")])
            .await
            .unwrap();
        assert_eq!(out, RequestOutcome::Continue);
        let err = TestRequest::post("/")
            .run(&plugins, &[("body-rewrite", r#"{"request":1}"#)])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("plugin \"body-rewrite\""));
    }
}
