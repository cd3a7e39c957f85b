//! The Lua scripts, built once and kept.
//!
//! Each operation is one `.lua` file in this directory, opening with `-- KEYS[i]` /
//! `-- ARGV[i]` comments; `lib.lua` (shared helpers: argument checks, the clock, the
//! lazy reclaim of expired holds) is prepended to each. A [`Script`] hashes its text when
//! built, so the scripts are built once per process and invoked by SHA (`EVALSHA`);
//! [`ScriptInvocation::invoke_async`](redis::ScriptInvocation::invoke_async) loads a script
//! and retries when the server answers `NOSCRIPT` (after a restart, a `SCRIPT FLUSH`, or on
//! a cluster node that has not seen it yet).

use std::sync::LazyLock;

use redis::Script;

/// Every script of the ledger.
pub(super) struct Scripts {
    pub(super) reserve: Script,
    pub(super) settle: Script,
    pub(super) extend: Script,
    pub(super) top_up: Script,
    pub(super) balance: Script,
    pub(super) usage: Script,
    pub(super) configure: Script,
    pub(super) sweep: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lib.lua"), "\n", include_str!($file)))
    };
}

/// The scripts, hashed on first use and kept for the life of the process.
pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    reserve: script!("reserve.lua"),
    settle: script!("settle.lua"),
    extend: script!("extend.lua"),
    top_up: script!("top_up.lua"),
    balance: script!("balance.lua"),
    usage: script!("usage.lua"),
    configure: script!("configure.lua"),
    sweep: script!("sweep.lua"),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_distinct_and_keep_their_headers() {
        let s = &*SCRIPTS;
        let all = [
            &s.reserve,
            &s.settle,
            &s.extend,
            &s.top_up,
            &s.balance,
            &s.usage,
            &s.configure,
            &s.sweep,
        ];
        let mut hashes: Vec<_> = all.iter().map(|s| s.get_hash()).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), all.len());
    }

    #[test]
    fn amounts_are_never_stringified_in_lua() {
        for (name, text) in [
            ("lib.lua", include_str!("lib.lua")),
            ("reserve.lua", include_str!("reserve.lua")),
            ("settle.lua", include_str!("settle.lua")),
            ("extend.lua", include_str!("extend.lua")),
            ("top_up.lua", include_str!("top_up.lua")),
            ("balance.lua", include_str!("balance.lua")),
            ("usage.lua", include_str!("usage.lua")),
            ("configure.lua", include_str!("configure.lua")),
            ("sweep.lua", include_str!("sweep.lua")),
        ] {
            assert!(!text.contains("tostring("), "{name} uses tostring");
            assert!(!text.contains("string.format("), "{name} formats numbers");
            if name != "lib.lua" {
                assert!(text.starts_with("-- "), "{name} has no header");
                assert!(text.contains("-- KEYS[1]:"), "{name} lists no KEYS");
                assert!(text.contains("-- ARGV[1]:"), "{name} lists no ARGV");
            }
        }
    }
}
