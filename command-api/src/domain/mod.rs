//! The write model of the shop: pure aggregates (decide / evolve, no I/O) for users and
//! their email claims, orders, payments and notifications, and the values they parse.

pub mod notifications;
pub mod orders;
pub mod payments;
pub mod users;
pub mod values;

#[cfg(test)]
mod tests;
