//! Plugin registry and chains: a route phase's configured filters, in order,
//! and how they run for one call.

use crate::request::Request;
use crate::response::Response;
use crate::{Filter, InvalidValue, Needs, Plugin, PluginError, ALLOWED_STATUS};
use futures::FutureExt;
use http::StatusCode;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The plugins a runner offers, by name.
///
/// ```
/// # use runner_sdk::{ConfError, Filter, Plugin};
/// # struct Named(&'static str);
/// # impl Plugin for Named {
/// #     fn name(&self) -> &str { self.0 }
/// #     fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> { unimplemented!() }
/// # }
/// use runner_sdk::Registry;
///
/// let plugins = Registry::new().plugin(Named("say")).plugin(Named("deny-header"));
/// assert_eq!(plugins.names(), ["deny-header", "say"]);
/// assert!(plugins.get("say").is_some());
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    plugins: HashMap<String, Arc<dyn Plugin>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `plugin` under its [`Plugin::name`], replacing one of the same
    /// name: the same verb as [`Runner::plugin`](crate::Runner::plugin), so
    /// a test's registry and `main` read alike.
    ///
    /// ```
    /// # use runner_sdk::{ConfError, Filter, Plugin};
    /// # struct Nop;
    /// # impl Plugin for Nop {
    /// #     fn name(&self) -> &str { "nop" }
    /// #     fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> { unimplemented!() }
    /// # }
    /// use runner_sdk::{Registry, Runner};
    ///
    /// let plugins = Registry::new().plugin(Nop); // in a test
    /// let runner = Runner::new().plugin(Nop); // in `main`
    /// assert_eq!(plugins.names(), ["nop"]);
    /// # drop(runner);
    /// ```
    pub fn plugin(mut self, plugin: impl Plugin) -> Self {
        self.add(Arc::new(plugin));
        self
    }

    /// The same as [`Registry::plugin`] (its earlier name).
    pub fn with(self, plugin: impl Plugin) -> Self {
        self.plugin(plugin)
    }

    /// Adds a shared plugin under its [`Plugin::name`], replacing one of the same name.
    pub fn add(&mut self, plugin: Arc<dyn Plugin>) {
        self.plugins.insert(plugin.name().to_owned(), plugin);
    }

    /// The plugin named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.get(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Why a chain could not be prepared. Nothing is cached in either case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    /// No plugin of that name is registered.
    #[error("conf[{index}]: unknown plugin {name:?} (this runner has: {available})")]
    UnknownPlugin {
        /// The entry's position in the chain, from 0.
        index: usize,
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        available: String,
    },
    /// The plugin refused its configuration.
    #[error("conf[{index}]: plugin {plugin:?}: {reason}")]
    BadConf {
        /// The entry's position in the chain, from 0.
        index: usize,
        /// The plugin's name.
        plugin: String,
        /// What was wrong.
        reason: String,
    },
    /// The plugin panicked in [`Plugin::configure`] or [`Filter::needs`].
    #[error("conf[{index}]: plugin {plugin:?} panicked in {during}: {message}")]
    Panicked {
        /// The entry's position in the chain, from 0.
        index: usize,
        /// The plugin's name.
        plugin: String,
        /// `configure` or `needs`.
        during: &'static str,
        /// The panic's message, when it had one.
        message: String,
    },
}

/// Why a call failed. The runner answers it with `serviceUnavailable`.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// A filter returned an error.
    #[error("plugin `{plugin}` failed: {source}")]
    Failed {
        /// The plugin's name.
        plugin: String,
        /// Its error.
        source: PluginError,
    },
    /// A filter panicked.
    #[error("plugin `{plugin}` panicked: {message}")]
    Panicked {
        /// The plugin's name.
        plugin: String,
        /// The panic's message, when it had one.
        message: String,
    },
    /// A filter answered with a status the protocol does not allow: a stop
    /// or a response status must be in 200..=599 (1xx is not a final
    /// answer, and a gateway cannot send 600 and above).
    #[error("plugin `{plugin}` set {phase} status {status}, outside 200..=599")]
    BadStatus {
        /// The plugin's name.
        plugin: String,
        /// `stop` or `response`.
        phase: &'static str,
        /// The status it set.
        status: u16,
    },
}

/// A route phase's configured filters, in order, with their combined needs.
pub struct Chain {
    filters: Vec<(String, Box<dyn Filter>)>,
    needs: Needs,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.filters.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Chain")
            .field("plugins", &names)
            .field("needs", &self.needs)
            .finish()
    }
}

