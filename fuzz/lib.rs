//! Nothing: this package exists for its test target, `../tests/fuzz/`.
//! Its test harness links bolero (see Cargo.toml).

extern crate bolero;
