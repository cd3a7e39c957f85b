//! `MemoryLedger`'s audit trail of one account, packed: the last `cap` entries as bytes in
//! one allocation, about 16 to 70 bytes an entry instead of a 104-byte struct, and none at
//! all for an account that has none.
//!
//! Every funded account keeps at least its top-up's entry, so what one entry costs is what
//! an idle account costs: an idle funded account keeps its trail in 37 bytes (a 20-byte
//! header and its one entry), where a queue of structs took 104 for the entry alone.
//!
//! The layout, little-endian throughout:
//!
//! * a header: the end of the entries written (`u32`), where the oldest kept starts
//!   (`u32`), how many are kept (`u32`), the number the next entry gets (`u64`);
//! * the entries, oldest first, each:
//!   * two bytes: the entry's length (bits 0–14: dropping the oldest reads nothing else),
//!     and whether its time takes 8 bytes rather than 6 (bit 15);
//!   * one byte: the kind (bits 0–2), whether it has a hold id (bit 3) and a route (bit 4),
//!     and the width, 1 to 8 bytes, less one, of its four amounts (bits 5–7);
//!   * when, in ms (6 bytes, until the year 10889; else 8);
//!   * the amount, and the held, committed and topped-up totals after it, each in the
//!     width of the largest (one width for four: measuring each cost more instructions on
//!     the request path than the bytes it saved);
//!   * the hold id, when it has one: one byte of length and its text (a generated id's 32
//!     digits too: packing them into the 16 bytes they spell cost more instructions on the
//!     request path than the bytes were worth);
//!   * the route, when it has one: one byte of length less one, and its text (1 to 256
//!     bytes: an empty route is kept as none, as the history shows it).
//!
//! At most `cap` entries are kept, and at most 1 GiB of them (`MAX_LIVE`), the oldest going
//! first. The oldest entries go by moving the start; the bytes they leave are reused when the
//! buffer fills (see `make_room`), so a full trail holds at most about three times its
//! entries' bytes, and each byte written is moved about twice on average.

use super::audit::{AuditEntry, AuditKind, HistoryPage};
use super::ids::HoldId;

/// The header's size, and where each of its fields is.
const HEAD: usize = 20;
const END: usize = 0;
const START: usize = 4;
const COUNT: usize = 8;
const NEXT: usize = 12;

/// The entry has a hold id (bit 3 of its flags), a route (bit 4).
const HOLD: u8 = 1 << 3;
const ROUTE: u8 = 1 << 4;

/// Most bytes of entries one account's trail keeps, whatever its cap: the oldest go first
/// past it. A buffer then stays under 2 GiB + 2 entries, so its `u32` offsets never
/// overflow. (About 2.9 million entries of the longest kind, 365 bytes; a cap of the
/// Redis ledger's limit, 10 million, of request entries of about 60 bytes fits under it.)
const MAX_LIVE: usize = 1 << 30;

/// Longest route an entry keeps whole (the ledger's route check allows no longer one).
const MAX_ROUTE: usize = 256;

/// One move of an account's credits, as the ledger hands it to the trail.
pub(crate) struct Move<'a> {
    pub(crate) at_ms: u64,
    pub(crate) kind: AuditKind,
    pub(crate) amount: u64,
    pub(crate) hold: Option<&'a HoldId>,
    pub(crate) route: Option<&'a str>,
    /// The totals right after the move.
    pub(crate) held: u64,
    pub(crate) committed: u64,
    pub(crate) topped_up: u64,
}

/// An account's audit trail (empty: no allocation).
#[derive(Default)]
pub(crate) struct AuditRing(Option<Box<[u8]>>);

fn kind_code(kind: AuditKind) -> u8 {
    match kind {
        AuditKind::Reserve => 0,
        AuditKind::Grow => 1,
        AuditKind::Commit => 2,
        AuditKind::Refund => 3,
        AuditKind::Expire => 4,
        AuditKind::TopUp => 5,
    }
}

fn kind_of(code: u8) -> AuditKind {
    match code {
        0 => AuditKind::Reserve,
        1 => AuditKind::Grow,
        2 => AuditKind::Commit,
        3 => AuditKind::Refund,
        4 => AuditKind::Expire,
        _ => AuditKind::TopUp,
    }
}

