//! Query strings of the kubelet API's /containerLogs.
#![no_main]
libfuzzer_sys::fuzz_target!(|query: &str| {
    kubelet::fuzzing::log_query(query);
});
