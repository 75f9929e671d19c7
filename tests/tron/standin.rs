//! A TRON JSON-RPC stand-in: a loopback HTTP server in front of anvil that answers like
//! java-tron's Ethereum-compatible JSON-RPC where that differs from an EVM node, so that a test
//! passing through it shows that chainsync's requests are ones a TRON node serves.
//!
//! What it enforces (java-tron `TronJsonRpcImpl`, `JsonRpcApiUtil`, `CallArguments`,
//! `LogFilter`, `BlockResult`):
//! - `eth_call` and `eth_getBalance` take the block parameter `latest` only: a number is refused
//!   ("QUANTITY not supported, just support TAG as latest"), `earliest`/`pending`/`finalized`
//!   too. java-tron accepts a `{blockHash}`/`{blockNumber}` object and then runs the call at
//!   `latest` anyway; the stand-in refuses it, so that a read meant to be pinned shows up here.
//! - addresses of calls and balances are hex only, 20 bytes or 21 bytes starting with `41`
//!   (forwarded as 20); base58check `T…` is refused ("invalid address hash value").
//! - the call object is decoded strictly: `from`, `to`, `gas`, `gasPrice`, `value`, `data`,
//!   `nonce` (alloy's `input` is an unknown field there).
//! - `eth_getLogs` filters: the keys `fromBlock`, `toBlock`, `address`, `topics`, `blockHash`;
//!   addresses of exactly 20 bytes.
//! - blocks come back in java-tron's shape (`stateRoot` `0x`, zero nonce), which a strict EVM
//!   block decoder refuses. Addresses in answers are 20-byte hex, as java-tron writes them
//!   (`toJsonHexAddress` drops the `41`).
//! - only the methods above and `eth_blockNumber`, `eth_chainId`, `net_version`,
//!   `eth_getBlockByHash`, `eth_getTransactionReceipt` exist; batches are served.
//!
//! Every refused request is recorded ([`StandIn::refused`]).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen {
    methods: BTreeMap<String, u64>,
    refused: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    seen: Arc<Mutex<Seen>>,
}

/// A running stand-in; stops when dropped.
pub struct StandIn {
    pub url: String,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl StandIn {
    /// Serves on a loopback port, forwarding to `upstream` (anvil's URL).
    pub async fn start(upstream: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Shared {
            upstream: upstream.to_string(),
            http: reqwest::Client::new(),
            seen: seen.clone(),
        };
        let app = Router::new()
            .route("/jsonrpc", post(handle))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            url: format!("http://{addr}/jsonrpc"),
            seen,
            stop,
        }
    }

    /// Requests refused so far, with the reason.
    pub fn refused(&self) -> Vec<String> {
        self.seen.lock().unwrap().refused.clone()
    }

