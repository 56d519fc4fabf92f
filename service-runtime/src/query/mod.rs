//! What every query API shares: parameters read one by one with every error collected
//! ([`params`]), keyset cursors and pages, and the problem+json mapping of a query's
//! failures ([`error`]).

pub mod error;
pub mod params;

pub use error::{ParamError, QueryError};
pub use params::{Cursor, Page, Params, is_plain_text, path_id};
