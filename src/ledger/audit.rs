//! The audit trail: every reserve, grow, commit, refund, expiry and top-up of an account,
//! appended by the same atomic step that moves the credits, with the account's totals
//! after it. A capped trail still chains: each entry's totals are where the next starts.
//!
//! Read it newest first, a page at a time, with [`LedgerReports::history`]; the page's
//! [`next`](HistoryPage::next) cursor is opaque.
//!
//! [`LedgerReports::history`]: super::LedgerReports::history

use std::fmt;

use serde::Serialize;

use super::LedgerError;

/// Default most entries kept per account: 1,000 (the oldest go first).
pub const DEFAULT_AUDIT_CAP: usize = 1_000;

/// Most entries one page holds.
pub const MAX_HISTORY_PAGE: usize = 500;

/// What moved the credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditKind {
    /// A hold was placed (`amount`: held).
    Reserve,
    /// A hold was raised (`amount`: the raise).
    Grow,
    /// A hold was committed (`amount`: charged; the rest went back).
    Commit,
    /// A hold was refunded (`amount`: given back).
    Refund,
    /// A hold expired unsettled (`amount`: given back).
    Expire,
    /// Credits were added (`amount`: the top-up).
    TopUp,
}

impl AuditKind {
    /// The name used on the wire and in the Redis stream.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Reserve => "reserve",
            AuditKind::Grow => "grow",
            AuditKind::Commit => "commit",
            AuditKind::Refund => "refund",
            AuditKind::Expire => "expire",
            AuditKind::TopUp => "top_up",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "reserve" => AuditKind::Reserve,
            "grow" => AuditKind::Grow,
            "commit" => AuditKind::Commit,
            "refund" => AuditKind::Refund,
            "expire" => AuditKind::Expire,
            "top_up" => AuditKind::TopUp,
            _ => return None,
        })
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of an account's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// Its place in the trail (the cursor of a page that starts after it).
    pub id: String,
    /// When, in ms since the Unix epoch (ledger clock).
    pub at_ms: u64,
    /// What moved the credits.
    pub kind: AuditKind,
    /// The credits moved.
    pub amount: u64,
    /// The hold, for a hold's entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
    /// The route the hold paid for, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The account's totals right after.
    pub available: i64,
    /// Credits held right after.
    pub held: u64,
    /// Credits committed, all time, right after.
    pub committed: u64,
    /// Credits topped up, all time, right after.
    pub topped_up: u64,
}

impl AuditEntry {
    /// An entry `id` of `kind` moving `amount` at `at_ms`, no hold, zero totals: a ledger
    /// outside this crate sets the rest.
    pub fn new(id: impl Into<String>, at_ms: u64, kind: AuditKind, amount: u64) -> Self {
        Self {
            id: id.into(),
            at_ms,
            kind,
            amount,
            hold_id: None,
            route: None,
            available: 0,
            held: 0,
            committed: 0,
            topped_up: 0,
        }
    }
}

/// A page of an account's audit trail, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HistoryPage {
    /// The entries, newest first.
    pub entries: Vec<AuditEntry>,
    /// The cursor of the next (older) page; `None` at the oldest entry kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl HistoryPage {
    /// `entries` (newest first), and the cursor of the page after them.
    pub fn new(entries: Vec<AuditEntry>, next: Option<String>) -> Self {
        Self { entries, next }
    }

    /// A page of `limit` entries from up to `limit + 1` read newest first: the one past the
    /// page only says that another page follows, after the page's last entry.
    pub fn from_newest(mut entries: Vec<AuditEntry>, limit: usize) -> Self {
        let next = (limit > 0 && entries.len() > limit).then(|| {
            entries.truncate(limit);
            entries[limit - 1].id.clone()
        });
        Self { entries, next }
    }
}

