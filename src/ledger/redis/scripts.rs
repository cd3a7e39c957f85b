//! The Lua scripts: declared once, in [`SPECS`], built once and kept.
//!
//! Each operation is one `.lua` file in this directory and one [`ScriptSpec`] here: its
//! `KEYS` (by name, see the data model in the [module docs](super)), its `ARGV` (by name,
//! in order) and the shape of its reply. The table drives everything else:
//!
//! * the loader: a script's text is a [prelude](prelude) generated from the Rust constants
//!   ([`MAX_AMOUNT`](crate::ledger::MAX_AMOUNT), [`RECLAIM_LIMIT`](crate::ledger::RECLAIM_LIMIT),
//!   `BURN_RATE_TAU_SECS`), then `lib.lua` (shared helpers: argument checks, the clock, the
//!   lazy reclaim of expired holds), then the script's own file;
//! * the invocation: [`ScriptSpec::invoke`] passes the keys the spec names and checks (in
//!   debug builds) that the caller passed exactly the spec's arguments;
//! * the decoders of [`reply`](super::reply), one per reply shape, named after the spec;
//! * a test: each `.lua` header lists its `KEYS[i]`, `ARGV[i]` and reply, and must agree
//!   with the spec.
//!
//! A [`Script`] hashes its text when built, so the scripts are built once per process and
//! invoked by SHA (`EVALSHA`);
//! [`ScriptInvocation::invoke_async`](redis::ScriptInvocation::invoke_async) loads a script
//! and retries when the server answers `NOSCRIPT` (after a restart, a `SCRIPT FLUSH`, or on
//! a cluster node that has not seen it yet).

use std::sync::{LazyLock, OnceLock};

use redis::{RedisWrite as _, Script, ScriptInvocation, ToRedisArgs};

use super::keys::ACCOUNT_KEY_SUFFIXES;

/// One script: its file, what it takes and what it answers.
pub(super) struct ScriptSpec {
    /// The operation, as named in errors (`unexpected reply from the <name> script`).
    pub(super) name: &'static str,
    /// The text of `<name>.lua`.
    source: &'static str,
    /// `KEYS[1]`, `KEYS[2]`, …: suffixes of the account's keys
    /// (`<prefix>:{<account>}:<suffix>`).
    pub(super) keys: &'static [&'static str],
    /// `ARGV[1]`, `ARGV[2]`, …: what each argument is (each header line starts with it).
    pub(super) args: &'static [&'static str],
    /// The shapes of the reply, one per line, as the header's `Returns` block lists them
    /// (documentation, checked against each header by a test).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) reply: &'static str,
    /// The built script, hashed on first use and kept for the life of the process: for a
    /// ledger that writes accounts in fields (`[0]`) and one that packs them (`[1]`).
    script: [OnceLock<Script>; 2],
    /// Its function's name in the library, spelled on first use and kept (every `FCALL`
    /// names it), by the same index.
    pub(super) function: [OnceLock<String>; 2],
}

/// Every account script takes the account's nine keys, in this order: `lib.lua` reads
/// `KEYS[1]` … `KEYS[4]`, `KEYS[7]` and `KEYS[8]` by position.
const ACCOUNT_KEYS: &[&str] = &ACCOUNT_KEY_SUFFIXES;

/// The arguments every account script takes: two first, the audit trail cap last (all read
/// by `common_args` in `lib.lua`).
macro_rules! account_args {
    ($($arg:literal),* $(,)?) => {
        &["clock offset", "closed-id grace", $($arg,)* "audit trail cap"]
    };
}

macro_rules! spec {
    ($name:literal, args: $args:expr, reply: $reply:expr $(,)?) => {
        ScriptSpec {
            name: $name,
            source: include_str!(concat!($name, ".lua")),
            keys: ACCOUNT_KEYS,
            args: $args,
            reply: $reply,
            script: [OnceLock::new(), OnceLock::new()],
            function: [OnceLock::new(), OnceLock::new()],
        }
    };
}

