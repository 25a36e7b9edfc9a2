//! An in-memory key store that speaks RESP on a loopback port, for the demo on machines without
//! `valkey-server`. The operator talks to it with its ordinary Valkey client, so the demo still
//! runs the production code path. It implements exactly the commands the operator, the demo and
//! the tests send, with Valkey's replies (including its errors for wrong types and unknown
//! commands, and `MULTI`/`EXEC` transactions); `tests/integration/memory_valkey.rs` replays the same sessions against a real valkey-server and
//! compares every reply.

use redis::{Parser, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

enum Entry {
    String(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
}

type Data = Arc<Mutex<HashMap<Vec<u8>, Entry>>>;

pub struct MemoryValkey {
    pub port: u16,
    data: Data,
    stopping: Arc<AtomicBool>,
}

impl MemoryValkey {
    pub fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let data: Data = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let (shared, stop) = (data.clone(), stopping.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    let data = shared.clone();
                    std::thread::spawn(move || serve(stream, data));
                }
            }
        });
        Ok(Self {
            port,
            data,
            stopping,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Loses every key, as a restart without persistence does.
    pub fn flush(&self) {
        self.data.lock().expect("store lock").clear();
    }
}

impl Drop for MemoryValkey {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, data: Data) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut parser = Parser::new();
    // Commands queued since this connection's MULTI, run together (under one lock) by EXEC.
    let mut transaction: Option<Vec<Vec<Vec<u8>>>> = None;
    // An error while queueing (a nested MULTI) makes Valkey refuse the EXEC.
    let mut aborted = false;
    while let Ok(request) = parser.parse_value(&mut reader) {
        let reply = match arguments(request) {
            Some(args) if !args.is_empty() => {
                let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
                match (name.as_str(), transaction.as_mut()) {
                    ("MULTI", None) => {
                        transaction = Some(Vec::new());
                        Reply::Ok
                    }
                    ("MULTI", Some(_)) => {
                        aborted = true;
                        Reply::Error("ERR MULTI calls can not be nested".into())
                    }
                    ("EXEC", None) => Reply::Error("ERR EXEC without MULTI".into()),
                    ("DISCARD", None) => Reply::Error("ERR DISCARD without MULTI".into()),
                    ("EXEC", Some(_)) if std::mem::take(&mut aborted) => {
                        transaction = None;
                        Reply::Error(
                            "EXECABORT Transaction discarded because of previous errors.".into(),
                        )
                    }
                    ("EXEC", Some(_)) => {
                        let queued = transaction.take().unwrap_or_default();
                        let mut data = data.lock().expect("store lock");
                        Reply::Array(queued.iter().map(|c| execute(c, &mut data)).collect())
                    }
                    ("DISCARD", Some(_)) => {
                        (transaction, aborted) = (None, false);
                        Reply::Ok
                    }
                    (_, Some(queued)) => {
                        queued.push(args);
                        Reply::Simple("QUEUED")
                    }
                    (_, None) => execute(&args, &mut data.lock().expect("store lock")),
                }
            }
            _ => Reply::Error("ERR Protocol error: expected an array of bulk strings".into()),
        };
        let mut out = Vec::new();
        reply.encode(&mut out);
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

fn arguments(request: Value) -> Option<Vec<Vec<u8>>> {
    let Value::Array(items) = request else {
        return None;
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::BulkString(bytes) => Some(bytes),
            Value::SimpleString(text) => Some(text.into_bytes()),
            _ => None,
        })
        .collect()
}

enum Reply {
    Ok,
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Ok => out.extend_from_slice(b"+OK\r\n"),
            Reply::Simple(text) => out.extend_from_slice(format!("+{text}\r\n").as_bytes()),
            Reply::Error(text) => out.extend_from_slice(format!("-{text}\r\n").as_bytes()),
            Reply::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(bytes) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

const WRONG_TYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

fn wrong_arity(name: &str) -> Reply {
    Reply::Error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn execute(args: &[Vec<u8>], data: &mut HashMap<Vec<u8>, Entry>) -> Reply {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let rest = &args[1..];
    match (name.as_str(), rest.len()) {
        ("PING", 0) => Reply::Simple("PONG"),
        ("PING", 1) => Reply::Bulk(rest[0].clone()),
        // Connection set-up the client sends (library name, version); accepted and ignored.
        ("CLIENT", _) => Reply::Ok,
        ("SELECT", 1) if rest[0] == b"0" => Reply::Ok,
        ("SELECT", 1) => Reply::Error("ERR DB index is out of range".into()),
        ("EXISTS", n) if n >= 1 => {
            Reply::Integer(rest.iter().filter(|k| data.contains_key(*k)).count() as i64)
        }
        ("GET", 1) => match data.get(&rest[0]) {
            None => Reply::Nil,
            Some(Entry::String(value)) => Reply::Bulk(value.clone()),
            Some(Entry::Hash(_)) => Reply::Error(WRONG_TYPE.into()),
        },
        // Valkey answers nil for a key that holds no string.
        ("MGET", n) if n >= 1 => Reply::Array(
            rest.iter()
                .map(|k| match data.get(k) {
                    Some(Entry::String(value)) => Reply::Bulk(value.clone()),
                    _ => Reply::Nil,
                })
                .collect(),
        ),
        ("SET", n) if n >= 2 => set(data, rest),
        ("DEL", n) if n >= 1 => {
            Reply::Integer(rest.iter().filter(|k| data.remove(*k).is_some()).count() as i64)
        }
        ("HSET", n) if n >= 3 && n % 2 == 1 => {
            let entry = data
                .entry(rest[0].clone())
                .or_insert_with(|| Entry::Hash(BTreeMap::new()));
            let Entry::Hash(hash) = entry else {
                return Reply::Error(WRONG_TYPE.into());
            };
            let added = rest[1..]
                .chunks(2)
                .filter(|pair| hash.insert(pair[0].clone(), pair[1].clone()).is_none())
                .count();
            Reply::Integer(added as i64)
        }
        ("HKEYS" | "HGETALL", 1) => match data.get(&rest[0]) {
            None => Reply::Array(vec![]),
            Some(Entry::Hash(hash)) => Reply::Array(
                hash.iter()
                    .flat_map(|(field, value)| {
                        let mut items = vec![Reply::Bulk(field.clone())];
                        if name == "HGETALL" {
                            items.push(Reply::Bulk(value.clone()));
                        }
                        items
                    })
                    .collect(),
            ),
            Some(Entry::String(_)) => Reply::Error(WRONG_TYPE.into()),
        },
        ("HDEL", n) if n >= 2 => {
            let Some(entry) = data.get_mut(&rest[0]) else {
                return Reply::Integer(0);
            };
            let Entry::Hash(hash) = entry else {
                return Reply::Error(WRONG_TYPE.into());
            };
            let removed = rest[1..]
                .iter()
                .filter(|field| hash.remove(*field).is_some())
                .count();
            // Valkey deletes a hash whose last field is gone.
            if hash.is_empty() {
                data.remove(&rest[0]);
            }
            Reply::Integer(removed as i64)
        }
        ("KEYS", 1) => {
            let mut keys: Vec<&Vec<u8>> =
                data.keys().filter(|k| glob_matches(&rest[0], k)).collect();
            keys.sort();
            Reply::Array(keys.into_iter().map(|k| Reply::Bulk(k.clone())).collect())
        }
        ("DBSIZE", 0) => Reply::Integer(data.len() as i64),
        ("FLUSHALL" | "FLUSHDB", _) => {
            data.clear();
            Reply::Ok
        }
        (
            "PING" | "SELECT" | "EXISTS" | "GET" | "MGET" | "SET" | "DEL" | "HSET" | "HKEYS"
            | "HGETALL" | "HDEL" | "KEYS" | "DBSIZE",
            _,
        ) => wrong_arity(&name),
        _ => Reply::Error(format!(
            "ERR unknown command '{}', with args beginning with: ",
            String::from_utf8_lossy(&args[0])
        )),
    }
}

/// `SET key value [NX|XX]`: the options the operator uses.
fn set(data: &mut HashMap<Vec<u8>, Entry>, rest: &[Vec<u8>]) -> Reply {
    let (key, value) = (&rest[0], &rest[1]);
    let (mut nx, mut xx) = (false, false);
    for option in &rest[2..] {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            _ => return Reply::Error("ERR syntax error".into()),
        }
    }
    if nx && xx {
        return Reply::Error("ERR syntax error".into());
    }
    let exists = data.contains_key(key);
    if (nx && exists) || (xx && !exists) {
        return Reply::Nil;
    }
    data.insert(key.clone(), Entry::String(value.clone()));
    Reply::Ok
}

/// Valkey's glob for `KEYS`: `*`, `?` and literal bytes (the demo lists `apikey:*`).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_matches(&pattern[1..], text)
                || (!text.is_empty() && glob_matches(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob_matches(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => glob_matches(&pattern[1..], &text[1..]),
        _ => false,
    }
}
