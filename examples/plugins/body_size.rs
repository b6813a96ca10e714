//! `body-size`: reads the request body and adds request header `x-body-size`
//! with its length in bytes; in the response phase, reads the upstream's body
//! and adds response header `x-body-size` the same way. Reading a body is not
//! a change; adding the header is.
//!
//! Conf: `{}`. Declares both bodies as needs, so the gateway sends them with
//! the call (no extra round trip).

use runner_sdk::{
    async_trait, parse_conf, ConfError, Filter, Needs, Plugin, PluginError, Request, Response,
};
use serde::Deserialize;

/// The `body-size` plugin.
pub struct BodySize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodySizeConf {}

impl Plugin for BodySize {
    fn name(&self) -> &str {
        "body-size"
    }

    fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
        let conf: BodySizeConf = parse_conf(conf)?;
        Ok(Box::new(conf))
    }
}

#[async_trait]
impl Filter for BodySizeConf {
    fn needs(&self) -> Needs {
        Needs {
            request_body: true,
            response_body: true,
            ..Needs::default()
        }
    }

    async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
        let len = req.body().await?.map_or(0, <[u8]>::len);
        req.set_header("x-body-size", len.to_string());
        Ok(())
    }

    async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
        let len = resp.body().await?.map_or(0, <[u8]>::len);
        resp.set_header("x-body-size", len.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_sdk::testing::TestRequest;
    use runner_sdk::{Chain, Registry, RequestOutcome};

    #[tokio::test]
    async fn adds_the_length_and_needs_no_round_trip() {
        let plugins = Registry::new().plugin(BodySize);
        let chain = Chain::prepare(&plugins, [("body-size", "{}")]).unwrap();
        let (outcome, fetched) = TestRequest::post("/")
            .body("hello")
            .run_chain(&chain)
            .await
            .unwrap();
        let RequestOutcome::Rewrite(rw) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            rw.headers,
            vec![("x-body-size".to_string(), Some("5".to_string()))]
        );
        assert_eq!(rw.body, None, "reading the body is not a change");
        assert!(fetched.is_empty(), "the body was prefetched: {fetched:?}");
    }

    #[tokio::test]
    async fn the_response_body_too() {
        let plugins = Registry::new().plugin(BodySize);
        let resp = runner_sdk::testing::TestResponse::new(runner_sdk::StatusCode::OK).body("abc");
        let out = resp.run(&plugins, &[("body-size", "{}")]).await.unwrap();
        assert_eq!(
            out.headers,
            Some(vec![("x-body-size".to_string(), "3".to_string())])
        );
        assert_eq!(out.body, None);
    }

    #[tokio::test]
    async fn no_body_is_zero() {
        let plugins = Registry::new().plugin(BodySize);
        let outcome = TestRequest::get("/")
            .run(&plugins, &[("body-size", "{}")])
            .await
            .unwrap();
        let RequestOutcome::Rewrite(rw) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            rw.headers,
            vec![("x-body-size".to_string(), Some("0".to_string()))]
        );
    }
}
