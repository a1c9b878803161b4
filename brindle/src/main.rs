//! The `brindle` command: operator CLI, the all-in-one control-plane server, and the namespace lab.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(error) = cli.logging.init() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    commands::run(cli.command).await
}