/// Bytes `n` needs, 1 to 8 (zero takes one).
fn width(n: u64) -> usize {
    (64 - (n | 1).leading_zeros()).div_ceil(8) as usize
}

/// The number of `w` bytes at `at`.
fn read_number(buf: &[u8], at: usize, w: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..w].copy_from_slice(&buf[at..at + w]);
    u64::from_le_bytes(bytes)
}

/// The entry at `at` and its length.
fn decode(buf: &[u8], at: usize, seq: u64) -> (AuditEntry, usize) {
    let long_time = buf[at + 1] & 0x80 != 0;
    let flags = buf[at + 2];
    let mut p = at + 3;
    let t = if long_time { 8 } else { 6 };
    let at_ms = read_number(buf, p, t);
    p += t;
    let w = usize::from(flags >> 5) + 1;
    let mut amounts = [0u64; 4];
    for n in amounts.iter_mut() {
        *n = read_number(buf, p, w);
        p += w;
    }
    let [amount, held, committed, topped_up] = amounts;
    let hold_id = if flags & HOLD != 0 {
        let len = usize::from(buf[p]);
        let text = String::from_utf8_lossy(&buf[p + 1..p + 1 + len]).into_owned();
        p += 1 + len;
        Some(text)
    } else {
        None
    };
    let route = if flags & ROUTE != 0 {
        let len = usize::from(buf[p]) + 1;
        let text = String::from_utf8_lossy(&buf[p + 1..p + 1 + len]).into_owned();
        p += 1 + len;
        Some(text)
    } else {
        None
    };
    let mut entry = AuditEntry::new(seq.to_string(), at_ms, kind_of(flags & 7), amount);
    entry.hold_id = hold_id;
    entry.route = route;
    entry.available = topped_up as i64 - committed as i64 - held as i64;
    entry.held = held;
    entry.committed = committed;
    entry.topped_up = topped_up;
    (entry, p - at)
}

/// The length of the entry at `at`.
fn entry_len(buf: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([buf[at], buf[at + 1]]) & 0x7fff)
}

/// The header, read once and written once per entry.
struct Head {
    end: usize,
    start: usize,
    count: usize,
    next: u64,
}

impl Head {
    fn read(buf: &[u8]) -> Self {
        let h: &[u8; HEAD] = buf[..HEAD].try_into().expect("a header");
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        Head {
            end: u32_at(END) as usize,
            start: u32_at(START) as usize,
            count: u32_at(COUNT) as usize,
            next: u64::from_le_bytes(h[NEXT..NEXT + 8].try_into().expect("8 bytes")),
        }
    }

    fn write(&self, buf: &mut [u8]) {
        let h: &mut [u8; HEAD] = (&mut buf[..HEAD]).try_into().expect("a header");
        let as_u32 = |n: usize| u32::try_from(n).expect("an account's trail stays under 4 GiB");
        h[END..END + 4].copy_from_slice(&as_u32(self.end).to_le_bytes());
        h[START..START + 4].copy_from_slice(&as_u32(self.start).to_le_bytes());
        h[COUNT..COUNT + 4].copy_from_slice(&as_u32(self.count).to_le_bytes());
        h[NEXT..NEXT + 8].copy_from_slice(&self.next.to_le_bytes());
    }
}

/// The buffer of a trail's first entry: exactly its size, as most accounts keep few.
#[cold]
fn first_buffer(size: usize) -> Box<[u8]> {
    let mut buf = vec![0u8; HEAD + size].into_boxed_slice();
    let head = Head {
        end: HEAD,
        start: HEAD,
        count: 0,
        next: 0,
    };
    head.write(&mut buf);
    buf
}

