//! The `edgepatch` binary: a thin main that hands the arguments to `cli::main`.

fn main() {
    let code = edgepatch::cli::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
