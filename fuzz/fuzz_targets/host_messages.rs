//! Every parser the host applies to what a runner sends (the PREPARE_CONF
//! answer, the call answers, EXTRA_INFO requests, ERROR), fed arbitrary
//! payloads: errors, never panics, and a decoded status is one the host can
//! act on.
#![no_main]

use extplug::wire::RequestOutcome;
use extplug::wire::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Payload::parse(data) {
        let _ = p.prepared();
        if let Ok(answer) = p.req_call_answer() {
            if let RequestOutcome::Stop(stop) = answer.outcome {
                assert!((200..=599).contains(&stop.status.as_u16()));
            }
        }
        if let Ok(answer) = p.resp_call_answer() {
            if let Some(status) = answer.outcome.status {
                assert!((200..=599).contains(&status.as_u16()));
            }
        }
        let _ = p.extra_info_req();
        let _ = p.error();
    }
});
