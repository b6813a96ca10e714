//! Every parser the runner applies to what the host sends (PREPARE_CONF,
//! HTTP_REQ_CALL, HTTP_RESP_CALL, the EXTRA_INFO answer), fed arbitrary
//! payloads: errors, never panics.
#![no_main]

use extplug::wire::Payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Payload::parse(data) {
        if let Ok(req) = p.prepare_conf() {
            for (name, value) in &req.conf {
                let _ = (name.len(), value.len());
            }
        }
        if let Ok(call) = p.req_call() {
            let _ = (call.parts.path.len(), call.parts.args.len());
        }
        if let Ok(call) = p.resp_call() {
            let _ = call.parts.headers.len();
        }
        let _ = p.extra_info_resp();
    }
});
