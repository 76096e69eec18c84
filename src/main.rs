//! `lowrank`: parses the command line, then calls one function per subcommand.

fn main() {
    if let Err(e) = lowrank::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
