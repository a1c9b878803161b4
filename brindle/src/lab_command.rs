//! `brindle lab up|down`: builds the namespace lab (library side: `brindle::lab`), prints the
//! reachability matrix, and tears it down.

use std::time::Duration;

use anyhow::Context;
use brindle::lab::{self, Lab, LabSpec};

use crate::cli::LabCommand;

pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::Down { prefix } => {
            let removed = lab::down(&prefix)?;
            println!("removed {removed} namespaces starting with {prefix}");
            Ok(())
        }
        LabCommand::Up(args) => {
            let binaries = std::env::current_exe()?
                .parent()
                .context("the brindle binary's directory")?
                .to_owned();
            let spec = LabSpec {
                prefix: args.prefix,
                nodes: args.nodes.into(),
                pods_per_node: args.pods_per_node.into(),
                pool: args.pool,
                binaries,
                encapsulation: args.encapsulation,
                subnets: args.subnets.into(),
                etcd: args.etcd,
                policy: args.policy,
            };
            let lab = tokio::task::spawn_blocking(move || Lab::up(spec)).await??;
            let lab = tokio::task::spawn_blocking(move || {
                let converged = lab.wait_full_mesh(Duration::from_secs(30));
                (lab, converged)
            })
            .await?;
            let (lab, converged) = lab;
            println!("encapsulation: {:?}", args.encapsulation);
            for (index, node) in lab.nodes.iter().enumerate() {
                println!("node {} at {}", node.name, node.address);
                for (pod, placed) in lab.pods.iter().enumerate() {
                    if placed.node != index {
                        println!(
                            "  → pod {} {:<15} {}",
                            placed.name,
                            placed.ip,
                            lab.path(index, pod)?
                        );
                    }
                }
            }
            let lab = tokio::task::spawn_blocking(move || {
                let matrix = lab.matrix();
                println!("\npod-to-pod reachability (ping):\n{}", lab.render(&matrix));
                lab
            })
            .await?;
            if let Err(error) = converged {
                eprintln!("{}", lab.logs());
                return Err(error);
            }
            if !args.once {
                println!("lab running; Ctrl-C tears it down");
                brindle_grpc_server::shutdown_signal().await;
            }
            tokio::task::spawn_blocking(move || drop(lab)).await?;
            println!("lab torn down");
            Ok(())
        }
    }
}
