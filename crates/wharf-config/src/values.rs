//! Parsers for the small value languages of the configuration: durations, booleans,
//! rates, status lists, host names. Shared by the file and by labels so both accept
//! exactly the same spellings.

use std::time::Duration;

/// `10s`, `500ms`, `5m`, `3h`, `1h30m` (humantime's syntax).
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. `10s`, `500ms`, `5m`"))
}

/// Like [`duration`] but refuses zero, for timeouts and intervals.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(d)
}

pub fn boolean(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean; write `true` or `false`")),
    }
}

pub fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a valid {what}"))
}

/// Most requests per second a rate may allow: a larger one limits nothing a
/// proxy could serve (leave the rate limit unset instead).
pub const MAX_RATE: f64 = 1_000_000.0;

/// A rate `N/s`, `N/m` or `N/h` with a whole N > 0, returned as requests per
/// second, at most [`MAX_RATE`].
pub fn rate(s: &str) -> Result<f64, String> {
    let form = "write `N/s`, `N/m` or `N/h` with a whole number N > 0, e.g. `100/s` or `30/m`";
    let Some((n, unit)) = s.trim().split_once('/') else {
        return Err(format!("`{s}` is not a rate; {form}"));
    };
    let per = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        u => {
            return Err(format!(
                "`{s}` is not a rate: `{u}` is not a unit (s, m or h); {form}"
            ))
        }
    };
    let n = n.trim();
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if n.parse::<f64>().is_ok() {
            format!(
                "`{s}` is not a rate: N must be a whole number above zero; for less than one \
                 request per second use a longer unit, e.g. `30/m`"
            )
        } else {
            format!("`{s}` is not a rate; {form}")
        });
    }
    // Digits only, so it parses (a huge N as infinity); exact up to 2^53, and a
    // larger N is far above MAX_RATE anyway.
    let n: f64 = n.parse().unwrap_or(f64::INFINITY);
    if n == 0.0 {
        return Err(format!(
            "`{s}` is a rate of zero, which would refuse every request; {form} (leave the rate \
             limit unset for no limit)"
        ));
    }
    let per_second = n / per;
    if per_second > MAX_RATE {
        return Err(format!(
            "`{s}` is more than 1000000 requests per second, which limits nothing; leave the \
             rate limit unset for no limit"
        ));
    }
    Ok(per_second)
}

/// An accepted-status list like `2xx,3xx`, `200-399` or `200,204` (as HAProxy's
/// `http-check expect status 200-399`), as inclusive ranges.
pub fn status_list(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            format!(
                "`{part}` is not a status, class or range; write e.g. `200`, `2xx` or `200-399` \
                 (codes 100 to 599)"
            )
        };
        let code = |c: &str| -> Result<u16, String> {
            match c.trim().parse::<u16>() {
                Ok(n) if (100..=599).contains(&n) => Ok(n),
                _ => Err(bad()),
            }
        };
        if let Some(class) = part.strip_suffix("xx").or_else(|| part.strip_suffix("XX")) {
            let c: u16 = class.parse().map_err(|_| bad())?;
            if !(1..=5).contains(&c) {
                return Err(bad());
            }
            out.push((c * 100, c * 100 + 99));
        } else if let Some((lo, hi)) = part.split_once('-') {
            let (lo, hi) = (code(lo)?, code(hi)?);
            if lo > hi {
                return Err(format!(
                    "`{part}` is an empty range; write the lower code first, e.g. `200-399`"
                ));
            }
            out.push((lo, hi));
        } else {
            let c = code(part)?;
            out.push((c, c));
        }
    }
    if out.is_empty() {
        return Err("the status list is empty".into());
    }
    Ok(out)
}

/// Validates and normalises one host pattern: `example.org`, `*.example.org` or `*`.
pub fn host_pattern(raw: &str) -> Result<String, String> {
    let h = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    if h == "*" {
        return Ok(h);
    }
    let name = h.strip_prefix("*.").unwrap_or(&h);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!(
            "`{raw}` is not a host name (letters, digits, `-`, dots; `*.` only as the first label)"
        ));
    }
    Ok(h)
}

