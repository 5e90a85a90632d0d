//! # umd — Linux md software RAID in userspace: the command line
//!
//! ## Responsibility boundary
//! The binary owns the user's view: mdadm-style commands, their options,
//! messages, exit codes and progress output. It assembles arrays through the
//! `md` crate and serves them through `export`; it holds no RAID logic of its
//! own.
//!
//! Commands: `create`, `examine`, `extract`, `assemble`, `mon`, `detail`, `status`, `wait`, `check`,
//! `fail`, `remove`, `stop`, `bench`, `demo`.
//! Every error is one line on stderr, `umd: MEMBER: reason`, and a non-zero
//! exit status.

mod alloc_count;
mod bench;
mod bench_mon;
mod create;
mod demo;
mod detail;
mod examine;
mod extract;
mod faults;
mod manage;
mod mount;
mod progress;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: alloc_count::Counting = alloc_count::Counting;

/// Linux md software RAID, in userspace.
#[derive(Parser, Debug)]
#[command(name = "umd", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print each member's md superblock, as `mdadm --examine` does.
    #[command(alias = "E")]
    Examine {
        /// One JSON object per member (one per line) instead of text.
        #[arg(long)]
        json: bool,
        /// Member devices or image files.
        #[arg(required = true)]
        members: Vec<PathBuf>,
    },
    /// Assemble the array (read-only) and write its whole content to a file.
    Extract {
        /// Where to write: a file, or `-` for standard output.
        #[arg(short, long, default_value = "-")]
        output: PathBuf,
        /// Start a dirty and degraded parity array anyway; serve a degraded
        /// array read-write (its missing members must not be given back).
        #[arg(long)]
        force: bool,
        /// Reader threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Fault injection on every member's I/O (testing): a blockio fault
        /// spec, e.g. `seed=7,read:p=0.01/eio` (grammar: `umd help-faults`).
        #[arg(long, value_name = "SPEC")]
        faults: Option<String>,
        /// Fault injection on one member's I/O: MEMBER SPEC (repeatable).
        #[arg(long, num_args = 2, value_names = ["MEMBER", "SPEC"])]
        member_faults: Vec<String>,
        /// Member devices or image files.
        #[arg(required = true)]
        members: Vec<PathBuf>,
    },
    /// Assemble an array and serve it through a FUSE mount as DIR/data.
    #[command(alias = "A")]
    Assemble {
        /// Assemble read-only. Without it, every level is served read-write
        /// (a degraded array only with --force).
        #[arg(long, short = 'o')]
        readonly: bool,
        /// Directory to mount the array on.
        #[arg(long, value_name = "DIR")]
        mount: PathBuf,
        /// Detach once the mount is ready.
        #[arg(long)]
        daemon: bool,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// Start a dirty and degraded parity array anyway; serve a degraded
        /// array read-write (its missing members must not be given back).
        #[arg(long)]
        force: bool,
        /// Let users other than the mounting one read the mount.
        #[arg(long)]
        allow_other: bool,
        /// Fault injection on every member's I/O (testing): a blockio fault
        /// spec, e.g. `seed=7,read:p=0.01/eio` (grammar: `umd help-faults`).
        #[arg(long, value_name = "SPEC")]
        faults: Option<String>,
        /// Fault injection on one member's I/O: MEMBER SPEC (repeatable).
        #[arg(long, num_args = 2, value_names = ["MEMBER", "SPEC"])]
        member_faults: Vec<String>,
        /// Member devices or image files.
        #[arg(required = true)]
        members: Vec<PathBuf>,
    },
    /// Print what `mdadm --detail` prints for the array served at DIR, read
    /// from its attributes (DIR/md/) and a member's superblock.
    #[command(alias = "D")]
    Detail {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Mount directory given to `umd assemble --mount`.
        dir: PathBuf,
    },
    /// List every running umd array as /proc/mdstat does: state, level,
    /// members, geometry, `[n/m] [UU_U]`, and the progress of a resync,
    /// recovery, check or repair.
    Status {
        /// One JSON object per array (one per line) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Wait until no resync, recovery, check or repair runs on the array
    /// served at DIR, as `mdadm --wait` does; show its progress meanwhile
    /// (a bar on a terminal, else a line every 5 s on stderr).
    Wait {
        /// Mount directory given to `umd assemble --mount`.
        dir: PathBuf,
    },
    /// Check the redundancy of the array served at DIR (md's `echo check >
    /// md/sync_action`), wait for the end and print md's mismatch count (in
    /// sectors; a non-zero count is reported, not an error). An
    /// interrupted check is an error.
    Check {
        /// Rewrite what differs (md's `repair`) instead of only counting.
        #[arg(long)]
        repair: bool,
        /// Start it and return at once (follow it with `umd status` or
        /// `umd wait`).
        #[arg(long)]
        no_wait: bool,
        /// Mount directory given to `umd assemble --mount`.
        dir: PathBuf,
    },
    /// Create a new array (v1.2 metadata) on member devices or image files,
    /// as `mdadm --create` does. Image files that do not exist are created
    /// (sparse) when --size is given. Without --assume-clean the array is
    /// marked as needing a resync, which runs when it is first assembled
    /// read-write (`umd wait DIR` shows it). raid4/5 are not built
    /// degraded-plus-spare as mdadm does without --force; they are resynced,
    /// as with `mdadm --create --force`.
    #[command(alias = "C")]
    Create(create::Options),
    /// Print the grammar of fault specs (`--faults`, `--member-faults`).
    HelpFaults,
    /// Manage the superblocks of the read-write array served at DIR (the
    /// metadata manager, mdmon's role): started by `umd assemble` for every
    /// read-write array; run it by hand to take over after it died. With
    /// --status, ask the running one what it has done.
    Mon {
        /// Print the running manager's status line instead.
        #[arg(long)]
        status: bool,
        /// Mount directory given to `umd assemble --mount`.
        dir: PathBuf,
    },
    /// Mark a member of the array served at DIR faulty, as `mdadm --fail`
    /// does: md stops using it, the metadata manager records the failure in
    /// the other members' superblocks (writes wait until it has), then
    /// removes it from the array. The array runs degraded.
    #[command(alias = "f")]
    Fail {
        /// Mount directory given to `umd assemble --mount`.
        dir: PathBuf,
        /// The member: its device or image file, or `dev-NAME` as under DIR/md/.
        member: PathBuf,
    },
    /// Add a member (a spare) to the array served at DIR, as `mdadm --add`
    /// does: the metadata manager gives it an empty slot and md recovers
    /// it there (`umd wait DIR` follows the recovery).
    #[command(alias = "a")]
    Add {
        /// Mount directory given to `umd assemble --mount`.
        dir: PathBuf,
        /// The new member: a device or image file.
        member: PathBuf,
    },
    /// Remove a failed member from the array served at DIR, as `mdadm
    /// --remove` does (the metadata manager does this by itself after a
    /// failure; a member already removed is reported, not an error).
    #[command(alias = "r")]
    Remove {
        /// Mount directory given to `umd assemble --mount`.
        dir: PathBuf,
        /// The member: its device or image file, or `dev-NAME` as under DIR/md/.
        member: PathBuf,
    },
    /// Stop the array served at DIR: unmount it and end its process.
    #[command(alias = "S")]
    Stop {
        /// Mount directory given to `umd assemble --mount`.
        dir: PathBuf,
    },
    /// Run a benchmark against its baseline, side by side.
    Bench {
        /// Which benchmark: extract, kernfs, blockio, pagecache, array, mon, recovery.
        name: String,
        /// One JSON object per figure per line.
        #[arg(long)]
        json: bool,
        /// Shorter run (smaller data).
        #[arg(long)]
        quick: bool,
        /// Longer run (more repetitions).
        #[arg(long)]
        full: bool,
        /// Scratch directory: for extract and kernfs on tmpfs, default
        /// /dev/shm; for blockio on the machine's disk (not tmpfs), default
        /// /var/tmp.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show umd's main job on a built-in example: create a 4-member raid5 of
    /// image files in a scratch directory, mount it read-write, write data
    /// through DIR/data, fsync and read it back, show md's array_state and
    /// `umd detail`, stop it, check every byte on the members (also with
    /// each member missing, rebuilt from parity), and clean up.
    Demo {
        /// Scratch directory (default: a new one under the system temp dir).
        /// A directory that already exists is kept; only what the demo made
        /// in it is removed.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the image files afterwards.
        #[arg(long)]
        keep: bool,
        /// Data space of each member in MiB (`umd create --size`; each image
        /// file is a little larger, for the metadata).
        #[arg(long, default_value_t = 16)]
        member_mib: u64,
    },
}

/// An error for the user: printed as one `umd: …` line.
#[derive(Debug)]
pub struct CliError(pub String);

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// Result of a command.
pub type CmdResult = Result<(), CliError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Examine { json, members } => examine::run(&members, json),
        Command::Extract { output, force, threads, faults, member_faults, members } => {
            faults::parse(faults.as_deref(), &member_faults, &members)
                .and_then(|faults| extract::run(&members, &output, force, threads, faults))
        }
        Command::Assemble {
            readonly,
            mount,
            daemon,
            threads,
            force,
            allow_other,
            faults,
            member_faults,
            members,
        } => faults::parse(faults.as_deref(), &member_faults, &members).and_then(|faults| {
            mount::assemble(
                &members,
                mount::Options { readonly, dir: mount, daemon, threads, force, allow_other, faults },
            )
        }),
        Command::Create(opts) => create::run(opts),
        Command::HelpFaults => {
            print!("{}", faults::HELP);
            Ok(())
        }
        Command::Stop { dir } => mount::stop(&dir),
        Command::Fail { dir, member } => manage::fail(&dir, &member),
        Command::Remove { dir, member } => manage::remove(&dir, &member),
        Command::Add { dir, member } => manage::add(&dir, &member),
        Command::Mon { status, dir } => {
            if status {
                mount::mon_status(&dir)
            } else {
                mount::mon(&dir)
            }
        }
        Command::Detail { dir, json } => detail::run(&dir, json),
        Command::Status { json } => status::status(json),
        Command::Wait { dir } => status::wait(&dir),
        Command::Check { dir, repair, no_wait } => status::check(&dir, repair, no_wait),
        Command::Bench { name, json, quick, full, dir } => bench::run(&name, json, quick, full, dir),
        Command::Demo { dir, keep, member_mib } => demo::run(dir, keep, member_mib),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("umd: {e}");
            ExitCode::FAILURE
        }
    }
}
