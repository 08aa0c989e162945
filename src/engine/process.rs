//! Running a database's programs from async code: through `tokio::process`
//! (no blocking wait on a runtime worker), with a deadline on every wait, and
//! killed when the wait is dropped, so a cancelled restore or drill leaves no
//! program running behind it.

use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// Why a program gave no output.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {}s and was killed", .after.as_secs())]
    Timeout { program: String, after: Duration },
}

/// Runs `cmd` to its end (stdin closed) and returns its output, or kills it
/// once `deadline` has passed.
pub async fn output(mut cmd: Command, deadline: Duration) -> Result<Output, RunError> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let run = cmd.output();
    match tokio::time::timeout(deadline, run).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(source)) => Err(RunError::Spawn { program, source }),
        Err(_) => Err(RunError::Timeout {
            program,
            after: deadline,
        }),
    }
}
