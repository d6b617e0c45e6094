//! Command line: parse arguments by hand, load the config, run one command, map the result to an
//! exit code. Each command's work lives in its own module.

/// `println!` that never panics: a full disk or closed pipe on stdout is reported on stderr once
/// and the command goes on (it has already done its work; the outcome is in status.json).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let line = format!($($arg)*);
        let line = $crate::support::text::printable(&line);
        if let Err(e) = writeln!(std::io::stdout(), "{line}") {
            let _ = writeln!(std::io::stderr(), "edgepatch: cannot write to stdout: {e}");
        }
    }};
}

mod commands;
pub mod doctor;

use crate::support::config::{Config, DEFAULT_PATH};
use crate::support::error::{Error, Result, EXIT_TABLE};
use commands as c;
use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: edgepatch [--config FILE] [-v|-q] COMMAND [ARGS]

commands:
  verify BUNDLE   check signature, checksums, variant, expiry and sequence
                  of BUNDLE for this node; reads it once, writes nothing
                  but the trusted-time ratchet
  apply [BUNDLE]  verify, stage and install BUNDLE (default: the newest
                  complete bundle in state_dir/incoming) from its local
                  repository only; resumes or undoes an interrupted run
  status [--json] what is installed, the last result, alerts
  packages        print root's dpkg status file (a baseline for
                  edgepatch-builder collect)
  report          deliver spooled reports to report_url now
  export-status DIR
                  write spooled reports + status, signed by this node's
                  key, to DIR (a USB stick) for `edgepatch-builder ingest`
  rollback [--order FILE]
                  undo the last applied bundle (snapshot or packages), or
                  carry out a signed rollback/halt order from FILE
  fetch [--budget DURATION]
                  one pass over the mirror: signed index, download the due
                  bundle (resumable, bwlimit, transfer_window), verify it
  import DIR      copy the newest due bundle from DIR (USB stick, rsync
                  drop) into incoming/, verifying while copying
  run [--no-splay] what cron/systemd calls: splay, fetch, import, apply
  keys [--import FILE]
                  show the trusted release keys and their expiry; with
                  --import, accept a newer root-signed key list first
  doctor          check config, keys, clock, space, package manager,
                  snapshot, tz and mirror; one line each with a fix hint

options:
  --config FILE   agent config (default /etc/edgepatch/agent.conf,
                  or $EDGEPATCH_CONFIG)
  -v, -q          more or less logging on stderr (or EDGEPATCH_LOG=debug)
  --version, --help
";

struct Args {
    config: Option<PathBuf>,
    verbosity: i8,
    command: String,
    rest: Vec<OsString>,
}

fn parse_args(argv: Vec<OsString>) -> Result<Option<Args>> {
    let mut config = None;
    let mut verbosity = 0i8;
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--help" | "-h") => {
                outln!("{USAGE}\n{EXIT_TABLE}");
                return Ok(None);
            }
            Some("--version" | "-V") => {
                outln!("edgepatch {}", crate::VERSION);
                return Ok(None);
            }
            Some("--config") => {
                let v = it
                    .next()
                    .ok_or_else(|| Error::usage("--config needs a FILE"))?;
                config = Some(PathBuf::from(v));
            }
            Some(s) if s.starts_with("--config=") => config = Some(PathBuf::from(&s[9..])),
            Some("-v") => verbosity += 1,
            Some("-q") => verbosity -= 1,
            Some(s) if s.starts_with('-') => {
                return Err(Error::usage(format!(
                    "unknown option {s}; see edgepatch --help"
                )))
            }
            Some(cmd) => {
                return Ok(Some(Args {
                    config,
                    verbosity,
                    command: cmd.to_string(),
                    rest: it.collect(),
                }))
            }
            None => return Err(Error::usage("arguments must be UTF-8")),
        }
    }
    Err(Error::usage("no command given; see edgepatch --help"))
}

pub fn config_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("EDGEPATCH_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Run the agent; returns the process exit code.
pub fn main(argv: Vec<OsString>) -> i32 {
    // `edgepatch packages | head`: a closed stdout ends the process quietly, as for any Unix
    // tool, instead of a println! panic and an abort.
    // SAFETY: setting a signal disposition to SIG_DFL before any thread exists.
    unsafe {
        nix::libc::signal(nix::libc::SIGPIPE, nix::libc::SIG_DFL);
    }
    let args = match parse_args(argv) {
        Ok(Some(a)) => a,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("edgepatch: {e}");
            return e.exit.code();
        }
    };
    crate::support::logger::init(args.verbosity);
    if args.command == "doctor" {
        return doctor::main(&config_path(args.config), &args.rest);
    }
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            let msg = e.to_string();
            let msg = crate::support::text::printable(&msg);
            eprintln!("edgepatch: {}: {msg}", e.exit.word());
            e.exit.code()
        }
    }
}

fn run(args: Args) -> Result<()> {
    let config = Config::load(&config_path(args.config))?;
    // Every command trusts files in state_dir (trusted-time, keylist, journal): refuse one that
    // another user could have planted, before reading any of it.
    if config.state_dir.exists() {
        crate::node::lock::prepare_state_dir(&config.state_dir)?;
    }
    let rest = args.rest.as_slice();
    match args.command.as_str() {
        "verify" => {
            let [bundle] = one_path(rest, "verify BUNDLE")?;
            c::verify(&config, &bundle)
        }
        "apply" => match rest {
            [] => c::apply(&config, None),
            [b] => c::apply(&config, Some(PathBuf::from(b))),
            _ => Err(Error::usage("usage: edgepatch apply [BUNDLE]")),
        },
        "packages" => crate::node::pkg::print_dpkg_status(&config.root),
        "status" => match rest {
            [] => c::status(&config, false),
            [f] if f == "--json" => c::status(&config, true),
            _ => Err(Error::usage("usage: edgepatch status [--json]")),
        },
        "report" => match rest {
            [] => c::report(&config, false),
            [f] if f == "--retry-rejected" => c::report(&config, true),
            _ => Err(Error::usage("usage: edgepatch report [--retry-rejected]")),
        },
        "export-status" => {
            let [dir] = one_path(rest, "export-status DIR")?;
            c::export_status(&config, &dir)
        }
        "rollback" => match rest {
            [] => c::rollback(&config, None),
            [flag, f] if flag == "--order" => c::rollback(&config, Some(PathBuf::from(f))),
            _ => Err(Error::usage("usage: edgepatch rollback [--order FILE]")),
        },
        "keys" => c::keys(&config, rest),
        "fetch" => c::fetch(&config, rest),
        "import" => c::import(&config, rest),
        "run" => c::run(&config, rest),
        other => Err(Error::usage(format!(
            "unknown command {other:?}; see edgepatch --help"
        ))),
    }
}

fn one_path<const N: usize>(rest: &[OsString], usage: &str) -> Result<[PathBuf; N]> {
    let v: Vec<PathBuf> = rest.iter().map(PathBuf::from).collect();
    v.try_into()
        .map_err(|_| Error::usage(format!("usage: edgepatch {usage}")))
}
