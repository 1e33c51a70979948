//! `WHARF_<SECTION>_<KEY>` environment overrides (SPEC: "Every config key can be
//! overridden by an environment variable"), applied to the parsed TOML before it is
//! validated, so an override is checked exactly like the file.

use crate::file::{Kind, ENTRYPOINT_KEYS, SECTION_KEYS};

/// Variables the binary reads itself; they are not config keys.
pub const BINARY_VARS: &[&str] = &[
    "WHARF_CONFIG",
    "WHARF_LOG",
    "WHARF_LOG_FORMAT",
    "WHARF_HTTP1_ENGINE",
    "WHARF_HTTP2_ENGINE",
];

/// The outcome of applying overrides.
#[derive(Debug, Default)]
pub struct EnvReport {
    /// `VAR → section.key` for each override applied.
    pub applied: Vec<(String, String)>,
    /// `WHARF_*` variables that name no key (reported as warnings).
    pub unknown: Vec<String>,
}

fn env_name(dotted: &str) -> String {
    dotted.replace(['.', '-'], "_").to_ascii_uppercase()
}

/// Applies every `WHARF_*` variable of `vars` to `doc`. A value that does not fit
/// the key's kind is an error naming the variable.
pub fn apply(
    doc: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<EnvReport, String> {
    let mut report = EnvReport::default();
    let mut vars: Vec<_> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("WHARF_") && !BINARY_VARS.contains(&k.as_str()))
        .collect();
    vars.sort();
    for (var, value) in vars {
        let rest = &var["WHARF_".len()..];
        let target = section_target(rest).or_else(|| entrypoint_target(doc, rest));
        let Some((path, kind)) = target else {
            report.unknown.push(var);
            continue;
        };
        let v = convert(&value, kind).map_err(|e| format!("{var}: {e}"))?;
        set(doc, &path, v).map_err(|e| format!("{var}: {e}"))?;
        report.applied.push((var, path.join(".")));
    }
    Ok(report)
}

fn section_target(rest: &str) -> Option<(Vec<String>, Kind)> {
    SECTION_KEYS.iter().find_map(|(section, key, kind)| {
        (env_name(&format!("{section}.{key}")) == rest).then(|| {
            let mut path: Vec<String> = section.split('.').map(String::from).collect();
            path.push((*key).to_string());
            (path, *kind)
        })
    })
}

fn entrypoint_target(doc: &toml::Table, rest: &str) -> Option<(Vec<String>, Kind)> {
    let rest = rest.strip_prefix("ENTRYPOINTS_")?;
    // Longest key first, so `PROXY_PROTOCOL_TRUSTED` is not read as a name ending in
    // `_PROXY_PROTOCOL` plus a key `TRUSTED`.
    let mut keys: Vec<_> = ENTRYPOINT_KEYS.iter().collect();
    keys.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (key, kind) in keys {
        let suffix = format!("_{}", env_name(key));
        let Some(name) = rest.strip_suffix(&suffix) else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let existing = doc
            .get("entrypoints")
            .and_then(|e| e.as_table())
            .and_then(|eps| eps.keys().find(|k| env_name(k) == name).cloned());
        let name = existing.unwrap_or_else(|| name.to_ascii_lowercase());
        let mut path = vec!["entrypoints".to_string(), name];
        path.extend(key.split('.').map(String::from));
        return Some((path, *kind));
    }
    None
}

fn convert(value: &str, kind: Kind) -> Result<toml::Value, String> {
    Ok(match kind {
        Kind::Str => toml::Value::String(value.to_string()),
        Kind::Bool => toml::Value::Boolean(crate::values::boolean(value)?),
        Kind::Int => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| format!("`{value}` is not a whole number"))?,
        ),
        Kind::List => toml::Value::Array(
            crate::values::list(value)
                .into_iter()
                .map(toml::Value::String)
                .collect(),
        ),
    })
}

fn set(doc: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut t = doc;
    for p in parents {
        t = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` in the file is not a table"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn sections_and_entrypoints() {
        let mut doc: toml::Table = "[entrypoints.web-alt]\naddress = \"[::]:80\"\n"
            .parse()
            .unwrap();
        let rep = apply(
            &mut doc,
            vars(&[
                ("WHARF_ACME_EMAIL", "ops@example.org"),
                ("WHARF_DOCKER_EXPOSED_BY_DEFAULT", "true"),
                ("WHARF_RUNTIME_WORKER_THREADS", "1"),
                ("WHARF_ACME_DNS_ZONE", "example.org"),
                ("WHARF_ENTRYPOINTS_WEB_ALT_ADDRESS", "127.0.0.1:81"),
                (
                    "WHARF_ENTRYPOINTS_NEW_PROXY_PROTOCOL_TRUSTED",
                    "10.0.0.0/8, ::1/128",
                ),
                ("WHARF_LOG", "debug"),
                ("WHARF_HTTP1_ENGINE", "hyper"),
                ("WHARF_HTTP2_ENGINE", "hyper"),
                ("WHARF_NOPE", "x"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(doc["acme"]["email"].as_str(), Some("ops@example.org"));
        assert_eq!(doc["acme"]["dns"]["zone"].as_str(), Some("example.org"));
        assert_eq!(doc["docker"]["exposed_by_default"].as_bool(), Some(true));
        assert_eq!(doc["runtime"]["worker_threads"].as_integer(), Some(1));
        assert_eq!(
            doc["entrypoints"]["web-alt"]["address"].as_str(),
            Some("127.0.0.1:81")
        );
        assert_eq!(
            doc["entrypoints"]["new"]["proxy_protocol"]["trusted"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(rep.unknown, vec!["WHARF_NOPE".to_string()]);
        assert_eq!(rep.applied.len(), 6);
    }

    #[test]
    fn typed_errors_name_the_variable() {
        let mut doc = toml::Table::new();
        let e = apply(&mut doc, vars(&[("WHARF_RUNTIME_WORKER_THREADS", "many")])).unwrap_err();
        assert!(e.starts_with("WHARF_RUNTIME_WORKER_THREADS"), "{e}");
    }
}
