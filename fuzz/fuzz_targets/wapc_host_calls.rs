//! Host calls as an actor makes them across the waPC boundary, to every capability provider.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wascc_runtime::fuzzing::host_calls(data);
});
