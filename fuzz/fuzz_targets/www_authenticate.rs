//! `WWW-Authenticate` challenges as a registry sends them.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    kubelet::fuzzing::www_authenticate(text);
});
