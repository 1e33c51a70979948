//! Request paths: which ones the proxy routes at all, and how a route's path
//! prefix matches. Shared by the hot path and its tests so the route chosen and
//! the path the backend sees cannot disagree (docs/security.md, "Paths and
//! hosts").
//!
//! Wharf does not rewrite paths: a path reaches the backend byte for byte as
//! the client sent it. So that no backend can read a path differently from the
//! prefix Wharf matched, a path that a backend might resolve to another
//! location is refused (400) instead of normalised:
//! - a dot segment, `.` or `..`, also percent-encoded (`%2e`) or with a
//!   `;parameter` after it (`..;/`, which Tomcat and Spring treat as `..`);
//! - an encoded slash or backslash (`%2f`, `%5c`), a raw backslash, or an
//!   encoded NUL (`%00`);
//! - a percent-encoded unreserved character (`%61` for `a`): RFC 3986 §2.3 says
//!   such characters must be decoded, so a backend may see `/api` where Wharf
//!   saw `/%61pi`; producers never need to encode them;
//! - an empty segment (`//`), which many servers merge into one slash;
//! - a path that does not start with `/` (RFC 9112 §3.2.1 origin form, RFC
//!   9113 §8.3.1 `:path`), except `*` for `OPTIONS`.

/// Whether `path` (without the query) may be routed and forwarded as it is.
#[inline]
pub fn path_is_clean(path: &str, options: bool) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return options && path == "*";
    }
    // One pass: `//` and `\` refuse at once; the common path has no `%` or
    // `.` and needs nothing more.
    let mut closer = false;
    let mut prev_slash = false;
    for &c in b {
        match c {
            b'/' if prev_slash => return false,
            b'\\' => return false,
            b'%' | b'.' => closer = true,
            _ => {}
        }
        prev_slash = c == b'/';
    }
    if !closer {
        return true;
    }
    // Percent escapes: none of an unreserved character, a slash, a backslash
    // or NUL.
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'%') {
        let at = i + off;
        let (Some(h), Some(l)) = (b.get(at + 1), b.get(at + 2)) else {
            return false;
        };
        let (Some(h), Some(l)) = (hex(*h), hex(*l)) else {
            return false;
        };
        let c = (h << 4) | l;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\' | 0) {
            return false;
        }
        i = at + 3;
    }
    // Dot segments, with any `;parameters` dropped.
    !path.split('/').any(|seg| {
        let seg = seg.split(';').next().unwrap_or(seg);
        seg == "." || seg == ".."
    })
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A route path prefix matches on segment boundaries: `/api` matches `/api`,
/// `/api/` and `/api/x`, never `/apix`. A prefix ending in `/` (`/`, `/api/`)
/// matches whatever follows it. A `;` also ends the segment: `/admin;jsessionid=1`
/// is `/admin` with path parameters to Tomcat, Jetty and Spring, so it must reach
/// the `/admin` route (and its auth), not fall through to a shorter one.
#[inline]
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || matches!(path.as_bytes()[prefix.len()], b'/' | b';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/ap", "/ap/i"));
        assert!(!prefix_matches("/ap", "/api"));
        // Path parameters end a segment (the backend reads `/admin`).
        assert!(prefix_matches("/admin", "/admin;jsessionid=1/secret"));
        assert!(prefix_matches("/admin", "/admin;x"));
    }

    #[test]
    fn clean_paths_pass() {
        for p in [
            "/",
            "/api",
            "/api/v1/users",
            "/file.txt",
            "/a.b/c..d/.well-known/acme-challenge/x",
            "/...",
            "/a%20b",
            "/%E2%82%AC",
            "/a;b=c",
            "/q%3Fx",
        ] {
            assert!(path_is_clean(p, false), "{p}");
        }
        assert!(path_is_clean("*", true));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for p in [
            "/public/../internal",
            "/public/./x",
            "/public/..",
            "/public/.",
            "/public/%2e%2e/internal",
            "/public/%2E%2E/internal",
            "/public/.%2e/x",
            "/public/%2e",
            "/public/..;/actuator/env",
            "/public/..;jsessionid=1/x",
            "/public%2finternal",
            "/public%2Finternal",
            "/public%5cinternal",
            "/public\\..\\internal",
            "/%61pi",
            "/api%2D1",
            "/x%00",
            "/bad%zz",
            "/trunc%2",
            "//api",
            "/api//x",
            "",
            "api",
            "*",
            "http://x/",
        ] {
            assert!(!path_is_clean(p, false), "{p}");
        }
        assert!(!path_is_clean("**", true));
    }
}
