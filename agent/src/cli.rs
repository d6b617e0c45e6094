//! Command line: parse arguments by hand, load the config, run one command, map the result to an
//! exit code. Each command's work lives in its own module.

use crate::apply::{self, Ctx};
use crate::clock::Ratchet;
use crate::config::{Config, DEFAULT_PATH};
use crate::error::{Error, Exit, Result, EXIT_TABLE};
use crate::format::hex;
use crate::state::Installed;
use crate::verify::{self, Discard, NodeFacts};
use std::ffi::OsString;
use std::io::BufReader;
use std::path::{Path, PathBuf};

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
                print!("{USAGE}\n{EXIT_TABLE}");
                return Ok(None);
            }
            Some("--version" | "-V") => {
                println!("edgepatch {}", crate::VERSION);
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
    let args = match parse_args(argv) {
        Ok(Some(a)) => a,
        Ok(None) => return 0,
        Err(e) => {
            eprintln!("edgepatch: {e}");
            return e.exit.code();
        }
    };
    crate::logger::init(args.verbosity);
    if args.command == "doctor" {
        return crate::doctor::main(&config_path(args.config), &args.rest);
    }
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("edgepatch: {}: {e}", e.exit.word());
            e.exit.code()
        }
    }
}

fn run(args: Args) -> Result<()> {
    let config = Config::load(&config_path(args.config))?;
    match args.command.as_str() {
        "verify" => {
            let [bundle] = one_path(&args.rest, "verify BUNDLE")?;
            cmd_verify(&config, &bundle)
        }
        "apply" => {
            let bundle: Option<PathBuf> = match args.rest.as_slice() {
                [] => None,
                [b] => Some(PathBuf::from(b)),
                _ => return Err(Error::usage("usage: edgepatch apply [BUNDLE]")),
            };
            let msg = with_ctx(&config, |ctx| apply::command(ctx, bundle.as_deref()))?;
            println!("ok: {msg}");
            Ok(())
        }
        "packages" => crate::delta::print_dpkg_status(&config.root),
        "status" => {
            let json = match args.rest.as_slice() {
                [] => false,
                [f] if f == "--json" => true,
                _ => return Err(Error::usage("usage: edgepatch status [--json]")),
            };
            cmd_status(&config, json)
        }
        "report" => {
            let url = config.report_url.as_deref().ok_or_else(|| {
                Error::usage("report_url is not set in the config; use export-status DIR")
            })?;
            let timeout = std::time::Duration::from_secs(30);
            let st = crate::report::flush(&config.state_dir, url, timeout)
                .map_err(|m| Error::new(Exit::Deferred, m))?;
            println!(
                "ok: delivered {}, rejected {}, still spooled {}",
                st.delivered, st.rejected, st.remaining
            );
            Ok(())
        }
        "export-status" => {
            let [dir] = one_path(&args.rest, "export-status DIR")?;
            let out = crate::report::export_status(&config.state_dir, &dir)
                .map_err(|m| Error::usage(format!("export to {}: {m}", dir.display())))?;
            println!("ok: exported to {}", out.display());
            Ok(())
        }
        "rollback" => {
            let order: Option<PathBuf> = match args.rest.as_slice() {
                [] => None,
                [flag, f] if flag == "--order" => Some(PathBuf::from(f)),
                _ => return Err(Error::usage("usage: edgepatch rollback [--order FILE]")),
            };
            let msg = with_ctx(&config, |ctx| {
                crate::rollback::command(ctx, order.as_deref())
            })?;
            println!("ok: {msg}");
            Ok(())
        }
        "keys" => crate::trust::main(&config, &args.rest),
        "fetch" => crate::fetch::main(&config, &args.rest),
        "import" => crate::import::main(&config, &args.rest),
        "run" => crate::run::main(&config, &args.rest),
        other => Err(Error::usage(format!(
            "unknown command {other:?}; see edgepatch --help"
        ))),
    }
}

/// Run `f` with the node's trusted keys and clock: the one place commands build their context.
fn with_ctx<T>(config: &Config, f: impl FnOnce(&Ctx) -> Result<T>) -> Result<T> {
    let trusted = crate::trust::load(config)?;
    let clock = crate::clock::from_env();
    f(&Ctx {
        config,
        trusted: &trusted,
        clock: clock.as_ref(),
    })
}

/// Show the status; first resolve an interrupted run if no other run is active.
fn cmd_status(config: &Config, json: bool) -> Result<()> {
    if crate::status::journal_path(&config.state_dir).exists() {
        if let Ok(_lock) = crate::lock::acquire(&config.state_dir) {
            let recovered = with_ctx(config, |ctx| {
                apply::recover(ctx, &mut apply::RunInfo::default())
            });
            if let Err(e) = recovered {
                log::warn!("{e}");
            }
        }
    }
    let st = crate::status::Status::gather(config);
    if json {
        print!("{}", st.to_json());
    } else {
        print!("{}", st.to_lines());
    }
    Ok(())
}

fn one_path<const N: usize>(rest: &[OsString], usage: &str) -> Result<[PathBuf; N]> {
    let v: Vec<PathBuf> = rest.iter().map(PathBuf::from).collect();
    v.try_into()
        .map_err(|_| Error::usage(format!("usage: edgepatch {usage}")))
}

/// Open a bundle file, mapping a missing file to "deferred": no complete bundle is here yet.
pub fn open_bundle(path: &Path) -> Result<BufReader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::new(Exit::Deferred, format!("no bundle at {}", path.display()))
        }
        _ => Error::io(Exit::Usage, path, e),
    })?;
    Ok(BufReader::with_capacity(256 * 1024, f))
}

fn cmd_verify(config: &Config, bundle: &Path) -> Result<()> {
    let trusted = crate::trust::load(config)?;
    let installed = Installed::load(&config.state_dir)?;
    let ratchet = Ratchet::new(&config.state_dir);
    let node = NodeFacts {
        variant: &config.variant,
        installed_sequence: installed.map(|i| i.sequence),
        now: ratchet.now(crate::clock::from_env().as_ref()),
    };
    let mut reader = open_bundle(bundle)?;
    let v = verify::verify_stream(&mut reader, &trusted, &node, &mut Discard)?;
    let m = &v.manifest;
    if let Err(e) = ratchet.advance(m.created.max(node.now)) {
        log::warn!(
            "cannot record trusted time in {}: {e}",
            config.state_dir.display()
        );
    }
    let bytes: u64 = m.entries.iter().map(|e| e.size).sum();
    println!(
        "ok: {} cycle {} sequence {}",
        m.variant, m.cycle, m.sequence
    );
    println!(
        "    {} entries, {} bytes, signed by {}",
        m.entries.len(),
        bytes,
        v.signers.join(",")
    );
    println!("    manifest sha256 {}", hex(&v.manifest_sha256));
    Ok(())
}
