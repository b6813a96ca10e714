//! Drive a plugin, or a whole chain, in-process: no socket, no runner, no
//! gateway. Build a request (or a response), run a chain prepared exactly as
//! the runner prepares it, and assert on the outcome.
//!
//! ```
//! # use runner_sdk::{async_trait, parse_conf, ConfError, Filter, Plugin, PluginError, Request};
//! # struct Hello;
//! # #[derive(serde::Deserialize)] struct HelloConf { name: String }
//! # impl Plugin for Hello {
//! #     fn name(&self) -> &str { "hello" }
//! #     fn configure(&self, c: &str) -> Result<Box<dyn Filter>, ConfError> {
//! #         Ok(Box::new(parse_conf::<HelloConf>(c)?)) } }
//! # #[async_trait] impl Filter for HelloConf {
//! #     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
//! #         req.set_header("x-hello", &self.name); Ok(()) } }
//! use runner_sdk::testing::TestRequest;
//! use runner_sdk::{Registry, RequestOutcome};
//!
//! # futures::executor::block_on(async {
//! let plugins = Registry::new().plugin(Hello);
//! let outcome = TestRequest::get("/hi")
//!     .run(&plugins, &[("hello", r#"{"name":"ann"}"#)])
//!     .await
//!     .unwrap();
//! let RequestOutcome::Rewrite(rewrite) = outcome else { panic!("{outcome:?}") };
//! assert_eq!(rewrite.headers, vec![("x-hello".to_string(), Some("ann".to_string()))]);
//! # });
//! ```

use crate::chain::{CallError, Chain, PrepareError, Registry};
use crate::info::InfoSource;
use crate::request::Request;
use crate::response::Response;
use crate::{InfoKey, IntoHeaderName, IntoHeaderValue, IntoStatus, PluginError};
use crate::{RequestOutcome, RequestParts, ResponseOutcome, ResponseParts};
use async_trait::async_trait;
use http::{Method, StatusCode};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

/// Why a test run did not produce an outcome. Its text is what the runner
/// would report to the gateway (and log).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The chain's configuration was refused (as `PREPARE_CONF` would be).
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// A filter failed or panicked (as a call answered `serviceUnavailable`).
    #[error(transparent)]
    Call(#[from] CallError),
}

/// The gateway's side of a test: variables and bodies by name, recording
/// which ones the filters fetched lazily (the ones a real call would cost a
/// round trip for).
#[derive(Debug, Default, Clone)]
struct MapSource {
    values: HashMap<String, Vec<u8>>,
    fetched: Vec<String>,
}

#[async_trait]
impl InfoSource for MapSource {
    async fn fetch(&mut self, key: InfoKey<'_>) -> Result<Option<bytes::Bytes>, PluginError> {
        let name = key.prefetch_name();
        self.fetched.push(name.to_owned());
        Ok(self.values.get(name).cloned().map(bytes::Bytes::from))
    }
}

impl MapSource {
    /// What a real gateway would send up front for `chain`.
    fn prefetch(&self, chain: &Chain) -> Vec<(String, Option<Vec<u8>>)> {
        let needs = chain.needs();
        let mut names: Vec<&str> = needs.vars.iter().map(String::as_str).collect();
        if needs.request_body {
            names.push("$request_body");
        }
        if needs.response_body {
            names.push("$response_body");
        }
        names
            .into_iter()
            .map(|n| (n.to_owned(), self.values.get(n).cloned()))
            .collect()
    }
}

/// A test's header, checked as a filter's would be.
fn test_header(name: impl IntoHeaderName, value: impl IntoHeaderValue) -> (String, String) {
    let checked = name
        .into_header_name()
        .and_then(|name| Ok((name, value.into_header_value()?)));
    checked.unwrap_or_else(|e| panic!("test header: {e}"))
}

/// Borrows a prefetched list in the shape the views take.
fn borrow(list: &[(String, Option<Vec<u8>>)]) -> Vec<(&str, Option<&[u8]>)> {
    list.iter()
        .map(|(n, v)| (n.as_str(), v.as_deref()))
        .collect()
}

/// A request to run through a chain, built like an HTTP request.
#[derive(Debug, Clone)]
pub struct TestRequest {
    id: u32,
    src_ip: IpAddr,
    method: Method,
    path: String,
    args: Vec<(String, Option<String>)>,
    headers: Vec<(String, String)>,
    source: MapSource,
}

impl TestRequest {
    /// A request with this method and path, from 127.0.0.1, id 1.
    pub fn new(method: Method, path: &str) -> Self {
        TestRequest {
            id: 1,
            src_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            method,
            path: path.to_owned(),
            args: Vec::new(),
            headers: Vec::new(),
            source: MapSource::default(),
        }
    }

    /// A GET request.
    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    /// A POST request.
    pub fn post(path: &str) -> Self {
        Self::new(Method::POST, path)
    }

    /// Sets the client's address.
    pub fn src_ip(mut self, ip: IpAddr) -> Self {
        self.src_ip = ip;
        self
    }

