//! `dfcache mount-holder --socket PATH`: the holder of a mount (see
//! `dfcache_mount::takeover::holder`), in the foreground. `dfcache mount`
//! starts one for itself; the Kubernetes DaemonSet runs one in a container
//! of its own, which a restart of the mount's container does not reach.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use dfcache_mount::takeover::holder::{run as run_holder, HolderError, HolderOptions};

use super::args::parse_timeout;

#[derive(Debug, Args)]
pub struct MountHolderArgs {
    /// The socket `dfcache mount --holder-socket` finds it at.
    #[arg(long, value_name = "PATH", env = "DFCACHE_HOLDER_SOCKET")]
    pub socket: PathBuf,
    /// How long it keeps a mount whose process died, waiting for the next
    /// `dfcache mount` (programs wait meanwhile); then it lets go and they
    /// get ENOTCONN. 0: as long as it runs.
    #[arg(long, value_parser = parse_timeout, default_value = "10m", env = "DFCACHE_TAKEOVER_WAIT")]
    pub takeover_wait: Duration,
    /// Exit if given nothing to hold for this long (0: never).
    #[arg(long, value_parser = parse_timeout, default_value = "0s")]
    pub idle_timeout: Duration,
}

pub fn run(args: MountHolderArgs) -> anyhow::Result<()> {
    let some = |d: Duration| (!d.is_zero()).then_some(d);
    let options = HolderOptions {
        socket: args.socket,
        orphan_timeout: some(args.takeover_wait),
        idle_timeout: some(args.idle_timeout),
    };
    match run_holder(&options) {
        // Two mounts started one each at once: the other one holds.
        Err(HolderError::AlreadyRunning(socket)) => {
            tracing::info!(socket = %socket.display(), "another holder already runs here");
            Ok(())
        }
        other => Ok(other?),
    }
}
