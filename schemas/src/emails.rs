//! Email claims, the users service's uniqueness log: one aggregate per normalized email
//! address, so that concurrent registrations with one email meet at a single writer and
//! exactly one wins. The aggregate id is the address's blind index (the hex HMAC-SHA256 of
//! the normalized address under the deployment's `EMAIL_INDEX_KEY`), so that the log keeps
//! no address; claims recorded before blind indexes are keyed by the address. Its topics are `<prefix>user-emails.*`, apart from the users' own,
//! because a partition writer owns one aggregate type.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Reserve an email for a user; refused while another user holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ClaimEmail {
    /// The claim id: the address's blind index (the aggregate id).
    pub email: String,
    pub user_id: UserId,
    /// When the request claiming it started: a claim whose user still does not hold the
    /// address well after this may be lapsed by the next claimant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::option::of(crate::tests::any_time())")
    )]
    pub at: Option<DateTime<Utc>>,
}

/// Give an email back (its user changed address or was deactivated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ReleaseEmail {
    pub email: String,
    pub user_id: UserId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EmailClaimed {
    pub email: String,
    pub user_id: UserId,
    /// The claim command's `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::option::of(crate::tests::any_time())")
    )]
    pub at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EmailReleased {
    pub email: String,
    pub user_id: UserId,
}

crate::message_family!(
    /// Commands of the email-claim aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    EmailCommand, Command, "email", "user-emails", email,
    [ClaimEmail = 1, ReleaseEmail = 1]
);

crate::message_family!(
    /// Events of the email-claim aggregate.
    #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
    EmailEvent, Event, "email", "user-emails", email,
    [EmailClaimed = 1, EmailReleased = 1]
);
