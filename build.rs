//! Compiles `schema/ext_plugin.capnp` into Rust with `capnpc`.
//!
//! This needs the `capnp` schema compiler on the PATH (Debian/Ubuntu package
//! `capnproto`). `scripts/test.sh` and `scripts/demo.sh` install it when it is
//! missing; any other build gets the explicit message below instead of a
//! bare "No such file or directory".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=schema/ext_plugin.capnp");
    if Command::new("capnp").arg("--version").output().is_err() {
        panic!(
            "extplug's build needs the Cap'n Proto schema compiler `capnp` on the PATH \
             to compile schema/ext_plugin.capnp. Install it (Debian/Ubuntu: \
             `apt-get install -y capnproto`; macOS: `brew install capnp`) and build again."
        );
    }
    capnpc::CompilerCommand::new()
        .src_prefix("schema")
        .file("schema/ext_plugin.capnp")
        // The generated module lives at `crate::wire::ext_plugin_capnp`: its
        // cross-references are absolute paths under that parent.
        .default_parent_module(vec!["wire".into()])
        .run()
        .expect("compiling schema/ext_plugin.capnp with capnpc");
}
