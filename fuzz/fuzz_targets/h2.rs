//! Wharf's HTTP/2 server (`crates/wharf-proxy/src/http2/`) on any bytes.
//!
//! Invariants (see `wharf_proxy::fuzzing`): HPACK decoding keeps the dynamic
//! table within its size and the fields it decodes encode and decode again to
//! themselves; a connection fed any frames after the preface ends without a
//! panic or a hang, whatever it answers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    if first % 2 == 0 {
        wharf_proxy::fuzzing::hpack(data);
    } else {
        wharf_proxy::fuzzing::h2_connection(data);
    }
});