/// Makes `size` free bytes at the end of a full buffer: the kept entries moved down onto
/// the dropped ones' bytes when these are at least half as many, else into a buffer twice
/// their size. Each move copies the kept bytes after at least half as many were written,
/// and a buffer holds at most about three times its kept entries.
#[cold]
fn make_room(buf: &mut Box<[u8]>, head: &mut Head, size: usize) {
    let live = head.end - head.start;
    if 2 * (head.start - HEAD) >= live && HEAD + live + size <= buf.len() {
        buf.copy_within(head.start..head.end, HEAD);
    } else {
        let mut new = vec![0u8; HEAD + 2 * (live + size)].into_boxed_slice();
        new[HEAD..HEAD + live].copy_from_slice(&buf[head.start..head.end]);
        *buf = new;
    }
    head.start = HEAD;
    head.end = HEAD + live;
}

/// A route's bytes as an entry keeps them: whole (the ledger's route check allows no route
/// longer than [`MAX_ROUTE`]), or, should a longer one ever get here, its first
/// [`MAX_ROUTE`] bytes cut at a character's start.
fn route_bytes(route: &str) -> &[u8] {
    if route.len() <= MAX_ROUTE {
        return route.as_bytes();
    }
    let cut = (0..=MAX_ROUTE)
        .rev()
        .find(|&i| route.is_char_boundary(i))
        .unwrap_or(0);
    &route.as_bytes()[..cut]
}

impl AuditRing {
    /// Appends `m`, dropping the oldest entry past `cap` (0: no trail).
    #[inline]
    pub(crate) fn push(&mut self, cap: usize, m: &Move<'_>) {
        self.push_within(cap, MAX_LIVE, m);
    }

    /// [`Self::push`], keeping at most `max_live` bytes of entries (tests lower it).
    #[inline]
    fn push_within(&mut self, cap: usize, max_live: usize, m: &Move<'_>) {
        if cap == 0 {
            return;
        }
        let long_time = m.at_ms >> 48 != 0;
        let t = if long_time { 8 } else { 6 };
        let amounts = [m.amount, m.held, m.committed, m.topped_up];
        let w = width(m.amount | m.held | m.committed | m.topped_up);
        let generated = m.hold.and_then(HoldId::generated_digits);
        let hold = m.hold.filter(|_| generated.is_none()).map(HoldId::as_bytes);
        let route = m.route.filter(|r| !r.is_empty()).map(route_bytes);
        let numbers_len = t + 4 * w;
        let size = 3
            + numbers_len
            + if generated.is_some() { 33 } else { 0 }
            + hold.map_or(0, |h| 1 + h.len())
            + route.map_or(0, |r| 1 + r.len());

        if self.0.is_none() {
            self.0 = Some(first_buffer(size));
        }
        let Some(buf) = self.0.as_mut() else {
            unreachable!("made above")
        };
        let mut head = Head::read(buf);
        while head.count >= cap || (head.count > 0 && head.end - head.start + size > max_live) {
            head.start += entry_len(buf, head.start);
            head.count -= 1;
        }
        if head.end + size > buf.len() {
            make_room(buf, &mut head, size);
        }
        let at = head.end;
        let flags = kind_code(m.kind)
            | if m.hold.is_some() { HOLD } else { 0 }
            | if route.is_some() { ROUTE } else { 0 }
            | ((w - 1) as u8) << 5;
        let [l0, l1] = (size as u16 | if long_time { 0x8000 } else { 0 }).to_le_bytes();
        buf[at..at + 3].copy_from_slice(&[l0, l1, flags]);
        let mut p = at + 3;
        if let Some(room) = buf.get_mut(p..p + 5 * 8) {
            // Room for each number's eight bytes: written whole, only its width counted
            // (the next number writes over the rest), no copy of a variable length.
            let room: &mut [u8; 40] = room.try_into().expect("40 bytes");
            room[..8].copy_from_slice(&m.at_ms.to_le_bytes());
            for (i, n) in amounts.into_iter().enumerate() {
                room[t + i * w..t + i * w + 8].copy_from_slice(&n.to_le_bytes());
            }
        } else {
            buf[p..p + t].copy_from_slice(&m.at_ms.to_le_bytes()[..t]);
            for (i, n) in amounts.into_iter().enumerate() {
                let q = p + t + i * w;
                buf[q..q + w].copy_from_slice(&n.to_le_bytes()[..w]);
            }
        }
        p += numbers_len;
        if let Some(digits) = generated {
            // A generated id, the usual one: a copy of a known length, inlined.
            buf[p] = 32;
            buf[p + 1..p + 33].copy_from_slice(digits);
            p += 33;
        } else if let Some(hold) = hold {
            buf[p] = hold.len() as u8;
            buf[p + 1..p + 1 + hold.len()].copy_from_slice(hold);
            p += 1 + hold.len();
        }
        if let Some(route) = route {
            buf[p] = (route.len() - 1) as u8;
            buf[p + 1..p + 1 + route.len()].copy_from_slice(route);
        }
        head.end = at + size;
        head.count += 1;
        head.next += 1;
        head.write(buf);
    }

