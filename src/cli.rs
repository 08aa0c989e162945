//! Command line: parses arguments, sets up logging, calls into the library.

use std::process::ExitCode;

pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
