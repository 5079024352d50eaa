//! The checks of cachecast's fuzz targets (`fuzz_targets/`), in a library so
//! that the corpus test (`tests/fuzz_corpus.rs` of the main crate, which
//! includes these files) runs the committed seeds through the same checks on
//! the stable toolchain.

pub mod alloc;
pub mod auth_checks;
pub mod node;
pub mod wire_checks;