impl Chain {
    /// Configures each `(plugin name, JSON configuration)` entry, in order.
    ///
    /// ```
    /// # use runner_sdk::{ConfError, Filter, Plugin};
    /// # struct Nop;
    /// # impl Filter for Nop {}
    /// # impl Plugin for Nop {
    /// #     fn name(&self) -> &str { "nop" }
    /// #     fn configure(&self, _: &str) -> Result<Box<dyn Filter>, ConfError> { Ok(Box::new(Nop)) }
    /// # }
    /// use runner_sdk::{Chain, Registry};
    ///
    /// let plugins = Registry::new().plugin(Nop);
    /// let chain = Chain::prepare(&plugins, [("nop", "{}"), ("nop", "{}")]).unwrap();
    /// assert_eq!(chain.plugin_names().collect::<Vec<_>>(), ["nop", "nop"]);
    /// let err = Chain::prepare(&plugins, [("nop", "{}"), ("say", "{}")]).unwrap_err();
    /// assert_eq!(err.to_string(), r#"conf[1]: unknown plugin "say" (this runner has: nop)"#);
    /// ```
    ///
    /// # Errors
    /// The first entry whose plugin is unknown or refuses its configuration.
    pub fn prepare<'c>(
        registry: &Registry,
        conf: impl IntoIterator<Item = (&'c str, &'c str)>,
    ) -> Result<Chain, PrepareError> {
        let mut filters = Vec::new();
        let mut needs = Needs::default();
        for (index, (name, value)) in conf.into_iter().enumerate() {
            let plugin = registry
                .get(name)
                .ok_or_else(|| PrepareError::UnknownPlugin {
                    index,
                    name: name.to_owned(),
                    available: registry.names().join(", "),
                })?;
            // A panic here answers this PREPARE_CONF like a refused conf, not
            // the connection's end: plugin code is untrusted in the same way
            // as in a call.
            let panicked = |during, panic: Box<dyn std::any::Any + Send>| PrepareError::Panicked {
                index,
                plugin: name.to_owned(),
                during,
                message: panic_message(&*panic),
            };
            let filter = catch_unwind(AssertUnwindSafe(|| plugin.configure(value)))
                .map_err(|p| panicked("configure", p))?
                .map_err(|e| PrepareError::BadConf {
                    index,
                    plugin: name.to_owned(),
                    reason: e.0,
                })?;
            let filter_needs = catch_unwind(AssertUnwindSafe(|| filter.needs()))
                .map_err(|p| panicked("needs", p))?;
            needs.merge(filter_needs);
            filters.push((name.to_owned(), filter));
        }
        Ok(Chain { filters, needs })
    }

    /// What the chain's filters declared they will read.
    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// The plugin names, in order.
    pub fn plugin_names(&self) -> impl Iterator<Item = &str> {
        self.filters.iter().map(|(n, _)| n.as_str())
    }

    /// Runs the request phase of each filter in order, until one stops.
    /// The changes are in `req`; see [`Request::into_outcome`].
    ///
    /// # Errors
    /// The first filter that fails or panics; the filters after it do not run.
    pub async fn run_request(&self, req: &mut Request<'_>) -> Result<(), CallError> {
        for (name, filter) in &self.filters {
            let result = AssertUnwindSafe(filter.request(req)).catch_unwind().await;
            check(name, result)?;
            invalid(name, req.take_invalid())?;
            if let Some(status) = req.stop_status() {
                check_status(name, "stop", status)?;
                break;
            }
        }
        Ok(())
    }

    /// Runs the response phase of each filter in order.
    /// The changes are in `resp`; see [`Response::into_outcome`].
    ///
    /// # Errors
    /// The first filter that fails or panics; the filters after it do not run.
    pub async fn run_response(&self, resp: &mut Response<'_>) -> Result<(), CallError> {
        for (name, filter) in &self.filters {
            let result = AssertUnwindSafe(filter.response(resp)).catch_unwind().await;
            check(name, result)?;
            invalid(name, resp.take_invalid())?;
            if let Some(status) = resp.changed_status() {
                // Checked after each filter, so the error names the one that set it.
                check_status(name, "response", status)?;
            }
        }
        Ok(())
    }
}

