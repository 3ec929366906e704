//! CRI log files read with a tail (the first byte is the number of lines).
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let lines = bytes.first().copied().unwrap_or_default();
    kubelet::fuzzing::cri_log(bytes.get(1..).unwrap_or_default(), usize::from(lines));
});
