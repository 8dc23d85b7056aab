//! Several machines: the orchestrator node 0 runs for a multi-node `temper train` or
//! `temper bench`, and the hidden `temper orchestrate` command it is.

use anyhow::{Context, Result};
use clap::Args;

/// The orchestrator of a multi-node run: this binary's hidden `orchestrate` command as a child
/// process. It ends when dropped, and by itself when this process dies (its stdin closes).
pub struct Orchestrator(std::process::Child);

impl Orchestrator {
    pub fn start(coordinator: &str) -> Result<Orchestrator> {
        let (_, port) = temper_train::distributed::split_address(coordinator)
            .with_context(|| format!("--coordinator {coordinator}: expected HOST:PORT"))?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["orchestrate", "--port", &port.to_string()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("starting the orchestrator")?;
        Ok(Orchestrator(child))
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        // Every rank passed the barrier before leaving; the other nodes' goodbyes follow it
        // within milliseconds, and need the orchestrator to answer them.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Args)]
pub struct OrchestrateArgs {
    /// The port to listen on.
    #[arg(long)]
    port: u16,
}

/// Runs the orchestrator of a multi-node run until the process that started it ends.
pub fn orchestrate_command(args: &OrchestrateArgs) -> Result<()> {
    std::thread::spawn(|| {
        let mut parent = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut parent);
        std::process::exit(0);
    });
    Ok(temper_train::orchestrate(args.port)?)
}
