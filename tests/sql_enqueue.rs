#![allow(clippy::unwrap_used)]
//! `chainsync.enqueue()` checks args against each kind's schema (derived from its Rust type and
//! stored in `chainsync.kinds.args_schema`) as strictly as the Rust enqueuers decode them.
//!
//! What the SQL check cannot see: a kind's `Job::validate` (an address's format and checksum, a
//! token that is neither `native` nor an address, `from` before `to`, exactly one of `token` and
//! `asset_class`). Args that decode but fail `validate` are accepted by SQL and fail on their
//! first run. The proptest below compares SQL with the decode alone and counts those cases apart.
//!
//! Also not mirrored: chrono decodes relaxed spellings of a date-time beyond RFC 3339 (a space
//! before the offset, `UTC`, `+0200`, unpadded fields), which SQL refuses; and serde reads a unit
//! enum variant written as `{"retry": null}`, which the schema describes only as `"retry"`.

use std::collections::BTreeMap;

use chainsync_engine::{Kinds, NewJob, args_schema};
use chainsync_jobs::kinds::{
    backfill_window::BackfillWindow,
    check_pending_tx::CheckPendingTx,
    compute_points::ComputePoints,
    ingest_events::IngestEvents,
    noop::{Noop, NoopFailure},
    reconcile_chain::ReconcileChain,
    sync_balances::SyncBalances,
    sync_user_balance::SyncUserBalance,
};
use proptest::{
    prelude::*,
    strategy::{BoxedStrategy, ValueTree},
    test_runner::TestRunner,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use sqlx::PgPool;

const ADDRESS: &str = "0x00000000000000000000000000000000000000aa";

async fn setup(pool: &PgPool) -> Kinds {
    let q = chainsync::app::builtin_queue(pool.clone());
    q.sync_kinds().await.unwrap();
    Kinds::clone(q.kinds())
}

async fn jobs(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM chainsync.all_jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The error `chainsync.enqueue(kind, args)` raises (its SQLSTATE must be 22023), or `None`.
async fn sql_enqueue(pool: &PgPool, kind: &str, args: &Value) -> Option<String> {
    let r = sqlx::query("SELECT chainsync.enqueue($1, $2)")
        .bind(kind)
        .bind(args)
        .execute(pool)
        .await;
    match r {
        Ok(_) => None,
        Err(e) => {
            let db = e.as_database_error().expect("a database error");
            assert_eq!(db.code().as_deref(), Some("22023"), "{e}");
            Some(db.message().to_string())
        }
    }
}

fn refused(msg: Option<String>, needle: &str) {
    let msg = msg.unwrap_or_else(|| panic!("accepted, expected an error containing {needle:?}"));
    assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn an_unknown_field_is_refused_naming_it(pool: PgPool) {
    let kinds = setup(&pool).await;
    let e = sql_enqueue(&pool, "noop", &json!({"n": 1})).await;
    refused(
        e.clone(),
        "chainsync.enqueue: invalid args for noop: args.n: unknown field",
    );
    refused(e, "(accepts: fail, payload, sleep_ms)");
    // As the Rust enqueuers (HTTP, CLI) refuse it.
    let mut job = NewJob::untyped("noop", json!({"n": 1}));
    let rust = kinds.check(&mut job).unwrap_err().to_string();
    assert!(rust.contains("unknown field `n`"), "{rust}");
    refused(
        sql_enqueue(
            &pool,
            "sync-user-balance",
            &json!({"chain_id": 1, "address": ADDRESS, "to": 2}),
        )
        .await,
        "args.to: unknown field (accepts: address, chain_id, token)",
    );
    refused(
        sql_enqueue(&pool, "noop", &json!({"odd key": 1})).await,
        r#"args["odd key"]: unknown field"#,
    );
    assert_eq!(jobs(&pool).await, 0);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_wrong_type_is_refused_naming_the_field(pool: PgPool) {
    setup(&pool).await;
    for (kind, args, needle) in [
        (
            "check-pending-tx",
            json!({"chain_id": "1"}),
            r#"args.chain_id: expected integer, got string "1""#,
        ),
        (
            "check-pending-tx",
            json!({"chain_id": 1.5}),
            "args.chain_id: expected integer, got number 1.5",
        ),
        (
            "check-pending-tx",
            json!({"chain_id": 1.0}),
            "args.chain_id: expected integer, got number 1.0",
        ),
        (
            "check-pending-tx",
            json!({"chain_id": null}),
            "args.chain_id: expected integer, got null",
        ),
        (
            "check-pending-tx",
            json!({"chain_id": -1}),
            "args.chain_id: -1 is below the minimum 0",
        ),
        (
            "check-pending-tx",
            json!({"chain_id": 18446744073709551615u64 as f64}),
            "args.chain_id: 18446744073709552000 is out of range for uint64",
        ),
        (
            "ingest-events",
            json!({"chain_id": 1, "to_block": "head"}),
            "args.to_block: expected integer or null",
        ),
        (
            "noop",
            json!({"sleep_ms": true}),
            "args.sleep_ms: expected integer or null, got boolean true",
        ),
        (
            "noop",
            json!({"fail": "boom"}),
            r#"args.fail: must be one of "retry", "fatal", got string "boom""#,
        ),
        (
            "noop",
            json!({"fail": 5}),
            "args.fail: expected string or null, got number 5",
        ),
        (
            "sync-balances",
            json!({"chain_id": 1, "asset_class": "gold"}),
            r#"args.asset_class: must be one of "native", "major", "erc20", "nft""#,
        ),
        (
            "reconcile-chain",
            json!({"chain_id": 1, "token": "native", "repair": "yes"}),
            "args.repair: expected boolean or null",
        ),
        (
            "backfill-window",
            json!({"chain_id": 1, "token": "native", "from": "yesterday", "to": "2024-05-02T00:00:00Z"}),
            r#"args.from: expected an RFC 3339 date-time such as "2024-05-01T12:00:00Z", got string "yesterday""#,
        ),
        (
            "backfill-window",
            json!({"chain_id": 1, "token": "native", "from": "2023-02-29T00:00:00Z", "to": "2024-05-02T00:00:00Z"}),
            "args.from: expected an RFC 3339 date-time",
        ),
        (
            "sync-user-balance",
            json!({"chain_id": 1, "address": ["0x"]}),
            "args.address: expected string, got array",
        ),
    ] {
        refused(sql_enqueue(&pool, kind, &args).await, needle);
        // The Rust decode refuses each of them too.
        assert!(decode(kind, &args).is_err(), "{kind} {args}");
    }
    assert_eq!(jobs(&pool).await, 0);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_missing_required_field_is_refused(pool: PgPool) {
    setup(&pool).await;
    refused(
        sql_enqueue(&pool, "sync-user-balance", &json!({"chain_id": 1})).await,
        "chainsync.enqueue: invalid args for sync-user-balance: args.address: missing field",
    );
    refused(
        sql_enqueue(&pool, "check-pending-tx", &json!({})).await,
        "args.chain_id: missing field",
    );
    refused(
        sql_enqueue(
            &pool,
            "backfill-window",
            &json!({"chain_id": 1, "token": "native", "from": "2024-05-01T00:00:00Z"}),
        )
        .await,
        "args.to: missing field",
    );
    assert_eq!(jobs(&pool).await, 0);
}

/// Args of every builtin kind as the Rust enqueuers write them.
fn valid_args() -> Vec<(&'static str, Value)> {
    fn v<T: Serialize>(args: &T) -> Value {
        serde_json::to_value(args).unwrap()
    }
    let from = "2024-05-01T00:00:00Z".parse().unwrap();
    let to = "2024-05-02T00:00:00+02:00".parse().unwrap();
    vec![
        (
            "backfill-window",
            v(&BackfillWindow {
                chain_id: 1,
                token: "native".into(),
                from,
                to,
            }),
        ),
        (
            "backfill-window",
            json!({"chain_id": 1, "token": ADDRESS, "from": "2024-05-01t00:00:00.5z", "to": "2024-05-02 00:00:00-01:30"}),
        ),
        (
            "check-pending-tx",
            v(&CheckPendingTx { chain_id: u64::MAX }),
        ),
        ("compute-points", v(&ComputePoints { chain_id: 1 })),
        (
            "ingest-events",
            v(&IngestEvents {
                chain_id: 1,
                to_block: None,
            }),
        ),
        (
            "ingest-events",
            v(&IngestEvents {
                chain_id: 1,
                to_block: Some(100),
            }),
        ),
        ("ingest-events", json!({"chain_id": 1, "to_block": null})),
        (
            "deliver-alert",
            json!({"target": "ops", "alert": {"status": "firing", "text": "x"}}),
        ),
        ("noop", v(&Noop::default())),
        (
            "noop",
            v(&Noop {
                fail: Some(NoopFailure::Retry),
                sleep_ms: Some(5),
                payload: Some(json!({"x": [1, "y"]})),
            }),
        ),
        (
            "noop",
            json!({"fail": "fatal", "sleep_ms": null, "payload": null}),
        ),
        (
            "reconcile-chain",
            v(&ReconcileChain {
                chain_id: 1,
                token: None,
                asset_class: Some(chainsync_jobs::settings::AssetClass::Erc20),
                repair: Some(true),
            }),
        ),
        (
            "reconcile-chain",
            json!({"chain_id": 1, "token": "native", "asset_class": null}),
        ),
        (
            "sync-balances",
            v(&SyncBalances {
                chain_id: 1,
                token: Some("USDC".into()),
                asset_class: None,
            }),
        ),
        (
            "sync-balances",
            json!({"chain_id": 1, "asset_class": "nft"}),
        ),
        (
            "sync-user-balance",
            v(&SyncUserBalance::new(1, ADDRESS, None)),
        ),
        (
            "sync-user-balance",
            json!({"chain_id": 1, "address": ADDRESS, "token": "native"}),
        ),
    ]
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn valid_args_of_every_builtin_kind_are_accepted(pool: PgPool) {
    let kinds = setup(&pool).await;
    let cases = valid_args();
    for name in kinds.names() {
        assert!(
            cases.iter().any(|(k, _)| *k == name),
            "no valid args listed for {name}"
        );
    }
    for (kind, args) in &cases {
        let mut job = NewJob::untyped(*kind, args.clone());
        kinds
            .check(&mut job)
            .unwrap_or_else(|e| panic!("{kind} {args}: {e}"));
        assert_eq!(sql_enqueue(&pool, kind, args).await, None, "{kind} {args}");
    }
    assert_eq!(jobs(&pool).await, cases.len() as i64);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn an_error_inside_the_callers_transaction_leaves_nothing(pool: PgPool) {
    setup(&pool).await;
    sqlx::query("CREATE TABLE orders (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT chainsync.enqueue('noop', '{}')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let e = sqlx::query("SELECT chainsync.enqueue('noop', '{\"n\": 1}')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    let db = e.as_database_error().unwrap();
    assert_eq!(db.code().as_deref(), Some("22023"));
    assert!(db.message().contains("args.n: unknown field"), "{e}");
    // The caller's COMMIT of the failed transaction rolls it back: neither its row nor its jobs.
    tx.commit().await.unwrap();
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 0);
    assert_eq!(jobs(&pool).await, 0);
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn a_kind_without_a_schema_is_not_checked(pool: PgPool) {
    setup(&pool).await;
    let schema: Option<Value> =
        sqlx::query_scalar("SELECT args_schema FROM chainsync.kinds WHERE kind = 'noop'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(schema, Some(args_schema::<Noop>()));
    // A row recorded by a binary from before args schemas.
    sqlx::query("UPDATE chainsync.kinds SET args_schema = NULL WHERE kind = 'noop'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(sql_enqueue(&pool, "noop", &json!({"n": 1})).await, None);
    // The next sync of the kinds records it again.
    setup(&pool).await;
    refused(
        sql_enqueue(&pool, "noop", &json!({"n": 1})).await,
        "args.n: unknown field",
    );
}

// ---- the validator on what schemars emits for richer types than the builtin kinds' ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Rich {
    small: u8,
    signed: Option<i32>,
    items: Vec<Item>,
    pair: Option<(u16, String)>,
    mode: Mode,
    #[serde(default)]
    tags: BTreeMap<String, bool>,
    #[serde(rename = "odd key", default)]
    odd: Option<i64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Item {
    id: u32,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum Mode {
    Off,
    Every { secs: u64 },
    At(String),
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn the_validator_follows_serde_on_nested_types(pool: PgPool) {
    let schema = args_schema::<Rich>();
    let base = json!({"small": 1, "items": [{"id": 1}, {"id": 2, "note": "x"}], "mode": "off"});
    let with = |k: &str, v: Value| {
        let mut o = base.clone();
        o[k] = v;
        o
    };
    let cases: Vec<(Value, Option<&str>)> = vec![
        (base.clone(), None),
        (with("mode", json!({"every": {"secs": 5}})), None),
        (with("mode", json!({"at": "noon"})), None),
        // A struct variant without deny_unknown_fields ignores other fields, in both.
        (with("mode", json!({"every": {"secs": 5, "x": 1}})), None),
        (with("pair", json!([7, "x"])), None),
        (with("tags", json!({"a": true, "b": false})), None),
        (with("odd key", json!(-3)), None),
        (with("signed", json!(-2147483648)), None),
        (
            with("small", json!(256)),
            Some("args.small: 256 is above the maximum 255"),
        ),
        (
            with("signed", json!(2147483648u64)),
            Some("args.signed: 2147483648 is out of range for int32"),
        ),
        (
            with("items", json!([{"id": 1}, {"id": "x"}])),
            Some(r#"args.items[1].id: expected integer, got string "x""#),
        ),
        (
            with("items", json!([{"id": 1, "extra": 0}])),
            Some("args.items[0].extra: unknown field (accepts: id, note)"),
        ),
        (
            with("items", json!([{}])),
            Some("args.items[0].id: missing field"),
        ),
        (
            with("items", json!({"id": 1})),
            Some("args.items: expected array, got object"),
        ),
        (
            with("pair", json!([1])),
            Some("args.pair: expected at least 2 items, got 1"),
        ),
        (
            with("pair", json!([1, "a", 2])),
            Some("args.pair: expected at most 2 items, got 3"),
        ),
        (
            with("pair", json!([70000, "a"])),
            Some("args.pair[0]: 70000 is above the maximum 65535"),
        ),
        (
            with("pair", json!([1, 2])),
            Some("args.pair[1]: expected string, got number 2"),
        ),
        (with("mode", json!("on")), Some("args.mode: ")),
        (
            with("mode", json!({"every": {"secs": -1}})),
            Some("args.mode.every.secs: -1 is below the minimum 0"),
        ),
        (
            with("mode", json!({"at": 5})),
            Some("args.mode.at: expected string, got number 5"),
        ),
        (
            with("mode", json!({"every": {"secs": 1}, "at": "x"})),
            Some("args.mode"),
        ),
        (
            with("tags", json!({"a": 1})),
            Some("args.tags.a: expected boolean, got number 1"),
        ),
        (
            with("odd key", json!("x")),
            Some(r#"args["odd key"]: expected integer or null, got string "x""#),
        ),
        (
            json!({"items": [], "mode": "off"}),
            Some("args.small: missing field"),
        ),
    ];
    for (value, needle) in cases {
        let err: Option<String> = sqlx::query_scalar("SELECT chainsync.args_error($1, $2)")
            .bind(&schema)
            .bind(&value)
            .fetch_one(&pool)
            .await
            .unwrap();
        let rust = serde_json::from_value::<Rich>(value.clone()).map(|_| ());
        match needle {
            None => {
                assert_eq!(err, None, "{value}");
                rust.unwrap_or_else(|e| panic!("{value}: {e}"));
            }
            Some(needle) => {
                refused(err, needle);
                assert!(rust.is_err(), "serde accepts {value}");
            }
        }
    }
}

// ---- SQL against the Rust decode, on random args of every builtin kind ----

fn decode_as<T: DeserializeOwned>(args: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(args.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The Rust decode alone (without `Job::validate`) of `kind`'s args.
fn decode(kind: &str, args: &Value) -> Result<(), String> {
    match kind {
        "backfill-window" => decode_as::<BackfillWindow>(args),
        "check-pending-tx" => decode_as::<CheckPendingTx>(args),
        "compute-points" => decode_as::<ComputePoints>(args),
        "deliver-alert" => decode_as::<chainsync_jobs::kinds::deliver_alert::DeliverAlert>(args),
        "ingest-events" => decode_as::<IngestEvents>(args),
        "noop" => decode_as::<Noop>(args),
        "reconcile-chain" => decode_as::<ReconcileChain>(args),
        "sync-balances" => decode_as::<SyncBalances>(args),
        "sync-user-balance" => decode_as::<SyncUserBalance>(args),
        other => panic!("add {other} to decode()"),
    }
}

fn junk() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..300).prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z0-9 ]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn integer() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => any::<u64>().prop_map(Value::from),
        2 => (0u64..1000).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::from(u64::MAX)),
        1 => Just(json!(18446744073709551616.0f64)),
        1 => (-1e3f64..1e3).prop_map(Value::from),
        1 => Just(json!(2.0f64)),
        1 => junk(),
    ]
    .boxed()
}

fn datetime() -> BoxedStrategy<Value> {
    let parts = (
        (1900u32..2200, 1u32..=13, 1u32..=31),
        (0u32..=24, 0u32..=60, 0u32..=61),
        prop::option::of("[0-9]{1,10}"),
        prop_oneof![
            Just("Z".to_string()),
            Just("z".to_string()),
            (prop_oneof![Just('+'), Just('-')], 0u32..=24, 0u32..=60)
                .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
        ],
        prop_oneof![Just('T'), Just('t'), Just(' ')],
    );
    let stamp = parts.prop_map(|((y, mo, d), (h, mi, s), frac, off, sep)| {
        let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
        Value::from(format!(
            "{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{off}"
        ))
    });
    prop_oneof![8 => stamp, 1 => Just(json!("2024-05-01")), 1 => junk()].boxed()
}

fn string_of(choices: &[&'static str]) -> BoxedStrategy<Value> {
    let picks = prop::sample::select(choices.to_vec()).prop_map(Value::from);
    prop_oneof![6 => picks, 1 => junk()].boxed()
}

/// Values for a field, by its name: mostly plausible, sometimes of another type.
fn value_for(field: &str) -> BoxedStrategy<Value> {
    match field {
        "chain_id" | "to_block" | "sleep_ms" => integer(),
        "from" | "to" => datetime(),
        "token" => string_of(&["native", ADDRESS, "USDC", "", "0x12", "NATIVE"]),
        "address" => string_of(&[
            ADDRESS,
            "0xAA00000000000000000000000000000000000000",
            "0x12",
            "",
        ]),
        "asset_class" => string_of(&["native", "major", "erc20", "nft", "ERC20", "gold"]),
        "fail" => string_of(&["retry", "fatal", "Retry", "boom"]),
        "repair" => prop_oneof![3 => any::<bool>().prop_map(Value::from), 1 => junk()].boxed(),
        _ => junk(),
    }
}

/// Random args for a kind with these fields: each present or not, now and then one unknown.
fn args_for(fields: Vec<String>) -> BoxedStrategy<Value> {
    let present: Vec<_> = fields
        .into_iter()
        .map(|f| {
            let v = value_for(&f);
            prop::option::weighted(0.85, v).prop_map(move |v| (f.clone(), v))
        })
        .collect();
    let extra = prop::option::weighted(0.1, ("[a-z_]{1,9}", junk()));
    (present, extra)
        .prop_map(|(present, extra)| {
            let mut o = serde_json::Map::new();
            for (f, v) in present {
                if let Some(v) = v {
                    o.insert(f, v);
                }
            }
            if let Some((k, v)) = extra {
                o.entry(k).or_insert(v);
            }
            Value::Object(o)
        })
        .boxed()
}

/// For each case: the args as Postgres stores them and the SQL check's error. The Rust side
/// decodes the stored form, as a worker does (`1e2` is stored as `100`).
async fn sql_check(pool: &PgPool, cases: &[(String, Value)]) -> Vec<(Value, Option<String>)> {
    let kinds: Vec<&str> = cases.iter().map(|(k, _)| k.as_str()).collect();
    let args: Vec<Value> = cases.iter().map(|(_, a)| a.clone()).collect();
    let rows: Vec<(Value, Option<String>)> = sqlx::query_as(
        "SELECT c.args, chainsync.args_error(k.args_schema, c.args)
         FROM unnest($1::text[], $2::jsonb[]) WITH ORDINALITY AS c(kind, args, i)
         JOIN chainsync.kinds k ON k.kind = c.kind
         ORDER BY c.i",
    )
    .bind(&kinds)
    .bind(&args)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), cases.len());
    rows
}

fn disagreement(kind: &str, stored: &Value, sql: &Option<String>) -> Option<String> {
    let rust = decode(kind, stored);
    match (sql, &rust) {
        (None, Ok(())) | (Some(_), Err(_)) => None,
        _ => Some(format!(
            "{kind} {stored}: SQL {sql:?}, Rust decode {rust:?}"
        )),
    }
}

#[sqlx::test(migrator = "chainsync_jobs::MIGRATOR")]
async fn sql_check_agrees_with_the_rust_decode_on_random_args(pool: PgPool) {
    const CASES: usize = 600;
    let kinds = setup(&pool).await;
    // Each kind's fields, as its schema names them.
    let fields: BTreeMap<&str, Vec<String>> = kinds
        .specs()
        .map(|s| {
            let props = s.args_schema["properties"].as_object().unwrap();
            (s.kind, props.keys().cloned().collect())
        })
        .collect();
    let strategy = prop::sample::select(kinds.names()).prop_flat_map(move |kind| {
        args_for(fields[kind].clone()).prop_map(move |args| (kind.to_string(), args))
    });
    let mut runner = TestRunner::default();
    let mut trees: Vec<_> = (0..CASES)
        .map(|_| strategy.new_tree(&mut runner).unwrap())
        .collect();
    let cases: Vec<(String, Value)> = trees.iter().map(|t| t.current()).collect();
    let checked = sql_check(&pool, &cases).await;

    let (mut accepted, mut refused, mut validate_only) = (0, 0, 0);
    for (i, ((kind, args), (stored, sql))) in cases.iter().zip(&checked).enumerate() {
        if disagreement(kind, stored, sql).is_some() {
            // Shrink to a smallest disagreeing case, one SQL round trip per candidate.
            let tree = &mut trees[i];
            let mut smallest = disagreement(kind, stored, sql);
            let mut steps = 0;
            let mut more = tree.simplify();
            while more && steps < 500 {
                steps += 1;
                let (k, a) = tree.current();
                let (s, e) = sql_check(&pool, &[(k.clone(), a)]).await.remove(0);
                match disagreement(&k, &s, &e) {
                    Some(d) => {
                        smallest = Some(d);
                        more = tree.simplify();
                    }
                    None => more = tree.complicate(),
                }
            }
            panic!(
                "SQL and Rust disagree: {}\n(original case: {kind} {args})",
                smallest.unwrap()
            );
        }
        let mut job = NewJob::untyped(kind.as_str(), stored.clone());
        let full = kinds.check(&mut job);
        match (sql, full) {
            (None, Ok(())) => accepted += 1,
            (Some(_), Err(_)) => refused += 1,
            // Decodes, so SQL accepts, but `Job::validate` refuses: the rules SQL cannot see.
            (None, Err(_)) => validate_only += 1,
            (Some(e), Ok(())) => panic!("SQL refuses what Rust accepts: {kind} {stored}: {e}"),
        }
    }
    assert!(accepted >= CASES / 20, "too few accepted cases: {accepted}");
    assert!(refused >= CASES / 10, "too few refused cases: {refused}");
    println!("{accepted} accepted, {refused} refused, {validate_only} decode but fail validate");
}