/// Checks a history read: `limit` 1 to [`MAX_HISTORY_PAGE`]; a cursor of digits and at
/// most one `-` (what the ledgers hand out), at most 40 bytes.
pub fn check_history(
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Option<&str>, usize), LedgerError> {
    let bad = |detail: &str| LedgerError::InvalidSetting {
        what: "history",
        detail: detail.into(),
    };
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(bad("the page size must be 1 to 500"));
    }
    if let Some(cursor) = cursor {
        let well_formed = !cursor.is_empty()
            && cursor.len() <= 40
            && cursor.bytes().all(|b| b.is_ascii_digit() || b == b'-')
            && cursor.matches('-').count() <= 1
            && !cursor.starts_with('-')
            && !cursor.ends_with('-');
        if !well_formed {
            return Err(bad("the cursor is not one this ledger handed out"));
        }
    }
    Ok((cursor, limit))
}

/// Default entries of a history page read over HTTP.
pub const DEFAULT_HISTORY_PAGE: usize = 50;

/// What a history read over HTTP asks: `cursor=`, `limit=` (default
/// [`DEFAULT_HISTORY_PAGE`]) and `since=` (ms since the Unix epoch: older entries are left
/// out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageQuery {
    /// The page's cursor.
    pub cursor: Option<String>,
    /// Entries per page.
    pub limit: usize,
    /// The oldest time wanted.
    pub since: Option<u64>,
}

impl PageQuery {
    /// Parses a query string (`cursor=…&limit=…&since=…`, each at most once); an unknown
    /// or malformed parameter is an error naming it.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut page = PageQuery {
            limit: DEFAULT_HISTORY_PAGE,
            ..PageQuery::default()
        };
        let mut seen = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if seen.contains(&name) {
                return Err(format!("`{name}` is given twice"));
            }
            seen.push(name);
            match name {
                "cursor" if !value.is_empty() => page.cursor = Some(value.to_owned()),
                "cursor" => {}
                "limit" => {
                    page.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_HISTORY_PAGE).contains(n))
                        .ok_or("`limit` must be 1 to 500")?;
                }
                "since" => {
                    page.since = Some(
                        value
                            .parse()
                            .map_err(|_| "`since` must be ms since the Unix epoch")?,
                    );
                }
                other => return Err(format!("unknown parameter `{other}`")),
            }
        }
        check_history(page.cursor.as_deref(), page.limit).map_err(|e| e.to_string())?;
        Ok(page)
    }

    /// `page` without the entries older than `since`; no next page past it.
    pub fn trim(&self, mut page: HistoryPage) -> HistoryPage {
        if let Some(since) = self.since {
            let before = page.entries.len();
            page.entries.retain(|e| e.at_ms >= since);
            if page.entries.len() < before {
                page.next = None;
            }
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_reads_are_checked() {
        assert!(check_history(None, 1).is_ok());
        assert!(check_history(Some("1733-0"), 500).is_ok());
        assert!(check_history(Some("17"), 10).is_ok());
        for bad in ["", "-", "1-", "-1", "1-2-3", "abc", "1 2", &"9".repeat(41)] {
            assert!(check_history(Some(bad), 10).is_err(), "{bad:?}");
        }
        assert!(check_history(None, 0).is_err());
        assert!(check_history(None, 501).is_err());
    }

    #[test]
    fn page_queries_parse_or_say_what_is_wrong() {
        let q = PageQuery::parse(Some("cursor=17-0&limit=5&since=1000")).unwrap();
        assert_eq!(
            (q.cursor.as_deref(), q.limit, q.since),
            (Some("17-0"), 5, Some(1000))
        );
        assert_eq!(PageQuery::parse(None).unwrap().limit, DEFAULT_HISTORY_PAGE);
        for bad in [
            "limit=0",
            "limit=x",
            "since=-1",
            "cursor=abc",
            "foo=1",
            "limit=1&limit=2",
        ] {
            assert!(PageQuery::parse(Some(bad)).is_err(), "{bad}");
        }
        let mut entry = AuditEntry::new("2", 500, AuditKind::TopUp, 1);
        let old = AuditEntry::new("1", 100, AuditKind::TopUp, 1);
        entry.amount = 2;
        let page = HistoryPage::new(vec![entry.clone(), old], Some("1".into()));
        let trimmed = PageQuery::parse(Some("since=200")).unwrap().trim(page);
        assert_eq!((trimmed.entries, trimmed.next), (vec![entry], None));
    }
}
