//! Start-up checks that must fail loudly instead of leaving a half-started server.

use std::net::SocketAddr;

use anyhow::Context;
use socket2::{Domain, Socket, Type};

/// Fails with a message naming `key` when `addr` cannot be bound (in use, not local,
/// no permission). Pingora would otherwise log the failure from a worker thread and
/// keep running without the listener.
pub fn check_bindable(key: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)
        .with_context(|| format!("{key} {addr}: cannot create a socket"))?;
    // As Pingora binds: a listener in TIME_WAIT is no obstacle.
    socket
        .set_reuse_address(true)
        .with_context(|| format!("{key} {addr}: cannot set SO_REUSEADDR"))?;
    socket
        .bind(&addr.into())
        .and_then(|()| socket.listen(1))
        .with_context(|| format!("{key} {addr}: cannot listen"))?;
    Ok(())
}

/// Raises the soft open-file limit to the hard limit: every stream is a file.
pub fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit (caps concurrent streams)"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}
