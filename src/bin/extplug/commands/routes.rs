//! `extplug routes --config FILE [--offline]`: the routes a source would
//! serve, and each object skipped with the reason.

use crate::runtime::{fail, interruptible};
use extplug::host;
use std::path::Path;
use std::process::ExitCode;

/// `extplug routes`: prints the listing ([`host::source::list`]).
pub fn run(path: &Path, offline: bool) -> ExitCode {
    let result = interruptible(|interrupted| async move {
        host::source::list::check(path, offline, &interrupted).await
    });
    let result = match result {
        Ok(result) => result,
        Err(code) => return code,
    };
    match result {
        Ok((table, source)) => {
            print!("{}", host::source::list::render(&table, &source));
            if table.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => fail(&e.to_string()),
    }
}
