//! Secrets in plans: a newtype that never prints or serialises its value, and
//! `${VAR}` expansion from an injected environment.

pub use crate::secret::Secret;

/// Why `${VAR}` expansion failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExpandError {
    Missing(String),
    Empty(String),
    Malformed(String),
}

/// Replaces every `${NAME}` in `text` (NAME = `[A-Za-z_][A-Za-z0-9_]*`) with
/// `env(NAME)`. Returns the expanded text and how many references it had.
pub(crate) fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, usize), ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut count = 0;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            ExpandError::Malformed(format!(
                "`${{` without a closing `}}` in `{}`",
                redact(text)
            ))
        })?;
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ExpandError::Malformed(format!(
                "`${{{name}}}` is not a variable reference; names are letters, digits and _"
            )));
        }
        match env(name) {
            None => return Err(ExpandError::Missing(name.to_string())),
            Some(v) if v.is_empty() => return Err(ExpandError::Empty(name.to_string())),
            Some(v) => out.push_str(&v),
        }
        count += 1;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, count))
}

/// A string that may hold a secret, safe to show in an error: only its `${…}` skeleton.
fn redact(text: &str) -> String {
    if text.contains("${") {
        text.to_string()
    } else {
        "***".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PGPASS" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn references_expand_and_are_counted() {
        assert_eq!(expand("${PGPASS}", &env), Ok(("s3cret".into(), 1)));
        assert_eq!(
            expand("postgres://app:${PGPASS}@db/app", &env),
            Ok(("postgres://app:s3cret@db/app".into(), 1))
        );
        assert_eq!(expand("plain", &env), Ok(("plain".into(), 0)));
    }

    #[test]
    fn missing_empty_and_malformed_references_fail() {
        assert_eq!(
            expand("${NOPE}", &env),
            Err(ExpandError::Missing("NOPE".into()))
        );
        assert_eq!(
            expand("${EMPTY}", &env),
            Err(ExpandError::Empty("EMPTY".into()))
        );
        assert!(matches!(
            expand("${1X}", &env),
            Err(ExpandError::Malformed(_))
        ));
        assert!(matches!(
            expand("${OPEN", &env),
            Err(ExpandError::Malformed(_))
        ));
    }
}
