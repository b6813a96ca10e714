//! Every parser a host applies to what a runner sends on APISIX's wire (the
//! prepare answer, the call answers, EXTRA_INFO requests, `A6.Err.Resp`),
//! fed arbitrary payloads: errors, never panics, and a decoded status is
//! one a host can act on.
#![no_main]

use extplug::wire::{apisix, RequestOutcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(prepared) = apisix::prepared(data) {
        assert_ne!(prepared.token, 0);
    }
    if let Ok(answer) = apisix::req_call_answer(data) {
        if let RequestOutcome::Stop(stop) = answer.outcome {
            assert!((200..=599).contains(&stop.status.as_u16()));
        }
    }
    if let Ok(answer) = apisix::resp_call_answer(data) {
        if let Some(status) = answer.outcome.status {
            assert!((200..=599).contains(&status.as_u16()));
        }
    }
    let _ = apisix::extra_info_req(data);
    let _ = apisix::error(data);
});
