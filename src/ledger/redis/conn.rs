//! The connection: one multiplexed connection to a server, or a cluster client.

use std::fmt;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, ScriptInvocation, Value};

use crate::ledger::LedgerError;

/// A handle on the connection; cheap to clone, cloned per call (never behind a lock), so
/// concurrent calls pipeline on one socket per node.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server, through a reconnecting multiplexed connection.
    Standalone(ConnectionManager),
    /// Redis Cluster: each command goes to the node that owns its key's slot.
    Cluster(ClusterConnection),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Conn::Standalone(_) => "Standalone",
            Conn::Cluster(_) => "Cluster",
        })
    }
}

impl Conn {
    /// `EVALSHA`, loading the script on `NOSCRIPT`.
    pub(super) async fn eval(
        mut self,
        invocation: ScriptInvocation<'static>,
    ) -> Result<Value, RedisError> {
        match &mut self {
            Conn::Standalone(c) => invocation.invoke_async(c).await,
            Conn::Cluster(c) => invocation.invoke_async(c).await,
        }
    }

    /// A plain command.
    pub(super) async fn query<T: FromRedisValue>(mut self, cmd: Cmd) -> Result<T, RedisError> {
        match &mut self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// A Redis error as a ledger error: a timeout is [`LedgerError::Timeout`], anything else
/// (connection refused or lost, a server or script error) is [`LedgerError::Unavailable`].
pub(super) fn ledger_error(err: RedisError, call_timeout: Duration) -> LedgerError {
    if err.is_timeout() {
        LedgerError::Timeout(call_timeout)
    } else {
        LedgerError::Unavailable(Box::new(err))
    }
}