    /// How often each method was asked for.
    pub fn calls(&self, method: &str) -> u64 {
        self.seen
            .lock()
            .unwrap()
            .methods
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

const INVALID_PARAMS: i64 = -32602;

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    let h = if h.len() % 2 == 1 {
        format!("0{h}")
    } else {
        h.to_string()
    };
    hex::decode(h).ok()
}

/// java-tron's `addressCompatibleToByteArray`: 20 bytes, or 21 starting with 0x41.
fn compatible_address(v: &Value) -> Result<Value, String> {
    let s = v.as_str().ok_or("invalid address hash value")?;
    match hex_bytes(s) {
        Some(b) if b.len() == 20 => Ok(json!(format!("0x{}", hex::encode(b)))),
        Some(b) if b.len() == 21 && b[0] == 0x41 => {
            Ok(json!(format!("0x{}", hex::encode(&b[1..]))))
        }
        _ => Err(format!("invalid address hash value ({s})")),
    }
}

fn latest_only(v: Option<&Value>) -> Result<(), String> {
    match v {
        Some(Value::String(t)) if t.eq_ignore_ascii_case("latest") => Ok(()),
        Some(Value::String(t))
            if ["earliest", "pending", "finalized", "safe"]
                .iter()
                .any(|x| t.eq_ignore_ascii_case(x)) =>
        {
            Err(format!(
                "TAG [earliest | pending | finalized] not supported ({t})"
            ))
        }
        Some(Value::String(t)) => Err(format!(
            "QUANTITY not supported, just support TAG as latest ({t})"
        )),
        Some(other) => Err(format!(
            "a block object is run at latest by java-tron, not at the block asked for: {other}"
        )),
        None => Err("missing block parameter".into()),
    }
}

/// The request as forwarded to anvil, or why java-tron would refuse it.
fn check(method: &str, params: &Value) -> Result<Value, String> {
    let p = params.as_array().cloned().unwrap_or_default();
    match method {
        "eth_blockNumber"
        | "eth_chainId"
        | "net_version"
        | "eth_getBlockByNumber"
        | "eth_getBlockByHash"
        | "eth_getTransactionReceipt" => Ok(params.clone()),
        "eth_getBalance" => {
            latest_only(p.get(1))?;
            let a = compatible_address(p.first().unwrap_or(&Value::Null))?;
            Ok(json!([a, "latest"]))
        }
        "eth_call" => {
            latest_only(p.get(1))?;
            let call = p
                .first()
                .and_then(Value::as_object)
                .ok_or("invalid json request")?;
            let mut out = serde_json::Map::new();
            for (k, v) in call {
                match k.as_str() {
                    "from" | "to" => {
                        out.insert(k.clone(), compatible_address(v)?);
                    }
                    "data" | "value" => {
                        out.insert(k.clone(), v.clone());
                    }
                    "gas" | "gasPrice" | "nonce" => {}
                    other => {
                        return Err(format!(
                            "Unrecognized field \"{other}\" (class CallArguments)"
                        ));
                    }
                }
            }
            if !out.contains_key("data") {
                return Err("invalid json request: no data".into());
            }
            Ok(json!([Value::Object(out), "latest"]))
        }
        "eth_getLogs" => {
            let f = p
                .first()
                .and_then(Value::as_object)
                .ok_or("invalid json request")?;
            for (k, v) in f {
                match k.as_str() {
                    "fromBlock" | "toBlock" | "topics" | "blockHash" => {}
                    "address" => {
                        let list = match v {
                            Value::Array(a) => a.clone(),
                            other => vec![other.clone()],
                        };
                        for a in list {
                            let s = a.as_str().unwrap_or_default();
                            if hex_bytes(s).is_none_or(|b| b.len() != 20) {
                                return Err(format!("invalid address: {s}"));
                            }
                        }
                    }
                    other => {
                        return Err(format!(
                            "Unrecognized field \"{other}\" (class FilterRequest)"
                        ));
                    }
                }
            }
            Ok(params.clone())
        }
        other => Err(format!("method {other} does not exist/is not available")),
    }
}

/// A block as java-tron writes it.
fn tron_block(mut b: Value) -> Value {
    if let Some(o) = b.as_object_mut() {
        o.insert("stateRoot".into(), json!("0x"));
        o.insert("nonce".into(), json!("0x0000000000000000"));
        o.insert("difficulty".into(), json!("0x0"));
        o.insert("totalDifficulty".into(), json!("0x0"));
        o.remove("withdrawalsRoot");
        o.remove("blobGasUsed");
        o.remove("excessBlobGas");
        o.remove("parentBeaconBlockRoot");
        o.remove("requestsHash");
    }
    b
}

async fn handle(State(s): State<Shared>, body: Bytes) -> axum::Json<Value> {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (batch, list) = match req {
        Value::Array(a) => (true, a),
        one => (false, vec![one]),
    };
    let mut answers: Vec<Option<Value>> = vec![None; list.len()];
    let mut forward = Vec::new();
    let mut methods = Vec::new();
    {
        let mut seen = s.seen.lock().unwrap();
        for (i, r) in list.iter().enumerate() {
            let method = r["method"].as_str().unwrap_or_default().to_string();
            *seen.methods.entry(method.clone()).or_default() += 1;
            match check(&method, &r["params"]) {
                Ok(params) => {
                    forward.push(
                        json!({"jsonrpc": "2.0", "id": i, "method": method, "params": params}),
                    );
                    methods.push((i, method));
                }
                Err(e) => {
                    seen.refused.push(format!("{method}: {e}"));
                    answers[i] = Some(json!({"jsonrpc": "2.0", "id": r["id"].clone(),
                        "error": {"code": INVALID_PARAMS, "message": e}}));
                }
            }
        }
    }
    if !forward.is_empty() {
        let got: Vec<Value> = s
            .http
            .post(&s.upstream)
            .json(&Value::Array(forward))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for mut a in got {
            let i = a["id"].as_u64().unwrap() as usize;
            let method = &methods.iter().find(|(j, _)| *j == i).unwrap().1;
            if method.starts_with("eth_getBlockBy") && a["result"].is_object() {
                a["result"] = tron_block(a["result"].take());
            }
            a["id"] = list[i]["id"].clone();
            answers[i] = Some(a);
        }
    }
    let answers: Vec<Value> = answers.into_iter().map(Option::unwrap_or_default).collect();
    if batch {
        axum::Json(Value::Array(answers))
    } else {
        axum::Json(answers.into_iter().next().unwrap_or_default())
    }
}