/// A comma-separated list, trimmed, empty items dropped.
pub fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// Edit distance counting an adjacent transposition as one edit (optimal string
/// alignment), for "did you mean" hints on unknown keys: `hots` is one edit from
/// `host`, as a typist would count it.
///
/// Rolling rows (the previous two and the current one: a transposition looks two
/// rows back), so memory is linear in the shorter input, never quadratic.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut before: Vec<usize> = vec![0; width];
    let mut prev: Vec<usize> = (0..width).collect();
    let mut cur: Vec<usize> = vec![0; width];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(before[j - 2] + 1);
            }
            cur[j] = v;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Keys longer than this get no "did you mean" (no known key is near as long,
/// and the distance costs the product of the lengths).
pub const SUGGEST_MAX_KEY: usize = 64;

/// The longest label key accepted (bytes); longer is an error before any other
/// check (security review M7). docs/labels.md documents it.
pub const MAX_LABEL_KEY: usize = 256;
/// The longest label value accepted (bytes): room for a few htpasswd lines or a
/// long rule, not for a megabyte a control plane would parse on every change.
pub const MAX_LABEL_VALUE: usize = 4096;

/// Whether a label's value (or a file key's) is a secret that problems, logs and
/// `/api/errors` must not show: basic-auth users, and header values of fields
/// that carry credentials.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    if k.contains("basicauth")
        || k.contains("auth.basic")
        || k.contains("digestauth")
        || k.contains("auth.digest")
    {
        return true;
    }
    let last = k.rsplit('.').next().unwrap_or("");
    let header_key = k.contains("headers.")
        || k.contains("customrequestheaders")
        || k.contains("customresponseheaders");
    header_key && wharf_table::middleware::is_secret_header(last)
}

/// The closest candidate within an edit distance of 3, if any.
pub fn suggest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter(|_| key.len() <= SUGGEST_MAX_KEY)
        .map(|c| (edit_distance(key, c), c))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values() {
        assert_eq!(duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(duration("ten").is_err());
        assert!(positive_duration("0s").is_err());
        assert_eq!(rate("100/s").unwrap(), 100.0);
        assert_eq!(rate("60/m").unwrap(), 1.0);
        assert_eq!(rate(" 7 / h ").unwrap(), 7.0 / 3600.0);
        assert_eq!(rate("1000000/s").unwrap(), MAX_RATE);
        for (bad, needle) in [
            ("0/s", "a rate of zero"),
            ("abc", "`abc` is not a rate; write `N/s`"),
            ("5/x", "`x` is not a unit (s, m or h)"),
            ("5/d", "`d` is not a unit"),
            ("5/s/2", "`s/2` is not a unit"),
            ("-5/s", "whole number above zero"),
            ("0.5/s", "whole number above zero"),
            ("/s", "is not a rate; write"),
            ("1000001/s", "more than 1000000 requests per second"),
            ("4294967295/m", "more than 1000000 requests per second"),
            ("99999999999/h", "more than 1000000 requests per second"),
            (
                "99999999999999999999999999/s",
                "more than 1000000 requests per second",
            ),
            ("+5/s", "whole number above zero"),
        ] {
            let e = rate(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert_eq!(
            status_list("2xx,3xx").unwrap(),
            vec![(200, 299), (300, 399)]
        );
        assert_eq!(
            status_list("200, 204").unwrap(),
            vec![(200, 200), (204, 204)]
        );
        assert_eq!(
            status_list("200-399, 404").unwrap(),
            vec![(200, 399), (404, 404)]
        );
        assert!(status_list("399-200").is_err());
        assert!(status_list("200-700").is_err());
        assert!(status_list("200-").is_err());
        assert!(status_list("9xx").is_err());
        assert!(status_list("ok").is_err());
        assert!(status_list("").is_err());
        assert_eq!(host_pattern("A.Example.org.").unwrap(), "a.example.org");
        assert_eq!(host_pattern("*.example.org").unwrap(), "*.example.org");
        assert!(host_pattern("a.*.org").is_err());
        assert!(host_pattern("a b").is_err());
        assert!(host_pattern("example.org:80").is_err());
        assert!(boolean("TRUE").unwrap());
        assert!(boolean("yes").is_err());
    }

    #[test]
    fn suggests() {
        assert_eq!(
            suggest("helthcheck.path", ["healthcheck.path", "host"]),
            Some("healthcheck.path")
        );
        assert_eq!(suggest("zzzzzzzz", ["host"]), None);
        assert_eq!(edit_distance("hots", "host"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest("hots", ["host", "hsts"]), Some("host"));
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("ca", "abc"), 3);
        // Long keys: no suggestion, and no quadratic work.
        let long = "a".repeat(SUGGEST_MAX_KEY + 1);
        assert_eq!(suggest(&long, [long.as_str()]), None);
    }

    #[test]
    fn secret_keys() {
        for k in [
            "traefik.http.middlewares.a.basicauth.users",
            "wharf.basicauth.users",
            "wharf.routes.x.basicauth",
            "traefik.frontend.auth.basic.users",
            "traefik.http.middlewares.h.headers.customrequestheaders.Authorization",
            "wharf.headers.request.x-api-key",
            "headers.request.Cookie",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "wharf.host",
            "wharf.headers.request.x-env",
            "wharf.ipallowlist",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
