//! The response phase: what a filter sees of the upstream's answer and what it
//! may change.

use crate::info::{Info, InfoSource};
use crate::{
    InfoKey, IntoHeaderName, IntoHeaderValue, IntoStatus, InvalidValue, PluginError,
    ResponseOutcome, ResponseParts,
};
use http::StatusCode;

/// The upstream's answer in the response phase: read it, record changes.
/// Reads see earlier writes; only writes are changes.
pub struct Response<'a> {
    parts: ResponseParts<'a>,
    info: Info<'a>,
    status: Option<StatusCode>,
    /// The whole header list once a filter changed any header.
    headers: Option<Vec<(String, String)>>,
    body: Option<Vec<u8>>,
    /// The first status, name or value a setter refused: the call fails with it.
    invalid: Option<InvalidValue>,
}

impl<'a> Response<'a> {
    /// A response view over `parts`; values not in `parts.extra_info` are
    /// fetched from `source` when first read. For runners and test helpers.
    pub fn new(mut parts: ResponseParts<'a>, source: &'a mut dyn InfoSource) -> Self {
        let prefetched = std::mem::take(&mut parts.extra_info);
        Response {
            parts,
            info: Info::new(prefetched, source),
            status: None,
            headers: None,
            body: None,
            invalid: None,
        }
    }

    /// The call's id.
    pub fn id(&self) -> u32 {
        self.parts.id
    }

    /// The status, as changed so far.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(self.parts.status)
    }

    /// The first value of header `name` (any case), as changed so far.
    pub fn header(&self, name: impl AsRef<str>) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }

    /// Every value of header `name` (any case), as changed so far.
    pub fn header_values(&self, name: impl AsRef<str>) -> Vec<&str> {
        let name = name.as_ref();
        match &self.headers {
            Some(list) => list
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect(),
            None => self
                .parts
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
                .collect(),
        }
    }

    /// A variable from the gateway, as for [`crate::Request::var`].
    ///
    /// # Errors
    /// The exchange with the gateway failed.
    pub async fn var(&mut self, name: &str) -> Result<Option<&[u8]>, PluginError> {
        self.info.get(InfoKey::Var(name)).await
    }

    /// The response body: the one set by an earlier filter, or the upstream's
    /// (sent up front when declared in [`crate::Filter::needs`], otherwise
    /// fetched now). Never a change.
    ///
    /// # Errors
    /// The exchange with the gateway failed.
    pub async fn body(&mut self) -> Result<Option<&[u8]>, PluginError> {
        if let Some(body) = &self.body {
            return Ok(Some(body));
        }
        self.info.get(InfoKey::ResponseBody).await
    }

    /// Replaces the status sent to the client: an integer (`502`) or a
    /// `StatusCode`. It must be in 200..=599: the runner fails the call
    /// (naming this plugin and the status) otherwise; an integer that is not a
    /// status at all (`1000`) changes nothing and fails the call the same way.
    ///
    /// ```
    /// # use runner_sdk::{async_trait, Filter, PluginError, Response};
    /// # struct Mask;
    /// #[async_trait]
    /// impl Filter for Mask {
    ///     async fn response(&self, resp: &mut Response<'_>) -> Result<(), PluginError> {
    ///         if resp.status().is_server_error() {
    ///             resp.set_status(502);
    ///             resp.set_header("retry-after", 5);
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn set_status(&mut self, status: impl IntoStatus) {
        match status.into_status() {
            Ok(status) => self.status = Some(status),
            Err(e) => self.refuse(e),
        }
    }

    /// The status set by a filter so far, if any.
    pub(crate) fn changed_status(&self) -> Option<StatusCode> {
        self.status
    }

    /// Keeps the first refused value: the chain fails the call with it.
    fn refuse(&mut self, invalid: InvalidValue) {
        self.invalid.get_or_insert(invalid);
    }

    /// The first value refused so far, taken out (see [`Response::set_status`]).
    pub(crate) fn take_invalid(&mut self) -> Option<InvalidValue> {
        self.invalid.take()
    }

    /// The header list, copied on the first header change.
    fn headers_mut(&mut self) -> &mut Vec<(String, String)> {
        let parts = &self.parts;
        self.headers.get_or_insert_with(|| {
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
    }

    /// Sets header `name` to `value`, replacing every old value. `name` is a
    /// string or an `http::HeaderName`; `value` a string, an
    /// `http::HeaderValue` or an integer. An invalid name or value changes
    /// nothing and fails the call when the filter returns, naming the plugin
    /// and the value.
    pub fn set_header(&mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) {
        if let Some((name, value)) = self.checked(name, value) {
            let headers = self.headers_mut();
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            headers.push((name, value));
        }
    }

    /// Adds a value to header `name`. Names and values as for
    /// [`Response::set_header`].
    pub fn add_header(&mut self, name: impl IntoHeaderName, value: impl IntoHeaderValue) {
        if let Some(pair) = self.checked(name, value) {
            self.headers_mut().push(pair);
        }
    }

    /// Deletes header `name` (a string or an `http::HeaderName`).
    pub fn remove_header(&mut self, name: impl AsRef<str>) {
        let name = name.as_ref();
        self.headers_mut()
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The checked, lower-cased name and the checked value; `None` (and the
    /// mistake kept for the call's end) when either is invalid.
    fn checked(
        &mut self,
        name: impl IntoHeaderName,
        value: impl IntoHeaderValue,
    ) -> Option<(String, String)> {
        crate::checked_header(&mut self.invalid, name, value)
    }

    /// Replaces the body sent to the client (the gateway fixes the framing
    /// headers).
    pub fn set_body(&mut self, body: impl Into<Vec<u8>>) {
        self.body = Some(body.into());
    }

    /// The net effect of every change recorded so far.
    pub fn into_outcome(self) -> ResponseOutcome {
        ResponseOutcome {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }
}
