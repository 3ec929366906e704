//! Manifests and image indexes as a registry sends them.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    kubelet::fuzzing::manifest(bytes);
});
