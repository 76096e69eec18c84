//! `lowrank`: parses the command line, then calls one function per subcommand.

use clap::Parser;

fn main() {
    let cli = lowrank::cli::Cli::parse();
    if let Err(e) = lowrank::cli::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
