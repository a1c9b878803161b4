//! The `brindle` command: operator CLI and the all-in-one control-plane server.

mod cli;
mod lab_command;
mod server;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    cli.logging.init()?;
    match cli.command {
        cli::Command::Server(args) => server::run(args).await,
        cli::Command::Lab(command) => lab_command::run(command).await,
    }
}
