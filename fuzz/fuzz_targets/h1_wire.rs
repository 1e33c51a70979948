//! The HTTP/1.1 engine's head parser and writer and its chunked decoder
//! (`crates/wharf-proxy/src/h1/wire.rs`) on any bytes.
//!
//! Invariants (see `wharf_proxy::fuzzing`): a request head the engine serves is
//! written for the backend as exactly one HTTP/1.1 head, with the same method,
//! target, host and framing, one `X-Forwarded-For`, and no hop-by-hop or
//! untrusted forwarding field, and a sticky cookie's rewrite in place of every
//! `Cookie` field; a response head it accepts is written as one
//! head with the framing it will send; the chunked decoder's output does not
//! depend on how its input was split and is itself valid chunked coding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    match first % 4 {
        0 => wharf_proxy::fuzzing::request_round_trip(data, false),
        1 => wharf_proxy::fuzzing::request_round_trip(data, true),
        2 => wharf_proxy::fuzzing::response_round_trip(data),
        _ => wharf_proxy::fuzzing::chunked(data, usize::from(first / 4) + 1),
    }
});
