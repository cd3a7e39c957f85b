//! How the account scripts reach Redis: one Redis Function library (Redis 7.0 and later),
//! or `EVALSHA` of each script below 7.0. Chosen once, at connect.
//!
//! # The library
//!
//! Every account script of [`SPECS`](super::scripts::SPECS) becomes one function of one
//! library, loaded with `FUNCTION LOAD REPLACE` (on every master of a cluster): the
//! generated prelude and `lib.lua` run once, when the library loads, instead of on every
//! call as they do in an `EVALSHA` script. The library is versioned by name,
//! `tower_credits_<hash>` with functions `tc_<hash>_<script>` (`<hash>`: the first 12 hex
//! digits of the SHA-256 of its text), so replicas of two versions share a server during a
//! rolling upgrade, each calling its own functions. A library of an older version stays
//! loaded until someone runs `FUNCTION DELETE` on it.
//!
//! A call answered `Function not found` (the server was flushed, restarted without
//! persistence, or a failover promoted a node that never got the library) loads the
//! library again and retries once: never an error a caller sees.
//!
//! Each script body becomes a Lua function of the library, with `KEYS` and `ARGV` library
//! locals set from the function's arguments on each call (the helpers of `lib.lua` read
//! them as they do in a script).
//!
//! # The fallback
//!
//! A server that does not know `FUNCTION` (below 7.0), or refuses it (an ACL), gets each
//! script by SHA (`EVALSHA`), loaded again on `NOSCRIPT`, as redis-rs's
//! [`Script`](redis::Script) does. Both paths run the conformance suite.

use std::sync::LazyLock;

use redis::{RedisError, Value};

use super::conn::Conn;
use super::scripts::{prelude, Call, ScriptSpec, LIB, SPECS};

/// How this ledger calls its account scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// `FCALL` of the library's functions.
    Functions,
    /// `EVALSHA` of each script, loaded on `NOSCRIPT`.
    Evalsha,
}

/// The library: its name, its text, and the version hash in its function names.
struct Library {
    hash: String,
    code: String,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    use sha2::{Digest, Sha256};
    let mut body = String::new();
    body.push_str(prelude());
    body.push_str("local KEYS, ARGV\n");
    body.push_str(LIB);
    body.push('\n');
    for spec in SPECS {
        body.push_str(&format!(
            "local function run_{name}()\n{source}\nend\n",
            name = spec.name,
            source = spec.source(),
        ));
    }
    let hash = hex::encode(Sha256::digest(body.as_bytes()))[..12].to_owned();
    let mut code = format!("#!lua name=tower_credits_{hash}\n{body}");
    // Each script twice: for a ledger that writes accounts in fields, and for one that
    // packs them (`_packed`), told apart by lib.lua's PACK at no cost of an argument.
    for spec in SPECS {
        for (suffix, packed) in [("", false), ("_packed", true)] {
            code.push_str(&format!(
                "redis.register_function('tc_{hash}_{name}{suffix}', function(keys, args)\n  \
                 KEYS, ARGV = keys, args\n  expired_credits = 0\n  \
                 PACK, LOADED = {packed}, nil\n  \
                 return with_expired(run_{name}())\nend)\n",
                name = spec.name,
            ));
        }
    }
    Library { hash, code }
});

/// The library's text, as `FUNCTION LOAD` gets it (tests and benches).
#[cfg_attr(not(feature = "test-util"), allow(dead_code))]
pub(super) fn library_code() -> &'static str {
    &LIBRARY.code
}

/// The name of `spec`'s function in the library (`packed`: for a ledger that packs
/// accounts).
pub(super) fn function_name(spec: &ScriptSpec, packed: bool) -> &str {
    spec.function[usize::from(packed)].get_or_init(|| {
        let suffix = if packed { "_packed" } else { "" };
        format!("tc_{}_{}{suffix}", LIBRARY.hash, spec.name)
    })
}

