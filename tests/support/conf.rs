//! Building the proxy's configuration in tests: runners, routes, phases.

use super::http::{ProxyProc, Upstream};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// The example runner's argv.
pub fn demo() -> Vec<String> {
    vec![super::demo_runner().display().to_string()]
}

/// The misbehaving runner's argv and environment for `mode`.
pub fn bad(mode: &str) -> (Vec<String>, Value) {
    (
        vec![super::example("bad-runner").display().to_string()],
        json!({ "BAD_RUNNER_MODE": mode, "RUNNER_TEST_VAR": "from-config" }),
    )
}

/// A whole configuration on an ephemeral port.
pub fn config(cmd: Vec<String>, env: Value, routes: Value) -> Value {
    json!({
        "listen": "127.0.0.1:0",
        "ext-plugin": { "cmd": cmd, "env": env, "call_timeout_ms": 2000, "start_timeout_ms": 5000, "stop_grace_ms": 500 },
        "routes": routes,
    })
}

/// A route phase with `(plugin, conf as JSON)` entries.
pub fn phase(entries: &[(&str, Value)]) -> Value {
    json!({ "conf": entries.iter().map(|(n, v)| json!({"name": n, "value": v.to_string()})).collect::<Vec<_>>() })
}

/// A route to one upstream node.
pub fn route(id: &str, uri: &str, up: SocketAddr, plugins: Value) -> Value {
    json!({ "id": id, "uri": uri, "upstream": { "type": "roundrobin", "nodes": { up.to_string(): 1 } }, "plugins": plugins })
}

/// The proxy with the scripted runner on one catch-all route; `tweak` may
/// change the configuration first.
pub fn scripted(up: &Upstream, tweak: impl FnOnce(&mut Value)) -> ProxyProc {
    let (cmd, env) = bad("scripted");
    let pre_req = json!({"ext-plugin-pre-req": phase(&[("any", json!({}))])});
    let mut c = config(cmd, env, json!([route("r", "/*", up.addr, pre_req)]));
    tweak(&mut c);
    ProxyProc::start(&c)
}
