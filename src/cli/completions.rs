//! `blogctl completions <SHELL>`: a completion script for the shell, generated from the clap
//! definitions (clap_complete), so it always matches the command line.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;
use color_eyre::Result;

use crate::cli::Cli;

/// Arguments of `blogctl completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: &CompletionsArgs) -> Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "blogctl", &mut script);
    // Written here rather than by clap_complete, which panics on a closed pipe.
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&script)?;
    stdout.flush()?;
    Ok(())
}