    /// A page of the trail, newest first, older than `cursor`: up to `limit + 1` entries
    /// read (see [`HistoryPage::from_newest`]).
    pub(crate) fn history(&self, cursor: Option<u64>, limit: usize) -> HistoryPage {
        let Some(buf) = self.0.as_deref() else {
            return HistoryPage::from_newest(Vec::new(), limit);
        };
        let head = Head::read(buf);
        let first = head.next - head.count as u64;
        // The entries before the cursor; the older of them are stepped over by their
        // length (two bytes read each, nothing decoded or allocated), so a page decodes
        // only its own entries. The steps are forwards only: the newest page of a trail of
        // millions still steps over all of them (about 46 ms for 10 million).
        let before = cursor.map_or(head.count as u64, |c| c.clamp(first, head.next) - first);
        let skip = before.saturating_sub(limit as u64 + 1);
        let mut at = head.start;
        for _ in 0..skip {
            at += entry_len(buf, at);
        }
        let mut entries = Vec::with_capacity((before - skip) as usize);
        for seq in first + skip..first + before {
            let (entry, len) = decode(buf, at, seq);
            entries.push(entry);
            at += len;
        }
        entries.reverse();
        HistoryPage::from_newest(entries, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(i: u64, hold: Option<&'a HoldId>, route: Option<&'a str>) -> Move<'a> {
        Move {
            at_ms: 1_780_000_000_000 + i,
            kind: AuditKind::Commit,
            amount: i,
            hold,
            route,
            held: i * 3,
            committed: u64::MAX >> 11,
            topped_up: 0,
        }
    }

    fn ids(page: &HistoryPage) -> Vec<&str> {
        page.entries.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn every_field_reads_back_as_written() {
        let generated = HoldId::generate();
        let chosen = HoldId::new("h-1_x").unwrap();
        let hex_text = HoldId::new("0123456789abcdef0123456789abcdef").unwrap();
        let long_route = "r".repeat(256);
        let cases = [
            (None, None),
            (Some(&generated), Some("/v1/echo")),
            (Some(&chosen), Some(long_route.as_str())),
            (Some(&hex_text), Some("")),
        ];
        let mut ring = AuditRing::default();
        for (i, (hold, route)) in cases.iter().enumerate() {
            ring.push(10, &entry(i as u64, *hold, *route));
        }
        let page = ring.history(None, 10);
        assert_eq!(ids(&page), ["3", "2", "1", "0"]);
        for (back, (hold, route)) in cases.iter().rev().enumerate() {
            let e = &page.entries[back];
            let i = 3 - back as u64;
            assert_eq!(e.at_ms, 1_780_000_000_000 + i);
            assert_eq!(e.kind, AuditKind::Commit);
            assert_eq!(e.amount, i);
            assert_eq!(e.hold_id.as_deref(), hold.map(HoldId::as_str));
            assert_eq!(e.route.as_deref(), route.filter(|r| !r.is_empty()));
            assert_eq!(
                (e.held, e.committed, e.topped_up),
                (i * 3, u64::MAX >> 11, 0)
            );
            assert_eq!(e.available, -((u64::MAX >> 11) as i64) - (i * 3) as i64);
        }
    }

    #[test]
    fn keeps_the_last_cap_entries_and_their_numbers_through_reuse_and_growth() {
        let mut ring = AuditRing::default();
        let hold = HoldId::generate();
        for i in 0..1_000u64 {
            // Entries of varied sizes, so the start moves by different steps.
            let route = "x".repeat((i % 7) as usize * 30);
            ring.push(50, &entry(i, (i % 2 == 0).then_some(&hold), Some(&route)));
        }
        let page = ring.history(None, 50);
        assert_eq!(page.entries.len(), 50);
        assert_eq!(page.entries[0].id, "999");
        assert_eq!(page.entries[49].id, "950");
        assert!(page.entries.iter().all(|e| e.amount.to_string() == e.id));
        let buf = ring.0.as_deref().unwrap();
        let head = Head::read(buf);
        let live = head.end - head.start;
        assert!(
            buf.len() <= HEAD + 3 * live,
            "{} bytes for {live}",
            buf.len()
        );
    }

    #[test]
    fn times_and_amounts_of_every_width_read_back() {
        let mut ring = AuditRing::default();
        let edges = [0, 1, 255, 256, 1 << 47, (1 << 48) - 1, 1 << 48, u64::MAX];
        for (i, &n) in edges.iter().enumerate() {
            let mut m = entry(i as u64, None, None);
            m.at_ms = n;
            m.topped_up = n;
            ring.push(100, &m);
        }
        let page = ring.history(None, 100);
        for (e, &n) in page.entries.iter().rev().zip(&edges) {
            assert_eq!((e.at_ms, e.topped_up), (n, n));
            assert_eq!(e.committed, u64::MAX >> 11);
        }
    }

    #[test]
    fn past_its_byte_budget_the_trail_drops_its_oldest_and_keeps_counting() {
        let mut ring = AuditRing::default();
        let hold = HoldId::generate();
        for i in 0..1_000u64 {
            ring.push_within(usize::MAX, 4_096, &entry(i, Some(&hold), Some("/v1/echo")));
        }
        let head = Head::read(ring.0.as_deref().unwrap());
        assert!(head.end - head.start <= 4_096);
        assert!(ring.0.as_deref().unwrap().len() <= HEAD + 2 * 4_096 + 200);
        let page = ring.history(None, 500);
        let kept = page.entries.len() as u64;
        assert!((50..100).contains(&kept), "{kept} entries kept");
        assert_eq!(page.entries[0].id, "999");
        assert_eq!(page.entries.last().unwrap().id, (1_000 - kept).to_string());
    }

    #[test]
    fn a_route_past_the_longest_allowed_is_cut_at_a_character() {
        let long = format!("{}é{}", "r".repeat(255), "x".repeat(10));
        assert_eq!(route_bytes(&long), "r".repeat(255).as_bytes());
        let exact = "é".repeat(128);
        assert_eq!(route_bytes(&exact), exact.as_bytes());
    }

    #[test]
    fn pages_follow_the_cursor() {
        let mut ring = AuditRing::default();
        for i in 0..10 {
            ring.push(100, &entry(i, None, None));
        }
        let first = ring.history(None, 4);
        assert_eq!(ids(&first), ["9", "8", "7", "6"]);
        let next: u64 = first.next.as_deref().unwrap().parse().unwrap();
        let second = ring.history(Some(next), 4);
        assert_eq!(ids(&second), ["5", "4", "3", "2"]);
        let last = ring.history(Some(2), 4);
        assert_eq!(ids(&last), ["1", "0"]);
        assert!(last.next.is_none());
        assert!(ring.history(Some(0), 4).entries.is_empty());
        assert_eq!(ids(&ring.history(Some(1_000), 2)), ["9", "8"]);
        assert!(AuditRing::default().history(None, 4).entries.is_empty());
    }

    #[test]
    fn a_top_up_entry_takes_a_few_bytes_and_no_trail_takes_none() {
        let mut ring = AuditRing::default();
        ring.push(0, &entry(1, None, None));
        assert!(ring.0.is_none());
        let top_up = Move {
            at_ms: 1_780_000_000_000,
            kind: AuditKind::TopUp,
            amount: 1_000,
            hold: None,
            route: None,
            held: 0,
            committed: 0,
            topped_up: 1_000,
        };
        ring.push(100, &top_up);
        assert_eq!(ring.0.as_deref().unwrap().len(), HEAD + 17);
    }
}
