//! Host name normalisation shared by the compiler and the hot path, so that both
//! sides of a lookup agree on one spelling.

use std::borrow::Cow;

/// Lower-cases a host, strips a port and a trailing dot (RFC 3986 §3.2.2 hosts are
/// case-insensitive; RFC 1034 §3.1 allows the absolute form `example.org.`).
/// Borrows when the input is already normal, which is the common case.
///
/// Returns `None` for an empty or syntactically impossible host (control characters,
/// spaces, an unbalanced IPv6 literal), which the proxy answers with 400.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: keep the brackets, drop any port after them; nothing
        // else may follow the `]`.
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !after.is_empty() && !is_port(after.strip_prefix(':')?) {
            return None;
        }
        &raw[..end + 2]
    } else {
        // At most one `:` outside brackets, and a port after it.
        match raw.split_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    // One trailing dot is the absolute form; a second (`a..`, `..`) is an empty
    // label, refused so that normalising is idempotent (found by fuzz/host).
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 || host.ends_with('.') {
        return None;
    }
    let mut needs_lower = false;
    for b in host.bytes() {
        match b {
            b'A'..=b'Z' => needs_lower = true,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'[' | b']' | b':' | b'*' => {}
            _ => return None,
        }
    }
    Some(if needs_lower {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn is_port(p: &str) -> bool {
    // RFC 3986 §3.2.3: `port = *DIGIT`, so an empty port is allowed.
    p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(normalize_host("Example.ORG").unwrap(), "example.org");
        assert_eq!(normalize_host("example.org:8080").unwrap(), "example.org");
        assert_eq!(normalize_host("example.org.").unwrap(), "example.org");
        assert_eq!(normalize_host("[::1]:80").unwrap(), "[::1]");
        assert_eq!(normalize_host("[::1]").unwrap(), "[::1]");
        assert!(matches!(normalize_host("a.b").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn rejects_garbage() {
        assert!(normalize_host("").is_none());
        assert!(normalize_host(":80").is_none());
        assert!(normalize_host("a b").is_none());
        assert!(normalize_host("a\r\nb").is_none());
        assert!(normalize_host("[::1").is_none());
        assert!(normalize_host("host:port").is_none());
        assert!(normalize_host(&"a".repeat(300)).is_none());
        // Junk after the IPv6 literal, more than one `:` outside brackets, an
        // overlong port.
        assert!(normalize_host("[::1]junk").is_none());
        // Two trailing dots: an empty label (normalising must be idempotent).
        assert!(normalize_host("a..").is_none());
        assert!(normalize_host("..").is_none());
        assert!(normalize_host(".").is_none());
        assert!(normalize_host("[::1]:80x").is_none());
        assert!(normalize_host("[::1]]").is_none());
        assert!(normalize_host("a:b:80").is_none());
        assert!(normalize_host("a::80").is_none());
        assert!(normalize_host("example.org:123456").is_none());
    }
}