/// `reserve`: holds credits of one account.
pub(super) static RESERVE: ScriptSpec = spec!(
    "reserve",
    args: account_args!["hold id", "amount to hold", "hold ttl", "route label", "most open holds", "least amount to hold", "replica", "event lease", "idempotency key digest", "request fingerprint", "idempotency retention", "store grace"],
    reply: "{'held', amount, available, credit_limit, {thresholds}, expires_at_ms, replayed 0|1,
            rate, rate_at_ms, now_ms, holds_due}
            {'insufficient', required, available, credit_limit, {events}, events_due}
            {'closed', 'already_committed' | 'already_refunded' | 'expired'}
            {'too_many_holds'}
            {'total_out_of_range', total, amount}
            {'unknown_account'}
            {'replay', 'in_progress' | 'key_reused' | 'unavailable'}
            {'replay', 'stored', response, available}",
);

/// `settle`: commits or refunds one hold.
pub(super) static SETTLE: ScriptSpec = spec!(
    "settle",
    args: account_args!["hold id", "'commit' or 'refund'", "actual cost", "tombstone ttl", "replica", "event lease", "idempotency key digest"],
    reply: "{'settled', outcome, committed, released, clamped 0|1, available, {thresholds},
            rate, rate_at_ms, now_ms, {events}, events_due}
            {'unknown_account'}",
);

/// `extend`: keeps an open hold alive.
pub(super) static EXTEND: ScriptSpec = spec!(
    "extend",
    args: account_args!["hold id", "new ttl"],
    reply: "{'until', expires_at_ms}
            {'not_open', 'already_committed' | 'already_refunded' | 'expired' | 'unknown'}",
);

/// `grow`: raises an open hold to a new total.
pub(super) static GROW: ScriptSpec = spec!(
    "grow",
    args: account_args!["hold id", "the hold's new total", "least new total"],
    reply: "{'grown', amount, available}
            {'insufficient', required, available, credit_limit}
            {'not_open', 'already_committed' | 'already_refunded' | 'expired' | 'unknown'}
            {'total_out_of_range', total, amount}",
);

/// `store`: keeps a keyed request's response for its replays.
pub(super) static STORE: ScriptSpec = spec!(
    "store",
    args: account_args!["hold id", "idempotency key digest", "'response' or 'unavailable'", "the response"],
    reply: "{'stored', 0|1}",
);

/// `history`: a page of the account's audit trail.
pub(super) static HISTORY: ScriptSpec = spec!(
    "history",
    args: account_args!["cursor", "entries wanted"],
    reply: "{'entries', entry, ...}",
);

/// `reconcile`: checks one account's books, writing nothing.
pub(super) static RECONCILE: ScriptSpec = spec!(
    "reconcile",
    args: account_args!["stale after"],
    reply: "{'checked', {drift}, ...}
            {'unknown_account'}",
);

/// `top_up`: adds credits once per idempotency key, after [`CLAIM_TOP_UP_KEY`] claimed the
/// key for the account.
pub(super) static TOP_UP: ScriptSpec = spec!(
    "top_up",
    args: account_args!["amount", "idempotency key"],
    reply: "{'topped_up', replayed 0|1, available}
            {'conflict', first_amount}
            {'total_out_of_range', topped_up, amount}",
);

/// `balance`: the account's balance and totals.
pub(super) static BALANCE: ScriptSpec = spec!(
    "balance",
    args: account_args![],
    reply: "{'balance', available, held, committed, topped_up, credit_limit, {thresholds},
            runway_horizon_secs, open_holds, rate, rate_at_ms, now_ms}
            {'unknown_account'}",
);

/// `usage`: committed credits and calls by route.
pub(super) static USAGE: ScriptSpec = spec!(
    "usage",
    args: account_args![],
    reply: "{'usage', field, value, field, value, ...}
            {'unknown_account'}",
);

/// `configure`: credit limit, low-balance thresholds and runway horizon.
pub(super) static CONFIGURE: ScriptSpec = spec!(
    "configure",
    args: account_args!["credit limit", "low-balance thresholds", "runway horizon"],
    reply: "{'configured'}",
);

/// `sweep`: reclaims the expired holds of an account that may see no request.
pub(super) static SWEEP: ScriptSpec = spec!(
    "sweep",
    args: account_args![],
    reply: "{'swept', reclaimed, open_holds, holds_due}
            {'unknown_account'}",
);

/// `rewrite`: writes an account in the ledger's form (packed or in fields).
pub(super) static REWRITE: ScriptSpec = spec!(
    "rewrite",
    args: account_args![],
    reply: "{'rewritten', 0|1}
            {'unknown_account'}",
);

