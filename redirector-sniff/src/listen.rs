//! Binding a listening socket without an async runtime, as tokio's `TcpListener::bind`
//! does (`SO_REUSEADDR`, backlog 1024): the proxy binds before it drops privileges and
//! before its runtime (and its threads) start.

use std::{io, net::SocketAddr, net::TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of the listening sockets (tokio's default).
const BACKLOG: i32 = 1024;

/// A listening TCP socket on `addr` (close-on-exec, blocking until handed to tokio).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
