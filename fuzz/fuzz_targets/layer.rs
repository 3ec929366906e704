//! Filesystem layers (tar, and tar+gzip when the first byte is odd) of wasi/wasm images.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let gzip = bytes.first().is_some_and(|b| b % 2 == 1);
    kubelet::fuzzing::layer(gzip, bytes.get(1..).unwrap_or_default());
});
