//! The demo's in-memory key store must answer like valkey-server: the same command sessions are
//! replayed against both and every reply, and the final contents, must be identical.

use apikey_rotator::key::RawKey;
use apikey_rotator::keystore::{Endpoint, KeyStore, Prefixes};
use kube_sim::memory_valkey::MemoryValkey;
use kube_sim::valkey::ValkeyServer;
use redis::Value;

fn session(url: &str) -> Vec<redis::RedisResult<Value>> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["PING"],
        vec!["PING", "hello"],
        vec!["EXISTS", "apikey:a", "apikey:b"],
        vec!["SET", "apikey:a", "{\"id\":\"a\"}", "NX"],
        vec!["SET", "apikey:a", "{\"id\":\"other\"}", "NX"],
        vec!["GET", "apikey:a"],
        vec!["SET", "apikey:b", "x", "XX"],
        vec!["SET", "apikey:b", "x"],
        vec!["SET", "apikey:b", "y", "XX"],
        vec!["SET", "apikey:b", "y", "NX", "XX"],
        vec!["SET", "apikey:b", "y", "BOGUS"],
        vec!["EXISTS", "apikey:a", "apikey:b", "apikey:c", "apikey:a"],
        vec!["HSET", "h", "1", "one", "2", "two"],
        vec!["HSET", "h", "2", "deux", "3", "trois"],
        vec!["HSET", "h", "4"],
        vec!["HKEYS", "h"],
        vec!["HGETALL", "h"],
        vec!["HKEYS", "missing"],
        vec!["GET", "h"],
        vec!["HSET", "apikey:a", "f", "v"],
        vec!["HKEYS", "apikey:a"],
        vec!["HDEL", "h", "1", "9"],
        vec!["HDEL", "missing", "1"],
        vec!["HDEL", "h", "2", "3"],
        vec!["EXISTS", "h"],
        vec!["KEYS", "apikey:*"],
        vec!["KEYS", "apikey:?"],
        vec!["KEYS", "nothing*"],
        vec!["DEL", "apikey:a", "apikey:zzz"],
        vec!["DBSIZE"],
        vec!["GET"],
        vec!["SELECT", "0"],
        vec!["EXEC"],
        vec!["DISCARD"],
        vec!["MULTI"],
        vec!["SET", "apikey:t", "1", "NX"],
        vec!["MULTI"],
        vec!["GET", "apikey:t"],
        vec!["EXEC"],
        vec!["MULTI"],
        vec!["SET", "apikey:u", "1"],
        vec!["DISCARD"],
        vec!["EXISTS", "apikey:u", "apikey:t"],
        vec!["FLUSHALL"],
        vec!["DBSIZE"],
    ];
    commands
        .into_iter()
        .map(|args| {
            let mut cmd = redis::cmd(args[0]);
            for arg in &args[1..] {
                cmd.arg(*arg);
            }
            let reply = cmd.query::<Value>(&mut conn);
            // KEYS has no defined order.
            match reply {
                Ok(Value::Array(mut items)) if args[0] == "KEYS" => {
                    items.sort_by_key(|item| format!("{item:?}"));
                    Ok(Value::Array(items))
                }
                other => other,
            }
        })
        .collect()
}

fn comparable(reply: redis::RedisResult<Value>) -> String {
    match reply {
        Ok(value) => format!("{value:?}"),
        // Error texts differ in detail between Valkey versions; the error kind and code must not.
        Err(e) => format!("error {:?} {:?}", e.kind(), e.code()),
    }
}

#[test]
fn raw_command_sessions_get_the_same_replies() {
    let real = ValkeyServer::start().unwrap();
    let memory = MemoryValkey::start().unwrap();
    let expected: Vec<String> = session(&real.url()).into_iter().map(comparable).collect();
    let actual: Vec<String> = session(&memory.url()).into_iter().map(comparable).collect();
    for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
        assert_eq!(e, a, "reply {i} differs");
    }
    assert_eq!(expected.len(), actual.len());
}

fn dump(url: &str) -> Vec<(String, String)> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let value = match redis::cmd("GET").arg(&k).query::<String>(&mut conn) {
                Ok(v) => v,
                Err(_) => format!(
                    "{:?}",
                    redis::cmd("HGETALL")
                        .arg(&k)
                        .query::<Vec<String>>(&mut conn)
                        .unwrap()
                ),
            };
            // Records carry their creation time; compare everything else.
            let value = serde_json::from_str::<serde_json::Value>(&value)
                .ok()
                .and_then(|mut v| {
                    v.as_object_mut()?.remove("created_at");
                    v.as_object_mut()?.remove("last_used");
                    Some(v.to_string())
                })
                .unwrap_or(value);
            (k, value)
        })
        .collect()
}

const PREFIXES: Prefixes<'static> = Prefixes {
    records: "apikey:",
    operator: "apikey-rotator:",
};

async fn operator_session(store: &KeyStore, old: &RawKey, new: &RawKey) -> Vec<String> {
    let mut replies = vec![];
    let (old_id, new_id) = (old.id(), new.id());
    replies.push(format!(
        "{:?}",
        store
            .read_records(PREFIXES, &[&old_id, &new_id])
            .await
            .unwrap()
    ));
    replies.push(format!(
        "{:?}",
        store.register(PREFIXES, old, "root").await.unwrap()
    ));
    replies.push(format!(
        "{:?}",
        store.register(PREFIXES, new, "rotated").await.unwrap()
    ));
    replies.push(format!(
        "{:?}",
        store.register(PREFIXES, new, "again").await.unwrap()
    ));
    store.set_bootstrap_flag("apikey:").await.unwrap();
    store
        .write_state("apikey-rotator:", "sirius/sirius", "{\"step\":\"Roll\"}")
        .await
        .unwrap();
    for revision in 1..=5 {
        store
            .record_history("apikey-rotator:", "sirius/sirius", revision, "{}", 3)
            .await
            .unwrap();
    }
    replies.push(format!(
        "{:?}",
        store
            .read_records(PREFIXES, &[&old_id, &new_id])
            .await
            .unwrap()
    ));
    store.revoke(PREFIXES, &old_id).await.unwrap();
    replies.push(format!(
        "{:?}",
        store
            .read_records(PREFIXES, &[&old_id, &new_id])
            .await
            .unwrap()
    ));
    replies
}

#[tokio::test]
async fn the_operators_key_store_sessions_leave_the_same_data() {
    let real = ValkeyServer::start().unwrap();
    let memory = MemoryValkey::start().unwrap();
    let old = RawKey::mint("sk_", 32).unwrap();
    let new = RawKey::mint("sk_", 32).unwrap();
    let mut results = vec![];
    for url in [real.url(), memory.url()] {
        let store = KeyStore::connect(&Endpoint {
            url: url.clone(),
            password: None,
            insecure_skip_tls_verify: false,
            tls: None,
            server_name: None,
        })
        .await
        .unwrap();
        let replies = operator_session(&store, &old, &new).await;
        results.push((replies, dump(&url)));
    }
    assert_eq!(results[0], results[1]);
    assert!(
        results[1]
            .1
            .iter()
            .any(|(k, _)| k.ends_with(new.id().as_str())),
        "the new key's record is there"
    );
}

#[test]
fn a_flush_loses_every_key() {
    let memory = MemoryValkey::start().unwrap();
    let mut conn = redis::Client::open(memory.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    memory.flush();
    let size: i64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(size, 0);
}
