//! What each `brindle` subcommand does, and how failures become exit statuses: 1 for an error
//! (printed as `error: …`), 2 for bad usage (clap), 3 when `ipam check` finds problems.

mod bgp;
mod connect;
mod flows;
mod ipam;
mod kind;
mod lab;
mod manifest;
mod node;
mod output;
mod resources;
mod server;
mod trace;

use std::process::ExitCode;

use clap::CommandFactory;

use brindle::certs::{self, Pki};

use crate::cli::{CertsArgs, Cli, Command, IpamCommand, NodeCommand, PolicyCommand};

/// Runs `command`; the process's exit status.
pub async fn run(command: Command) -> ExitCode {
    let result = match command {
        Command::Apply(args) => resources::apply(args).await,
        Command::Get(args) => resources::get(args).await,
        Command::Delete(args) => resources::delete(args).await,
        Command::Ipam(IpamCommand::Show(args)) => ipam::show(args).await,
        Command::Ipam(IpamCommand::Check(args)) => ipam::check(args).await,
        Command::Ipam(IpamCommand::Release(args)) => ipam::release(args).await,
        Command::Node(NodeCommand::Status(args)) => node::status(args).await,
        Command::Node(NodeCommand::Label(args)) => node::label(args).await,
        Command::Node(NodeCommand::JoinToken(args)) => node::join_token(args).await,
        Command::Node(NodeCommand::Delete(args)) => node::delete(args).await,
        Command::Policy(PolicyCommand::Trace(args)) => trace::trace(args).await,
        Command::Flows(args) => flows::flows(args).await,
        Command::Certs(args) => certs(args).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "brindle", &mut std::io::stdout());
            Ok(())
        }
        Command::Server(args) => server::run(args).await,
        Command::Lab(command) => lab::run(command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            if error.is::<ipam::ProblemsFound>() {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `brindle certs`: the CA, then each certificate asked for; prints what it wrote (or, with
/// --kubernetes-namespace, which Secrets it made and kept).
async fn certs(args: CertsArgs) -> anyhow::Result<()> {
    if let Some(namespace) = &args.kubernetes_namespace {
        let client = kube_sync::runtime::kubernetes_client(args.kubeconfig.as_deref()).await?;
        let done = certs::kubernetes::issue(client, namespace, &args.servers, &args.admins).await?;
        for (object, outcome) in done {
            println!("{object:<36} {outcome:?}");
        }
        return Ok(());
    }
    let pki = Pki::open_or_create(&args.dir)?;
    println!("CA          {}", pki.ca().display());
    let mut issued = Vec::new();
    if !args.servers.is_empty() {
        issued.push(("server", pki.server(&args.servers)?));
    }
    for node in &args.nodes {
        issued.push(("node", pki.node(node)?));
    }
    for admin in &args.admins {
        issued.push(("admin", pki.admin(admin)?));
    }
    for (what, files) in issued {
        println!("{what:<11} {} {}", files.cert.display(), files.key.display());
    }
    Ok(())
}
