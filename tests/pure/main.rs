//! The tests that start no process: the layer rules of the sources.

mod layers;
