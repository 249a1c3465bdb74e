//! `dfcache completions bash|zsh|fish`: the shell's completion script for
//! every subcommand and flag, generated from the same clap definition the
//! binary parses with, so it never falls behind.

use clap::Args;
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    pub shell: Shell,
}

/// Writes the script to stdout, e.g. `dfcache completions bash >
/// /etc/bash_completion.d/dfcache`.
/// `command` is the whole command line's definition (`Cli::command()`).
pub fn run(args: CompletionsArgs, mut command: clap::Command) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, &mut command, "dfcache", &mut std::io::stdout());
    Ok(())
}
