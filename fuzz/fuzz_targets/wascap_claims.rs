//! Actor modules as a publisher signs (or forges) them: wascap claims in custom sections.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    wascc_runtime::fuzzing::claims(bytes);
});
