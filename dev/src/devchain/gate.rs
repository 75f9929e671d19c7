//! A TCP gate in front of an RPC node: forwards connections while open; closing it drops every
//! forwarded connection and refuses new ones, as a node that went away would. Opening it again
//! listens on the same port.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::DevChainError;

/// See the module docs. Closed on drop.
pub struct RpcGate {
    addr: SocketAddr,
    upstream: String,
    open: Mutex<Option<CancellationToken>>,
}

impl RpcGate {
    /// Opens a gate on a free loopback port forwarding to `upstream` (`host:port`).
    pub async fn open_to(upstream: &str) -> Result<Self, DevChainError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let gate = Self {
            addr,
            upstream: upstream.to_string(),
            open: Mutex::new(None),
        };
        gate.serve(listener);
        Ok(gate)
    }

    /// `http://127.0.0.1:PORT` of the gate.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn is_open(&self) -> bool {
        self.open.lock().map(|o| o.is_some()).unwrap_or(false)
    }

    /// Drops every forwarded connection and stops listening.
    pub fn close(&self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(token) = open.take()
        {
            token.cancel();
        }
    }

    /// Listens again on the same port (no-op when open).
    pub async fn reopen(&self) -> Result<(), DevChainError> {
        if self.is_open() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await.map_err(io)?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        if let Ok(mut open) = self.open.lock() {
            *open = Some(token.clone());
        }
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let token = token.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
    }
}

impl Drop for RpcGate {
    fn drop(&mut self) {
        self.close();
    }
}

fn io(e: std::io::Error) -> DevChainError {
    DevChainError::Invalid(format!("RPC gate: {e}"))
}
