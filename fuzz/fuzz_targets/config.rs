//! The configuration parser, fed arbitrary text: a configuration or an
//! error that says what is wrong, never a panic.
#![no_main]

use extplug::host::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = Config::parse(text) {
            // Formatting the error must not panic either.
            let _ = e.to_string();
        }
    }
});
