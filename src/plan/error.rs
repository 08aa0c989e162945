//! Plan errors, and finding where in the YAML text a field lives so every
//! error can name `file:line:column: field.path`.
//!
//! serde_yaml gives a location only for errors raised while it parses. Errors
//! found later (a bad cron expression, a lock too short for the retention) and
//! errors inside parts we parse in two steps (`source`) are located by
//! re-reading the text with a seed that walks to the field and fails there:
//! serde_yaml stamps that failure with the position of the node it was at.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Why a plan could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unable to read plan {}: {source}", .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no plan files (*.yaml, *.yml) in this folder", .dir.display())]
    NoPlans { dir: PathBuf },
    /// The file is not a valid plan.
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    /// Valid, but asks for something this build cannot do (e.g. an S3 repository).
    #[error("{0}")]
    Unsupported(Box<Diagnostic>),
    /// Two plans share a name, so they would share object keys and locks.
    #[error("{}: name: plan name `{name}` is already used by {}", .file.display(), .first.display())]
    DuplicateName {
        file: PathBuf,
        name: String,
        first: PathBuf,
    },
}

/// What is wrong with one field of one plan file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based, where the YAML parser or the field locator gives it.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `schedule.backup` or `drill.checks[1].sql`;
    /// empty for YAML syntax errors.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}{}",
            Place(&self.file, self.line, self.column),
            FieldPrefix(&self.field),
            self.message,
            HintSuffix(&self.hint)
        )
    }
}

impl PlanError {
    /// The plan file (or folder) the error is about.
    pub fn file(&self) -> &Path {
        match self {
            PlanError::Read { file, .. } | PlanError::DuplicateName { file, .. } => file,
            PlanError::Invalid(d) | PlanError::Unsupported(d) => &d.file,
            PlanError::NoPlans { dir } => dir,
        }
    }

    /// The dotted field path, when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            PlanError::Invalid(d) | PlanError::Unsupported(d) => Some(&d.field),
            PlanError::DuplicateName { .. } => Some("name"),
            _ => None,
        }
    }

    /// `(line, column)`, 1-based, when known.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            PlanError::Invalid(d) | PlanError::Unsupported(d) => Some((d.line?, d.column?)),
            _ => None,
        }
    }
}

struct Place<'a>(&'a PathBuf, Option<usize>, Option<usize>);

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())?;
        if let Some(line) = self.1 {
            write!(f, ":{line}")?;
            if let Some(column) = self.2 {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")
    }
}

struct FieldPrefix<'a>(&'a String);

impl fmt::Display for FieldPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

struct HintSuffix<'a>(&'a Option<String>);

impl fmt::Display for HintSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(hint) => write!(f, "\n  hint: {hint}"),
            None => Ok(()),
        }
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A field path such as `drill.checks[1].sql`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(pub(crate) Vec<Seg>);

impl FieldPath {
    /// Parses the dotted form; keys in the plan schema contain no `.` or `[`.
    pub(crate) fn parse(text: &str) -> FieldPath {
        let mut segs = Vec::new();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(i) = rest.find('[') {
                segs.push(Seg::Key(rest[..i].to_string()));
                rest = &rest[i..];
                while let Some(end) = rest.find(']') {
                    if let Ok(n) = rest[1..end].parse() {
                        segs.push(Seg::Index(n));
                    }
                    rest = &rest[end + 1..];
                }
            } else {
                segs.push(Seg::Key(rest.to_string()));
            }
        }
        FieldPath(segs)
    }

    pub(crate) fn join(&self, child: &FieldPath) -> FieldPath {
        let mut segs = self.0.clone();
        segs.extend(child.0.iter().cloned());
        FieldPath(segs)
    }

    pub(crate) fn key(&self, key: &str) -> FieldPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        FieldPath(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl From<&serde_path_to_error::Path> for FieldPath {
    fn from(path: &serde_path_to_error::Path) -> Self {
        use serde_path_to_error::Segment;
        FieldPath(
            path.iter()
                .filter_map(|s| match s {
                    Segment::Seq { index } => Some(Seg::Index(*index)),
                    Segment::Map { key } | Segment::Enum { variant: key } => {
                        Some(Seg::Key(key.clone()))
                    }
                    Segment::Unknown => None,
                })
                .collect(),
        )
    }
}

const MARK: &str = "__holdfast_locate__";

/// Where `path` is in `text`: the key of the last map step, or the element
/// of the last sequence step. 1-based `(line, column)`.
pub(crate) fn locate(text: &str, path: &FieldPath) -> Option<(usize, usize)> {
    if path.0.is_empty() {
        return None;
    }
    let de = serde_yaml::Deserializer::from_str(text);
    let err = Walk(&path.0).deserialize(de).err()?;
    if !err.to_string().contains(MARK) {
        return None;
    }
    err.location().map(|l| (l.line(), l.column()))
}

/// Walks to the remaining path; fails (with [`MARK`]) on the target node.
struct Walk<'a>(&'a [Seg]);

/// Fails on whatever node it is asked to read.
struct Fail;

impl<'de> Visitor<'de> for Fail {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(MARK)
    }
}

impl<'de> DeserializeSeed<'de> for Fail {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Fail)
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.0.is_empty() {
            d.deserialize_any(Fail)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map or a list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(target), rest)) = self.0.split_first() else {
            return Ok(());
        };
        while let Some(found) = map.next_key_seed(Key {
            target,
            fail: rest.is_empty(),
        })? {
            if found {
                return map.next_value_seed(Walk(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(target), rest)) = self.0.split_first() else {
            return Ok(());
        };
        for _ in 0..*target {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Walk(rest))?;
        Ok(())
    }
}

/// Reads a map key; fails on it when it is the last step, else says whether it matched.
struct Key<'a> {
    target: &'a str,
    fail: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.target, self.fail) {
            (true, true) => Err(E::custom(MARK)),
            (matched, _) => Ok(matched),
        }
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name: x\nschedule:\n  backup: \"61 * * * *\"\n  timezone: UTC\ndrill:\n  checks:\n    - sql: one\n    - sql: two\n";

    #[test]
    fn finds_keys_and_list_items() {
        assert_eq!(locate(TEXT, &FieldPath::parse("name")), Some((1, 1)));
        assert_eq!(
            locate(TEXT, &FieldPath::parse("schedule.timezone")),
            Some((4, 3))
        );
        assert_eq!(
            locate(TEXT, &FieldPath::parse("drill.checks[1]")),
            Some((8, 7))
        );
        assert_eq!(
            locate(TEXT, &FieldPath::parse("drill.checks[1].sql")),
            Some((8, 7))
        );
    }

    #[test]
    fn a_missing_field_has_no_location() {
        assert_eq!(locate(TEXT, &FieldPath::parse("schedule.drill")), None);
        assert_eq!(locate(TEXT, &FieldPath::parse("drill.checks[5]")), None);
    }

    #[test]
    fn paths_print_as_written_in_errors() {
        assert_eq!(
            FieldPath::parse("drill.checks[1].sql").to_string(),
            "drill.checks[1].sql"
        );
    }
}