    /// Adds a header value (the name is lower-cased, as the gateway does).
    /// Names and values as for [`Request::set_header`]: strings, `http`
    /// types or (values) integers.
    ///
    /// # Panics
    /// On a name or value that is not valid HTTP: the test itself is wrong.
    pub fn header(mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) -> Self {
        self.headers.push(test_header(name, value));
        self
    }

    /// Adds a query argument value; `None` for an argument without `=`.
    pub fn arg(mut self, name: &str, value: Option<&str>) -> Self {
        self.args.push((name.to_owned(), value.map(str::to_owned)));
        self
    }

    /// Sets a variable the gateway knows (`remote_addr`, `http_host`...).
    pub fn var(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.source.values.insert(name.to_owned(), value.into());
        self
    }

    /// Sets the request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.source
            .values
            .insert("$request_body".to_owned(), body.into());
        self
    }

    /// Prepares `conf` (`(plugin name, JSON configuration)` entries, in
    /// chain order) with `plugins` as the runner would and runs the request
    /// phase. The outcome is what the runner would answer: see
    /// [`RequestOutcome`], [`crate::Stop`] and [`crate::Rewrite`] for their
    /// fields.
    ///
    /// ```
    /// # use runner_sdk::{async_trait, ConfError, Filter, Plugin, PluginError, Request};
    /// # struct Gate;
    /// # impl Plugin for Gate {
    /// #     fn name(&self) -> &str { "gate" }
    /// #     fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> { Ok(Box::new(Gate)) }
    /// # }
    /// # #[async_trait]
    /// # impl Filter for Gate {
    /// #     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
    /// #         match req.header("x-key") {
    /// #             None => req.stop(Stop::new(401).body("no key")),
    /// #             Some("bad") => return Err("bad key".into()),
    /// #             Some(_) => req.set_header("x-user", "ann"),
    /// #         }
    /// #         Ok(())
    /// #     }
    /// # }
    /// use runner_sdk::testing::{TestError, TestRequest};
    /// use runner_sdk::{Registry, RequestOutcome, Stop};
    ///
    /// # futures::executor::block_on(async {
    /// // `gate` stops with 401 without `x-key`, fails on `x-key: bad`, and
    /// // otherwise sets `x-user`.
    /// let plugins = Registry::new().plugin(Gate);
    /// let conf = [("gate", "{}")];
    ///
    /// let outcome = TestRequest::get("/").run(&plugins, &conf).await.unwrap();
    /// assert_eq!(outcome, RequestOutcome::Stop(Stop::new(401).body("no key")));
    ///
    /// let outcome = TestRequest::get("/").header("x-key", "k").run(&plugins, &conf).await.unwrap();
    /// let RequestOutcome::Rewrite(rewrite) = outcome else { panic!("{outcome:?}") };
    /// assert_eq!(rewrite.headers, vec![("x-user".to_string(), Some("ann".to_string()))]);
    /// assert_eq!(rewrite.path, None);
    ///
    /// let err = TestRequest::get("/").header("x-key", "bad").run(&plugins, &conf).await.unwrap_err();
    /// assert!(matches!(err, TestError::Call(_)));
    /// assert_eq!(err.to_string(), "plugin `gate` failed: bad key");
    ///
    /// let err = TestRequest::get("/").run(&plugins, &[("nope", "{}")]).await.unwrap_err();
    /// assert_eq!(err.to_string(), r#"conf[0]: unknown plugin "nope" (this runner has: gate)"#);
    /// # });
    /// ```
    ///
    /// # Errors
    /// [`TestError::Prepare`]: the chain was refused (unknown plugin, bad
    /// configuration); [`TestError::Call`]: a filter failed, panicked, or
    /// gave a value that is not valid HTTP.
    pub async fn run(
        &self,
        plugins: &Registry,
        conf: &[(&str, &str)],
    ) -> Result<RequestOutcome, TestError> {
        let chain = Chain::prepare(plugins, conf.iter().copied())?;
        Ok(self.run_chain(&chain).await?.0)
    }

    /// Runs the request phase of a prepared chain. Declared needs are sent up
    /// front as a real gateway does; the second value lists what the filters
    /// fetched lazily (each would be one more round trip), by name: a
    /// variable's name, `$request_body` or `$response_body`. An empty list
    /// means [`crate::Filter::needs`] declared everything the filters read.
    ///
    /// ```
    /// # use runner_sdk::{async_trait, ConfError, Filter, Plugin, PluginError, Request};
    /// # struct Addr;
    /// # impl Plugin for Addr {
    /// #     fn name(&self) -> &str { "addr" }
    /// #     fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> { Ok(Box::new(Addr)) }
    /// # }
    /// # #[async_trait]
    /// # impl Filter for Addr {
    /// #     async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
    /// #         let addr = req.var_str("remote_addr").await?.unwrap_or_default();
    /// #         req.set_header("x-addr", addr);
    /// #         Ok(())
    /// #     }
    /// # }
    /// use runner_sdk::testing::TestRequest;
    /// use runner_sdk::{Chain, Registry};
    ///
    /// # futures::executor::block_on(async {
    /// // `addr` reads `remote_addr` without declaring it in `needs()`.
    /// let plugins = Registry::new().plugin(Addr);
    /// let chain = Chain::prepare(&plugins, [("addr", "{}")]).unwrap();
    /// let (_, fetched) = TestRequest::get("/").var("remote_addr", "10.0.0.1").run_chain(&chain).await.unwrap();
    /// assert_eq!(fetched, ["remote_addr"]); // one more round trip in each call
    /// # });
    /// ```
    ///
    /// # Errors
    /// A filter failed or panicked.
    pub async fn run_chain(
        &self,
        chain: &Chain,
    ) -> Result<(RequestOutcome, Vec<String>), CallError> {
        let mut source = self.source.clone();
        let prefetched = self.source.prefetch(chain);
        let parts = RequestParts {
            id: self.id,
            src_ip: self.src_ip,
            method: self.method.clone(),
            path: &self.path,
            args: self
                .args
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_deref()))
                .collect(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            extra_info: borrow(&prefetched),
        };
        let mut req = Request::new(parts, &mut source);
        chain.run_request(&mut req).await?;
        let outcome = req.into_outcome();
        Ok((outcome, source.fetched))
    }
}

