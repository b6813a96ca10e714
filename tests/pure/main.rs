//! The tests that start no process: the layer rules of the sources, the
//! wire's properties, the fuzzers' findings replayed, and the links of the
//! README and `docs/`.

mod docs_links;
mod fuzz_regressions;
mod layers;
mod wire_props;