/// Loads the library (`FUNCTION LOAD REPLACE`; on a cluster redis-rs sends it to every
/// master).
pub(super) async fn load(conn: &Conn) -> Result<(), RedisError> {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(&LIBRARY.code);
    conn.clone().query::<Value>(&cmd).await.map(|_| ())
}

/// Chooses how to call the scripts: loads the library, or falls back to `EVALSHA` when
/// the server does not know (or refuses) `FUNCTION`. An error that says the server cannot
/// serve now (a lost connection) is returned: the connection is not usable either.
pub(super) async fn choose(conn: &Conn, allow_functions: bool) -> Result<Mode, RedisError> {
    if !allow_functions {
        return Ok(Mode::Evalsha);
    }
    match load(conn).await {
        Ok(()) => Ok(Mode::Functions),
        // Only a server that does not have the command, or will not let us run it, gets
        // the fallback; any other failure (a lost connection, LOADING, CLUSTERDOWN) fails
        // the connect like any other call would.
        Err(err) if !lacks_functions(&err) => Err(err),
        Err(err) => {
            tracing::info!(
                error = %err,
                "Redis Functions unavailable (Redis below 7.0, or refused): the ledger calls \
                 its scripts with EVALSHA"
            );
            Ok(Mode::Evalsha)
        }
    }
}

/// Whether `err` says the server has no `FUNCTION` command (below 7.0) or refuses it (an
/// ACL without it).
fn lacks_functions(err: &RedisError) -> bool {
    let text = err.to_string();
    text.contains("unknown command")
        || text.contains("unknown subcommand")
        || err.code() == Some("NOPERM")
}

/// Whether `err` says the function is not loaded on the server that answered.
pub(super) fn is_function_not_found(err: &RedisError) -> bool {
    err.to_string().contains("Function not found")
}

/// Sends `call` as `mode` says: `FCALL`, loading the library again and retrying once when
/// the server answers `Function not found`; or `EVALSHA`, loading the script on
/// `NOSCRIPT`.
pub(super) async fn run(conn: Conn, mode: Mode, call: Call) -> Result<Value, RedisError> {
    match mode {
        Mode::Evalsha => conn.eval(call.invocation()).await,
        Mode::Functions => match conn.clone().query::<Value>(&call.command).await {
            Err(err) if is_function_not_found(&err) => {
                tracing::info!("the Redis Function library is missing: loading it again");
                load(&conn).await?;
                conn.query(&call.command).await
            }
            other => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_or_refused_command_falls_back() {
        let reply = |line: &str| {
            redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
                .unwrap()
                .extract_error()
                .unwrap_err()
        };
        assert!(lacks_functions(&reply(
            "ERR unknown command 'FUNCTION', with args beginning with: 'LOAD'"
        )));
        assert!(lacks_functions(&reply(
            "NOPERM this user has no permissions to run the 'function|load' command"
        )));
        assert!(!lacks_functions(&reply(
            "LOADING Redis is loading the dataset"
        )));
        assert!(!lacks_functions(&reply("CLUSTERDOWN The cluster is down")));
        assert!(is_function_not_found(&reply("ERR Function not found")));
    }

    #[test]
    fn the_library_is_named_by_its_version_and_registers_every_script() {
        let code = library_code();
        let hash = &LIBRARY.hash;
        assert!(code.starts_with(&format!("#!lua name=tower_credits_{hash}\n")));
        assert_eq!(hash.len(), 12);
        for spec in SPECS {
            assert!(
                code.contains(&format!(
                    "redis.register_function('tc_{hash}_{}'",
                    spec.name
                )),
                "{}",
                spec.name
            );
            assert_eq!(
                function_name(spec, false),
                format!("tc_{hash}_{}", spec.name)
            );
            assert_eq!(
                function_name(spec, true),
                format!("tc_{hash}_{}_packed", spec.name)
            );
        }
    }
}
