//! Several Mixdown nodes sharing rooms through one Redis (`[cluster]`). Each node keeps an
//! entry in a directory (its address and load, expiring `claim_ttl_s` after its last
//! heartbeat), and each room is claimed by exactly one node with an expiring key its owner
//! renews. A node asked for a room another live node owns redirects there; a room nobody owns
//! is claimed atomically (`SET … NX`), by default on the least-loaded live node. When a node
//! dies its entry and claims lapse within `claim_ttl_s`, and the next join anywhere claims the
//! room afresh.
//!
//! Redis trouble never stops a call: every Redis command has a one-second limit, a node that
//! cannot reach Redis serves the rooms it has and opens new ones locally, and its heartbeat
//! claims them when Redis is back. The outage is logged once when it starts and once when it
//! ends.
//!
//! Keys (`mixdown:` prefix): `node:{id}` → the node's JSON entry (expiring), `room:{room}` →
//! the owner's id (expiring), `outputs:{room}` → the room's running recordings as its owner
//! last saw them, `failed:{room}` → recordings of a node that died, as the node that took the
//! room over lists them (`failed`, kept a day).

use crate::config::ClusterConfig;
use redis::aio::ConnectionManager;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one Redis command (or connecting) may take before the node carries on without.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
const NODE_PREFIX: &str = "mixdown:node:";
const ROOM_PREFIX: &str = "mixdown:room:";
const OUTPUTS_PREFIX: &str = "mixdown:outputs:";
const FAILED_PREFIX: &str = "mixdown:failed:";
/// How long the recordings of a dead node stay listed.
const FAILED_KEPT_S: u64 = 24 * 3600;

/// Renews `KEYS[1]` for `ARGV[1]` (ms `ARGV[2]`) if it is ours or free; else returns the owner.
const RENEW: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return owner
"#;
/// Deletes `KEYS[1]` only while `ARGV[1]` owns it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;
/// Takes `KEYS[1]` over from `ARGV[2]` (whose directory entry `KEYS[2]` has lapsed) for
/// `ARGV[1]`; returns the owner afterwards.
const TAKE_OVER: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner == false or (owner == ARGV[2] and redis.call('EXISTS', KEYS[2]) == 0) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return ARGV[1]
end
return owner
"#;

/// A node as the directory lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub url: String,
    pub rooms: usize,
    pub participants: usize,
    /// CPU the process used over the last heartbeat, in cores.
    #[serde(default)]
    pub cpu: f64,
    /// Participants it may still take before `limits.max_rooms` × `room.max_participants`.
    pub free: usize,
}

/// Where a room is served.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Here: this node owns it (or Redis cannot be asked, and it is served locally).
    Local,
    /// On another live node, at this base URL.
    Remote { node: String, url: String },
}

/// A room of the cluster and the node serving it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterRoom {
    pub room: String,
    pub node: String,
    pub url: String,
}

/// This node's handle on the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    url: String,
    ttl: Duration,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// Redis was unreachable at the last attempt (logged once per outage).
    down: AtomicBool,
}

/// The least-loaded of `nodes`: fewest participants, then fewest rooms, then id. Pure.
pub fn least_loaded(nodes: &[NodeInfo]) -> Option<&NodeInfo> {
    nodes
        .iter()
        .filter(|n| n.free > 0)
        .min_by(|a, b| (a.participants, a.rooms, &a.id).cmp(&(b.participants, b.rooms, &b.id)))
}

