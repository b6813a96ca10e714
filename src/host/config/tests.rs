//! The configuration's unit tests: files that parse, and files refused
//! with the message that names the field.

use super::balance::*;
use super::error::*;
use super::model::*;
use http::Method;
use std::time::Duration;

fn config(routes: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!(
        r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[{routes}]}}"#
    ))
}

const OK_ROUTE: &str = r#"{"id":"1","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},
    "plugins":{"ext-plugin-pre-req":{"conf":[{"name":"say","value":"{}"}]}}}"#;

#[test]
fn a_plugin_value_is_an_object_or_json_text() {
    let route = |value: &str| {
        config(&format!(
            r#"{{"id":"1","uri":"/a","upstream":{{"nodes":{{"127.0.0.1:1":1}}}},
            "plugins":{{"ext-plugin-pre-req":{{"conf":[{{"name":"say","value":{value}}}]}}}}}}"#
        ))
    };
    let conf = |c: Config| c.routes[0].pre_req.as_ref().unwrap().conf[0].1.clone();
    let text = conf(route(r#""{\"status\": 403}""#).unwrap());
    assert_eq!(text, r#"{"status": 403}"#, "the string is sent as written");
    let object = conf(route(r#"{"status": 403, "body": "no"}"#).unwrap());
    assert_eq!(object, r#"{"body":"no","status":403}"#);
    for wrong in ["403", "[1]", "null", "true"] {
        let err = route(wrong).unwrap_err().0;
        assert!(
            err.contains("as a JSON object") && err.contains("APISIX's form"),
            "{wrong}: {err}"
        );
    }
}

#[test]
fn apisix_fields_extplug_cannot_honour_are_named_as_such() {
    for field in ["filter_func", "script", "script_id", "plugin_config_id"] {
        let err = config(&format!(
            r#"{{"id":"3","uri":"/a","{field}":["x"],"upstream":{{"nodes":{{"127.0.0.1:1":1}}}}}}"#
        ))
        .unwrap_err()
        .0;
        assert!(
            err.contains(&format!("at `{field}`: not supported by extplug")),
            "{err}"
        );
    }
    let typo = config(r#"{"id":"3","uri":"/a","hostz":1,"upstream":{"nodes":{"127.0.0.1:1":1}}}"#)
        .unwrap_err()
        .0;
    assert!(typo.contains("unknown field `hostz`"), "{typo}");
}

#[test]
fn the_issue_example_parses() {
    let c = Config::parse(
        r#"{
      "listen": "127.0.0.1:9080",
      "ext-plugin": { "cmd": ["target/release/examples/demo-runner"], "env": {"K": "v"},
                      "conf_expire_time": 3600, "call_timeout_ms": 2000, "start_timeout_ms": 5000,
                      "stop_grace_ms": 1000 },
      "routes": [
        { "id": "1", "uri": "/hello", "methods": ["GET"],
          "upstream": { "type": "roundrobin", "nodes": { "127.0.0.1:1980": 1 } },
          "plugins": {
            "ext-plugin-pre-req":  { "conf": [ {"name": "say", "value": "{\"body\":\"hi\"}"} ],
                                     "allow_degradation": false },
            "ext-plugin-post-req": { "conf": [ {"name": "rewrite", "value": "{}"} ] } } } ]
    }"#,
    )
    .unwrap();
    assert_eq!(c.routes[0].id, "1");
    assert_eq!(c.routes[0].methods, Some(vec![Method::GET]));
    assert_eq!(c.runner.env.get("K").map(String::as_str), Some("v"));
    assert!(c.routes[0].pre_req.is_some() && c.routes[0].post_req.is_some());
    assert_ne!(
        c.routes[0].pre_req.as_ref().unwrap().key,
        c.routes[0].post_req.as_ref().unwrap().key
    );
}

#[test]
fn errors_name_the_route_and_the_field() {
    let cases = [
        (
            r#"{"id":"r1","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugin":{}}"#,
            ["route `r1`", "unknown field `plugin`"],
        ),
        (
            r#"{"id":"r2","uri":"/a"}"#,
            ["route `r2`", "missing field `upstream`"],
        ),
        (
            r#"{"id":"r3","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugins":{"ext-plugin-pre-req":{"conf":[]}}}"#,
            ["route `r3`", "plugins.ext-plugin-pre-req.conf` is empty"],
        ),
        (
            r#"{"id":"r4","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugins":{"ext-plugin-pre-req":{"conf":[{"name":"say"}]}}}"#,
            ["route `r4`", "missing field `value`"],
        ),
        (
            r#"{"id":"r5","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugins":{"ext-plugin-post-req":{"conf":[{"value":"{}"}]}}}"#,
            ["route `r5`", "missing field `name`"],
        ),
        (
            r#"{"id":"r6","uri":"/a","upstream":{"nodes":{"nohost":1}}}"#,
            ["route `r6`", "is not host:port"],
        ),
        (
            r#"{"id":"r7","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
            ["route `r7`", "missing field `uri`"],
        ),
        (
            r#"{"id":"r8","uri":"/a","upstream":{"type":"chash","nodes":{"127.0.0.1:1":1}}}"#,
            ["route `r8`", "chash"],
        ),
        (
            r#"{"id":"r9","uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}},"plugins":{"limit-req":{}}}"#,
            ["route `r9`", "unknown field `limit-req`"],
        ),
    ];
    for (route, expected) in cases {
        let err = config(route).unwrap_err().0;
        for e in expected {
            assert!(err.contains(e), "{route}\n  gave: {err}\n  missing: {e}");
        }
    }
    let err = config(&format!("{OK_ROUTE},{OK_ROUTE}")).unwrap_err().0;
    assert!(err.contains("used twice"), "{err}");
    let err = Config::parse(r#"{"ext-plugin":{"cmd":[]},"routes":[]}"#)
        .unwrap_err()
        .0;
    assert!(err.contains("ext-plugin.cmd"), "{err}");
    let err = Config::parse(r#"{"ext-plugin":{"cmd":["r"],"call_timeout":1},"routes":[]}"#)
        .unwrap_err()
        .0;
    assert!(
        err.contains("ext-plugin") && err.contains("unknown field `call_timeout`"),
        "{err}"
    );
}

#[test]
fn route_errors_have_the_line_and_column_in_the_file() {
    let text = "{\"ext-plugin\":{\"cmd\":[\"r\"]},\"routes\":[\n  {\"id\":\"a\",\"uri\":\"/a\",\"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}},\n  {\"id\":\"b\",\"uri\":\"/b\",\"methods\":[\"GET\"], \"bad\":1,\n   \"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}},\n  {\"id\":\"c\",\"uri\":\"b\",\"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}}]}";
    let err = Config::parse(text).unwrap_err().0;
    assert_eq!(err, "3:47: route `b` (routes[1]): at `bad`: unknown field `bad`, expected one of `id`, `name`, `desc`, `labels`, `create_time`, `update_time`, `status`, `priority`, `uri`, `uris`, `methods`, `host`, `hosts`, `remote_addr`, `remote_addrs`, `vars`, `enable_websocket`, `upstream`, `timeout`, `upstream_id`, `service_id`, `plugins`");
    // A rule checked after parsing points at the route's start.
    let text = text.replace(", \"bad\":1", "");
    let err = Config::parse(&text).unwrap_err().0;
    assert!(
        err.starts_with("5:3: route `c` (routes[2]): `uri` \"b\" must start with"),
        "{err}"
    );
    // Outside the routes too.
    let err = Config::parse("{\n \"listen\": 5}").unwrap_err().0;
    assert!(err.starts_with("2:12: at `listen`: invalid type"), "{err}");
}

#[test]
fn upstream_nodes_as_apisix_stores_them_and_errors_name_the_node() {
    // The list form as APISIX's Admin API stores it: `priority: 0`
    // filled in, `metadata`, a node without `port` (80).
    let up = r#"{"type":"roundrobin","scheme":"http","pass_host":"pass","hash_on":"vars",
        "nodes":[{"host":"127.0.0.1","port":1980,"weight":1,"priority":0},
                 {"host":"10.0.0.2","weight":2,"priority":0,"metadata":{"zone":"a"}}]}"#;
    let c = config(&format!(r#"{{"id":"1","uri":"/a","upstream":{up}}}"#)).unwrap();
    assert_eq!(
        c.routes[0].upstream.nodes,
        [
            ("127.0.0.1:1980".to_string(), 1),
            ("10.0.0.2:80".to_string(), 2)
        ]
    );
    for (nodes, want) in [
        (
            r#"[{"host":"a","port":1,"priority":1},{"host":"b","port":1}]"#,
            "different `priority` values (1 and 0)",
        ),
        (
            r#"[{"host":"a","port":1},{"host":"b","port":"x"}]"#,
            "at `upstream.nodes`: [1]: invalid type: string \"x\"",
        ),
        (
            r#"[{"host":"a","port":1,"wieght":1}]"#,
            "at `upstream.nodes`: [0]: unknown field `wieght`",
        ),
        (
            r#"{"a:1":-1}"#,
            "at `upstream.nodes`: the weight of \"a:1\" is not a whole number",
        ),
        (r#""a:1""#, "at `upstream.nodes`: \"a:1\" is neither"),
    ] {
        let route = format!(r#"{{"id":"1","uri":"/a","upstream":{{"nodes":{nodes}}}}}"#);
        let err = config(&route).unwrap_err().0;
        assert!(
            err.contains(want),
            "{nodes}\n  gave: {err}\n  missing: {want}"
        );
    }
}

#[test]
fn a_phase_meta_we_cannot_honour_is_refused() {
    let route = |meta: &str| {
        format!(
            r#"{{"id":"1","uri":"/a","upstream":{{"nodes":{{"127.0.0.1:1":1}}}},
               "plugins":{{"ext-plugin-pre-req":{{"conf":[{{"name":"say","value":"{{}}"}}],"_meta":{meta}}}}}}}"#
        )
    };
    assert!(config(&route(r#"{"disable":false,"priority":5}"#)).is_ok());
    for field in ["filter", "error_response", "pre_function"] {
        let err = config(&route(&format!(r#"{{"{field}":[["arg_x","==","1"]]}}"#)))
            .unwrap_err()
            .0;
        assert!(
            err.contains(&format!(
                "at `plugins.ext-plugin-pre-req._meta.{field}`: unknown field `{field}`"
            )),
            "{err}"
        );
    }
}

#[test]
fn a_route_as_apisix_admin_api_returns_it_parses() {
    let c = config(
        r#"{"id":"1","uri":"/hello","name":"hello","desc":"d","methods":["GET"],"status":1,
            "priority":3,"create_time":1700000000,"update_time":1700000001,"labels":{"env":"prod"},
            "upstream":{"type":"roundrobin","scheme":"http","pass_host":"pass","hash_on":"vars",
              "nodes":{"127.0.0.1:1980":1},"keepalive_pool":{"size":320,"idle_timeout":60,"requests":1000},
              "timeout":{"connect":6,"send":6,"read":6}},
            "plugins":{"ext-plugin-pre-req":{"conf":[{"name":"say","value":"{\"body\":\"hi\"}"}],
              "allow_degradation":false,"_meta":{"disable":false}},
              "ext-plugin-post-req":{"conf":[{"name":"say","value":"{}"}],"_meta":{"disable":true}}}}"#,
    )
    .unwrap();
    let r = &c.routes[0];
    assert!(r.enabled && r.priority == 3);
    assert!(r.pre_req.is_some(), "enabled phase kept");
    assert!(r.post_req.is_none(), "`_meta.disable` turns a phase off");
    assert_eq!(r.upstream.read_timeout, Duration::from_secs(6));
    let off = config(r#"{"id":"2","uri":"/a","status":0,"upstream":{"nodes":{"127.0.0.1:1":1}}}"#)
        .unwrap();
    assert!(!off.routes[0].enabled);
    let err = config(
        r#"{"id":"3","uri":"/a","filter_func":"function(vars) return true end","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
    )
    .unwrap_err();
    assert!(
        err.0.contains("at `filter_func`: not supported by extplug"),
        "a condition we cannot honour is refused: {err}"
    );
}

#[test]
fn hosts_remote_addrs_vars_and_websocket_parse_as_apisix_writes_them() {
    let c = config(
        r#"{"id":"1","uri":"/a","hosts":["API.example.com","*.example.org"],
            "remote_addrs":["127.0.0.1","10.0.0.0/8","::1"],
            "vars":[["arg_name","==","json"],["OR",["http_x_a","~~","^a"],["cookie_c","in",["1","2"]]]],
            "enable_websocket":true,"upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
    )
    .unwrap();
    let r = &c.routes[0];
    let hosts: Vec<String> = r.hosts.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["api.example.com", "*.example.org"]);
    assert_eq!(r.remote_addrs.len(), 3);
    assert!(r.vars.is_some() && r.enable_websocket);
    let one = config(
        r#"{"id":"1","uri":"/a","host":"a.com","remote_addr":"10.0.0.1","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
    )
    .unwrap();
    assert_eq!(one.routes[0].hosts.len(), 1);
    assert!(!one.routes[0].enable_websocket, "off by default");
    for (fields, says) in [
        (
            r#""host":"a.com","hosts":["b.com"]"#,
            "both `host` and `hosts`",
        ),
        (r#""hosts":[]"#, "`hosts` is empty"),
        (
            r#""hosts":["a.com:80"]"#,
            "`hosts`: host pattern \"a.com:80\"",
        ),
        (r#""host":"*a.com""#, "`host`: host pattern"),
        (
            r#""remote_addrs":["10.0.0.0/40"]"#,
            "`remote_addrs`: \"10.0.0.0/40\" is not",
        ),
        (
            r#""remote_addr":"x","remote_addrs":["10.0.0.1"]"#,
            "both `remote_addr` and",
        ),
        (r#""vars":[["arg_a","~~","(x"]]"#, "`vars[0]`: the regex"),
        (r#""vars":{"a":1}"#, "`vars` must be a list"),
        (
            r#""vars":[["post_arg_user","~=","root"]]"#,
            "`vars[0][0]`: \"post_arg_user\" is not a variable extplug computes",
        ),
        (
            r#""enable_websocket":"yes""#,
            "at `enable_websocket`: invalid type",
        ),
    ] {
        let err = config(&format!(
            r#"{{"id":"r","uri":"/a",{fields},"upstream":{{"nodes":{{"127.0.0.1:1":1}}}}}}"#
        ))
        .unwrap_err()
        .0;
        assert!(err.contains(says), "{fields}: {err}");
        assert!(err.contains("route `r`"), "{err}");
    }
    let glob = config(r#"{"id":"g","uri":"/a/*/b","upstream":{"nodes":{"127.0.0.1:1":1}}}"#)
        .unwrap_err()
        .0;
    assert!(
        glob.contains("has a `*` at byte 3: APISIX matches"),
        "{glob}"
    );
}

#[test]
fn runner_env_may_not_set_what_the_host_sets() {
    for name in ["APISIX_LISTEN_ADDRESS", "APISIX_CONF_EXPIRE_TIME"] {
        let err = Config::parse(&format!(
            r#"{{"ext-plugin":{{"cmd":["r"],"env":{{"{name}":"x"}}}},"routes":[]}}"#
        ))
        .unwrap_err()
        .0;
        assert!(
            err.contains(&format!("ext-plugin.env.{name}")) && err.contains("sets"),
            "{err}"
        );
    }
    let err = Config::parse(r#"{"ext-plugin":{"cmd":["r"],"env":{"A=B":"x"}},"routes":[]}"#)
        .unwrap_err()
        .0;
    assert!(err.contains("\"A=B\" is not a variable name"), "{err}");
    let ok =
        Config::parse(r#"{"ext-plugin":{"cmd":["r"],"env":{"APISIX_OTHER":"x"}},"routes":[]}"#);
    assert!(ok.is_ok());
}

#[test]
fn uris_prefixes_and_numeric_ids() {
    let c = config(r#"{"id":7,"uris":["/a/*","/b"],"upstream":{"nodes":[{"host":"127.0.0.1","port":1,"weight":2}]}}"#).unwrap();
    assert_eq!(c.routes[0].id, "7");
    assert_eq!(
        c.routes[0].uris,
        vec![
            UriPattern::Prefix("/a/".into()),
            UriPattern::Exact("/b".into())
        ]
    );
    assert_eq!(
        c.routes[0].upstream.nodes,
        vec![("127.0.0.1:1".to_string(), 2)]
    );
}

#[test]
fn client_limits_default_like_nginx_and_errors_name_the_field() {
    let c = config(OK_ROUTE).unwrap();
    assert_eq!(c.client, ClientLimits::default());
    assert_eq!(c.client.header_timeout, Duration::from_secs(60));
    assert_eq!(c.client.keepalive_timeout, Duration::from_secs(75));
    let c = Config::parse(
        r#"{"ext-plugin":{"cmd":["r"]},"routes":[],"client_header_timeout_ms":300,
            "keepalive_timeout_ms":0,"max_client_connections":2,"max_request_header_bytes":4096,
            "max_request_headers":20}"#,
    )
    .unwrap();
    assert_eq!(
        c.client,
        ClientLimits {
            header_timeout: Duration::from_millis(300),
            keepalive_timeout: Duration::ZERO,
            max_connections: 2,
            max_header_bytes: 4096,
            max_headers: 20,
            http2: crate::host::config::Http2Limits::default(),
        }
    );
    for (field, value) in [
        ("client_header_timeout_ms", "0"),
        ("max_client_connections", "0"),
        ("max_client_connections", "100000000000"),
        ("max_request_header_bytes", "100"),
        ("max_request_header_bytes", "10000000"),
        ("max_buffered_body_bytes", "1000"),
        ("max_request_headers", "0"),
        ("max_request_headers", "8193"),
        ("keepalive_timeout_ms", "-1"),
    ] {
        let err = Config::parse(&format!(
            r#"{{"ext-plugin":{{"cmd":["r"]}},"routes":[],"{field}":{value}}}"#
        ))
        .unwrap_err()
        .0;
        assert!(err.contains(field), "{field}={value}: {err}");
    }
}

#[test]
fn several_runners_and_a_phase_picks_one_by_name() {
    let phase = |runner: &str| {
        format!(
            r#"{{"id":"r1","uri":"/a","upstream":{{"nodes":{{"127.0.0.1:1":1}}}},
            "plugins":{{"ext-plugin-post-req":{{"runner":{runner},"conf":[{{"name":"say","value":"{{}}"}}]}}}}}}"#
        )
    };
    let text = |runner: &str| {
        format!(
            r#"{{"ext-plugin":{{"cmd":["r"]}},"runners":{{"auth":{{"cmd":["a"],"env":{{"K":"v"}}}}}},"routes":[{}]}}"#,
            phase(runner)
        )
    };
    let c = Config::parse(&text(r#""auth""#)).unwrap();
    assert_eq!(c.routes[0].post_req.as_ref().unwrap().runner, "auth");
    let names: Vec<&str> = c.runner_confs().map(|(n, _)| n).collect();
    assert_eq!(names, ["default", "auth"]);
    assert_eq!(c.runners["auth"].cmd, ["a"]);
    let c = Config::parse(&text(r#""default""#)).unwrap();
    assert_eq!(
        c.routes[0].post_req.as_ref().unwrap().runner,
        DEFAULT_RUNNER
    );
    let err = Config::parse(&text(r#""nope""#)).unwrap_err().0;
    assert!(
        err.contains("route `r1`")
            && err.contains("`plugins.ext-plugin-post-req.runner` \"nope\" is not a runner")
            && err.contains("`default`, `auth`"),
        "{err}"
    );
    let err =
        Config::parse(r#"{"ext-plugin":{"cmd":["r"]},"runners":{"x":{"cmd":[]}},"routes":[]}"#)
            .unwrap_err()
            .0;
    assert!(err.contains("`runners.x.cmd`"), "{err}");
    let err = Config::parse(
        r#"{"ext-plugin":{"cmd":["r"]},"runners":{"default":{"cmd":["d"]}},"routes":[]}"#,
    )
    .unwrap_err()
    .0;
    assert!(err.contains("\"default\" cannot name a runner"), "{err}");
}

#[test]
fn the_etcd_section_replaces_routes_and_errors_name_the_field() {
    let base = r#""ext-plugin":{"cmd":["r"]}"#;
    let c = Config::parse(&format!(
        r#"{{{base},"etcd":{{"endpoints":["http://127.0.0.1:2379"],"prefix":"/apisix/","timeout_ms":3000,"user":"u","password":"p"}}}}"#
    ))
    .unwrap();
    let e = c.etcd.as_ref().unwrap();
    assert_eq!(e.prefix, "/apisix", "the trailing `/` is dropped");
    assert_eq!(e.timeout, Duration::from_secs(3));
    assert!(c.routes.is_empty());
    assert!(!format!("{e:?}").contains("\"p\""), "no password in logs");
    let c = Config::parse(&format!(
        r#"{{{base},"etcd":{{"endpoints":["http://127.0.0.1:2379"]}}}}"#
    ))
    .unwrap();
    assert_eq!(c.etcd.unwrap().prefix, "/apisix");
    for (etcd, expected) in [
        (r#"{"endpoints":[]}"#, "`etcd.endpoints` is empty"),
        (r#"{"endpoints":["127.0.0.1:2379"]}"#, "`etcd.endpoints[0]`"),
        (r#"{"endpoints":["https://e:2379"]}"#, "TLS"),
        (
            r#"{"endpoints":["http://e:1"],"prefix":"apisix"}"#,
            "`etcd.prefix`",
        ),
        (
            r#"{"endpoints":["http://e:1"],"timeout_ms":0}"#,
            "`etcd.timeout_ms`",
        ),
        (
            r#"{"endpoints":["http://e:1"],"user":"u"}"#,
            "`etcd.password`",
        ),
    ] {
        let err = Config::parse(&format!(r#"{{{base},"etcd":{etcd}}}"#))
            .unwrap_err()
            .0;
        assert!(err.contains(expected), "{etcd}: {err}");
    }
    let err = Config::parse(&format!(
        r#"{{{base},"routes":[],"etcd":{{"endpoints":["http://e:1"]}}}}"#
    ))
    .unwrap_err()
    .0;
    assert!(err.contains("remove `routes`"), "{err}");
    let err = Config::parse(&format!("{{{base}}}")).unwrap_err().0;
    assert!(err.contains("missing field `routes`"), "{err}");
}

#[test]
fn a_file_route_holds_its_upstream_and_plugins() {
    for (route, expected) in [
        (
            r#"{"id":"1","uri":"/a","upstream_id":"u"}"#,
            "upstreams by id come from etcd",
        ),
        (
            r#"{"id":"1","uri":"/a","service_id":"s"}"#,
            "services come from etcd",
        ),
        (
            r#"{"id":"1","uri":"/a","upstream_id":"u","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
            "both `upstream` and `upstream_id`",
        ),
    ] {
        let err = config(route).unwrap_err().0;
        assert!(err.contains("route `1`") && err.contains(expected), "{err}");
    }
}

#[test]
fn smooth_weighted_round_robin() {
    assert_eq!(
        smooth_schedule(&[5, 1, 1]).unwrap(),
        vec![0, 0, 1, 0, 2, 0, 0]
    );
    assert_eq!(smooth_schedule(&[2, 2]).unwrap(), vec![0, 1]);
}

#[test]
fn the_client_body_timeout_defaults_to_60_s_and_must_be_positive() {
    let base = r#""ext-plugin":{"cmd":["r"]},"routes":[]"#;
    let c = Config::parse(&format!("{{{base}}}")).unwrap();
    assert_eq!(c.client_body_timeout, Duration::from_secs(60));
    let c = Config::parse(&format!(r#"{{{base},"client_body_timeout_ms":250}}"#)).unwrap();
    assert_eq!(c.client_body_timeout, Duration::from_millis(250));
    let err = Config::parse(&format!(r#"{{{base},"client_body_timeout_ms":0}}"#)).unwrap_err();
    assert!(
        err.to_string().contains("`client_body_timeout_ms`"),
        "{err}"
    );
}

#[test]
fn a_runner_speaks_capnp_unless_its_protocol_says_apisix() {
    use crate::wire::Protocol;
    let config = Config::parse(
        r#"{"ext-plugin":{"cmd":["r"]},"runners":{"a6":{"cmd":["p"],"protocol":"apisix"},
            "own":{"cmd":["q"],"protocol":"capnp"}},"routes":[]}"#,
    )
    .unwrap();
    assert_eq!(config.runner.protocol, Protocol::Capnp);
    assert_eq!(config.runners["a6"].protocol, Protocol::Apisix);
    assert_eq!(config.runners["own"].protocol, Protocol::Capnp);
    for (bad, section) in [
        (
            r#"{"ext-plugin":{"cmd":["r"],"protocol":"flatbuffers"},"routes":[]}"#,
            "`ext-plugin.protocol` \"flatbuffers\"",
        ),
        (
            r#"{"ext-plugin":{"cmd":["r"]},"runners":{"x":{"cmd":["r"],"protocol":"APISIX"}},"routes":[]}"#,
            "`runners.x.protocol` \"APISIX\"",
        ),
    ] {
        let err = Config::parse(bad).unwrap_err().0;
        assert!(err.contains(section), "{err}");
        assert!(
            err.contains(r#""capnp""#) && err.contains(r#""apisix""#),
            "{err}"
        );
    }
    let err = Config::parse(r#"{"ext-plugin":{"cmd":["r"],"protocol":1},"routes":[]}"#)
        .unwrap_err()
        .0;
    assert!(
        err.contains("ext-plugin") && err.contains("protocol"),
        "{err}"
    );
}
