//! Every rule of the write model, given / when / then, without I/O: given past events,
//! when a command arrives, then these events (or this rejection).

use chrono::Utc;
use event_store::aggregate::Aggregate;
use schemas::emails::{EmailClaimed, EmailEvent};
use schemas::notifications::{DeliveryReport, NotificationKind, SendNotification};
use schemas::orders::{CancelOrder, CancelledBy, ConfirmOrder, OrderLine, PlaceOrder, RejectOrder};
use schemas::payments::{AuthorizePayment, ProviderVerdict, RefundPayment};
use schemas::users::{ChangeUserEmail, DeactivateUser, LapseEmailClaim, RegisterUser, UserEvent};
use schemas::{Money, NotificationId, OrderId, PaymentId, UserId};

use super::notifications::{Notification, NotificationRejection};
use super::orders::{Order, OrderRejection, OrderStatus};
use super::payments::{Payment, PaymentRejection};
use super::users::{EmailClaim, EmailRejection, User, UserRejection, claim, release};

/// Given these events, when this command: the events it causes, or why not.
fn when<A: Aggregate>(
    given: &[A::Event],
    command: impl Into<A::Command>,
) -> Result<Vec<A::Event>, A::Rejection> {
    let state = given.iter().fold(A::State::default(), A::evolve);
    A::decide(&state, &command.into())
}

/// The events of a command that must be accepted.
fn then<A: Aggregate>(given: &[A::Event], command: impl Into<A::Command>) -> Vec<A::Event> {
    when::<A>(given, command).expect("the command is accepted")
}

/// A field as the HTTP layer seals it for `user`. The domain never opens one, so the
/// text is only shaped like a sealed field (`pii1:<user>:<base64url>`).
fn sealed(user: UserId, text: &str) -> String {
    let encoded: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    format!("pii1:{user}:{encoded}")
}

/// The claim id of an address, shaped as the blind index makes them.
fn claim_id(address: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(address.as_bytes()))
}

mod users {
    use schemas::users::ForgetUser;

    use super::*;
    use crate::domain::users::UserStatus;

    fn register(user: UserId, name: &str, email: &str) -> RegisterUser {
        RegisterUser {
            user_id: user,
            name: sealed(user, name),
            email: sealed(user, email),
            claim_id: Some(claim_id(email)),
            claim: None,
        }
    }

    fn change(user: UserId, email: &str) -> ChangeUserEmail {
        ChangeUserEmail {
            user_id: user,
            email: sealed(user, email),
            claim_id: Some(claim_id(email)),
            claim: None,
        }
    }

    #[test]
    fn a_new_user_registers_with_sealed_fields_and_the_addresss_claim_id() {
        let user = UserId::new();
        let events = then::<User>(&[], register(user, "Ada Lovelace", "ada@example.com"));
        let [UserEvent::UserRegistered(e)] = &events[..] else {
            panic!("registered: {events:?}");
        };
        assert_eq!(e.name, sealed(user, "Ada Lovelace"));
        assert_eq!(e.email, sealed(user, "ada@example.com"));
        assert_eq!(e.claim_id, Some(claim_id("ada@example.com")));
    }

    #[test]
    fn clear_or_foreign_personal_fields_and_second_registrations_are_refused() {
        let (user, other) = (UserId::new(), UserId::new());
        let not_sealed = |field: &str| {
            Err(UserRejection::NotSealed {
                field: field.into(),
            })
        };
        let clear_name = RegisterUser {
            name: "Ada".into(),
            ..register(user, "Ada", "a@b.co")
        };
        assert_eq!(when::<User>(&[], clear_name), not_sealed("name"));
        let foreign_email = RegisterUser {
            email: sealed(other, "a@b.co"),
            ..register(user, "Ada", "a@b.co")
        };
        assert_eq!(when::<User>(&[], foreign_email), not_sealed("email"));
        let address_as_claim = RegisterUser {
            claim_id: Some("a@b.co".into()),
            ..register(user, "Ada", "a@b.co")
        };
        assert_eq!(when::<User>(&[], address_as_claim), not_sealed("claim_id"));
        let registered = then::<User>(&[], register(user, "Ada", "a@b.co"));
        assert_eq!(
            when::<User>(&registered, register(user, "Ada", "a@b.co")),
            Err(UserRejection::AlreadyRegistered)
        );
    }