/// Turns one filter's result (or panic) into the chain's.
fn check(
    plugin: &str,
    result: std::thread::Result<Result<(), PluginError>>,
) -> Result<(), CallError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(CallError::Failed {
            plugin: plugin.to_owned(),
            source,
        }),
        Err(panic) => Err(CallError::Panicked {
            plugin: plugin.to_owned(),
            message: panic_message(&*panic),
        }),
    }
}

/// Fails the call when `plugin` gave a value that is not valid HTTP
/// (`Stop::new(1000)`, a header name with a space...): the error names the
/// plugin and the value, as if the filter had returned it.
fn invalid(plugin: &str, invalid: Option<InvalidValue>) -> Result<(), CallError> {
    match invalid {
        None => Ok(()),
        Some(invalid) => Err(CallError::Failed {
            plugin: plugin.to_owned(),
            source: Box::new(invalid),
        }),
    }
}

/// Fails the call when `plugin` left a status outside [`ALLOWED_STATUS`].
fn check_status(plugin: &str, phase: &'static str, status: StatusCode) -> Result<(), CallError> {
    if ALLOWED_STATUS.contains(&status.as_u16()) {
        return Ok(());
    }
    Err(CallError::BadStatus {
        plugin: plugin.to_owned(),
        phase,
        status: status.as_u16(),
    })
}