/// `outbox`: the account's detected events (claim, renew, ack, dead-letter, requeue, list).
pub(super) static OUTBOX: ScriptSpec = spec!(
    "outbox",
    args: account_args!["operation", "replica", "lease", "entry id", "most entries", "reason"],
    reply: "{'claimed', events_due, {event}, ...}
            {'events', {event}, ...}
            {'dead_letters', {event, reason, dead_entry_id}, ...}
            {'done', 0|1}
            {'requeued', events_due}
            {'due', events_due}",
);

/// Every script of the ledger.
pub(super) static SPECS: [&ScriptSpec; 14] = [
    &RESERVE, &SETTLE, &EXTEND, &GROW, &STORE, &TOP_UP, &BALANCE, &USAGE, &CONFIGURE, &SWEEP,
    &OUTBOX, &RECONCILE, &HISTORY, &REWRITE,
];

/// Builds (hashes) every script of [`SPECS`] and the claim scripts, once per process.
pub(super) fn load_all() {
    for spec in SPECS {
        spec.script(false);
        spec.script(true);
    }
    LazyLock::force(&CLAIM_TOP_UP_KEY);
    LazyLock::force(&RELEASE_TOP_UP_KEY);
}

/// Claims a top-up idempotency key for an account: `SET NX`, and in the same step who
/// holds it when the key was taken (`SET … NX GET` would need Redis 7).
/// KEYS[1]: <prefix>:topup:<sha256 hex of the idempotency key>  (no hash tag of an account)
/// ARGV[1]: account id
/// Returns nil when this call made the claim, else the account id that holds it.
pub(super) static CLAIM_TOP_UP_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local owner = redis.call('GET', KEYS[1])\n\
         if owner then return owner end\n\
         redis.call('SET', KEYS[1], ARGV[1])\n\
         return false\n",
    )
});

/// Releases a claim made by a top-up that was then refused: deletes the claim only while
/// it still names the account (compare and delete).
/// KEYS[1]: <prefix>:topup:<sha256 hex of the idempotency key>
/// ARGV[1]: account id
/// Returns 1 when the claim was deleted, else 0.
pub(super) static RELEASE_TOP_UP_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then\n\
           return redis.call('DEL', KEYS[1])\n\
         end\n\
         return 0\n",
    )
});

/// `lib.lua`: the helpers shared by every script.
pub(super) const LIB: &str = include_str!("lib.lua");

/// A float as a Lua number literal that reads back exactly (`{:?}` prints the shortest
/// text that round-trips, always with a `.` or an exponent).
fn lua_float(x: f64) -> String {
    assert!(x.is_finite(), "{x} has no Lua literal");
    format!("{x:?}")
}

/// The Lua prelude of every script: the Rust constants the scripts share. Integers print
/// exactly (every one up to 2^53 - 1 is exact as a Lua number).
pub(super) fn prelude() -> &'static str {
    static PRELUDE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "-- Generated by scripts.rs from the Rust constants.\n\
             local MAX_AMOUNT = {}\n\
             local RECLAIM_LIMIT = {}\n\
             local BURN_RATE_TAU_SECS = {}\n\
             local RUNWAY_MIN_COMMITS = {}\n\
             local RUNWAY_MIN_SPAN_MS = {}\n\
             local DEFAULT_RUNWAY_HORIZON_SECS = {}\n",
            crate::ledger::MAX_AMOUNT,
            crate::ledger::RECLAIM_LIMIT,
            lua_float(crate::ledger::runway::BURN_RATE_TAU_SECS),
            crate::ledger::runway::RUNWAY_MIN_COMMITS,
            crate::ledger::runway::RUNWAY_MIN_SPAN_MS,
            crate::ledger::DEFAULT_RUNWAY_HORIZON.as_secs(),
        )
    });
    &PRELUDE
}

impl ScriptSpec {
    /// The full text sent to Redis: prelude, `lib.lua`, then the script, run as a function
    /// so that its reply goes through `with_expired`; `packed`: for a ledger that packs
    /// accounts (`lib.lua`'s `PACK`).
    pub(super) fn text(&self, packed: bool) -> String {
        format!(
            "{}{LIB}\nPACK = {packed}\nreturn with_expired((function()\n{}\nend)())\n",
            prelude(),
            self.source
        )
    }

