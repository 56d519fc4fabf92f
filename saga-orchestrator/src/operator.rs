//! What an operator can do to a saga: retry one that failed. A saga fails when a
//! compensation is given up on for good (a refund the provider refused); once the cause is
//! dealt with, the retry issues that compensation again under its old command id, and the
//! rest of the plan follows as usual. It runs like every other input: under the saga's
//! row lock, saga and outbox in one transaction.

use sqlx::PgPool;

use schemas::OrderId;

use crate::SagaError;
use crate::saga::{Input, Policy, Saga, react};
use crate::store::{self, Issued};

/// Retries the failed saga of `order_id`; the saga as stored after it.
pub async fn retry(pool: &PgPool, order_id: OrderId, policy: &Policy) -> Result<Saga, SagaError> {
    let mut tx = pool.begin().await?;
    let saga = store::lock_sagas(&mut tx, &[order_id])
        .await?
        .remove(&order_id)
        .ok_or(SagaError::NotFound(order_id))?;
    let reaction =
        react(Some(&saga), &Input::OperatorRetry, store::now(), policy).map_err(|_| {
            SagaError::Conflict {
                order_id,
                state: saga.state,
            }
        })?;
    let issued = Issued::all(reaction.instructions, None, None);
    store::store(&mut tx, &[&reaction.saga], &issued).await?;
    store::rearm(&mut tx, &issued).await?;
    tx.commit().await?;
    Ok(reaction.saga)
}
