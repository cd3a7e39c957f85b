//! What callers see on the wire: the credit headers (and gRPC metadata), RFC 9457 problem
//! JSON refusals, and gRPC statuses with their rich details.
//!
//! The middleware decides *what* happened; this module alone decides how it is written, so
//! a caller's view of billing is defined in one place.

pub(crate) mod grpc;
pub(crate) mod headers;
pub mod problem;
pub(crate) mod quote;
