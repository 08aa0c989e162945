//! Output for people and scripts: byte sizes, tables, `--json`. Every line
//! goes through [`outln!`], which turns a closed stdout (`holdfast snapshots |
//! head`) into a quiet stop instead of a panic.

use std::io::Write;

use crate::error::{Error, Exit};

/// `println!` that returns an error instead of panicking when stdout is gone.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::render::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

pub fn line(args: std::fmt::Arguments<'_>) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|_| out.write_all(b"\n"))
        .map_err(|e| {
            Error::new(
                Exit::Failure,
                anyhow::Error::new(e).context("unable to write to stdout"),
            )
        })
}

/// True when the error is stdout closed by its reader: the command stops
/// quietly, as `head` expects.
pub fn is_closed_pipe(e: &Error) -> bool {
    e.error.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Pretty JSON on stdout, for `--json`.
pub fn json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    line(format_args!(
        "{}",
        serde_json::to_string_pretty(value).expect("reports serialise")
    ))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
