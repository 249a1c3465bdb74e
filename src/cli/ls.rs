//! `dfcache ls`: the daemon's local tasks, one a line.

use clap::Args;

use dfcache_wire::domain::ttl::duration_from_proto;

use super::args::GlobalArgs;
use super::flags::{format_duration, format_size};
use super::stat::age;

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Print only the task ids.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(global: &GlobalArgs, args: LsArgs) -> anyhow::Result<()> {
    let tasks = global.client().list_local().await?;
    if args.quiet {
        for t in &tasks {
            println!("{}", t.task_id);
        }
        return Ok(());
    }
    println!(
        "{:<64}  {:>10}  {:>10}  {:>8}  CREATED",
        "ID", "SIZE", "PIECE", "TTL"
    );
    for t in &tasks {
        println!(
            "{:<64}  {:>10}  {:>10}  {:>8}  {}",
            t.task_id,
            t.content_length
                .map(format_size)
                .unwrap_or_else(|| "-".into()),
            t.piece_length
                .map(format_size)
                .unwrap_or_else(|| "-".into()),
            t.ttl
                .map(duration_from_proto)
                .map(format_duration)
                .unwrap_or_else(|| "-".into()),
            age(t.created_at),
        );
    }
    Ok(())
}
