//! Key names.

use crate::api_key::ApiKeyHash;
use crate::ledger::AccountId;

/// The six keys of one account, in the order every account script takes them
/// (`KEYS[1]` … `KEYS[6]`), all under the hash tag `{<account>}`.
pub(super) struct AccountKeys([String; 6]);

/// The suffixes of an account's keys, in `KEYS` order.
pub(super) const ACCOUNT_KEY_SUFFIXES: [&str; 6] =
    ["acct", "holds", "expiry", "done", "usage", "topups"];

impl AccountKeys {
    /// `<prefix>:{<account>}:<suffix>` for every suffix. [`AccountId`] admits no `{` or
    /// `}`, so the account cannot break out of its hash tag.
    pub(super) fn new(prefix: &str, account: &AccountId) -> Self {
        Self(ACCOUNT_KEY_SUFFIXES.map(|suffix| format!("{prefix}:{{{account}}}:{suffix}")))
    }

    /// The keys, in `KEYS` order.
    pub(super) fn all(&self) -> &[String; 6] {
        &self.0
    }
}

/// `<prefix>:apikey:<sha256 hex>`: the account an API key belongs to.
pub(super) fn api_key(prefix: &str, key: &ApiKeyHash) -> String {
    format!("{prefix}:apikey:{}", key.to_hex())
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
        let keys = AccountKeys::new("credits", &AccountId::new("acct_42").unwrap());
        assert_eq!(keys.all()[0], "credits:{acct_42}:acct");
        assert_eq!(keys.all()[5], "credits:{acct_42}:topups");
        assert!(keys.all().iter().all(|k| k.contains("{acct_42}")));
        assert_eq!(
            api_key("credits", &ApiKeyHash::of("abc")),
            "credits:apikey:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
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
