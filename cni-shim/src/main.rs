//! `brindle-cni`: the CNI plugin binary containerd executes; all logic lives in the node agent.

fn main() {
    let env = brindle_cni::env::Invocation::from_process();
    let mut stdin = Vec::new();
    let read = std::io::Read::read_to_end(&mut std::io::stdin(), &mut stdin);
    let outcome = match read {
        Ok(_) => brindle_cni::run(&env, &stdin, &brindle_cni::agent::SocketAgent),
        Err(e) => brindle_cni::Outcome::error("", brindle_cni::error::io(format!("reading stdin: {e}"))),
    };
    print!("{}", outcome.stdout);
    std::process::exit(outcome.exit_code);
}
