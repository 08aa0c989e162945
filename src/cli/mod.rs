//! Command line: parses arguments, sets up logging and progress, and hands
//! each command to its file in this folder, which calls one `ops` use case
//! and renders the report (text, or `--json` for scripts). Failures end with
//! the stable exit codes of `crate::error` (`docs/exit-codes.md`).

mod backup;
mod binlog;
mod daemon;
mod doctor;
mod drill;
mod key;
mod locks;
mod plan;
mod prune;
pub(crate) mod render;
mod repair;
mod repo;
mod restore;
mod snapshots;
mod verify;
mod wal;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::{Error, Exit};
use crate::plan::Plan;
use crate::progress::ProgressMode;

#[derive(Debug, Parser)]
#[command(
    name = "holdfast",
    version,
    about = "Checksummed, deduplicated, immutable backups and rehearsed restores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Only warnings and errors on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// No progress bar (log lines still report progress).
    #[arg(long, global = true)]
    no_progress: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Take a snapshot of a plan's source now.
    Backup {
        #[command(flatten)]
        plan: PlanArg,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List a plan's snapshots.
    Snapshots {
        #[command(flatten)]
        plan: PlanArg,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into an empty or new path; for PostgreSQL, rebuild
    /// the cluster as it was at a point in time (`--at`, `--lsn`, `--latest`).
    Restore(restore::RestoreArgs),
    /// Read every object of a plan's snapshots and recompute every checksum
    /// (of the packs: all, or a rotating share, as the plan or `--sample` says).
    Verify {
        #[command(flatten)]
        plan: PlanArg,
        /// Verify one snapshot (id prefix or `latest`) instead of all.
        #[arg(long)]
        snapshot: Option<String>,
        /// Read back `all` packs, or this share of them (`10%`), continuing
        /// where the last sampled verify stopped; every pack's presence is
        /// still checked. Default: the plan's `verify.sample`, else all.
        #[arg(long, value_name = "all|PERCENT%", value_parser = verify::parse_sample)]
        sample: Option<crate::plan::VerifySample>,
        /// `chunks`: decode every chunk read and check it against its id
        /// (proves the content). `stored`: check each pack's stored bytes
        /// against its name, and every chunk's place in it, decoding none
        /// (finds storage damage; as pgBackRest's verify). Default: the
        /// plan's `verify.depth`, else chunks.
        #[arg(long, value_name = "chunks|stored", value_parser = verify::parse_depth)]
        depth: Option<crate::plan::VerifyDepth>,
        /// Where the cursor of sampled verifies is kept (the daemon's state
        /// folder). Default: $STATE_DIRECTORY, else ~/.local/state/holdfast.
        #[arg(long, value_name = "DIR", env = "HOLDFAST_STATE_DIR")]
        state: Option<PathBuf>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Apply the plan's retention policy: remove expired snapshots, and the
    /// objects no kept snapshot needs, once their locks have ended.
    Prune {
        #[command(flatten)]
        plan: PlanArg,
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Lengthen the locks of every snapshot the retention policy still keeps
    /// (and of every object it needs) so they run a whole tier's lock ahead
    /// of now: kept snapshots stay locked even when backups stop.
    KeepLocks {
        #[command(flatten)]
        plan: PlanArg,
        /// Report what would be extended; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Manage the repository's keys: each key object wraps the data key
    /// under one passphrase or key file.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Repair the repository's metadata from its data, adding objects only.
    Repair {
        #[command(subcommand)]
        command: RepairCommand,
    },
    /// Create or check a plan's repository (on S3: the bucket, with
    /// versioning and Object Lock).
    Repo {
        #[command(subcommand)]
        command: RepoCommand,
    },
    /// Prove the repository is immutable from the outside, with the plan's
    /// own credentials: write a locked canary and try to delete it and to
    /// shorten its lock (both must be refused); report dangerous permissions
    /// and print least-privilege IAM policies.
    Doctor {
        #[command(flatten)]
        plan: PlanArg,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Archive one WAL file into the plan's repository: PostgreSQL's
    /// `archive_command = 'holdfast wal-push --plan FILE %p'`. Idempotent for
    /// a file already archived with the same content; fails (so PostgreSQL
    /// keeps the file and retries) on anything else.
    WalPush {
        #[command(flatten)]
        plan: PlanArg,
        /// The WAL file (`%p`).
        path: PathBuf,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Archive asynchronously, as pgBackRest's `archive-async`: a pusher
        /// started in the background stores the files waiting in
        /// `pg_wal/archive_status` ahead of the server, several at once, and
        /// this command answers from its record once the file is stored.
        #[arg(long = "async", requires = "spool")]
        asynchronous: bool,
        /// With `--async`: the spool folder for the pusher's records (one
        /// folder per plan inside; the server's user must own it).
        #[arg(long, value_name = "DIR", requires = "asynchronous")]
        spool: Option<PathBuf>,
        /// With `--async`: how many files the pusher stores at once (1 to
        /// 16; each holds a segment and its compressed copy in memory).
        #[arg(long, default_value_t = crate::ops::wal_async::DEFAULT_WORKERS as u16, value_parser = clap::value_parser!(u16).range(1..=16), requires = "asynchronous")]
        workers: u16,
        /// With `--async`: how long to wait for the file to be stored before
        /// failing (the server retries).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "asynchronous")]
        timeout: std::time::Duration,
    },
    /// The pusher `wal-push --async` starts: stores the files waiting in
    /// WAL_DIR/archive_status and records each in the spool, then exits
    /// when none has waited for 2 s.
    #[command(hide = true)]
    WalPushAhead {
        #[command(flatten)]
        plan: PlanArg,
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
        #[arg(long, default_value_t = crate::ops::wal_async::DEFAULT_WORKERS as u16, value_parser = clap::value_parser!(u16).range(1..=16))]
        workers: u16,
        /// The server's `pg_wal` folder.
        wal_dir: PathBuf,
    },
    /// Archive a MariaDB plan's binlogs continuously (in the foreground,
    /// until SIGTERM or Ctrl-C): completed binlogs whole, the growing one
    /// every few seconds (the daemon does the same for every such plan).
    BinlogArchive {
        #[command(flatten)]
        plan: PlanArg,
        /// The archiver's state folder (its spool); default
        /// `<daemon state dir>/binlog/<plan>`.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Print the final report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Restore one archived WAL file, checked against its SHA-256:
    /// PostgreSQL's `restore_command = 'holdfast wal-fetch --plan FILE %f %p'`.
    /// Exit 1: not in the archive (recovery ends there); 126: anything else
    /// (recovery stops rather than end at the wrong point).
    WalFetch {
        #[command(flatten)]
        plan: PlanArg,
        /// A folder of segments already fetched and verified by `holdfast
        /// restore`: a file found there is moved into place instead of fetched.
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// The archived file's name (`%f`).
        name: String,
        /// Where to write it (`%p`).
        dest: PathBuf,
    },
    /// Restore drill: restore the plan's data into a scratch target holdfast
    /// creates and removes, run the plan's checks and the built-ins, measure
    /// RTO and RPO, and record the report (exit 11 when the drill fails).
    Drill(drill::DrillArgs),
    /// List a plan's recorded drills: outcome, RTO, RPO and the RTO trend.
    Drills {
        #[command(flatten)]
        plan: PlanArg,
        /// Print the records as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run every plan's backups, verify and prune on their schedules; serve
    /// /healthz, /metrics and /status (docs/daemon.md).
    Daemon(daemon::DaemonArgs),
    /// Work with plan files.
    Plan {
        #[command(subcommand)]
        command: PlanCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PlanCommand {
    /// Validate plan files or folders of plans; print a summary of each.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RepairCommand {
    /// Write new index objects from the packs' own trailers (every pack read
    /// whole and checked); old index objects are never changed or removed.
    /// For an index that is lost, damaged, or that verify says gives wrong
    /// locations.
    Index {
        #[command(flatten)]
        plan: PlanArg,
        /// Read and check every pack; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RepoCommand {
    /// Create the repository (and bucket) if missing; check it otherwise.
    Init {
        #[command(flatten)]
        plan: PlanArg,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Add a key (a new passphrase or key file), unlocking with the plan's key.
    Add {
        #[command(flatten)]
        plan: PlanArg,
        /// A file holding the new key (its contents, trimmed). If it does
        /// not exist, a generated key is written there (0600).
        #[arg(long, value_name = "PATH", conflicts_with = "new_key_env")]
        new_key_file: Option<PathBuf>,
        /// An environment variable holding the new passphrase.
        #[arg(long, value_name = "VAR")]
        new_key_env: Option<String>,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// List the key objects and which one the plan's key opens.
    List {
        #[command(flatten)]
        plan: PlanArg,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key (not the plan's own, not the last one).
    Remove {
        #[command(flatten)]
        plan: PlanArg,
        /// The key's id, or a unique prefix of it.
        id: String,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PlanArg {
    /// The plan file (YAML).
    #[arg(long, value_name = "FILE")]
    pub plan: PathBuf,
}

impl PlanArg {
    pub fn load(&self) -> Result<Plan, Error> {
        Ok(Plan::load(&self.plan)?)
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                Exit::Usage.code()
            } else {
                Exit::Ok.code()
            });
        }
    };
    if matches!(cli.command, Command::WalFetch { .. }) {
        // PostgreSQL reads exit 101 (a Rust panic) as "not in the archive"
        // and would end recovery early at the wrong point: a panic anywhere
        // in wal-fetch must stop recovery instead.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            std::process::exit(Exit::WalFetchFatal.code().into());
        }));
    }
    let log_format = cli.log_format;
    init_tracing(log_format, cli.quiet);
    let progress = if cli.quiet {
        ProgressMode::Quiet
    } else if cli.no_progress || matches!(cli.log_format, LogFormat::Json) {
        ProgressMode::Log
    } else {
        ProgressMode::Auto
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("holdfast-io")
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(run(cli.command, progress)) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) if render::is_closed_pipe(&e) => ExitCode::from(Exit::Ok.code()),
        Err(e) => {
            report_failure(&e, log_format);
            ExitCode::from(e.exit.code())
        }
    }
}

/// The final error on stderr: a plain line, or with `--log-format json` one
/// JSON line shaped like the log lines before it, so a log shipper parsing
/// every line does not drop the one that matters most.
fn report_failure(e: &Error, format: LogFormat) {
    match format {
        LogFormat::Text => eprintln!("error: {e}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "fields": {"message": e.to_string(), "exit_code": e.exit.code()},
            })
        ),
    }
}

fn init_tracing(format: LogFormat, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_env("HOLDFAST_LOG")
        // aws_config warns about every provider of its chain that found
        // nothing (instance metadata dumps whole HTTP responses); holdfast
        // reports missing credentials itself, with a hint.
        .unwrap_or_else(|_| {
            EnvFilter::new(format!("{default},aws=warn,aws_config=error,hyper=warn"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn run(command: Command, progress: ProgressMode) -> Result<Exit, Error> {
    match command {
        Command::Plan {
            command: PlanCommand::Check { paths, json },
        } => plan::check(&paths, json),
        Command::Backup { plan, json } => backup::run(&plan, json, progress).await,
        Command::Snapshots { plan, json } => snapshots::run(&plan, json).await,
        Command::Restore(args) => restore::run(args, progress).await,
        Command::Verify {
            plan,
            snapshot,
            sample,
            depth,
            state,
            json,
        } => {
            let args = verify::VerifyArgs {
                snapshot: snapshot.as_deref(),
                sample,
                depth,
                state,
                json,
            };
            verify::run(&plan, args, progress).await
        }
        Command::Prune {
            plan,
            dry_run,
            json,
        } => prune::run(&plan, dry_run, json).await,
        Command::KeepLocks {
            plan,
            dry_run,
            json,
        } => locks::run(&plan, dry_run, json).await,
        Command::Repair {
            command:
                RepairCommand::Index {
                    plan,
                    dry_run,
                    json,
                },
        } => repair::index(&plan, dry_run, json, progress).await,
        Command::Repo {
            command: RepoCommand::Init { plan, json },
        } => repo::init(&plan, json).await,
        Command::Key { command } => match command {
            KeyCommand::Add {
                plan,
                new_key_file,
                new_key_env,
                json,
            } => key::add(&plan, new_key_file.as_ref(), new_key_env.as_deref(), json).await,
            KeyCommand::List { plan, json } => key::list(&plan, json).await,
            KeyCommand::Remove { plan, id, json } => key::remove(&plan, &id, json).await,
        },
        Command::WalPush {
            plan,
            path,
            json,
            asynchronous: false,
            ..
        } => wal::push(&plan, &path, json).await,
        Command::WalPush {
            plan,
            path,
            json,
            spool,
            workers,
            timeout,
            ..
        } => {
            let opts = crate::ops::wal_async::AsyncOptions {
                spool: spool.expect("clap requires --spool with --async"),
                workers: workers.into(),
                timeout,
            };
            wal::push_async(&plan, &path, &opts, json).await
        }
        Command::WalPushAhead {
            plan,
            spool,
            workers,
            wal_dir,
        } => {
            let opts = crate::ops::wal_async::AsyncOptions {
                spool,
                workers: workers.into(),
                timeout: crate::ops::wal_async::DEFAULT_TIMEOUT,
            };
            wal::push_ahead(&plan, &wal_dir, &opts).await
        }
        Command::BinlogArchive {
            plan,
            state_dir,
            json,
        } => binlog::archive(&plan, state_dir, json).await,
        Command::WalFetch {
            plan,
            spool,
            name,
            dest,
        } => wal::fetch(&plan, spool.as_deref(), &name, &dest).await,
        Command::Doctor { plan, json } => doctor::run(&plan, json).await,
        Command::Drill(args) => drill::run(args, progress).await,
        Command::Drills { plan, json } => drill::list(&plan, json).await,
        Command::Daemon(args) => daemon::run(args).await,
    }
}