impl Cluster {
    /// `None` when `[cluster] redis_url` is empty. Connecting happens on first use (a node
    /// starts whether Redis is up or not).
    pub fn new(config: &ClusterConfig) -> anyhow::Result<Option<Self>> {
        if config.redis_url.is_empty() {
            return Ok(None);
        }
        let client = redis::Client::open(config.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("cluster.redis_url: {e}"))?;
        let url = config.node_url.trim_end_matches('/').to_owned();
        let id = if config.node_id.is_empty() {
            url.clone()
        } else {
            config.node_id.clone()
        };
        Ok(Some(Self {
            inner: Arc::new(Inner {
                id,
                url,
                ttl: Duration::from_secs(config.claim_ttl_s.into()),
                client,
                conn: tokio::sync::Mutex::new(None),
                down: AtomicBool::new(false),
            }),
        }))
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Whether the last Redis command succeeded.
    pub fn redis_up(&self) -> bool {
        !self.inner.down.load(Ordering::Relaxed)
    }

    /// A connection, made on first use; `None` while Redis cannot be reached.
    async fn conn(&self) -> Option<ConnectionManager> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let made = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            self.inner.client.get_connection_manager_with_config(config),
        )
        .await;
        match made {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("connecting timed out");
                None
            }
        }
    }

    /// Logs the start of an outage once.
    fn failed(&self, why: &str) {
        if !self.inner.down.swap(true, Ordering::Relaxed) {
            tracing::error!(node = %self.inner.id, "cluster: Redis unreachable ({why}); serving rooms locally until it is back");
        }
    }

    fn ok(&self) {
        if self.inner.down.swap(false, Ordering::Relaxed) {
            tracing::info!(node = %self.inner.id, "cluster: Redis reachable again");
        }
    }

    /// Runs one command with the time limit; `None` (outage logged) when it fails.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let mut c = self.conn().await?;
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => {
                self.ok();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("a command timed out");
                None
            }
        }
    }

    async fn script(&self, script: &str, keys: &[&str], args: &[String]) -> Option<String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(a);
        }
        self.run::<Option<String>>(&cmd).await.flatten()
    }

    fn ttl_ms(&self) -> String {
        self.inner.ttl.as_millis().to_string()
    }

    /// Connects now (from the runtime that should own the connection's task).
    pub async fn warm_up(&self) {
        let _ = self.conn().await;
    }

    /// Gives up the claim on `room` (closed here), and its outputs' record.
    async fn release(&self, room: &str) {
        let key = format!("{ROOM_PREFIX}{room}");
        if self
            .script(RELEASE, &[&key], std::slice::from_ref(&self.inner.id))
            .await
            .is_some()
        {
            let _ = self
                .run::<()>(redis::cmd("DEL").arg(format!("{OUTPUTS_PREFIX}{room}")))
                .await;
        }
    }

    /// Leaves the cluster: this node's entry and its rooms' claims go at once.
    pub async fn leave(&self, rooms: &[String]) {
        for room in rooms {
            self.release(room).await;
        }
        let _ = self
            .run::<()>(redis::cmd("DEL").arg(format!("{NODE_PREFIX}{}", self.inner.id)))
            .await;
        tracing::info!(node = %self.inner.id, "cluster: left");
    }

    /// The live nodes of the directory (this one included once it has beaten).
    pub async fn nodes(&self) -> Option<Vec<NodeInfo>> {
        let keys: Vec<String> = self.scan(&format!("{NODE_PREFIX}*")).await?;
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let values: Vec<Option<String>> = self.run(redis::cmd("MGET").arg(&keys)).await?;
        Some(
            values
                .into_iter()
                .flatten()
                .filter_map(|v| serde_json::from_str(&v).ok())
                .collect(),
        )
    }

    async fn scan(&self, pattern: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(500),
                )
                .await?;
            out.extend(keys);
            if next == 0 {
                return Some(out);
            }
            cursor = next;
        }
    }

    async fn node(&self, id: &str) -> Option<Option<NodeInfo>> {
        let v: Option<String> = self
            .run(redis::cmd("GET").arg(format!("{NODE_PREFIX}{id}")))
            .await?;
        Some(v.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Where `room` is served; claims it for this node when that is where it goes. `placed`:
    /// the request was already sent here by another node's placement (go by the claim, do not
    /// place again). `local`: this node serves the room already.
    pub async fn place(&self, room: &str, placed: bool, local: bool) -> Placement {
        let key = format!("{ROOM_PREFIX}{room}");
        let Some(owner) = self
            .run::<Option<String>>(redis::cmd("GET").arg(&key))
            .await
        else {
            return Placement::Local; // Redis down: serve it here
        };
        if let Some(owner) = owner {
            if owner == self.inner.id {
                return Placement::Local;
            }
            match self.node(&owner).await {
                Some(Some(n)) => {
                    return Placement::Remote {
                        node: n.id,
                        url: n.url,
                    };
                }
                None => return Placement::Local,
                // The owner's entry lapsed: it is dead, its claim is ours to take.
                Some(None) => {
                    let node_key = format!("{NODE_PREFIX}{owner}");
                    let args = [self.inner.id.clone(), owner.clone(), self.ttl_ms()];
                    return match self.script(TAKE_OVER, &[&key, &node_key], &args).await {
                        Some(now) if now != self.inner.id => self.remote_of(&now).await,
                        _ => {
                            tracing::info!(node = %self.inner.id, %room, dead = %owner, "cluster: room taken over from a node that stopped");
                            self.fail_outputs(room).await;
                            Placement::Local
                        }
                    };
                }
            }
        }
        // Nobody owns it: place it (unless placed already, or this node has it).
        if !placed
            && !local
            && let Some(nodes) = self.nodes().await
            && let Some(best) = least_loaded(&nodes)
            && best.id != self.inner.id
        {
            return Placement::Remote {
                node: best.id.clone(),
                url: best.url.clone(),
            };
        }
        let claimed: Option<Option<String>> = self
            .run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&self.inner.id)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.ttl_ms()),
            )
            .await;
        match claimed {
            // A room its last owner never released: that node died with it.
            Some(Some(_)) => {
                self.fail_outputs(room).await;
                Placement::Local
            }
            None => Placement::Local,
            // Another node claimed it first: it serves the room.
            Some(None) => {
                let owner: Option<String> = self.run(redis::cmd("GET").arg(&key)).await.flatten();
                match owner {
                    Some(o) if o != self.inner.id => self.remote_of(&o).await,
                    _ => Placement::Local,
                }
            }
        }
    }

    /// The recordings that were running on the room's last owner when it stopped (it never
    /// released the room), listed from now on as failed with the reason. Their files are as
    /// the crash left them: WebM and fragmented MP4 stay playable.
    async fn fail_outputs(&self, room: &str) {
        let key = format!("{OUTPUTS_PREFIX}{room}");
        let Some(Some(text)) = self
            .run::<Option<String>>(redis::cmd("GET").arg(&key))
            .await
        else {
            return;
        };
        let record: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let dead = record["node"].as_str().unwrap_or("?").to_owned();
        if dead == self.inner.id {
            return;
        }
        let list = record["recordings"].as_array().cloned().unwrap_or_default();
        let failed = format!("{FAILED_PREFIX}{room}");
        for mut r in list {
            r["state"] = "failed".into();
            r["error"] =
                format!("the node that recorded it ({dead}) stopped; the file is as it left it")
                    .into();
            let _ = self
                .run::<()>(redis::cmd("RPUSH").arg(&failed).arg(r.to_string()))
                .await;
        }
        let _ = self
            .run::<()>(redis::cmd("EXPIRE").arg(&failed).arg(FAILED_KEPT_S))
            .await;
        let _ = self.run::<()>(redis::cmd("DEL").arg(&key)).await;
    }

    /// Recordings of `room` that failed with a node that died (JSON, as the API lists them).
    pub async fn failed_recordings(&self, room: &str) -> Vec<serde_json::Value> {
        let items: Vec<String> = self
            .run(
                redis::cmd("LRANGE")
                    .arg(format!("{FAILED_PREFIX}{room}"))
                    .arg(0)
                    .arg(-1),
            )
            .await
            .unwrap_or_default();
        items
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect()
    }

    async fn remote_of(&self, id: &str) -> Placement {
        match self.node(id).await {
            Some(Some(n)) => Placement::Remote {
                node: n.id,
                url: n.url,
            },
            _ => Placement::Local,
        }
    }

    /// The live node serving `room`, when it is another node (for redirects of requests about
    /// a room that is not here).
    pub async fn owner_elsewhere(&self, room: &str) -> Option<NodeInfo> {
        let owner: String = self
            .run::<Option<String>>(redis::cmd("GET").arg(format!("{ROOM_PREFIX}{room}")))
            .await
            .flatten()?;
        if owner == self.inner.id {
            return None;
        }
        self.node(&owner).await.flatten()
    }

    /// Every claimed room of the cluster with its node (`None` while Redis is down).
    pub async fn rooms(&self) -> Option<Vec<ClusterRoom>> {
        let keys = self.scan(&format!("{ROOM_PREFIX}*")).await?;
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let owners: Vec<Option<String>> = self.run(redis::cmd("MGET").arg(&keys)).await?;
        let nodes = self.nodes().await.unwrap_or_default();
        let mut out: Vec<ClusterRoom> = keys
            .iter()
            .zip(owners)
            .filter_map(|(k, o)| {
                let o = o?;
                let n = nodes.iter().find(|n| n.id == o)?;
                Some(ClusterRoom {
                    room: k.strip_prefix(ROOM_PREFIX)?.to_owned(),
                    node: o,
                    url: n.url.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.room.cmp(&b.room));
        Some(out)
    }

    /// One heartbeat: this node's directory entry, its rooms' claims renewed (or made, after
    /// an outage), and the claims of rooms it no longer serves released. Returns the rooms
    /// another live node owns while this node serves them too (after a Redis outage both may
    /// have opened one).
    pub async fn beat(
        &self,
        mut info: NodeInfo,
        rooms: &[(String, String)],
        released: &[String],
    ) -> Vec<String> {
        info.id = self.inner.id.clone();
        info.url = self.inner.url.clone();
        let entry = serde_json::to_string(&info).unwrap_or_default();
        let set = self
            .run::<()>(
                redis::cmd("SET")
                    .arg(format!("{NODE_PREFIX}{}", self.inner.id))
                    .arg(entry)
                    .arg("PX")
                    .arg(self.ttl_ms()),
            )
            .await;
        if set.is_none() {
            return Vec::new();
        }
        let mut conflicts = Vec::new();
        for (room, outputs) in rooms {
            let key = format!("{ROOM_PREFIX}{room}");
            let args = [self.inner.id.clone(), self.ttl_ms()];
            match self.script(RENEW, &[&key], &args).await {
                Some(owner) if owner == self.inner.id => {
                    let record = format!(
                        "{{\"node\":{},\"recordings\":{outputs}}}",
                        serde_json::Value::from(self.inner.id.clone())
                    );
                    let _ = self
                        .run::<()>(
                            redis::cmd("SET")
                                .arg(format!("{OUTPUTS_PREFIX}{room}"))
                                .arg(record),
                        )
                        .await;
                }
                Some(owner) if matches!(self.node(&owner).await, Some(Some(_))) => {
                    conflicts.push(room.clone());
                }
                _ => {}
            }
        }
        for room in released {
            self.release(room).await;
        }
        conflicts
    }

    /// Beats every third of `claim_ttl_s` until the process ends: `load` tells this node's
    /// load, and its rooms each with its running recordings (JSON).
    pub fn spawn_heartbeat<F, Fut>(&self, load: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (NodeInfo, Vec<(String, String)>)> + Send,
    {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(cluster.inner.ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut claimed: HashSet<String> = HashSet::new();
            let mut warned: HashSet<String> = HashSet::new();
            loop {
                tick.tick().await;
                let (info, rooms) = load().await;
                let now: HashSet<String> = rooms.iter().map(|(r, _)| r.clone()).collect();
                let released: Vec<String> = claimed.difference(&now).cloned().collect();
                let conflicts = cluster.beat(info, &rooms, &released).await;
                if !cluster.inner.down.load(Ordering::Relaxed) {
                    claimed = now;
                }
                for room in conflicts {
                    if warned.insert(room.clone()) {
                        tracing::warn!(node = %cluster.inner.id, %room, "cluster: another live node owns this room too (both opened it while Redis was away); new joins go there, this copy ends when its participants leave");
                    }
                }
            }
        })
    }
}

/// The WebSocket URL of a node's base URL (`http://h:p` → `ws://h:p/ws`).
pub fn ws_url(base: &str) -> String {
    let rest = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| base.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .unwrap_or_else(|| base.to_owned());
    format!("{}/ws", rest.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, participants: usize, rooms: usize, free: usize) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            url: format!("http://{id}"),
            rooms,
            participants,
            cpu: 0.0,
            free,
        }
    }

    #[test]
    fn the_least_loaded_node_with_room_to_spare_is_chosen() {
        let nodes = [
            node("a", 5, 1, 10),
            node("b", 2, 3, 10),
            node("c", 2, 1, 10),
        ];
        assert_eq!(least_loaded(&nodes).unwrap().id, "c");
        let full = [node("a", 5, 1, 10), node("c", 0, 0, 0)];
        assert_eq!(
            least_loaded(&full).unwrap().id,
            "a",
            "a full node is skipped"
        );
        assert!(least_loaded(&[]).is_none());
        let ties = [node("b", 1, 1, 1), node("a", 1, 1, 1)];
        assert_eq!(least_loaded(&ties).unwrap().id, "a");
    }

    #[test]
    fn websocket_urls_follow_the_scheme() {
        assert_eq!(ws_url("http://10.0.0.5:8080"), "ws://10.0.0.5:8080/ws");
        assert_eq!(ws_url("https://a.example/"), "wss://a.example/ws");
    }
}