    #[test]
    fn an_active_user_changes_email_but_not_to_the_same_one() {
        let user = UserId::new();
        let given = then::<User>(&[], register(user, "Ada", "a@b.co"));
        assert_eq!(
            when::<User>(&given, change(user, "a@b.co")),
            Err(UserRejection::SameEmail),
            "the same claim id, however it was sealed"
        );
        let events = then::<User>(&given, change(user, "ada@new.org"));
        assert!(
            matches!(&events[0], UserEvent::UserEmailChanged(e) if e.previous_email == sealed(user, "a@b.co"))
        );
        assert_eq!(
            when::<User>(&[], change(user, "x@y.co")),
            Err(UserRejection::UnknownUser)
        );
    }

    #[test]
    fn a_deactivated_user_accepts_no_change() {
        let user = UserId::new();
        let mut given = then::<User>(&[], register(user, "Ada", "a@b.co"));
        let deactivate = DeactivateUser {
            user_id: user,
            reason: Some(sealed(user, "asked")),
        };
        given.extend(then::<User>(&given, deactivate.clone()));
        assert_eq!(
            when::<User>(&given, deactivate),
            Err(UserRejection::UserDeactivated)
        );
        assert_eq!(
            when::<User>(&given, change(user, "new@b.co")),
            Err(UserRejection::UserDeactivated)
        );
    }

    #[test]
    fn a_deactivation_reason_must_be_sealed() {
        let user = UserId::new();
        let given = then::<User>(&[], register(user, "Ada", "a@b.co"));
        let deactivate = DeactivateUser {
            user_id: user,
            reason: Some("Ada asked".into()),
        };
        assert_eq!(
            when::<User>(&given, deactivate),
            Err(UserRejection::NotSealed {
                field: "reason".into()
            })
        );
    }

    #[test]
    fn a_forgotten_user_changes_no_more_and_forgetting_again_changes_nothing() {
        let user = UserId::new();
        let forget = ForgetUser { user_id: user };
        assert_eq!(
            when::<User>(&[], forget.clone()),
            Err(UserRejection::UnknownUser)
        );
        let mut given = then::<User>(&[], register(user, "Ada", "a@b.co"));
        given.extend(then::<User>(&given, forget.clone()));
        assert!(matches!(&given[..], [_, UserEvent::UserForgotten(f)] if f.user_id == user));
        assert_eq!(then::<User>(&given, forget), vec![]);
        let state = given.iter().fold(Default::default(), User::evolve);
        assert_eq!(
            state.status,
            UserStatus::Forgotten {
                claim_id: Some(claim_id("a@b.co"))
            },
            "the claim id stays, for a repeated forget to release it"
        );
        assert_eq!(
            when::<User>(&given, change(user, "new@b.co")),
            Err(UserRejection::UserForgotten)
        );
        let deactivate = DeactivateUser {
            user_id: user,
            reason: None,
        };
        assert_eq!(
            when::<User>(&given, deactivate),
            Err(UserRejection::UserForgotten)
        );
        assert_eq!(
            when::<User>(&given, register(user, "Ada", "a@b.co")),
            Err(UserRejection::AlreadyRegistered)
        );
    }
}

mod lapsed_claims {
    use super::*;

    fn lapse(user: UserId, email: &str, claim: u64) -> LapseEmailClaim {
        LapseEmailClaim {
            user_id: user,
            email: claim_id(email),
            claim,
        }
    }

