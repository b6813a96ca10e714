//! The response phase: what a filter sees of the upstream's answer and what it
//! may change.

use crate::info::{Info, InfoSource};
use crate::{InfoKey, PluginError, ResponseOutcome, ResponseParts};
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
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }

    /// Every value of header `name` (any case), as changed so far.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
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

    /// Replaces the status sent to the client. It must be in 200..=599: the
    /// runner fails the call (naming this plugin) otherwise.
    pub fn set_status(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    /// The status set by a filter so far, if any.
    pub(crate) fn changed_status(&self) -> Option<StatusCode> {
        self.status
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

    /// Sets header `name` to `value`, replacing every old value.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let name = name.to_ascii_lowercase();
        let headers = self.headers_mut();
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        headers.push((name, value.into()));
    }

    /// Adds a value to header `name`.
    pub fn add_header(&mut self, name: &str, value: impl Into<String>) {
        let name = name.to_ascii_lowercase();
        self.headers_mut().push((name, value.into()));
    }

    /// Deletes header `name`.
    pub fn remove_header(&mut self, name: &str) {
        self.headers_mut()
            .retain(|(n, _)| !n.eq_ignore_ascii_case(name));
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