/// A panic payload's message (`panic!` gives a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestError, TestRequest, TestResponse};
    use crate::{async_trait, ConfError, Stop};

    /// Misbehaves as its conf says: `configure`, `needs`, or a status.
    struct Odd;

    struct OddFilter(String);

    impl Plugin for Odd {
        fn name(&self) -> &str {
            "odd"
        }
        fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
            if conf == "configure" {
                panic!("boom in configure");
            }
            Ok(Box::new(OddFilter(conf.to_owned())))
        }
    }

    #[async_trait]
    impl Filter for OddFilter {
        fn needs(&self) -> Needs {
            if self.0 == "needs" {
                panic!("boom in needs");
            }
            Needs::default()
        }
        async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
            let status: u16 = self.0.parse()?;
            req.stop(Stop::new(StatusCode::from_u16(status)?));
            Ok(())
        }
        async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
            let status: u16 = self.0.parse()?;
            resp.set_status(StatusCode::from_u16(status)?);
            Ok(())
        }
    }

    #[test]
    fn a_panic_in_configure_or_needs_is_a_prepare_error_naming_the_plugin() {
        // `with`, the earlier name of `plugin`, still works.
        let registry = Registry::new().with(Odd);
        for during in ["configure", "needs"] {
            let err = Chain::prepare(&registry, [("odd", during)]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("conf[0]: plugin \"odd\" panicked in {during}: boom in {during}")
            );
        }
    }

    #[tokio::test]
    async fn a_status_outside_200_to_599_fails_the_call_naming_the_plugin() {
        let registry = Registry::new().plugin(Odd);
        for status in ["100", "199", "600", "999"] {
            let err = TestRequest::get("/")
                .run(&registry, &[("odd", status)])
                .await
                .unwrap_err();
            assert!(
                matches!(&err, TestError::Call(CallError::BadStatus { plugin, phase: "stop", status: s })
                    if plugin == "odd" && s.to_string() == status),
                "{err}"
            );
            let err = TestResponse::new(StatusCode::OK)
                .run(&registry, &[("odd", status)])
                .await
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("plugin `odd` set response status {status}")),
                "{err}"
            );
        }
        for status in ["200", "599"] {
            TestRequest::get("/")
                .run(&registry, &[("odd", status)])
                .await
                .unwrap();
            TestResponse::new(StatusCode::OK)
                .run(&registry, &[("odd", status)])
                .await
                .unwrap();
        }
    }

    /// Gives the SDK what its conf names: plain integers and strings.
    struct Typed;

    struct TypedFilter(String);

    impl Plugin for Typed {
        fn name(&self) -> &str {
            "typed"
        }
        fn configure(&self, conf: &str) -> Result<Box<dyn Filter>, ConfError> {
            Ok(Box::new(TypedFilter(conf.to_owned())))
        }
    }

    #[async_trait]
    impl Filter for TypedFilter {
        async fn request(&self, req: &mut Request<'_>) -> Result<(), PluginError> {
            match self.0.as_str() {
                "stop 403" => req.stop(Stop::new(403).header("X-Why", "denied").body("no")),
                "stop 1000" => req.stop(Stop::new(1000)),
                "stop bad name" => req.stop(Stop::new(403).header("x why", "denied")),
                "stop json" => req.stop(Stop::json(403, &serde_json::json!({"error": "denied"}))),
                "stop bad json" => {
                    let pairs = std::collections::BTreeMap::from([((1, 2), "pair keys")]);
                    req.stop(Stop::json(403, &pairs));
                }
                "bad value" => req.set_header("x-a", "1\r\nx-b: 2"),
                "bad resp name" => req.set_resp_header("", "v"),
                "bad remove" => req.remove_header("a:b"),
                "http types" => {
                    req.set_header(http::header::ACCEPT, http::HeaderValue::from_static("*/*"));
                    req.add_header(String::from("X-N"), 7);
                    let name = String::from("x-r");
                    req.set_resp_header(&name, String::from("r"));
                }
                other => return Err(format!("unexpected conf {other}").into()),
            }
            Ok(())
        }
        async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
            match self.0.as_str() {
                "status 502" => resp.set_status(502),
                "status 1000" => resp.set_status(1000),
                "bad value" => resp.set_header("x-a", "\0"),
                other => return Err(format!("unexpected conf {other}").into()),
            }
            Ok(())
        }
    }

    /// Runs the request phase of `typed` with `conf`.
    async fn typed(conf: &str) -> Result<crate::RequestOutcome, TestError> {
        let registry = Registry::new().plugin(Typed);
        TestRequest::get("/")
            .run(&registry, &[("typed", conf)])
            .await
    }

    #[tokio::test]
    async fn plain_integers_and_strings_build_the_same_answer_as_http_types() {
        let outcome = typed("stop 403").await.unwrap();
        assert_eq!(
            outcome,
            crate::RequestOutcome::Stop(
                Stop::new(StatusCode::FORBIDDEN)
                    .header(http::header::HeaderName::from_static("x-why"), "denied")
                    .body("no")
            )
        );
        let crate::RequestOutcome::Rewrite(rw) = typed("http types").await.unwrap() else {
            panic!("not a rewrite")
        };
        let s = |v: &str| v.to_string();
        assert_eq!(
            rw.headers,
            vec![(s("accept"), Some(s("*/*"))), (s("x-n"), Some(s("7")))]
        );
        assert_eq!(rw.resp_headers, vec![(s("x-r"), s("r"))]);
        let outcome = TestResponse::new(200)
            .run(&Registry::new().plugin(Typed), &[("typed", "status 502")])
            .await
            .unwrap();
        assert_eq!(outcome.status, Some(StatusCode::BAD_GATEWAY));
    }

    #[tokio::test]
    async fn stop_json_answers_with_the_json_and_its_content_type() {
        let crate::RequestOutcome::Stop(stop) = typed("stop json").await.unwrap() else {
            panic!("not stopped")
        };
        assert_eq!(stop.status, 403);
        let s = |v: &str| v.to_string();
        assert_eq!(
            stop.headers,
            vec![(s("content-type"), s("application/json"))]
        );
        assert_eq!(stop.body, br#"{"error":"denied"}"#);
        let err = typed("stop bad json").await.unwrap_err().to_string();
        assert!(
            err.starts_with("plugin `typed` failed: invalid JSON body of type ")
                && err.ends_with(": key must be a string"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_value_that_is_not_http_fails_the_call_naming_the_plugin_and_the_value() {
        for (conf, message) in [
            (
                "stop 1000",
                "plugin `typed` failed: invalid status 1000: a status is a number in 100..=999",
            ),
            (
                "stop bad name",
                "plugin `typed` failed: invalid header name \"x why\": not an HTTP token",
            ),
            (
                "bad value",
                "plugin `typed` failed: invalid header value \"1\\r\\nx-b: 2\": a header value cannot have control characters",
            ),
            (
                "bad resp name",
                "plugin `typed` failed: invalid header name \"\": a header name cannot be empty",
            ),
            ("bad remove", "plugin `typed` failed: invalid header name \"a:b\""),
        ] {
            let err = typed(conf).await.unwrap_err();
            assert!(err.to_string().starts_with(message), "{conf}: {err}");
        }
        let registry = Registry::new().plugin(Typed);
        for (conf, message) in [
            ("status 1000", "plugin `typed` failed: invalid status 1000"),
            (
                "bad value",
                "plugin `typed` failed: invalid header value \"\\0\"",
            ),
        ] {
            let err = TestResponse::new(StatusCode::OK)
                .run(&registry, &[("typed", conf)])
                .await
                .unwrap_err();
            assert!(err.to_string().starts_with(message), "{conf}: {err}");
        }
    }
}
