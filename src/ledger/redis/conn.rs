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
    pub(super) async fn query<T: FromRedisValue>(mut self, cmd: &Cmd) -> Result<T, RedisError> {
        match &mut self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// A Redis error as a ledger error.
///
/// * [`LedgerError::Timeout`]: the connection timed out;
/// * [`LedgerError::Unavailable`]: the store cannot serve now and will again: an I/O error
///   (refused, dropped, reset), no connection to a cluster node, or an error reply that
///   says so (`LOADING`, `BUSY`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`, `READONLY` after
///   a failover, `MOVED`/`ASK` left over, `NOSCRIPT` after a flush, `NOREPLICAS`, `OOM`,
///   `MISCONF`, a refused login, too many clients);
/// * [`LedgerError::Corrupt`]: any other error reply to our scripts and commands (`ERR`
///   from a Lua runtime error or from the scripts' own argument checks, `WRONGTYPE` from a
///   key written by something else, `NOPERM`, `CROSSSLOT`, …) and a reply of the wrong type
///   or that cannot be parsed: a deployment bug or corrupt state, which a retry would not
///   mend.
///
/// With TLS, a connection the TLS layer refused (a certificate no longer trusted after a
/// reconnect, a client certificate refused) is [`LedgerError::Corrupt`] too: a deployment
/// error that retrying does not mend, never counted as an outage.
pub(super) fn ledger_error(err: RedisError, call_timeout: Duration) -> LedgerError {
    #[cfg(feature = "redis-tls")]
    if let Some(reason) = tls_refusal(&err) {
        return LedgerError::Corrupt(format!("TLS to Redis refused: {reason}").into());
    }
    if err.is_timeout() {
        return LedgerError::Timeout(call_timeout);
    }
    if is_corrupt(&err) {
        LedgerError::Corrupt(Box::new(err))
    } else {
        LedgerError::Unavailable(Box::new(err))
    }
}

/// Why TLS refused a connection, when `err` is such a refusal: the rustls error with a
/// hint, e.g. `invalid peer certificate: UnknownIssuer (the server's certificate is not
/// signed by a trusted CA: …)`. A refusal is deterministic (certificates, names, dates,
/// protocols), so it is a configuration error, never an outage; a connection that was
/// merely lost or reset during the handshake is no refusal.
#[cfg(feature = "redis-tls")]
pub(super) fn tls_refusal(err: &RedisError) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error as Tls};
    let tls = find_rustls_error(std::error::Error::source(err)?)?;
    let hint = match tls {
        Tls::InvalidCertificate(Cert::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA: give its CA with \
             `tls_ca_pem`"
        }
        Tls::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the host of the URL"
        }
        Tls::InvalidCertificate(
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. },
        ) => "the server's certificate is expired or not yet valid",
        Tls::InvalidCertificate(_) => "the server's certificate was refused",
        Tls::AlertReceived(Alert::CertificateRequired) => {
            "the server requires a client certificate, as with `tls-auth-clients yes`: give \
             one with `tls_client_cert_pem`"
        }
        Tls::AlertReceived(
            Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::UnsupportedCertificate
            | Alert::AccessDenied,
        ) => "the server refused the client certificate",
        Tls::InvalidMessage(_) | Tls::InappropriateMessage { .. } => {
            "the server does not speak TLS on this port: is it its `tls-port`?"
        }
        _ => "the TLS handshake failed",
    };
    Some(format!("{tls} ({hint})"))
}

/// The rustls error at the root of `err`: redis-rs keeps an I/O error in an `Arc`, and
/// tokio-rustls the rustls error inside the I/O error (whose `source` skips it).
#[cfg(feature = "redis-tls")]
fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    use std::error::Error;
    use std::sync::Arc;
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(shared) = err.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
            return find_rustls_error(&**shared);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return find_rustls_error(io.get_ref()?);
        }
        next = err.source();
    }
    None
}

