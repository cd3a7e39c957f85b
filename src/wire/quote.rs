//! A quote: what a call would cost and whether it is affordable, answered without running
//! it (`Credits-Quote: 1`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use super::headers::{self, CreditHeaders};
use super::problem::WireResponse;

/// What a quote says.
#[derive(Debug, Clone, Default)]
pub(crate) struct Quote {
    /// The hold a real call would place (after the caller's spend cap).
    pub(crate) price: u64,
    /// The least the route runs with, when it declared one.
    pub(crate) min_price: Option<u64>,
    /// The account's available balance; `None` for a free route (no account).
    pub(crate) available: Option<i64>,
    pub(crate) credit_limit: u64,
    pub(crate) thresholds: headers::Thresholds,
    pub(crate) runway_secs: Option<u64>,
    pub(crate) price_version: Option<HeaderValue>,
}

impl Quote {
    /// What the account can spend now: available plus the overdraft.
    fn spendable(&self) -> Option<i128> {
        self.available
            .map(|a| a as i128 + self.credit_limit as i128)
    }

    /// A real call now would be served: it can hold at least the least the route runs
    /// with (the whole price, for a route without a minimum).
    pub(crate) fn affordable(&self) -> bool {
        let least = self.min_price.unwrap_or(self.price);
        self.spendable().is_none_or(|s| s >= least as i128)
    }

    /// Credits missing for the full price.
    pub(crate) fn shortfall(&self) -> u64 {
        self.spendable()
            .map_or(0, |s| (self.price as i128 - s).max(0) as u64)
    }

    /// The most a call could hold now: the price, or what is spendable; 0 when that is
    /// below the least the route runs with.
    pub(crate) fn max_affordable(&self) -> Option<u64> {
        let spendable = self.spendable()?;
        let most = (self.price as i128).min(spendable.max(0)) as u64;
        Some(if most < self.min_price.unwrap_or(self.price) {
            0
        } else {
            most
        })
    }

    /// The `200 application/json` answer, with the headers a real call would carry except
    /// `credits-cost`. `shortfall` is what is missing for the full price; a `402` says
    /// what is missing for the least the route runs with.
    pub(crate) fn into_response(self, names: &CreditHeaders) -> WireResponse {
        let mut body = Map::new();
        body.insert("price".into(), self.price.into());
        if let Some(min) = self.min_price {
            body.insert("min_price".into(), min.into());
        }
        body.insert(
            "available".into(),
            self.available.map_or(Value::Null, Value::from),
        );
        body.insert("affordable".into(), self.affordable().into());
        body.insert("shortfall".into(), self.shortfall().into());
        body.insert(
            "max_affordable".into(),
            self.max_affordable().map_or(Value::Null, Value::from),
        );
        body.insert(
            "runway_secs".into(),
            self.runway_secs.map_or(Value::Null, Value::from),
        );
        body.insert(
            "price_version".into(),
            self.price_version
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map_or(Value::Null, Value::from),
        );
        let bytes = serde_json::to_vec(&Value::Object(body)).expect("JSON of plain values");
        let mut response = Response::new(Some(Bytes::from(bytes)));
        *response.status_mut() = StatusCode::OK;
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // A balance changes with every call: no cache may answer for the ledger.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(version) = &self.price_version {
            h.insert(names.price_version.clone(), version.clone());
        }
        if let Some(available) = self.available {
            // As a real call's head would say it: what it would hold (all of the price, or
            // on a ranged route what the account can afford), charged in full.
            let hold = match self.max_affordable() {
                Some(most) if self.affordable() => most,
                _ => self.price,
            };
            let remaining = available.saturating_sub(hold as i64);
            h.insert(names.reserved.clone(), headers::int(hold));
            h.insert(names.remaining.clone(), headers::int(remaining));
            headers::write_warning(h, names, remaining, &self.thresholds);
            headers::write_runway(h, names, self.runway_secs);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(price: u64, min: Option<u64>, available: i64, credit_limit: u64) -> Quote {
        Quote {
            price,
            min_price: min,
            available: Some(available),
            credit_limit,
            ..Quote::default()
        }
    }

    #[test]
    fn affordability() {
        let q = quote(50, Some(10), 30, 0);
        assert!(q.affordable(), "a ranged route runs with what is left");
        assert_eq!((q.shortfall(), q.max_affordable()), (20, Some(30)));
        let q = quote(50, Some(10), 5, 0);
        assert!(!q.affordable());
        assert_eq!(q.max_affordable(), Some(0), "below the minimum");
        let q = quote(50, None, 45, 10);
        assert!(q.affordable());
        assert_eq!((q.shortfall(), q.max_affordable()), (0, Some(50)));
        let q = quote(5, None, -20, 10);
        assert_eq!((q.shortfall(), q.max_affordable()), (15, Some(0)));
        let free = Quote::default();
        assert!(free.affordable());
        assert_eq!(free.max_affordable(), None);
    }
}
