//! Extra information about a call (variables, bodies): sent up front by the
//! gateway, or fetched from it during the call and then kept for the call.

use crate::{InfoKey, PluginError};
use async_trait::async_trait;
use bytes::Bytes;

/// Where lazily read values come from: in the runner, an `EXTRA_INFO` round
/// trip on the call's connection; in [`crate::testing`], a map.
#[async_trait]
pub trait InfoSource: Send {
    /// Fetches one value; `Ok(None)` when the gateway has no such value.
    /// In the runner the value is a slice of the answer's frame (a body is
    /// not copied between the socket and the plugin).
    ///
    /// # Errors
    /// The exchange with the gateway failed; the call then fails.
    async fn fetch(&mut self, key: InfoKey<'_>) -> Result<Option<Bytes>, PluginError>;
}

/// The values known to one call: the prefetched ones (borrowed from the call's
/// frame) and the ones fetched during the call (owned), plus the source.
pub(crate) struct Info<'a> {
    prefetched: Vec<(&'a str, Option<&'a [u8]>)>,
    fetched: Vec<(String, Option<Bytes>)>,
    source: &'a mut dyn InfoSource,
}

impl<'a> Info<'a> {
    pub(crate) fn new(
        prefetched: Vec<(&'a str, Option<&'a [u8]>)>,
        source: &'a mut dyn InfoSource,
    ) -> Self {
        Info {
            prefetched,
            fetched: Vec::new(),
            source,
        }
    }

    /// The value for `key`: prefetched, fetched earlier in this call, or
    /// fetched now (and kept for the rest of the call).
    pub(crate) async fn get(&mut self, key: InfoKey<'_>) -> Result<Option<&[u8]>, PluginError> {
        let name = key.prefetch_name();
        if let Some((_, v)) = self.prefetched.iter().find(|(n, _)| *n == name) {
            return Ok(*v);
        }
        let pos = match self.fetched.iter().position(|(n, _)| n == name) {
            Some(pos) => pos,
            None => {
                let value = self.source.fetch(key).await?;
                self.fetched.push((name.to_owned(), value));
                self.fetched.len() - 1
            }
        };
        Ok(self.fetched[pos].1.as_deref())
    }
}