/// Error codes of replies that mean "not now", not "never": the store recovers by itself.
const TRANSIENT_CODES: &[&str] = &[
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "READONLY",
    "MOVED",
    "ASK",
    "NOSCRIPT",
    "NOREPLICAS",
    "OOM",
    "MISCONF",
    "NOAUTH",
    "WRONGPASS",
];

/// Whether `err` is an answer from the server (or a reply we cannot read) that a retry
/// would not change: see [`ledger_error`].
fn is_corrupt(err: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask
            | ServerErrorKind::NoScript,
        ) => false,
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            // A connection refused by a full server is not the ledger's state.
            !err.detail()
                .is_some_and(|d| d.contains("max number of clients"))
        }
        ErrorKind::Server(_) | ErrorKind::UnexpectedReturnType | ErrorKind::Parse => true,
        ErrorKind::Extension => !err
            .code()
            .is_some_and(|code| TRANSIENT_CODES.contains(&code)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ErrorKind;

    /// The error of a server reply `-<line>`.
    fn reply(line: &str) -> RedisError {
        redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
            .unwrap()
            .extract_error()
            .unwrap_err()
    }

    fn kind(err: RedisError) -> ErrorKind {
        ledger_error(err, Duration::from_millis(50)).kind()
    }

    #[test]
    fn error_replies_are_corrupt_unless_they_say_not_now() {
        for line in [
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR tower-credits: invalid argument: amount",
            "ERR user_script:12: attempt to perform arithmetic on a nil value",
            "ERR hash value is not an integer",
            "NOPERM this user has no permissions to run the 'evalsha' command",
            "CROSSSLOT Keys in request don't hash to the same slot",
            "SOMETHINGNEW never seen before",
        ] {
            assert_eq!(kind(reply(line)), ErrorKind::Corrupt, "{line}");
        }
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "MASTERDOWN Link with MASTER is down",
            "CLUSTERDOWN The cluster is down",
            "READONLY You can't write against a read only replica.",
            "NOSCRIPT No matching script.",
            "NOREPLICAS Not enough good replicas to write.",
            "OOM command not allowed when used memory > 'maxmemory'.",
            "MISCONF Redis is configured to save RDB snapshots",
            "ERR max number of clients reached",
        ] {
            assert_eq!(kind(reply(line)), ErrorKind::Unavailable, "{line}");
        }
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn tls_refusals_are_corrupt_and_lost_handshakes_unavailable() {
        use std::io;
        let refused = |tls: rustls::Error| -> RedisError {
            io::Error::new(io::ErrorKind::InvalidData, tls).into()
        };
        let unknown = refused(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let reason = tls_refusal(&unknown).expect("a refusal");
        assert!(
            reason.contains("UnknownIssuer") && reason.contains("tls_ca_pem"),
            "{reason}"
        );
        assert_eq!(kind(unknown), ErrorKind::Corrupt);
        let required = refused(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        let reason = tls_refusal(&required).expect("a refusal");
        assert!(reason.contains("tls_client_cert_pem"), "{reason}");
        assert_eq!(kind(required), ErrorKind::Corrupt);
        // A connection lost during the handshake is an outage, not a refusal.
        let reset: RedisError = io::Error::from(io::ErrorKind::ConnectionReset).into();
        assert!(tls_refusal(&reset).is_none());
        assert_eq!(kind(reset), ErrorKind::Unavailable);
    }

    #[test]
    fn io_errors_are_unavailable_and_timeouts_are_timeouts() {
        use std::io;
        for io_kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            let err = ledger_error(io::Error::from(io_kind).into(), Duration::from_millis(50));
            assert!(matches!(err, LedgerError::Unavailable(_)), "{err:?}");
        }
        let err = ledger_error(
            io::Error::from(io::ErrorKind::TimedOut).into(),
            Duration::from_millis(7),
        );
        assert!(matches!(err, LedgerError::Timeout(t) if t == Duration::from_millis(7)));
        let err = ledger_error(
            (redis::ErrorKind::UnexpectedReturnType, "not an integer").into(),
            Duration::from_millis(50),
        );
        assert!(err.is_corrupt() && !err.is_unavailable(), "{err:?}");
    }
}
