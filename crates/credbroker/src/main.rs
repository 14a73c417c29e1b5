use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = credbroker::cli::Cli::parse();
    credbroker::run(cli)
}
