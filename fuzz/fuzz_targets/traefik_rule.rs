//! Traefik rule parsers (`wharf_config::traefik::parse_v1_rule`, `parse_v2_rule`):
//! a rule is a label value anyone who deploys a stack can set.
//!
//! Invariants: a v1 or v2 rule never expands to more than 64 alternatives (the
//! parsers' memory bound), so what it expands to holds at most 64 host entries
//! per byte of the rule (memory linear in the label); a host list is never
//! empty (an empty list would mean "any host"); parsing is deterministic.
//!
//! (This target found a v1 rule whose host list was copied once per
//! PathPrefix value, 733 MB from 12 KB; fixed: at most 64 PathPrefix values, as
//! a v2 rule's 64 alternatives. docs/security.md, "Fuzzing".)
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_config::traefik::{parse_v1_rule, parse_v2_rule, Term};

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
        assert!(terms.len() <= 64, "{rule:?}: {} alternatives", terms.len());
        assert!(
            host_entries(&terms) <= 64 * rule.len(),
            "{rule:?}: {} host entries from {} bytes",
            host_entries(&terms),
            rule.len()
        );
        let mut again = 0usize;
        assert_eq!(parse_v1_rule(rule, &mut |_| again += 1), Ok(terms));
        assert_eq!(warnings, again);
    }
});
