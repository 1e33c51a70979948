//! Sticky tokens (`wharf_table::{StickyKey, Token}`): a client's cookie value is
//! parsed on every request of a sticky route and looked up among the backends'
//! tokens.
//!
//! Invariants: a cookie value parses only when it is exactly 16 base64url
//! characters, and then prints back to the same bytes; a backend's token parses
//! back to itself; a token verifies for its own backend only, never for another
//! identity and never under another key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_table::sticky::TOKEN_LEN;
use wharf_table::{StickyKey, Token};

fuzz_target!(|data: &[u8]| {
    // Layout: secret, identities and a cookie value, separated by 0xff bytes.
    let mut parts = data.split(|b| *b == 0xff);
    let secret = parts.next().unwrap_or_default();
    let cookie = parts.next().unwrap_or_default();
    let identities: Vec<String> = parts
        .take(8)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();

    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_';
    match Token::parse(cookie) {
        Some(t) => {
            assert!(cookie.len() == TOKEN_LEN && cookie.iter().all(b64));
            assert_eq!(&t.text()[..], cookie, "a parsed token prints differently");
        }
        None => assert!(cookie.len() != TOKEN_LEN || !cookie.iter().all(b64)),
    }

    let key = StickyKey::new(secret);
    // Not a trailing NUL: HMAC pads a short key with zeros (RFC 2104 §2), so
    // `k` and `k\0` are the same key.
    let mut other_secret = secret.to_vec();
    other_secret.push(b'x');
    let other = StickyKey::new(&other_secret);
    let tokens: Vec<Token> = identities.iter().map(|i| key.token(i)).collect();
    for (i, id) in identities.iter().enumerate() {
        let t = tokens[i];
        assert_eq!(Token::parse(&t.text()), Some(t));
        assert_eq!(
            key.token(id),
            t,
            "a token is not a function of the identity"
        );
        assert_ne!(other.token(id), t, "a token verifies under another key");
        for (j, id2) in identities.iter().enumerate() {
            if id2 != id {
                assert_ne!(tokens[j], t, "{id:?} and {id2:?} share a token");
                assert_ne!(tokens[j].id(), t.id(), "{id:?} and {id2:?} share a map key");
            }
        }
    }
    // The cookie, if it is a token, names at most the backends it was made for.
    if let Some(c) = Token::parse(cookie) {
        for (i, id) in identities.iter().enumerate() {
            if tokens[i] == c {
                assert_eq!(key.token(id).text(), c.text());
            }
        }
    }
});