    fn register(user: UserId, email: &str, claim: u64) -> RegisterUser {
        RegisterUser {
            user_id: user,
            name: sealed(user, "Ada"),
            email: sealed(user, email),
            claim_id: Some(claim_id(email)),
            claim: Some(claim),
        }
    }

    #[test]
    fn a_registration_whose_claim_lapsed_is_refused_even_when_it_lands_late() {
        let user = UserId::new();
        let lapsed = then::<User>(&[], lapse(user, "a@b.co", 3));
        assert!(matches!(&lapsed[..], [UserEvent::EmailClaimLapsed(e)] if e.claim == 3));
        assert_eq!(
            when::<User>(&lapsed, register(user, "a@b.co", 3)),
            Err(UserRejection::ClaimLapsed)
        );
        assert_eq!(
            when::<User>(&lapsed, register(user, "a@b.co", 2)),
            Err(UserRejection::ClaimLapsed),
            "an older claim lapsed with it"
        );
        // A newer claim of the address (the user claimed it again) still registers.
        assert_eq!(then::<User>(&lapsed, register(user, "a@b.co", 5)).len(), 1);
        // Lapsing again changes nothing.
        assert_eq!(then::<User>(&lapsed, lapse(user, "a@b.co", 3)), vec![]);
    }

    #[test]
    fn a_claim_the_user_holds_does_not_lapse() {
        let user = UserId::new();
        let registered = then::<User>(&[], register(user, "a@b.co", 1));
        assert_eq!(
            when::<User>(&registered, lapse(user, "a@b.co", 1)),
            Err(UserRejection::ClaimHeld)
        );
    }

    #[test]
    fn an_email_change_whose_claim_lapsed_is_refused() {
        let user = UserId::new();
        let mut given = then::<User>(&[], register(user, "a@b.co", 1));
        given.extend(then::<User>(&given, lapse(user, "new@b.co", 4)));
        let change = |claim| ChangeUserEmail {
            user_id: user,
            email: sealed(user, "new@b.co"),
            claim_id: Some(claim_id("new@b.co")),
            claim: Some(claim),
        };
        assert_eq!(
            when::<User>(&given, change(4)),
            Err(UserRejection::ClaimLapsed)
        );
        assert_eq!(then::<User>(&given, change(6)).len(), 1);
        // The address the user holds is not affected by another address's lapse.
        assert_eq!(
            when::<User>(&given, lapse(user, "a@b.co", 1)),
            Err(UserRejection::ClaimHeld)
        );
    }

    #[test]
    fn a_deactivated_or_forgotten_users_claim_lapses() {
        let user = UserId::new();
        let mut given = then::<User>(&[], register(user, "a@b.co", 1));
        given.extend(then::<User>(
            &given,
            DeactivateUser {
                user_id: user,
                reason: None,
            },
        ));
        assert_eq!(then::<User>(&given, lapse(user, "a@b.co", 1)).len(), 1);
        let mut forgotten = then::<User>(&[], register(user, "a@b.co", 1));
        let forget = schemas::users::ForgetUser { user_id: user };
        forgotten.extend(then::<User>(&forgotten, forget));
        forgotten.extend(then::<User>(&forgotten, lapse(user, "a@b.co", 1)));
        assert_eq!(
            then::<User>(&forgotten, lapse(user, "a@b.co", 1)),
            vec![],
            "lapsing again changes nothing"
        );
    }

    #[test]
    fn a_user_from_before_claim_ids_holds_the_claim_named_by_the_address() {
        let user = UserId::new();
        let legacy: Vec<UserEvent> = vec![
            schemas::users::UserRegistered {
                user_id: user,
                name: "Ada".into(),
                email: "a@b.co".into(),
                claim_id: None,
            }
            .into(),
        ];
        let by_address = LapseEmailClaim {
            user_id: user,
            email: "a@b.co".into(),
            claim: 1,
        };
        assert_eq!(
            when::<User>(&legacy, by_address),
            Err(UserRejection::ClaimHeld)
        );
    }
}

