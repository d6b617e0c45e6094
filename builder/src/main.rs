//! edgepatch-builder: the central side. Thin main: parse, dispatch, map errors to exit codes.

mod build;
mod center;
mod collect;
mod delta;
mod inspect;
mod key;
mod keygen;
mod order;
mod policy;
mod publish;
mod repo;
mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "edgepatch-builder",
    version,
    about = "Build, sign, inspect and verify edgepatch bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download packages and the dependencies a baseline (dpkg status / rpmdb root) lacks
    Collect(collect::CollectArgs),
    /// Create a signing key pair: DIR/edgepatch.key (0600) and DIR/edgepatch.pub
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal packages into one signed bundle for one OS variant and cycle
    Build(build::BuildArgs),
    /// Show a bundle's manifest (signatures are listed, not checked: use verify)
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle's signature by the given key, every checksum, and its expiry
    Verify {
        #[arg(long = "pub")]
        public: PathBuf,
        bundle: PathBuf,
    },
    /// Run the center: report API, dashboard, metrics and (optionally) the mirror
    Serve(center::ServeArgs),
    /// Load USB status exports (checks node signatures; new node keys wait for acceptance)
    Ingest(center::IngestArgs),
    /// Fleet summary, node lists, one node's history; accept or preauthorize node keys
    Fleet(center::FleetArgs),
    /// Copy bundles into a static mirror tree and write its signed per-variant index
    Publish(publish::PublishArgs),
    /// Write a signed rollback, halt or resume order for one cycle
    Order(order::OrderArgs),
    /// Root key and signed key list: init-root, add, revoke, sign, rotate-root, show, publish
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Rollout policies (PatchPolicy YAML): check one, alone or against its bundle
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // A closed stdout (`fleet | head`) ends the command quietly, like any Unix tool, instead
        // of println! panicking on EPIPE. Not for `serve`: a client closing its socket must stay
        // an error on that connection, never a signal to the center.
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Collect(args) => collect::run(&args),
        Command::Keygen { out } => keygen::run(&out),
        Command::Build(args) => build::run(&args),
        Command::Inspect { file, json } => inspect::run(&file, json),
        Command::Verify { public, bundle } => verify::run(&public, &bundle),
        Command::Serve(args) => center::serve(&args),
        Command::Ingest(args) => center::ingest(&args),
        Command::Fleet(args) => center::fleet(&args),
        Command::Policy(cmd) => policy::run(&cmd),
        Command::Key(cmd) => key::run(&cmd),
        Command::Order(args) => order::run(&args),
        Command::Publish(args) => publish::run(&args),
    };
    if let Err(e) = result {
        // Errors from the agent library carry the shared exit code; everything else is usage (1).
        let code = e
            .downcast_ref::<edgepatch::support::error::Error>()
            .map_or(1, |ae| ae.exit.code());
        eprintln!("edgepatch-builder: {e:#}");
        std::process::exit(code);
    }
}
