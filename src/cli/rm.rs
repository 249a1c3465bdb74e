//! `dfcache rm ID...`: deletes tasks.

use anyhow::Context;
use clap::Args;

use super::args::GlobalArgs;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Task ids to delete.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub async fn run(global: &GlobalArgs, args: RmArgs) -> anyhow::Result<()> {
    let client = global.client();
    for id in &args.ids {
        client
            .delete(id)
            .await
            .with_context(|| format!("cannot delete task {id}"))?;
        eprintln!("deleted {id}");
    }
    Ok(())
}
