//! `dfcache stat ID`: a task's information, one field a line.

use std::time::SystemTime;

use clap::Args;

use dfcache_wire::domain::ttl::duration_from_proto;

use super::args::GlobalArgs;
use super::flags::{format_duration, format_size};

#[derive(Debug, Args)]
pub struct StatArgs {
    /// The task id.
    pub id: String,
}

pub async fn run(global: &GlobalArgs, args: StatArgs) -> anyhow::Result<()> {
    let task = global.client().stat(&args.id).await?;
    let ttl = task
        .ttl
        .map(duration_from_proto)
        .map(format_duration)
        .unwrap_or_else(|| "-".into());
    println!("ID:               {}", task.id);
    println!("State:            {}", task.state);
    println!(
        "Content length:   {} ({} bytes)",
        format_size(task.content_length),
        task.content_length
    );
    println!(
        "Piece length:     {} ({} bytes)",
        format_size(task.piece_length),
        task.piece_length
    );
    println!("Piece count:      {}", task.piece_count);
    println!("Replica count:    {}", task.persistent_replica_count);
    println!("Tag:              {}", task.tag.as_deref().unwrap_or("-"));
    println!(
        "Application:      {}",
        task.application.as_deref().unwrap_or("-")
    );
    println!("TTL:              {ttl}");
    println!("Created:          {}", age(task.created_at));
    println!("Updated:          {}", age(task.updated_at));
    Ok(())
}

/// "3m ago"-style age of a timestamp.
pub fn age(t: Option<prost_types::Timestamp>) -> String {
    let Some(t) = t.and_then(|t| SystemTime::try_from(t).ok()) else {
        return "-".into();
    };
    match SystemTime::now().duration_since(t) {
        Ok(d) if d.as_secs() > 0 => format!(
            "{} ago",
            format_duration(std::time::Duration::from_secs(d.as_secs()))
        ),
        _ => "just now".into(),
    }
}
