//! The caller's quote and readout over gRPC: the `tower_credits.v1.Credits` service.
//!
//! ```proto
//! syntax = "proto3";
//! package tower_credits.v1;
//!
//! service Credits {
//!   // What a call of `method` would cost the caller, and whether it can afford it now,
//!   // without running it: the gRPC form of `Credits-Quote: 1`.
//!   rpc Quote(QuoteRequest) returns (QuoteReply);
//!   // The caller's balance and spend by route: the gRPC form of the `CreditsReadout`.
//!   rpc Readout(ReadoutRequest) returns (ReadoutReply);
//! }
//!
//! message QuoteRequest {
//!   string method = 1;            // the gRPC method path, e.g. "/echo.Echo/Say"
//!   optional uint64 max_cost = 2; // as `Credits-Max-Cost`
//! }
//! message QuoteReply {
//!   uint64 price = 1;
//!   optional uint64 min_price = 2;
//!   optional int64 available = 3;
//!   bool affordable = 4;
//!   uint64 shortfall = 5;
//!   optional uint64 max_affordable = 6;
//!   optional uint64 runway_secs = 7;
//!   optional string price_version = 8;
//! }
//! message ReadoutRequest {}
//! message ReadoutReply {
//!   string account = 1;
//!   int64 available = 2;
//!   uint64 held = 3;
//!   uint64 committed = 4;
//!   uint64 credit_limit = 5;
//!   repeated uint64 thresholds = 6;
//!   optional uint64 runway_secs = 7;
//!   repeated RouteSpend routes = 8;
//! }
//! message RouteSpend {
//!   string route = 1;
//!   uint64 calls = 2;
//!   uint64 credits = 3;
//!   double average_cost = 4;
//! }
//! ```
//!
//! [`CreditsServer`] is served next to your own services, behind the
//! [`CreditLayer`](crate::CreditLayer) with its path priced
//! [`Price::Authenticated`](crate::pricing::Price::Authenticated): the layer resolves the
//! caller's account (refusing unknown keys with `UNAUTHENTICATED`, as on a paid method) and
//! holds nothing. Give it the same [`Pricing`](crate::pricing::Pricing) as the layer, so a
//! quote prices a method as a real call would be priced (as `POST` of the method path).
//!
//! A quote answers what `Credits-Quote: 1` answers over HTTP, computed the same way: the
//! hold a real call would place (after `max_cost`; a `max_cost` below the least the method
//! runs with is refused with `FAILED_PRECONDITION`), the available balance, whether the call
//! is affordable, the credits missing for the full price, and the most it could hold now. A
//! free or authenticated method quotes a price of 0 with no balance. Nothing is held,
//! charged, or run.
//!
//! ```
//! use tower_credits::credits_grpc::CreditsServer;
//! use tower_credits::pricing::Pricing;
//! use tower_credits::{CreditLayer, MemoryLedger, Protocol};
//!
//! let ledger = MemoryLedger::new();
//! let pricing = Pricing::new()
//!     .route("/echo.Echo/Say", 10)
//!     .authenticated("/tower_credits.v1.Credits/{*method}");
//! let layer = CreditLayer::new(ledger.clone())
//!     .protocol(Protocol::Grpc)
//!     .pricing(pricing.clone());
//! let router = tonic::transport::Server::builder()
//!     .layer(layer)
//!     .add_service(CreditsServer::new(ledger, pricing));
//! # let _ = router;
//! ```
//!
//! [`CreditsClient`] is the client side, over any tonic transport.

mod client;
mod messages;
mod server;

pub use client::CreditsClient;
pub use messages::{QuoteReply, QuoteRequest, ReadoutReply, ReadoutRequest, RouteSpend};
pub use server::CreditsServer;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The service's full name.
pub const SERVICE: &str = "tower_credits.v1.Credits";
/// The path of `Quote`.
pub const QUOTE: &str = "/tower_credits.v1.Credits/Quote";
/// The path of `Readout`.
pub const READOUT: &str = "/tower_credits.v1.Credits/Readout";
