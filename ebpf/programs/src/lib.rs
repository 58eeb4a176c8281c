//! Empty library target so `dataplane` can name this crate as a build-dependency
//! (cargo then rebuilds the embedded object when these sources change).
#![no_std]
