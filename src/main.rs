//! The `dfcache` binary: parses the command line, sets up logging, runs a
//! subcommand, and turns its error into one clear sentence and exit code 1.

mod cli;
mod embedded;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) | Command::Mount(_) | Command::Csi(_) | Command::MountHolder(_) => "info",
        _ => "warn",
    };
    let level = cli
        .global
        .log_level
        .clone()
        .unwrap_or_else(|| default_level.to_string());
    let filter = EnvFilter::try_new(format!(
        "dfcache={level},{}",
        if level == "trace" { "info" } else { "warn" }
    ))
    .unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    if matches!(cli.command, Command::Mount(_) | Command::Serve(_)) {
        limit_malloc_arenas();
        return_large_frees();
        trim_heap_every_second();
    }
    // The holder is one thread around poll(2): no runtime.
    if let Command::MountHolder(args) = cli.command {
        return match cli::mount_holder::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let global = &cli.global;
        match cli.command {
            // --recursive: a directory as a tree of tasks.
            Command::Import(args) if args.recursive => cli::tree::run_import(global, args).await,
            Command::Import(args) => cli::import::run(global, args).await,
            Command::Export(args) if args.recursive => cli::tree::export(global, &args).await,
            Command::Export(args) => cli::export::run(global, args).await,
            Command::Stat(args) => cli::stat::run(global, args).await,
            Command::Ls(args) => cli::ls::run(global, args).await,
            Command::Rm(args) => cli::rm::run(global, args).await,
            Command::Warmup(args) => cli::warmup::run(global, args).await,
            Command::Serve(args) => cli::serve::run(args).await,
            Command::Mount(args) => cli::mount::run(global, args).await,
            Command::Csi(args) => cli::csi::run(args).await,
            Command::Completions(args) => {
                cli::completions::run(args, <Cli as clap::CommandFactory>::command())
            }
            Command::MountHolder(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // "context: cause: cause" on one line.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The mount and the daemon move multi-megabyte pieces between threads:
/// with glibc's default of one arena per thread, freed pieces pile up in
/// every arena (measured: peak RSS 148 MiB reading 4 GiB through the mount
/// with a 64 MiB cache, 95 MiB with one arena, and no slower). Must run
/// before any thread starts.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; no other thread
    // exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Has glibc serve allocations of 4 MiB or more (blocks) with mappings of
/// their own, given back to the kernel when freed, so that the process's
/// RSS follows what the memory budget bounds. By default glibc raises that
/// threshold each time such a mapping is freed, up to 32 MiB: once a
/// 16 MiB block had been freed, later blocks came from the heap, which
/// keeps what is freed. Measured, 50 imports of 64 MiB at once under a
/// 256 MiB budget, then 50 exports, the daemon's peak RSS: 378 and 571 MiB
/// by default; 211 and 291 MiB with the threshold at 1 MiB, but then every
/// 1 MiB chunk is a fresh mapping whose pages fault in (the daemon's CPU
/// for a 2 GiB import +40%, for an export +70%); 239 and 331 MiB at 4 MiB
/// with one arena, with the CPU of the default (medians of five 2 GiB
/// transfers: import 2.74 against 2.78 s, export 1.03 against 0.90 s).
fn return_large_frees() {
    // SAFETY: as above.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Has glibc give the free pages inside its heap back to the kernel once
/// a second. What the memory budget bounds is freed as transfers go, but
/// allocations under 4 MiB (encoded 1 MiB messages, receive buffers) come
/// from the heap, which keeps freed pages: after many transfers had come
/// and gone, their heap stayed resident beside the next transfers' new
/// blocks. Measured (`scripts/measure-concurrency.sh`'s phases, 256 MiB
/// budget, 200 exports of 16 MiB at once after 200 imports): daemon peak
/// RSS 370 MiB without trimming, 279 MiB trimming every second, 269 MiB
/// every 100 ms. A trim took under 0.2 ms mostly, at most 0.95 ms, with
/// the heap's lock held. Every 100 ms cost 16 imports at once 13% of their
/// time (the trimmed pages fault in again for the next messages); once a
/// second, see BENCHMARKING.md.
fn trim_heap_every_second() {
    let trimming = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            // Periodic work, not a wait for a condition.
            std::thread::sleep(std::time::Duration::from_secs(1));
            // SAFETY: malloc_trim only gives free pages back to the kernel.
            unsafe {
                libc::malloc_trim(0);
            }
        });
    if let Err(e) = trimming {
        tracing::warn!(error = %e, "cannot start the heap-trimming thread; freed memory stays in the heap");
    }
}
