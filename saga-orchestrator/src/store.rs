//! The orchestrator's tables in schema `saga`: sagas (the whole state machine as JSON plus
//! the columns queries filter on), their deadlines, the outbox of steps to carry out, and
//! the users seen deactivated. Every write of a batch is one statement per table.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use schemas::{CommandId, CorrelationId, OrderId, TraceParent, UserId};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::saga::{Action, Instruction, Saga, Step};

/// The id of the command a step becomes: the same for every attempt, so a re-sent command
/// is a duplicate its writer drops.
pub fn command_id(order_id: OrderId, step: Step) -> CommandId {
    CommandId::derived(&["saga", &order_id.to_string(), step.as_str()])
}

fn undecodable(e: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

/// The sagas of `orders`, locked for this transaction (in id order, so two transactions
/// never wait on each other crosswise).
pub async fn lock_sagas(
    conn: &mut PgConnection,
    orders: &[OrderId],
) -> Result<HashMap<OrderId, Saga>, sqlx::Error> {
    let mut ids: Vec<Uuid> = orders.iter().map(OrderId::as_uuid).collect();
    ids.sort();
    ids.dedup();
    let documents: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT document FROM saga.sagas WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    documents
        .into_iter()
        .map(|d| {
            let saga: Saga = serde_json::from_value(d).map_err(undecodable)?;
            Ok((saga.order_id, saga))
        })
        .collect()
}

/// One saga as stored, for the API.
pub async fn saga(conn: &mut PgConnection, order: Uuid) -> Result<Option<Saga>, sqlx::Error> {
    let document: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT document FROM saga.sagas WHERE order_id = $1")
            .bind(order)
            .fetch_optional(conn)
            .await?;
    document
        .map(|d| serde_json::from_value(d).map_err(undecodable))
        .transpose()
}

/// Stores `sagas` (insert or replace), their deadlines and their new steps.
pub async fn store(
    conn: &mut PgConnection,
    sagas: &[&Saga],
    instructions: &[Issued],
) -> Result<(), sqlx::Error> {
    if sagas.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(sagas.len());
    let mut states = Vec::with_capacity(sagas.len());
    let mut documents = Vec::with_capacity(sagas.len());
    let mut started = Vec::with_capacity(sagas.len());
    let mut updated = Vec::with_capacity(sagas.len());
    for saga in sagas {
        ids.push(saga.order_id.as_uuid());
        states.push(saga.state.as_str());
        documents.push(serde_json::to_string(saga).map_err(undecodable)?);
        started.push(saga.started_at);
        updated.push(saga.updated_at);
    }
    sqlx::query(
        "INSERT INTO saga.sagas (order_id, state, document, started_at, updated_at)
         SELECT i, s, d::jsonb, b, u
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
              AS x(i, s, d, b, u)
         ON CONFLICT (order_id) DO UPDATE SET
           state = EXCLUDED.state, document = EXCLUDED.document, updated_at = EXCLUDED.updated_at",
    )
    .bind(&ids)
    .bind(&states)
    .bind(&documents)
    .bind(&started)
    .bind(&updated)
    .execute(&mut *conn)
    .await?;
    store_deadlines(conn, sagas).await?;
    enqueue(conn, instructions).await
}

/// Makes the deadline table say what the sagas say: one row per pending deadline.
async fn store_deadlines(conn: &mut PgConnection, sagas: &[&Saga]) -> Result<(), sqlx::Error> {
    let (due, done): (Vec<&&Saga>, Vec<&&Saga>) =
        sagas.iter().partition(|s| s.payment_deadline.is_some());
    let done: Vec<Uuid> = done.iter().map(|s| s.order_id.as_uuid()).collect();
    sqlx::query("DELETE FROM saga.deadlines WHERE order_id = ANY($1)")
        .bind(&done)
        .execute(&mut *conn)
        .await?;
    let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = due
        .iter()
        .filter_map(|s| Some((s.order_id.as_uuid(), s.payment_deadline?)))
        .unzip();
    sqlx::query(
        "INSERT INTO saga.deadlines (order_id, due_at)
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[])
         ON CONFLICT (order_id) DO UPDATE SET due_at = EXCLUDED.due_at",
    )
    .bind(&ids)
    .bind(&times)
    .execute(conn)
    .await?;
    Ok(())
}