/// An upstream answer to run through a chain's response phase.
#[derive(Debug, Clone)]
pub struct TestResponse {
    status: StatusCode,
    headers: Vec<(String, String)>,
    source: MapSource,
}

impl TestResponse {
    /// An answer with this status (an integer or a `StatusCode`), no headers
    /// and no body.
    ///
    /// # Panics
    /// On an integer that is not an HTTP status (outside 100..=999): the test
    /// itself is wrong.
    pub fn new(status: impl IntoStatus) -> Self {
        TestResponse {
            status: status
                .into_status()
                .unwrap_or_else(|e| panic!("TestResponse::new: {e}")),
            headers: Vec::new(),
            source: MapSource::default(),
        }
    }

    /// Adds a header value, as for [`TestRequest::header`].
    ///
    /// # Panics
    /// On a name or value that is not valid HTTP: the test itself is wrong.
    pub fn header(mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) -> Self {
        self.headers.push(test_header(name, value));
        self
    }

    /// Sets the upstream's body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.source
            .values
            .insert("$response_body".to_owned(), body.into());
        self
    }

    /// Sets a variable the gateway knows.
    pub fn var(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.source.values.insert(name.to_owned(), value.into());
        self
    }

    /// Prepares `conf` with `plugins` as the runner would and runs the
    /// response phase. See [`ResponseOutcome`] for the outcome's fields.
    ///
    /// ```
    /// # use runner_sdk::{async_trait, ConfError, Filter, Plugin, PluginError, Response};
    /// # struct Hide;
    /// # impl Plugin for Hide {
    /// #     fn name(&self) -> &str { "hide" }
    /// #     fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> { Ok(Box::new(Hide)) }
    /// # }
    /// # #[async_trait]
    /// # impl Filter for Hide {
    /// #     async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
    /// #         resp.remove_header("server");
    /// #         if resp.status() == 500 { resp.set_status(502); }
    /// #         Ok(())
    /// #     }
    /// # }
    /// use runner_sdk::testing::TestResponse;
    /// use runner_sdk::{Registry, StatusCode};
    ///
    /// # futures::executor::block_on(async {
    /// // `hide` removes `server`, and turns a 500 into a 502.
    /// let plugins = Registry::new().plugin(Hide);
    /// let upstream = TestResponse::new(500).header("server", "up").header("x-a", "1");
    /// let outcome = upstream.run(&plugins, &[("hide", "{}")]).await.unwrap();
    /// assert_eq!(outcome.status, Some(StatusCode::BAD_GATEWAY));
    /// // The whole new list: what no filter touched is in it too.
    /// assert_eq!(outcome.headers, Some(vec![("x-a".to_string(), "1".to_string())]));
    /// assert_eq!(outcome.body, None); // the upstream's body goes unchanged
    /// # });
    /// ```
    ///
    /// # Errors
    /// As for [`TestRequest::run`].
    pub async fn run(
        &self,
        plugins: &Registry,
        conf: &[(&str, &str)],
    ) -> Result<ResponseOutcome, TestError> {
        let chain = Chain::prepare(plugins, conf.iter().copied())?;
        Ok(self.run_chain(&chain).await?.0)
    }

    /// Runs the response phase of a prepared chain; see
    /// [`TestRequest::run_chain`] for the second value.
    ///
    /// # Errors
    /// A filter failed or panicked.
    pub async fn run_chain(
        &self,
        chain: &Chain,
    ) -> Result<(ResponseOutcome, Vec<String>), CallError> {
        let mut source = self.source.clone();
        let prefetched = self.source.prefetch(chain);
        let parts = ResponseParts {
            id: 1,
            status: self.status,
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            extra_info: borrow(&prefetched),
        };
        let mut resp = Response::new(parts, &mut source);
        chain.run_response(&mut resp).await?;
        let outcome = resp.into_outcome();
        Ok((outcome, source.fetched))
    }
}
