//! `dfcache completions bash|zsh|fish`: the shell's completion script for
//! every subcommand and flag, generated from the same clap definition the
//! binary parses with, so it never falls behind.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    pub shell: Shell,
}

/// Writes the script to stdout, e.g. `dfcache completions bash >
/// /etc/bash_completion.d/dfcache`.
pub fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "dfcache", &mut std::io::stdout());
    Ok(())
}