/// A step the saga issued, and the message that made it: the event it reacted to, or the
/// command of an earlier step whose outcome it reacted to; none for a deadline. It becomes
/// the command's causation id, which `shopctl explain` follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub instruction: Instruction,
    pub caused_by: Option<Uuid>,
    /// The trace the step continues: its cause's. `None` (a fired deadline, an operator's
    /// retry) continues the trace of the order's earlier steps.
    pub traceparent: Option<TraceParent>,
}

impl Issued {
    /// Every instruction of `instructions`, caused by `caused_by` in trace `traceparent`.
    pub fn all(
        instructions: Vec<Instruction>,
        caused_by: Option<Uuid>,
        traceparent: Option<TraceParent>,
    ) -> Vec<Self> {
        instructions
            .into_iter()
            .map(|instruction| Self {
                instruction,
                caused_by,
                traceparent,
            })
            .collect()
    }
}

/// Adds steps to the outbox; a step already there (a batch applied twice) stays as it is.
async fn enqueue(conn: &mut PgConnection, instructions: &[Issued]) -> Result<(), sqlx::Error> {
    if instructions.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(instructions.len());
    let mut orders = Vec::with_capacity(instructions.len());
    let mut correlations = Vec::with_capacity(instructions.len());
    let mut steps = Vec::with_capacity(instructions.len());
    let mut actions = Vec::with_capacity(instructions.len());
    let mut causes = Vec::with_capacity(instructions.len());
    let mut traces = Vec::with_capacity(instructions.len());
    for Issued {
        instruction: i,
        caused_by,
        traceparent,
    } in instructions
    {
        causes.push(*caused_by);
        traces.push(traceparent.map(|t| t.to_string()));
        ids.push(command_id(i.order_id, i.step).as_uuid());
        orders.push(i.order_id.as_uuid());
        correlations.push(i.correlation_id.as_uuid());
        steps.push(i.step.as_str());
        actions.push(serde_json::to_string(&i.action).map_err(undecodable)?);
    }
    // A step without a trace of its own continues the order's: that of its earliest step.
    sqlx::query(
        "INSERT INTO saga.outbox (command_id, order_id, correlation_id, step, action, causation_id,
                                  traceparent)
         SELECT i, o, c, s, a::jsonb, k,
                COALESCE(t, (SELECT e.traceparent FROM saga.outbox e
                             WHERE e.order_id = o AND e.traceparent IS NOT NULL
                             ORDER BY e.created_at, e.command_id LIMIT 1))
         FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::uuid[],
                     $7::text[])
           AS x(i, o, c, s, a, k, t)
         ON CONFLICT (command_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&orders)
    .bind(&correlations)
    .bind(&steps)
    .bind(&actions)
    .bind(&causes)
    .bind(&traces)
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes steps due again that were carried out or given up on before (an operator's
/// retry): the same command id, a fresh count of attempts, no error. Action and cause stay
/// as first stored.
pub async fn rearm(conn: &mut PgConnection, instructions: &[Issued]) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = instructions
        .iter()
        .map(|i| command_id(i.instruction.order_id, i.instruction.step).as_uuid())
        .collect();
    sqlx::query(
        "UPDATE saga.outbox SET done_at = NULL, due_at = now(), attempts = 0, last_error = NULL
         WHERE command_id = ANY($1)",
    )
    .bind(&ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Which of `users` were seen deactivated.
pub async fn deactivated_among(
    conn: &mut PgConnection,
    users: &[UserId],
) -> Result<HashSet<UserId>, sqlx::Error> {
    let ids: Vec<Uuid> = users.iter().map(UserId::as_uuid).collect();
    let rows: Vec<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM saga.deactivated_users WHERE user_id = ANY($1)")
            .bind(&ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(UserId::from).collect())
}

pub async fn store_deactivated(
    conn: &mut PgConnection,
    users: &[(UserId, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    let (ids, times): (Vec<Uuid>, Vec<DateTime<Utc>>) =
        users.iter().map(|(u, at)| (u.as_uuid(), *at)).unzip();
    sqlx::query(
        "INSERT INTO saga.deactivated_users (user_id, deactivated_at)
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[]) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&times)
    .execute(conn)
    .await?;
    Ok(())
}

/// A step taken out of the outbox to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    pub command_id: Uuid,
    pub order_id: OrderId,
    pub correlation_id: CorrelationId,
    /// What made the saga issue the step ([`Issued::caused_by`]).
    pub causation_id: Option<Uuid>,
    /// The trace the step continues ([`Issued::traceparent`]).
    pub traceparent: Option<TraceParent>,
    pub step: Step,
    pub action: Action,
    /// Including this one.
    pub attempts: i32,
}

/// Takes up to `limit` due steps and hides them for `lease`: if this process dies while
/// carrying one out, it is due again after the lease.
pub async fn claim_due(
    conn: &mut PgConnection,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    type Row = (
        Uuid,
        Uuid,
        Uuid,
        Option<Uuid>,
        Option<String>,
        String,
        serde_json::Value,
        i32,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "UPDATE saga.outbox o SET due_at = now() + $2 * interval '1 millisecond', attempts = o.attempts + 1
         WHERE o.command_id IN (
           SELECT command_id FROM saga.outbox
           WHERE done_at IS NULL AND due_at <= now()
           ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING o.command_id, o.order_id, o.correlation_id, o.causation_id, o.traceparent,
                   o.step, o.action, o.attempts",
    )
    .bind(limit)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(
            |(command_id, order, correlation, causation_id, trace, step, action, attempts)| {
                Ok(Claimed {
                    command_id,
                    order_id: OrderId::from(order),
                    correlation_id: CorrelationId::from(correlation),
                    causation_id,
                    // Stored by this service from a parsed value; one that does not parse
                    // (edited by hand) starts a new trace rather than failing the step.
                    traceparent: trace.and_then(|t| t.parse().ok()),
                    step: Step::parse(&step).ok_or_else(|| {
                        sqlx::Error::Decode(format!("unknown step {step}").into())
                    })?,
                    action: serde_json::from_value(action).map_err(undecodable)?,
                    attempts,
                })
            },
        )
        .collect()
}

/// The step is carried out: its command is in the log.
pub async fn done(conn: &mut PgConnection, command_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE saga.outbox SET done_at = now(), last_error = NULL WHERE command_id = $1")
        .bind(command_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The step failed this time; it is due again after `delay`.
pub async fn retry_later(
    conn: &mut PgConnection,
    command_id: Uuid,
    delay: std::time::Duration,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE saga.outbox SET due_at = now() + $2 * interval '1 millisecond', last_error = $3
         WHERE command_id = $1 AND done_at IS NULL",
    )
    .bind(command_id)
    .bind(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sagas whose payment deadline passed, locked (skipping ones another transaction holds).
pub async fn lock_overdue(conn: &mut PgConnection, limit: i64) -> Result<Vec<Saga>, sqlx::Error> {
    let documents: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT s.document FROM saga.sagas s JOIN saga.deadlines d USING (order_id)
         WHERE d.due_at <= now() ORDER BY d.due_at LIMIT $1 FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    documents
        .into_iter()
        .map(|d| serde_json::from_value(d).map_err(undecodable))
        .collect()
}

/// Now, at the precision Postgres keeps (microseconds), so that the times inside a stored
/// saga equal its columns (keyset pages compare them).
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// The states a census counts: those that need someone to act when they last.
pub const CENSUS_STATES: &[&str] = &["running", "compensating", "failed"];

/// Per state of [`CENSUS_STATES`] with sagas: how many, and how long (seconds) the one
/// that moved least recently has not moved.
pub async fn census(pool: &sqlx::PgPool) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT state, count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(updated_at))::float8, 0)
         FROM saga.sagas WHERE state = ANY($1) GROUP BY state",
    )
    .bind(CENSUS_STATES)
    .fetch_all(pool)
    .await
}