    /// The built script (hashed once).
    pub(super) fn script(&'static self, packed: bool) -> &'static Script {
        self.script[usize::from(packed)].get_or_init(|| Script::new(&self.text(packed)))
    }

    /// The script's own file (without the prelude and `lib.lua`).
    pub(super) fn source(&self) -> &'static str {
        self.source
    }

    /// A call of this script with the account's keys (each suffix the spec names, in
    /// order, as `<prefix>:{<account>}:<suffix>`) and the arguments `args` pushes, checked
    /// against the spec in debug builds.
    ///
    /// Everything is written once, straight into the `FCALL` command's buffer, sized
    /// up front: no string per key, no vector per argument, no buffer grown and copied
    /// argument by argument (which cost about a fifth of the app's side of a reserve and a
    /// commit before).
    pub(super) fn call(
        &'static self,
        packed: bool,
        prefix: &str,
        account: &crate::ledger::AccountId,
        args: impl FnOnce(&mut Args<'_>),
    ) -> Call {
        // An `AccountId`, never a bare string: it admits no `{` or `}`, so no key can leave
        // the account's hash tag.
        let account = account.as_str();
        let name = super::functions::function_name(self, packed);
        let key_len = prefix.len() + account.len() + 4;
        let data = name.len()
            + 8
            + self.keys.iter().map(|s| key_len + s.len()).sum::<usize>()
            + 24 * self.args.len();
        let mut command = redis::Cmd::with_capacity(3 + self.keys.len() + self.args.len(), data);
        command.arg("FCALL").arg(name).arg(self.keys.len());
        // The keys' common head once, each suffix after it in turn (on the stack for
        // the usual lengths).
        let longest = self.keys.iter().map(|s| s.len()).max().unwrap_or(0);
        let (mut stack, mut heap) = ([0u8; 192], Vec::new());
        let key: &mut [u8] = if key_len + longest <= stack.len() {
            &mut stack
        } else {
            heap.resize(key_len + longest, 0);
            &mut heap
        };
        let mut head = 0;
        for part in [prefix, ":{", account, "}:"] {
            key[head..head + part.len()].copy_from_slice(part.as_bytes());
            head += part.len();
        }
        for suffix in self.keys {
            let end = head + suffix.len();
            key[head..end].copy_from_slice(suffix.as_bytes());
            command.write_arg(&key[..end]);
        }
        let mut a = Args(&mut command);
        args(&mut a);
        debug_assert_eq!(
            command.args_iter().len(),
            FCALL_HEAD + self.keys.len() + self.args.len(),
            "the {} script takes ARGV {:?}",
            self.name,
            self.args
        );
        Call {
            spec: self,
            packed,
            command,
        }
    }
}

/// `FCALL`, the function's name and the number of keys: what a [`Call`]'s command holds
/// before its keys.
const FCALL_HEAD: usize = 3;

/// One call of an account script, ready to send as `FCALL` or `EVALSHA`.
pub(super) struct Call {
    /// The script.
    pub(super) spec: &'static ScriptSpec,
    /// Whether it runs for a ledger that packs accounts (its own function, or script text).
    pub(super) packed: bool,
    /// `FCALL <function> <number of keys> <KEYS…> <ARGV…>`.
    pub(super) command: redis::Cmd,
}

impl Call {
    /// The call as an `EVALSHA` invocation (redis-rs loads the script on `NOSCRIPT`):
    /// the command's keys and arguments, without its head.
    pub(super) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut invocation = self.spec.script(self.packed).prepare_invoke();
        let keys = self.spec.keys.len();
        for (i, part) in self.command.args_iter().skip(FCALL_HEAD).enumerate() {
            let redis::Arg::Simple(bytes) = part else {
                unreachable!("a call has no cursor argument")
            };
            if i < keys {
                invocation.key(bytes);
            } else {
                invocation.arg(bytes);
            }
        }
        invocation
    }
}

/// The `ARGV` of one invocation, in order: one argument per [`arg`](Args::arg), written
/// into the call's command.
pub(super) struct Args<'a>(&'a mut redis::Cmd);

