//! Key names (the data model is in the [module docs](super)).

use crate::api_key::ApiKeyHash;
use crate::ledger::AccountId;

/// The suffixes of an account's keys, in the `KEYS` order every account script takes them
/// (`KEYS[1]` … `KEYS[9]`); what each holds is the data model of the [module docs](super).
pub(super) const ACCOUNT_KEY_SUFFIXES: [&str; 9] = [
    "acct", "holds", "expiry", "done", "usage", "topups", "outbox", "leases", "dead",
];

/// `<prefix>:{<account>}:<suffix>`: one key of an account, under the hash tag
/// `{<account>}`. [`AccountId`] admits no `{` or `}`, so the account cannot break out of
/// its hash tag.
pub(super) fn account_key(prefix: &str, account: &AccountId, suffix: &str) -> String {
    // Pushed, not `format!`ed. (An account script call writes its nine keys straight into
    // its command, `ScriptSpec::call`, whose test checks them against this spelling.)
    let account = account.as_str();
    let mut key = String::with_capacity(prefix.len() + account.len() + suffix.len() + 4);
    key.push_str(prefix);
    key.push_str(":{");
    key.push_str(account);
    key.push_str("}:");
    key.push_str(suffix);
    key
}

/// `<prefix>:apikey:<sha256 hex>`: the account an API key belongs to.
pub(super) fn api_key(prefix: &str, key: &ApiKeyHash) -> String {
    format!("{prefix}:apikey:{}", key.to_hex())
}

/// `<prefix>:topup:<sha256 hex of the key>`: the account a top-up idempotency key (a
/// payment id) belongs to. Outside every account's hash tag: on Redis Cluster it lives in
/// a slot of its own, so it is claimed by a command of its own before the account's script.
pub(super) fn top_up_claim(prefix: &str, idempotency_key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "{prefix}:topup:{}",
        hex::encode(Sha256::digest(idempotency_key.as_bytes()))
    )
}

/// Whether `prefix` is usable as a key prefix: 1 to 64 printable ASCII characters, no
/// space, no `{` or `}` (which would change the hash tag).
pub(super) fn is_valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_share_one_hash_tag() {
        let acct = AccountId::new("acct_42").unwrap();
        let keys = ACCOUNT_KEY_SUFFIXES.map(|s| account_key("credits", &acct, s));
        assert_eq!(keys[0], "credits:{acct_42}:acct");
        assert_eq!(keys[5], "credits:{acct_42}:topups");
        assert!(keys.iter().all(|k| k.contains("{acct_42}")));
        assert_eq!(
            api_key("credits", &ApiKeyHash::of("abc")),
            "credits:apikey:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            top_up_claim("credits", "abc"),
            "credits:topup:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn prefixes_cannot_change_the_hash_tag() {
        assert!(is_valid_prefix("credits"));
        assert!(is_valid_prefix("app:prod:credits"));
        for bad in ["", "a{b", "a}b", "a b", "a\nb", "é"] {
            assert!(!is_valid_prefix(bad), "{bad:?} accepted");
        }
    }
}
