//! Path normalization end to end: raw request lines (an HTTP client library
//! would normalize them) against `/public/*` (no plugin), `/admin/*`
//! (`key-auth` in the real demo-runner) and a catch-all `/*`, in front of a
//! recording upstream. No vector may reach `/admin/*` without its plugins,
//! and each vector's status and upstream target are what the normalizer
//! promises.

use crate::support::conf::{config, demo, phase, route};
use crate::support::http::{ProxyProc, Upstream};
use crate::support::raw;
use serde_json::json;

const KEY: &str = "the-admin-key";

/// (raw target, expected status, the target the upstream must get).
/// 401 means key-auth ran (the vector reached `/admin/*` with its plugins);
/// 400 means the path was refused before routing.
const VECTORS: &[(&str, u16, Option<&str>)] = &[
    // The plain cases.
    ("/public/x", 200, Some("/public/x")),
    ("/admin/secret.txt", 401, None),
    // Dot segments, raw and encoded in every case.
    ("/public/../admin/secret.txt", 401, None),
    ("/public/%2e%2e/admin/secret.txt", 401, None),
    ("/public/%2E%2E/admin/secret.txt", 401, None),
    ("/public/.%2e/admin/secret.txt", 401, None),
    ("/public/.%2E/admin/secret.txt", 401, None),
    ("/public/%2e./admin/secret.txt", 401, None),
    ("/public/%2E%2e/admin/secret.txt", 401, None),
    ("/./admin/secret.txt", 401, None),
    ("/%2e/admin/secret.txt", 401, None),
    ("/public/./../admin/./secret.txt", 401, None),
    ("/public/a/b/../../../admin/secret.txt", 401, None),
    // Repeated slashes.
    ("//admin/secret.txt", 401, None),
    ("///admin//secret.txt", 401, None),
    ("/public//../admin/secret.txt", 401, None),
    // Encoded slashes are refused, whatever surrounds them.
    ("/public/..%2fadmin/secret.txt", 400, None),
    ("/public/..%2Fadmin/secret.txt", 400, None),
    ("/public/%2e%2e%2fadmin/secret.txt", 400, None),
    ("/%2fadmin/secret.txt", 400, None),
    // Backslashes are refused, raw or encoded.
    ("/public/..\\admin/secret.txt", 400, None),
    ("/public/..%5cadmin/secret.txt", 400, None),
    ("/public/..%5Cadmin/secret.txt", 400, None),
    // Path parameters (Tomcat's `..;` bypass) are refused.
    ("/public/..;/admin/secret.txt", 400, None),
    ("/admin;x/secret.txt", 400, None),
    ("/public/%2e%2e;/admin/secret.txt", 400, None),
    // Overlong UTF-8 dots and slashes are not UTF-8.
    ("/public/%c0%ae%c0%ae/admin/secret.txt", 400, None),
    ("/public/..%c0%afadmin/secret.txt", 400, None),
    ("/public/%e0%80%ae%e0%80%ae/admin/secret.txt", 400, None),
    // NUL and other control characters.
    ("/public/%00/../admin/secret.txt", 400, None),
    ("/public/x%00.txt", 400, None),
    ("/public/x%0d%0aX-Injected:%201", 400, None),
    // `..` above the root.
    ("/..", 400, None),
    ("/../admin/secret.txt", 400, None),
    ("/public/../../admin/secret.txt", 400, None),
    ("/%2e%2e/admin/secret.txt", 400, None),
    // Bad escapes.
    ("/public/%zz", 400, None),
    ("/public/%2", 400, None),
    // Double encoding decodes once: a normal segment named `%2e%2e`.
    (
        "/public/%252e%252e/admin/secret.txt",
        200,
        Some("/public/%252e%252e/admin/secret.txt"),
    ),
    ("/%252e%252e/admin/x", 200, Some("/%252e%252e/admin/x")),
    // Resolved paths go upstream canonically encoded.
    ("/public/./x", 200, Some("/public/x")),
    ("/public//x", 200, Some("/public/x")),
    ("/public/a/../b", 200, Some("/public/b")),
    ("/admin/../public/x", 200, Some("/public/x")),
    ("/public/%41%7e%2D", 200, Some("/public/A~-")),
    ("/public/a%20b", 200, Some("/public/a%20b")),
    ("/public/%3b", 200, Some("/public/%3B")),
    ("/public/caf%c3%a9", 200, Some("/public/caf%C3%A9")),
    ("/public/x/", 200, Some("/public/x/")),
    ("/public/x/..", 200, Some("/public/")),
    (
        "/public/x?q=/../admin&b=%2F",
        200,
        Some("/public/x?q=/../admin&b=%2F"),
    ),
    ("/PUBLIC/../admin/secret.txt", 401, None),
    ("/other/../x", 200, Some("/x")),
];

#[tokio::test]
async fn no_path_reaches_admin_without_its_plugins() {
    let up = Upstream::start().await;
    let auth = json!({"ext-plugin-pre-req": phase(&[("key-auth", json!({"keys": [KEY]}))])});
    let routes = json!([
        route("public", "/public/*", up.addr, json!({})),
        route("admin", "/admin/*", up.addr, auth),
        route("all", "/*", up.addr, json!({})),
    ]);
    let proxy = ProxyProc::start(&config(demo(), json!({}), routes));
    let mut failures = Vec::new();
    for &(target, status, upstream) in VECTORS {
        let before = up.requests().len();
        let got = raw::get(proxy.addr, target, &[]).await;
        let reached = up.requests().get(before).map(|r| r.target.clone());
        if got.status != status || reached.as_deref() != upstream {
            failures.push(format!(
                "{target}: got {} (upstream saw {reached:?}), expected {status} ({upstream:?}); body {}",
                got.status,
                got.text()
            ));
        }
        if status == 400
            && got.status == 400
            && !got.text().contains("bad request path")
            && got.header("content-length") != Some("0")
        {
            failures.push(format!("{target}: a 400 says why, got {}", got.text()));
        }
    }
    // With the key, the dot-segment forms reach /admin/* (so 401 above was
    // key-auth, not a miss) and the upstream gets the normalized path.
    for target in [
        "/public/../admin/secret.txt",
        "/public/%2e%2e/admin/secret.txt",
        "//admin/secret.txt",
    ] {
        let before = up.requests().len();
        let got = raw::get(proxy.addr, target, &[("x-api-key", KEY)]).await;
        let reached = up.requests().get(before).map(|r| r.target.clone());
        if got.status != 200 || reached.as_deref() != Some("/admin/secret.txt") {
            failures.push(format!(
                "{target} with the key: got {} (upstream saw {reached:?})",
                got.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        VECTORS.len(),
        failures.join("\n")
    );
    for r in up.requests() {
        assert!(
            !r.target.to_ascii_lowercase().starts_with("/admin")
                || r.header("x-api-key") == Some(KEY),
            "{} reached the upstream without key-auth",
            r.target
        );
    }
}
