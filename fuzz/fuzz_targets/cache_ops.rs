//! Operation sequences on the public cache API, checked against the sequential spec after every
//! operation (see `leasecache::fuzzing::run_cache_ops`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasecache::fuzzing::run_cache_ops(data);
});
