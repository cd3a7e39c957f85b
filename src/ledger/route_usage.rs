//! `MemoryLedger`'s usage by route of one account: a short list while the account has used
//! few routes, a sorted map beyond.
//!
//! A route label comes from the layer's pricing table, shared (`Arc<str>`), so the list
//! finds it by pointer before comparing text, and keeps it without copying it. A map of
//! owned strings took a 24-byte `String` and a B-tree node of about 490 bytes for the first
//! route an account used, and string compares on every commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::types::RouteUsage;

/// Most routes kept in the short list; an account's next routes go to the map.
const FEW: usize = 16;

/// Committed credits and calls by route (`None`: a hold without a route, or with `""`).
#[derive(Default)]
pub(crate) struct UsageByRoute {
    few: Vec<(Option<Arc<str>>, RouteUsage)>,
    many: BTreeMap<String, RouteUsage>,
}

/// `None` for no route and for `""`: both count under `""`.
fn label(route: Option<&Arc<str>>) -> Option<&Arc<str>> {
    route.filter(|r| !r.is_empty())
}

impl UsageByRoute {
    /// Counts a commit of `credits` on `route`.
    // Inlined into the settle, its one caller on the request path: left to the compiler,
    // whether it is depends on how the crate's code falls into codegen units (+60
    // instructions a request when it is not).
    #[inline]
    pub(crate) fn add(&mut self, route: Option<&Arc<str>>, credits: u64) {
        let route = label(route);
        let found = self.few.iter().position(|(known, _)| match (known, route) {
            (None, None) => true,
            (Some(known), Some(route)) => Arc::ptr_eq(known, route) || known == route,
            _ => false,
        });
        let usage = match found {
            Some(i) => &mut self.few[i].1,
            None if self.few.len() < FEW => {
                if self.few.capacity() == 0 {
                    // Most accounts use one route or two: room for one first, not four.
                    self.few.reserve_exact(1);
                }
                self.few.push((route.cloned(), RouteUsage::default()));
                &mut self.few.last_mut().expect("pushed").1
            }
            None => {
                let text = route.map_or("", |r| r);
                match self.many.get_mut(text) {
                    Some(usage) => usage,
                    None => self.many.entry(text.to_owned()).or_default(),
                }
            }
        };
        usage.credits += credits;
        usage.calls += 1;
    }

    /// All of it, by route label (`""` for none).
    pub(crate) fn to_map(&self) -> BTreeMap<String, RouteUsage> {
        let mut map = self.many.clone();
        for (route, usage) in &self.few {
            // A route is in one of the two only, so this inserts, never adds.
            map.insert(route.as_deref().unwrap_or("").to_owned(), *usage);
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_label_whether_shared_or_not_and_past_the_short_list() {
        let mut usage = UsageByRoute::default();
        let echo: Arc<str> = Arc::from("/v1/echo");
        let echo_again: Arc<str> = Arc::from("/v1/echo");
        let empty: Arc<str> = Arc::from("");
        usage.add(Some(&echo), 3);
        usage.add(Some(&echo_again), 4);
        usage.add(None, 1);
        usage.add(Some(&empty), 2);
        let routes: Vec<Arc<str>> = (0..40).map(|i| Arc::from(format!("/r/{i}"))).collect();
        for (i, r) in routes.iter().enumerate() {
            usage.add(Some(r), i as u64);
            usage.add(Some(&Arc::from(format!("/r/{i}"))), 1);
        }
        let map = usage.to_map();
        assert_eq!(map.len(), 42);
        assert_eq!(
            map["/v1/echo"],
            RouteUsage {
                credits: 7,
                calls: 2
            }
        );
        assert_eq!(
            map[""],
            RouteUsage {
                credits: 3,
                calls: 2
            }
        );
        for i in 0..40u64 {
            let expected = RouteUsage {
                credits: i + 1,
                calls: 2,
            };
            assert_eq!(map[format!("/r/{i}").as_str()], expected, "route {i}");
        }
        assert_eq!(usage.few.len(), FEW);
    }
}