mod emails {
    use super::*;

    fn ada() -> String {
        claim_id("ada@example.com")
    }

    #[test]
    fn an_email_belongs_to_one_user_at_a_time() {
        let (first, second) = (UserId::new(), UserId::new());
        let claimed = then::<EmailClaim>(&[], claim(&ada(), first, Utc::now()));
        assert_eq!(
            when::<EmailClaim>(&claimed, claim(&ada(), second, Utc::now())),
            Err(EmailRejection::EmailTaken)
        );
        // Claiming again for the same user renews the claim (a new version); releasing
        // for someone else changes nothing.
        assert_eq!(
            then::<EmailClaim>(&claimed, claim(&ada(), first, Utc::now())).len(),
            1
        );
        assert_eq!(
            then::<EmailClaim>(&claimed, release(&ada(), second)),
            vec![]
        );
        let mut given = claimed;
        given.extend(then::<EmailClaim>(&given, release(&ada(), first)));
        assert_eq!(
            then::<EmailClaim>(&given, claim(&ada(), second, Utc::now())).len(),
            1,
            "free again"
        );
    }

    #[test]
    fn only_claim_ids_are_claimed_and_claims_by_address_can_still_be_released() {
        let command = schemas::emails::ClaimEmail {
            email: "ada@example.com".into(),
            user_id: UserId::new(),
            at: None,
        };
        assert!(matches!(
            when::<EmailClaim>(&[], command),
            Err(EmailRejection::InvalidEmail { .. })
        ));
        let holder = UserId::new();
        let given: Vec<EmailEvent> = vec![
            EmailClaimed {
                email: "ada@example.com".into(),
                user_id: holder,
                at: None,
            }
            .into(),
        ];
        assert_eq!(
            then::<EmailClaim>(&given, release("ada@example.com", holder)).len(),
            1
        );
    }
}

mod orders {
    use super::*;

    fn line(quantity: u32, unit_price_cents: u64) -> OrderLine {
        OrderLine {
            sku: "SKU-1".into(),
            quantity,
            unit_price_cents,
        }
    }

    fn place(order: OrderId, lines: Vec<OrderLine>) -> PlaceOrder {
        PlaceOrder {
            order_id: order,
            user_id: UserId::new(),
            currency: "EUR".parse().unwrap(),
            lines,
        }
    }

    fn cancel(order: OrderId) -> CancelOrder {
        CancelOrder {
            order_id: order,
            reason: "changed my mind".into(),
            cancelled_by: CancelledBy::Customer,
        }
    }

    #[test]
    fn an_order_is_placed_with_its_total() {
        let events = then::<Order>(&[], place(OrderId::new(), vec![line(2, 1250), line(1, 0)]));
        assert!(
            matches!(&events[0], schemas::orders::OrderEvent::OrderPlaced(e) if e.total_cents == 2500)
        );
    }

    #[test]
    fn lines_quantities_and_totals_are_bounded() {
        let order = OrderId::new();
        assert_eq!(
            when::<Order>(&[], place(order, vec![])),
            Err(OrderRejection::NoLines)
        );
        let too_many = vec![line(1, 1); 101];
        assert_eq!(
            when::<Order>(&[], place(order, too_many)),
            Err(OrderRejection::TooManyLines { max: 100 })
        );
        assert_eq!(
            when::<Order>(&[], place(order, vec![line(1, 1); 100])).map(|e| e.len()),
            Ok(1)
        );
        assert_eq!(
            when::<Order>(&[], place(order, vec![line(1, 1), line(0, 1)])),
            Err(OrderRejection::InvalidQuantity { line: 1, max: 1000 })
        );
        assert!(when::<Order>(&[], place(order, vec![line(1000, 1)])).is_ok());
        assert!(matches!(
            when::<Order>(&[], place(order, vec![line(1001, 1)])),
            Err(OrderRejection::InvalidQuantity { .. })
        ));
        assert!(
            when::<Order>(&[], place(order, vec![line(1000, 10_000)])).is_ok(),
            "exactly 10,000,000"
        );
        assert!(matches!(
            when::<Order>(&[], place(order, vec![line(1000, 10_000), line(1, 1)])),
            Err(OrderRejection::TotalTooLarge { .. })
        ));
        assert!(
            matches!(
                when::<Order>(&[], place(order, vec![line(1000, u64::MAX)])),
                Err(OrderRejection::TotalTooLarge { .. })
            ),
            "overflow is a rejection, not a panic"
        );
    }