impl Args<'_> {
    /// Appends one argument.
    pub(super) fn arg(&mut self, value: impl ToRedisArgs) -> &mut Self {
        value.write_redis_args(self.0);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_writes_its_head_keys_and_arguments_in_order() {
        // A short id (the keys built on the stack), and the longest under the longest
        // prefix (on the heap).
        let (long, long_prefix) = (
            "a".repeat(crate::ledger::MAX_ACCOUNT_ID_LEN),
            "p".repeat(64),
        );
        for (prefix, acct, packed) in [
            ("credits", "acct_42", false),
            ("credits", "acct_42", true),
            (long_prefix.as_str(), long.as_str(), true),
        ] {
            let acct = crate::AccountId::new(acct).unwrap();
            let call = RESERVE.call(packed, prefix, &acct, |a| {
                for i in 0..RESERVE.args.len() {
                    a.arg(i as u64 * 1_000_003);
                }
            });
            let parts: Vec<Vec<u8>> = call
                .command
                .args_iter()
                .map(|part| match part {
                    redis::Arg::Simple(bytes) => bytes.to_vec(),
                    _ => panic!("a call has no cursor argument"),
                })
                .collect();
            let mut expected: Vec<Vec<u8>> = vec![
                b"FCALL".to_vec(),
                super::super::functions::function_name(&RESERVE, packed).into(),
                RESERVE.keys.len().to_string().into(),
            ];
            for suffix in RESERVE.keys {
                let key = super::super::keys::account_key(prefix, &acct, suffix);
                expected.push(key.into());
            }
            for i in 0..RESERVE.args.len() {
                expected.push((i as u64 * 1_000_003).to_string().into());
            }
            // (The EVALSHA form, the same parts without the head, runs the conformance
            // suite in tests/redis_ledger.rs.)
            assert_eq!(parts, expected, "packed: {packed}");
        }
    }

    #[test]
    fn scripts_are_distinct() {
        let mut hashes: Vec<_> = SPECS.iter().map(|s| s.script(false).get_hash()).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), SPECS.len());
        let mut names: Vec<_> = SPECS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SPECS.len());
    }

    #[test]
    fn the_prelude_carries_the_rust_constants() {
        let p = prelude();
        assert!(p.contains("local MAX_AMOUNT = 9007199254740991\n"), "{p}");
        assert!(p.contains(&format!(
            "local RECLAIM_LIMIT = {}\n",
            crate::ledger::RECLAIM_LIMIT
        )));
        let tau = crate::ledger::runway::BURN_RATE_TAU_SECS;
        let line = p
            .lines()
            .find_map(|l| l.strip_prefix("local BURN_RATE_TAU_SECS = "))
            .unwrap();
        assert_eq!(line.parse::<f64>().unwrap(), tau);
        assert_eq!(lua_float(3600.0), "3600.0");
        assert_eq!(lua_float(0.1), "0.1");
        assert_eq!(lua_float(1e300), "1e300");
        // lib.lua no longer defines them itself.
        for name in ["MAX_AMOUNT", "RECLAIM_LIMIT", "BURN_RATE_TAU_SECS"] {
            assert!(
                !LIB.contains(&format!("local {name} =")),
                "lib.lua defines {name}"
            );
        }
    }

    #[test]
    fn amounts_are_never_stringified_in_lua() {
        let all = std::iter::once(("lib.lua", LIB)).chain(SPECS.iter().map(|s| (s.name, s.source)));
        // The one float, the burn rate, is spelled once with "%.17g", which reads back as
        // the same double. Integers are spelled only with '%d', by the formatter lib.lua
        // takes once it has checked that '%d' spells 2^53 - 1 exactly (a C long of 64
        // bits); never with `tostring` or "%.14g" (`..`), which lose digits.
        let rate = "string.format('%.17g', a.rate)";
        let checked = "string.format('%d', MAX_AMOUNT) == '9007199254740991' and string.format";
        assert!(SPECS.iter().any(|s| s.source.contains(rate)));
        assert!(LIB.contains(checked));
        for (name, text) in all {
            assert!(!text.contains("tostring("), "{name} uses tostring");
            assert!(
                !text
                    .replace(rate, "")
                    .replace(checked, "")
                    .contains("string.format("),
                "{name} formats numbers"
            );
            // What the checked formatter is given: integers ('%d') and words ('%s').
            for call in ["int_format(", "f("] {
                for (at, _) in text.match_indices(call) {
                    let args = &text[at + call.len()..];
                    let Some(pattern) = args.strip_prefix('\'') else {
                        continue;
                    };
                    let pattern = &pattern[..pattern.find('\'').unwrap()];
                    let mut conversions = pattern.split('%').skip(1);
                    assert!(
                        conversions.all(|c| c.starts_with('d') || c.starts_with('s')),
                        "{name}: {pattern:?} formats a number other than with %d"
                    );
                }
            }
        }
        assert!(!prelude().contains("tostring("));
    }

    /// The header of a script: its leading `--` lines, without the `--`.
    fn header(source: &str) -> Vec<&str> {
        source
            .lines()
            .map_while(|l| l.strip_prefix("--"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect()
    }

    /// The `<what>[i]: rest` lines of a header, in order, as `(i, rest)`.
    fn indexed<'a>(header: &[&'a str], what: &str) -> Vec<(usize, &'a str)> {
        let open = format!("{what}[");
        header
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix(&open)?;
                let (i, rest) = rest.split_once("]:")?;
                let i = i
                    .parse::<usize>()
                    .unwrap_or_else(|_| panic!("{what}[{i}] is not one index"));
                Some((i, rest.trim()))
            })
            .collect()
    }

    /// Checks that `found` lists indices 1, 2, … n exactly once each, in order.
    fn check_indices(script: &str, what: &str, found: &[(usize, &str)], n: usize) {
        let indices: Vec<usize> = found.iter().map(|(i, _)| *i).collect();
        let expected: Vec<usize> = (1..=n).collect();
        assert_eq!(
            indices, expected,
            "{script}.lua lists {what} {indices:?}, but the Rust side passes {n}"
        );
    }

    #[test]
    fn headers_match_the_specs() {
        for spec in SPECS {
            let name = spec.name;
            let header = header(spec.source);
            assert!(
                header
                    .first()
                    .is_some_and(|l| l.starts_with(&format!("{name}: "))),
                "{name}.lua has no header naming it"
            );

            let keys = indexed(&header, "KEYS");
            check_indices(name, "KEYS", &keys, spec.keys.len());
            for ((i, rest), suffix) in keys.iter().zip(spec.keys) {
                let key = rest.split_whitespace().next().unwrap_or("");
                assert_eq!(
                    key,
                    format!("<prefix>:{{<account>}}:{suffix}"),
                    "{name}.lua: KEYS[{i}] is not the spec's {suffix:?}"
                );
            }

            let args = indexed(&header, "ARGV");
            check_indices(name, "ARGV", &args, spec.args.len());
            for ((i, rest), arg) in args.iter().zip(spec.args) {
                assert!(
                    rest.starts_with(arg),
                    "{name}.lua: ARGV[{i}] is {rest:?}, the spec's is {arg:?}"
                );
            }

            // The reply: the lines after `Returns:` / `Returns one of:` that open a
            // shape (`{`) or continue one, up to the end of the header.
            let returns = header
                .iter()
                .position(|l| l.starts_with("Returns"))
                .unwrap_or_else(|| panic!("{name}.lua lists no reply"));
            let listed: Vec<&str> = header[returns + 1..]
                .iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty())
                .collect();
            let shapes: Vec<&str> = spec.reply.lines().map(str::trim).collect();
            // Every header line starts with a shape line of the spec (the header may add
            // a comment after it); and as many of them.
            assert_eq!(
                listed.len(),
                shapes.len(),
                "{name}.lua lists the reply {listed:#?}, the spec {shapes:#?}"
            );
            for (line, shape) in listed.iter().zip(&shapes) {
                assert!(
                    line.starts_with(shape),
                    "{name}.lua: reply line {line:?} is not the spec's {shape:?}"
                );
            }
        }
    }

    #[test]
    fn every_script_takes_the_account_keys_and_common_args() {
        for spec in SPECS {
            assert_eq!(spec.keys, ACCOUNT_KEY_SUFFIXES, "{}", spec.name);
            assert_eq!(spec.args[..2], ["clock offset", "closed-id grace"]);
        }
    }
}
