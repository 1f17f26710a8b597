//! Operation sequences on the single-threaded shard core, checked by its invariant checker and a
//! lossy model after every operation (see `leasecache::fuzzing::run_shard_ops`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    leasecache::fuzzing::run_shard_ops(data);
});