    #[test]
    fn the_status_machine_allows_only_its_transitions() {
        let order = OrderId::new();
        let placed = then::<Order>(&[], place(order, vec![line(1, 100)]));
        assert_eq!(
            when::<Order>(&placed, place(order, vec![line(1, 1)])),
            Err(OrderRejection::AlreadyPlaced)
        );
        assert_eq!(
            when::<Order>(&[], cancel(order)),
            Err(OrderRejection::UnknownOrder)
        );

        let confirm = ConfirmOrder {
            order_id: order,
            payment_id: PaymentId::for_order(order),
        };
        let mut confirmed = placed.clone();
        confirmed.extend(then::<Order>(&placed, confirm.clone()));
        assert_eq!(
            then::<Order>(&confirmed, cancel(order)).len(),
            1,
            "a confirmed order can be cancelled"
        );
        assert_eq!(
            when::<Order>(&confirmed, confirm.clone()),
            Err(OrderRejection::InvalidTransition {
                status: OrderStatus::Confirmed
            })
        );

        let reject = RejectOrder {
            order_id: order,
            reason: "payment declined".into(),
        };
        let mut rejected = placed.clone();
        rejected.extend(then::<Order>(&placed, reject));
        assert_eq!(
            when::<Order>(&rejected, cancel(order)),
            Err(OrderRejection::InvalidTransition {
                status: OrderStatus::Rejected
            })
        );

        let mut cancelled = placed.clone();
        cancelled.extend(then::<Order>(&placed, cancel(order)));
        assert_eq!(
            when::<Order>(&cancelled, confirm),
            Err(OrderRejection::InvalidTransition {
                status: OrderStatus::Cancelled
            }),
            "confirmation is refused once the customer cancelled"
        );
        assert!(when::<Order>(&cancelled, cancel(order)).is_err());
    }
}

mod payments {
    use super::*;

    fn eur(cents: u64) -> Money {
        Money::new(cents, "EUR".parse().unwrap())
    }

    fn authorize(
        order: OrderId,
        amount: u64,
        total: u64,
        verdict: ProviderVerdict,
    ) -> AuthorizePayment {
        AuthorizePayment {
            payment_id: PaymentId::for_order(order),
            order_id: order,
            user_id: UserId::new(),
            amount: eur(amount),
            order_total: eur(total),
            verdict,
        }
    }

    fn approved() -> ProviderVerdict {
        ProviderVerdict::Approved {
            reference: "sim-1".into(),
        }
    }

    fn refund(order: OrderId) -> RefundPayment {
        RefundPayment {
            payment_id: PaymentId::for_order(order),
            order_id: order,
            reason: "order cancelled".into(),
            refund_reference: "sim-r-1".into(),
        }
    }

    #[test]
    fn one_authorization_per_order_for_exactly_the_total() {
        let order = OrderId::new();
        assert!(matches!(
            when::<Payment>(&[], authorize(order, 999, 1000, approved())),
            Err(PaymentRejection::AmountMismatch { .. })
        ));
        let mut wrong = authorize(order, 1000, 1000, approved());
        wrong.payment_id = PaymentId::new();
        assert_eq!(
            when::<Payment>(&[], wrong),
            Err(PaymentRejection::WrongPayment)
        );
        let authorized = then::<Payment>(&[], authorize(order, 1000, 1000, approved()));
        assert_eq!(
            when::<Payment>(&authorized, authorize(order, 1000, 1000, approved())),
            Err(PaymentRejection::AlreadyDecided)
        );
    }

