//! How a command ends: every failure class maps to one stable exit code,
//! declared once here ([`Exit`]) and documented in `docs/exit-codes.md` (a
//! test checks the two agree). Each module's error type says which class each
//! of its kinds is in ([`HasExit`]); [`Error`] carries the error with the
//! context the caller added (`backup of plan app failed; …`) and its class.

use std::fmt;

/// Stable exit codes; see `docs/exit-codes.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    Ok,
    Failure,
    Usage,
    Plan,
    Repository,
    Verify,
    Busy,
    Source,
    Target,
    NotImmutable,
    /// `doctor` could not tell: an attack on the canary failed with an error
    /// that is not the lock's refusal, so immutability is not proven.
    ImmutabilityUnknown,
    /// `wal-fetch` only: any failure but "not in the archive". PostgreSQL
    /// treats exit codes above 125 as fatal and stops recovery, where any
    /// other non-zero code would make it end recovery and promote early.
    WalFetchFatal,
    /// `drill`: the restore drill ran and failed (a check, the restore, or
    /// over `max_duration`); its report is recorded.
    DrillFailed,
}

impl Exit {
    pub const ALL: [Exit; 13] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::Plan,
        Exit::Repository,
        Exit::Verify,
        Exit::Busy,
        Exit::Source,
        Exit::Target,
        Exit::NotImmutable,
        Exit::ImmutabilityUnknown,
        Exit::WalFetchFatal,
        Exit::DrillFailed,
    ];

    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Plan => 3,
            Exit::Repository => 4,
            Exit::Verify => 5,
            Exit::Busy => 6,
            Exit::Source => 7,
            Exit::Target => 8,
            Exit::NotImmutable => 9,
            Exit::ImmutabilityUnknown => 10,
            Exit::WalFetchFatal => 126,
            Exit::DrillFailed => 11,
        }
    }

    /// The meaning column of `docs/exit-codes.md`.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::Failure => "other failure",
            Exit::Usage => "usage",
            Exit::Plan => "plan invalid or unreadable",
            Exit::Repository => "repository unavailable",
            Exit::Verify => "verification failed",
            Exit::Busy => "busy",
            Exit::Source => "source failure",
            Exit::Target => "restore target",
            Exit::NotImmutable => "not immutable",
            Exit::ImmutabilityUnknown => "immutability unknown",
            Exit::WalFetchFatal => "`wal-fetch` only: recovery must stop",
            Exit::DrillFailed => "drill failed",
        }
    }
}

/// An error type that knows the exit class of each of its kinds.
pub trait HasExit {
    fn exit(&self) -> Exit;
}

/// A command's failure: the error with its context, and its exit class.
#[derive(Debug)]
pub struct Error {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Error {
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        Error {
            exit,
            error: error.into(),
        }
    }

    pub fn usage(msg: impl fmt::Display) -> Self {
        Error::new(Exit::Usage, anyhow::anyhow!("{msg}"))
    }

    /// Adds what could not be done, keeping the class.
    pub fn context(self, what: impl fmt::Display + Send + Sync + 'static) -> Self {
        Error {
            exit: self.exit,
            error: self.error.context(what),
        }
    }
}

impl fmt::Display for Error {
    /// The context, then each cause, joined by `: `. Many error kinds
    /// already end their message with their cause (`unable to read plan
    /// pg.yml: No such file or directory`) so it shows without the chain; a
    /// cause the text so far already ends with is not said again.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = String::new();
        for cause in self.error.chain() {
            let text = cause.to_string();
            if said == text || said.ends_with(&format!(": {text}")) {
                continue;
            }
            if !said.is_empty() {
                said.push_str(": ");
            }
            said.push_str(&text);
        }
        f.write_str(&said)
    }
}

macro_rules! from_has_exit {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::new(e.exit(), e)
            }
        }
    )*};
}

from_has_exit!(
    crate::plan::PlanError,
    crate::repository::RepoError,
    crate::repository::backup::BackupError,
    crate::repository::materialize::MaterializeError,
    crate::repository::source::SourceError,
    crate::repository::log_archive::LogError,
    crate::store::StoreError,
    crate::engine::RestoreError,
    crate::engine::postgres::PgError,
    crate::engine::postgres::wal::WalError,
    crate::engine::mariadb::binlog::BinlogError,
    crate::ops::doctor::InitError,
    crate::engine::when::TimeError,
);

/// Adds context to a `Result` whose error converts into [`Error`].
pub trait Context<T> {
    fn context<C: fmt::Display + Send + Sync + 'static>(self, what: C) -> Result<T, Error>;
    fn with_context<C: fmt::Display + Send + Sync + 'static>(
        self,
        what: impl FnOnce() -> C,
    ) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context<C: fmt::Display + Send + Sync + 'static>(self, what: C) -> Result<T, Error> {
        self.map_err(|e| e.into().context(what))
    }
    fn with_context<C: fmt::Display + Send + Sync + 'static>(
        self,
        what: impl FnOnce() -> C,
    ) -> Result<T, Error> {
        self.map_err(|e| e.into().context(what()))
    }
}

impl HasExit for crate::plan::PlanError {
    fn exit(&self) -> Exit {
        Exit::Plan
    }
}

impl HasExit for crate::store::StoreError {
    fn exit(&self) -> Exit {
        match self {
            crate::store::StoreError::Busy { .. } | crate::store::StoreError::LeaseLost { .. } => {
                Exit::Busy
            }
            // Over its kind's cap: damaged or planted, like a corrupt object.
            crate::store::StoreError::TooLarge { .. } => Exit::Verify,
            _ => Exit::Repository,
        }
    }
}

impl HasExit for crate::repository::source::SourceError {
    fn exit(&self) -> Exit {
        Exit::Source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_ends_with_is_said_once() {
        let e: Error = crate::plan::PlanError::Read {
            file: "/etc/holdfast/pg.yml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into();
        let e = e.context("unable to archive pg_wal/000000010000000000000003");
        assert_eq!(
            e.to_string(),
            "unable to archive pg_wal/000000010000000000000003: unable to read plan /etc/holdfast/pg.yml: entity not found"
        );
        // A cause the message does not carry is still shown.
        let e = Error::new(
            Exit::Failure,
            anyhow::Error::new(std::io::Error::other("disk full")).context("unable to write x"),
        );
        assert_eq!(e.to_string(), "unable to write x: disk full");
    }

    #[test]
    fn every_exit_code_is_documented_and_every_documented_code_exists() {
        let doc = include_str!("../docs/exit-codes.md");
        let rows: Vec<(u8, String)> = doc
            .lines()
            .filter_map(|l| {
                let mut cells = l.strip_prefix('|')?.split('|').map(str::trim);
                let code = cells.next()?.parse().ok()?;
                Some((code, cells.next()?.to_string()))
            })
            .collect();
        for exit in Exit::ALL {
            assert!(
                rows.iter()
                    .any(|(c, m)| *c == exit.code() && m == exit.meaning()),
                "docs/exit-codes.md has no row `| {} | {} |`",
                exit.code(),
                exit.meaning()
            );
        }
        for (code, _) in &rows {
            assert!(
                Exit::ALL.iter().any(|e| e.code() == *code),
                "docs/exit-codes.md documents exit code {code}, which no error uses"
            );
        }
    }
}
