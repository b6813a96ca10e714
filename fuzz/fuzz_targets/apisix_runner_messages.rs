//! Every parser the runner applies to what APISIX sends on its wire
//! (`A6.PrepareConf.Req`, `A6.HTTPReqCall.Req`, `A6.HTTPRespCall.Req`, the
//! `A6.ExtraInfo.Resp` answer) and the wire detection, fed arbitrary
//! payloads: errors, never panics; what decodes is what the model allows.
#![no_main]

use extplug::wire::{apisix, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Protocol::detect(data);
    if let Ok(req) = apisix::prepare_conf(data) {
        for (name, value) in &req.conf {
            let _ = (name.len(), value.len());
        }
    }
    if let Ok(call) = apisix::req_call(data) {
        assert!(call.parts.extra_info.is_empty());
        let _ = (call.parts.path.len(), call.parts.args.len());
    }
    if let Ok(call) = apisix::resp_call(data) {
        let _ = call.parts.headers.len();
    }
    let _ = apisix::extra_info_resp(data);
});