    #[test]
    fn a_declined_payment_is_final_and_not_refundable() {
        let order = OrderId::new();
        let declined = then::<Payment>(
            &[],
            authorize(
                order,
                1000,
                1000,
                ProviderVerdict::Declined {
                    reason: "insufficient funds".into(),
                },
            ),
        );
        assert!(matches!(
            &declined[0],
            schemas::payments::PaymentEvent::PaymentDeclined(_)
        ));
        assert_eq!(
            when::<Payment>(&declined, refund(order)),
            Err(PaymentRejection::NotRefundable)
        );
        assert_eq!(
            when::<Payment>(&[], refund(order)),
            Err(PaymentRejection::NotRefundable)
        );
    }

    #[test]
    fn an_authorized_payment_is_refunded_once_for_its_amount() {
        let order = OrderId::new();
        let mut given = then::<Payment>(&[], authorize(order, 1000, 1000, approved()));
        let refunded = then::<Payment>(&given, refund(order));
        assert!(
            matches!(&refunded[0], schemas::payments::PaymentEvent::PaymentRefunded(e) if e.amount == eur(1000))
        );
        given.extend(refunded);
        assert_eq!(
            when::<Payment>(&given, refund(order)),
            Err(PaymentRejection::AlreadyRefunded)
        );
    }
}

mod notifications {
    use super::*;

    fn send(order: OrderId, kind: NotificationKind, report: DeliveryReport) -> SendNotification {
        SendNotification {
            notification_id: NotificationId::for_order(order, kind),
            order_id: order,
            user_id: UserId::new(),
            kind,
            report,
        }
    }

    #[test]
    fn at_most_one_notification_per_order_and_kind_with_its_attempts() {
        let order = OrderId::new();
        let kind = NotificationKind::OrderConfirmed;
        let sent = then::<Notification>(
            &[],
            send(order, kind, DeliveryReport::Delivered { attempts: 3 }),
        );
        assert!(
            matches!(&sent[0], schemas::notifications::NotificationEvent::NotificationSent(e) if e.attempts == 3)
        );
        assert_eq!(
            when::<Notification>(
                &sent,
                send(order, kind, DeliveryReport::Delivered { attempts: 1 })
            ),
            Err(NotificationRejection::AlreadyRecorded)
        );
        let other_kind = NotificationKind::OrderCancelled;
        assert!(
            when::<Notification>(
                &[],
                send(order, other_kind, DeliveryReport::Delivered { attempts: 1 })
            )
            .is_ok()
        );
    }

    #[test]
    fn a_failed_delivery_is_recorded_with_its_error_and_ids_must_match() {
        let order = OrderId::new();
        let kind = NotificationKind::PaymentDeclined;
        let failed = then::<Notification>(
            &[],
            send(
                order,
                kind,
                DeliveryReport::Failed {
                    attempts: 5,
                    error: "HTTP 500".into(),
                },
            ),
        );
        assert!(
            matches!(&failed[0], schemas::notifications::NotificationEvent::NotificationFailed(e) if e.attempts == 5)
        );
        let mut wrong = send(order, kind, DeliveryReport::Delivered { attempts: 1 });
        wrong.notification_id = NotificationId::new();
        assert_eq!(
            when::<Notification>(&[], wrong),
            Err(NotificationRejection::WrongNotification)
        );
        assert_eq!(
            when::<Notification>(
                &[],
                send(order, kind, DeliveryReport::Delivered { attempts: 0 })
            ),
            Err(NotificationRejection::NoAttempt)
        );
    }
}
