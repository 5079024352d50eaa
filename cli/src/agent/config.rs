//! The agent's configuration: a TOML file (every field has a default; see
//! `contrib/agent.toml`), then `CACHECAST_*` environment variables on top,
//! then checks that name the field and the problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cachecast::keys::KeyFile;
use cachecast::net::socket::InterfaceSpec;
use cachecast::{AuthMode, NodeConfig, PeerSpec, Transport, DEFAULT_GROUP};
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub auth: AuthSection,
    pub http: HttpSection,
    pub sse: SseSection,
    #[serde(rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookConfig>,
    pub apply: ApplySection,
    pub bridge: BridgeSection,
}

/// `[node]`: where the cluster is, as for every command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Multicast group and port (IPv4 or IPv6).
    pub group: SocketAddr,
    /// Interface name or address, or "default".
    pub interface: String,
    pub cluster: String,
    /// 1 stays on the LAN, 0 on this host.
    pub ttl: u32,
    /// Empty: agent-<pid>.
    pub name: String,
    /// Deliveries the agent may fall behind its node by before a Reset.
    pub queue: usize,
    /// "multicast" (to `group`), "unicast" (to each of `peers`: where
    /// multicast does not work) or "both".
    pub transport: String,
    /// Unicast peers: "IP:PORT", "[IPv6]:PORT" or "NAME:PORT" (resolved
    /// again every 15 s: a Kubernetes headless service).
    pub peers: Vec<String>,
    /// Where a unicast node receives; empty: every address, on the group's
    /// port.
    pub listen: String,
    /// Multicast: a repair one node asked for goes to it alone (to a port
    /// of its own); false where a host firewall lets only the group's
    /// port in.
    pub direct_repairs: bool,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            group: DEFAULT_GROUP,
            interface: "default".into(),
            cluster: "default".into(),
            ttl: 1,
            name: String::new(),
            queue: 65536,
            transport: "multicast".into(),
            peers: Vec::new(),
            listen: String::new(),
            direct_repairs: true,
        }
    }
}

/// `[bridge]`: carry the cluster's events to and from other sites through
/// NATS JetStream (`cachecast bridge --help`). Off while `nats` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeSection {
    /// NATS server(s) with JetStream: "nats://HOST:4222", several
    /// separated by commas.
    pub nats: String,
    /// This site's name: letters, digits, '-' and '_'.
    pub site: String,
    /// How long JetStream keeps events (when a bridge creates the stream).
    #[serde(with = "humantime_serde_compat")]
    pub retention: Duration,
    /// A standby bridge of this site takes over this long after the active
    /// one stopped renewing its lease.
    #[serde(with = "humantime_serde_compat")]
    pub lease: Duration,
    /// Where the bridge's own node receives with transport = "unicast"
    /// (it needs a port of its own beside the agent's); list it among the
    /// other nodes' peers.
    pub listen: String,
}

impl Default for BridgeSection {
    fn default() -> Self {
        BridgeSection {
            nats: String::new(),
            site: String::new(),
            retention: Duration::from_secs(3600),
            lease: Duration::from_secs(3),
            listen: String::new(),
        }
    }
}

/// `[auth]`: the cluster's keys (`cachecast keygen --help`). Without a
/// key file, no keys (datagrams are not authenticated).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// The key file (mode 0600; its first key sends, every key is
    /// accepted); empty: none. Reloaded on SIGHUP and POST /v1/keys/reload.
    pub key_file: String,
    /// "off", "accept" (send authenticated, also take unauthenticated
    /// datagrams: the roll-out step) or "require"; empty: "require" with a
    /// key file, else "off".
    pub mode: String,
    /// Encrypt the bodies too (every node must hold the key).
    pub encrypt: bool,
}

impl AuthSection {
    /// The mode as written (empty: `None`, the default); checked by
    /// [`Config::check`].
    fn parsed_mode(&self) -> Result<Option<AuthMode>, String> {
        match self.mode.as_str() {
            "" => Ok(None),
            "encrypt" => Err("\"encrypt\" is not a mode: keep mode = \"require\" (or \
                 \"accept\") and set encrypt = true"
                .into()),
            m => m.parse().map(Some),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub listen: SocketAddr,
    /// Bearer token; required when `listen` is not a loopback address.
    pub token: String,
    /// Largest request body, in bytes (413 above).
    pub max_body: usize,
    /// Most keys in one request, all events together (400 above).
    pub max_keys: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:7468".parse().expect("valid"),
            token: String::new(),
            max_body: 1 << 20,
            max_keys: 10_000,
        }
    }
}

/// `[sse]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseSection {
    /// Deliveries kept for clients that reconnect with Last-Event-ID (and
    /// how far a client may fall behind before it gets a reset).
    pub buffer: usize,
    #[serde(with = "humantime_serde_compat")]
    pub keepalive: Duration,
    /// The `retry:` hint to clients.
    #[serde(with = "humantime_serde_compat")]
    pub retry: Duration,
}

impl Default for SseSection {
    fn default() -> Self {
        SseSection {
            buffer: 65536,
            keepalive: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// One `[[webhook]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// http:// URL the batches are POSTed to.
    pub url: String,
    /// Most deliveries in one POST.
    pub batch: usize,
    /// Time limit of one POST.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Tries of one batch before it is given up (and replaced by a reset).
    pub retries: u32,
    /// First back-off; doubles up to `backoff_max`.
    #[serde(with = "humantime_serde_compat")]
    pub backoff: Duration,
    /// Longest back-off between two tries.
    #[serde(with = "humantime_serde_compat")]
    pub backoff_max: Duration,
    /// Begin with a `reset` (reason `agent_started`) at agent start: the
    /// agent was not posting while it was down.
    pub reset_on_start: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            batch: 100,
            timeout: Duration::from_secs(5),
            retries: 5,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            reset_on_start: true,
        }
    }
}

/// `[apply]`: the host's cache servers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApplySection {
    pub redis: Vec<RedisConfig>,
    pub memcached: Vec<MemcachedConfig>,
}

/// How a Redis applier clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    /// FLUSHDB ASYNC.
    Db,
    /// SCAN + UNLINK of `key_prefix*`.
    Prefix,
}

/// One `[[apply.redis]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Prepended to every key (as ASP.NET's InstanceName).
    pub key_prefix: String,
    pub flush: Flush,
    /// Flush once when the agent starts (it was not listening while down).
    pub flush_on_start: bool,
    /// Keys per UNLINK and per SCAN batch.
    pub batch: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            key_prefix: String::new(),
            flush: Flush::Db,
            flush_on_start: true,
            batch: 500,
        }
    }
}

/// One `[[apply.memcached]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemcachedConfig {
    /// `memcache://HOST:PORT` or `HOST:PORT`.
    pub url: String,
    /// Prepended to every key.
    pub key_prefix: String,
    pub flush_on_start: bool,
}

impl Default for MemcachedConfig {
    fn default() -> Self {
        MemcachedConfig {
            url: String::new(),
            key_prefix: String::new(),
            flush_on_start: true,
        }
    }
}

/// Durations as "500ms", "15s", "1m" in the file.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("{e} (write e.g. 500ms, 2s, 1m)")))
    }
}

/// Environment variables that override the file: each names one scalar
/// field. `CACHECAST_GROUP` and the other network names are the same as
/// every command's flags' variables.
pub const ENV: &[(&str, &str, &str)] = &[
    ("CACHECAST_GROUP", "node", "group"),
    ("CACHECAST_INTERFACE", "node", "interface"),
    ("CACHECAST_CLUSTER", "node", "cluster"),
    ("CACHECAST_TTL", "node", "ttl"),
    ("CACHECAST_NAME", "node", "name"),
    ("CACHECAST_NODE_QUEUE", "node", "queue"),
    ("CACHECAST_TRANSPORT", "node", "transport"),
    ("CACHECAST_PEERS", "node", "peers"),
    ("CACHECAST_LISTEN", "node", "listen"),
    ("CACHECAST_DIRECT_REPAIRS", "node", "direct_repairs"),
    ("CACHECAST_KEY_FILE", "auth", "key_file"),
    ("CACHECAST_AUTH", "auth", "mode"),
    ("CACHECAST_ENCRYPT", "auth", "encrypt"),
    ("CACHECAST_HTTP_LISTEN", "http", "listen"),
    ("CACHECAST_HTTP_TOKEN", "http", "token"),
    ("CACHECAST_HTTP_MAX_BODY", "http", "max_body"),
    ("CACHECAST_HTTP_MAX_KEYS", "http", "max_keys"),
    ("CACHECAST_SSE_BUFFER", "sse", "buffer"),
    ("CACHECAST_SSE_KEEPALIVE", "sse", "keepalive"),
    ("CACHECAST_SSE_RETRY", "sse", "retry"),
    ("CACHECAST_NATS", "bridge", "nats"),
    ("CACHECAST_SITE", "bridge", "site"),
];

/// The fields of [`ENV`] that are integers.
const INTEGER_FIELDS: &[&str] = &["ttl", "queue", "max_body", "max_keys", "buffer"];

/// The fields of [`ENV`] that are booleans: true/false, 1/0, yes/no,
/// on/off (as the command line's flags read the same variables).
const BOOL_FIELDS: &[&str] = &["encrypt", "direct_repairs"];

/// The fields of [`ENV`] that are lists: comma-separated in the variable
/// (as the command line's `--peer` reads it).
const LIST_FIELDS: &[&str] = &["peers"];

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Largest config file read (a config is a few KiB).
const MAX_FILE: u64 = 1 << 20;

impl Config {
    /// Reads `path` (or the defaults, when `None`), applies `env`
    /// (name, value) overrides, and checks the result. The error names the
    /// field and the problem.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, String> {
        let text = match path {
            Some(p) => read_file(p)?,
            None => String::new(),
        };
        let origin = path.map_or("defaults".to_owned(), |p| p.display().to_string());
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| format!("{origin}: {e}"))?;
        // Checked as written first, so that an error points at its line.
        let _: Config = toml::from_str(&text).map_err(|e| format!("{origin}: {e}"))?;
        let mut overridden = Vec::new();
        for (name, value) in env {
            let Some((_, section, field)) = ENV.iter().find(|(n, _, _)| *n == name) else {
                continue;
            };
            // An empty boolean is unset, as the command line reads its
            // variables (`CACHECAST_DIRECT_REPAIRS=` keeps the default).
            if BOOL_FIELDS.contains(field) && value.trim().is_empty() {
                continue;
            }
            let sect = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            let toml::Value::Table(sect) = sect else {
                return Err(format!("{origin}: `{section}` must be a table"));
            };
            // Integer fields get an integer (or the string, for serde to
            // refuse with the field's name); every other field a string,
            // digits or not (a token, a cluster named 2024).
            let v = match (INTEGER_FIELDS.contains(field), value.parse::<i64>()) {
                (true, Ok(n)) => toml::Value::Integer(n),
                _ if LIST_FIELDS.contains(field) => toml::Value::Array(
                    (value.split(','))
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_owned()))
                        .collect(),
                ),
                _ => match (BOOL_FIELDS.contains(field), parse_bool(&value)) {
                    (true, Some(b)) => toml::Value::Boolean(b),
                    _ => toml::Value::String(value.clone()),
                },
            };
            sect.insert(field.to_string(), v);
            overridden.push(format!("{name} ({section}.{field})"));
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    format!(
                        "{origin} with {}: {}",
                        overridden.join(", "),
                        e.message().trim()
                    )
                })?;
        config.check()?;
        Ok(config)
    }

    /// The checks serde cannot make.
    pub fn check(&self) -> Result<(), String> {
        let e = |field: &str, problem: String| Err(format!("{field}: {problem}"));
        if !self.node.group.ip().is_multicast() {
            return e(
                "node.group",
                format!("{} is not a multicast address", self.node.group.ip()),
            );
        }
        if self.node.ttl > 255 {
            return e("node.ttl", "at most 255".into());
        }
        if self.node.interface.trim().is_empty() {
            return e(
                "node.interface",
                "empty: give a name, an address, or \"default\"".into(),
            );
        }
        if let Err(err) = self.node.interface.parse::<InterfaceSpec>() {
            return e("node.interface", err.to_string());
        }
        if self.node.cluster.is_empty() {
            return e("node.cluster", "empty".into());
        }
        if self.node.name.len() > 64 {
            return e("node.name", "longer than 64 bytes".into());
        }
        let transport = match self.node.transport.parse::<Transport>() {
            Ok(t) => t,
            Err(err) => return e("node.transport", err),
        };
        for (i, p) in self.node.peers.iter().enumerate() {
            if let Err(err) = p.parse::<PeerSpec>() {
                return e(&format!("node.peers[{i}]"), err);
            }
        }
        if self.node.peers.len() > 1024 {
            return e("node.peers", "at most 1024".into());
        }
        match (transport, self.node.peers.is_empty()) {
            (Transport::Multicast, false) => {
                return e(
                    "node.peers",
                    "sent to only with transport = \"unicast\" or \"both\"".into(),
                )
            }
            (Transport::Unicast | Transport::Both, true) => {
                return e(
                    "node.peers",
                    format!("transport = \"{transport}\" needs peers (IP:PORT or NAME:PORT)"),
                )
            }
            _ => {}
        }
        if !self.node.listen.is_empty() {
            if let Err(err) = self.node.listen.parse::<SocketAddr>() {
                return e("node.listen", format!("{err} (write IP:PORT)"));
            }
            if transport != Transport::Unicast {
                return e(
                    "node.listen",
                    "only with transport = \"unicast\" (the others receive on the group's port)"
                        .into(),
                );
            }
        }
        if self.node.queue < 1024 {
            return e("node.queue", "at least 1024".into());
        }
        let mode = match self.auth.parsed_mode() {
            Ok(m) => m,
            Err(err) => return e("auth.mode", err),
        };
        if self.auth.key_file.is_empty() {
            if let Some(m @ (AuthMode::Accept | AuthMode::Require)) = mode {
                return e(
                    "auth.mode",
                    format!(
                        "\"{m}\" needs auth.key_file (`cachecast keygen PATH` writes a key file)"
                    ),
                );
            }
            if self.auth.encrypt {
                return e(
                    "auth.encrypt",
                    "needs auth.key_file (`cachecast keygen PATH` writes a key file)".into(),
                );
            }
        } else {
            if self.auth.encrypt && mode == Some(AuthMode::Off) {
                return e(
                    "auth.encrypt",
                    "with mode = \"off\" nothing would be encrypted (use \"require\")".into(),
                );
            }
            if let Err(err) = KeyFile::load(Path::new(&self.auth.key_file)) {
                return e("auth.key_file", err.to_string());
            }
        }
        if !self.http.listen.ip().is_loopback() && self.http.token.is_empty() {
            return e(
                "http.token",
                format!(
                    "required when http.listen ({}) is not a loopback address",
                    self.http.listen
                ),
            );
        }
        if !self.http.token.is_empty() && self.http.token.len() < 16 {
            return e("http.token", "shorter than 16 characters".into());
        }
        if !(1024..=64 << 20).contains(&self.http.max_body) {
            return e("http.max_body", "between 1024 and 67108864 bytes".into());
        }
        if !(1..=1_000_000).contains(&self.http.max_keys) {
            return e("http.max_keys", "between 1 and 1000000".into());
        }
        if !(16..=16 << 20).contains(&self.sse.buffer) {
            return e("sse.buffer", "between 16 and 16777216".into());
        }
        if self.sse.keepalive < Duration::from_secs(1) {
            return e("sse.keepalive", "at least 1s".into());
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let f = |name: &str| format!("webhook[{i}].{name}");
            match reqwest::Url::parse(&w.url) {
                Ok(u) if u.scheme() == "http" => {}
                Ok(u) => {
                    return e(
                        &f("url"),
                        format!(
                            "scheme {}: only http (this build has no TLS; webhooks are for \
                             applications on this host)",
                            u.scheme()
                        ),
                    )
                }
                Err(err) => return e(&f("url"), format!("{err}: {:?}", w.url)),
            }
            if !(1..=10_000).contains(&w.batch) {
                return e(&f("batch"), "between 1 and 10000".into());
            }
            if w.backoff.is_zero() || w.backoff > w.backoff_max {
                return e(&f("backoff"), "above zero and at most backoff_max".into());
            }
            if w.timeout.is_zero() {
                return e(&f("timeout"), "above zero".into());
            }
        }
        for (i, r) in self.apply.redis.iter().enumerate() {
            let f = |name: &str| format!("apply.redis[{i}].{name}");
            if let Err(err) = redis::Client::open(r.url.as_str()) {
                return e(&f("url"), format!("{err}: {:?}", r.url));
            }
            if r.flush == Flush::Prefix && r.key_prefix.is_empty() {
                return e(&f("flush"), "\"prefix\" needs a key_prefix".into());
            }
            if !(1..=100_000).contains(&r.batch) {
                return e(&f("batch"), "between 1 and 100000".into());
            }
        }
        for (i, m) in self.apply.memcached.iter().enumerate() {
            if memcached_addr(&m.url).is_none() {
                return e(
                    &format!("apply.memcached[{i}].url"),
                    format!(
                        "not memcache://HOST:PORT or HOST:PORT with an IPv4 address or name: {:?}",
                        m.url
                    ),
                );
            }
        }
        self.check_bridge()
    }

    fn check_bridge(&self) -> Result<(), String> {
        let e = |field: &str, problem: String| Err(format!("bridge.{field}: {problem}"));
        let b = &self.bridge;
        if b.nats.is_empty() {
            if !b.site.is_empty() || !b.listen.is_empty() {
                return e(
                    "nats",
                    "empty: the bridge is off, but site or listen is set".into(),
                );
            }
            return Ok(());
        }
        for url in b.nats.split(',') {
            let url = url.trim();
            let ok = ["nats://", "tls://"].iter().any(|scheme| {
                url.strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty())
            }) || (!url.is_empty() && !url.contains("://"));
            if !ok {
                return e("nats", format!("not nats://HOST:PORT: {url:?}"));
            }
        }
        if let Err(err) = crate::bridge::parse_token(&b.site) {
            return e("site", err);
        }
        if let Err(err) = crate::bridge::parse_token(&self.node.cluster) {
            return Err(format!(
                "node.cluster (the bridge names NATS subjects after it): {err}"
            ));
        }
        if b.retention < Duration::from_secs(1) {
            return e("retention", "at least 1s".into());
        }
        if b.lease < Duration::from_millis(500) || b.lease > Duration::from_secs(60) {
            return e("lease", "from 500ms to 1m".into());
        }
        if let Err(err) = crate::bridge::check_retention(b.retention, b.lease) {
            return e("retention", err.replace("--", ""));
        }
        let unicast = self.node.transport.parse::<Transport>() == Ok(Transport::Unicast);
        match (unicast, b.listen.is_empty()) {
            (true, true) => {
                return e(
                    "listen",
                    "needed with node.transport = \"unicast\": the bridge's node receives on a port of its own (IP:PORT)".into(),
                )
            }
            (false, false) => {
                return e("listen", "only with node.transport = \"unicast\"".into())
            }
            (true, false) => {
                if let Err(err) = b.listen.parse::<SocketAddr>() {
                    return e("listen", format!("{err} (write IP:PORT)"));
                }
            }
            (false, true) => {}
        }
        Ok(())
    }

    /// The bridge's configuration and its node's, when `[bridge]` is on.
    pub fn bridge(&self) -> Option<(crate::bridge::BridgeConfig, NodeConfig)> {
        if self.bridge.nats.is_empty() {
            return None;
        }
        let mut node = self.node_config();
        node.node_name = format!("{}-bridge", node.node_name);
        node.node_name.truncate(64);
        if let Ok(listen) = self.bridge.listen.parse() {
            node.listen = Some(listen);
        }
        Some((
            crate::bridge::BridgeConfig {
                nats: self.bridge.nats.clone(),
                site: self.bridge.site.clone(),
                retention: self.bridge.retention,
                lease: self.bridge.lease,
            },
            node,
        ))
    }

    /// The node's configuration.
    pub fn node_config(&self) -> NodeConfig {
        let interface = self
            .node
            .interface
            .parse()
            .unwrap_or(InterfaceSpec::Default);
        NodeConfig {
            group: self.node.group,
            interface,
            cluster: self.node.cluster.clone(),
            ttl: self.node.ttl,
            node_name: if self.node.name.is_empty() {
                format!("agent-{}", std::process::id())
            } else {
                self.node.name.clone()
            },
            subscriber_queue: self.node.queue,
            // Checked by `check`.
            transport: self.node.transport.parse().unwrap_or_default(),
            peers: (self.node.peers.iter())
                .filter_map(|p| p.parse().ok())
                .collect(),
            listen: self.node.listen.parse().ok(),
            direct_repairs: self.node.direct_repairs,
            key_file: (!self.auth.key_file.is_empty()).then(|| PathBuf::from(&self.auth.key_file)),
            // Checked by `check`.
            auth: self.auth.parsed_mode().ok().flatten(),
            encrypt: self.auth.encrypt,
            ..NodeConfig::default()
        }
    }

    /// The effective configuration as TOML, the token hidden.
    pub fn to_toml(&self) -> String {
        let mut c = self.clone();
        if !c.http.token.is_empty() {
            c.http.token = "(set)".into();
        }
        // user:password@ in a NATS URL.
        c.bridge.nats = (c.bridge.nats.split(','))
            .map(|u| match (u.find("://"), u.rfind('@')) {
                (Some(s), Some(at)) if at > s => format!("{}(set){}", &u[..s + 3], &u[at..]),
                _ => u.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// `memcache://HOST:PORT` or `HOST:PORT`, as "HOST:PORT".
pub fn memcached_addr(url: &str) -> Option<String> {
    let rest = url.strip_prefix("memcache://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    // The client connects over IPv4 (or a Unix socket) only.
    if host.is_empty()
        || host.contains(':')
        || host.starts_with('[')
        || port.parse::<u16>().ok()? == 0
    {
        return None;
    }
    Some(rest.to_owned())
}

fn read_file(p: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut text = String::new();
    f.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} bytes", p.display()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_section_is_checked_and_its_password_hidden() {
        let c = load(
            "[bridge]\nnats = \"nats://u:secret@127.0.0.1:4222\"\nsite = \"east\"\nlease = \"2s\"\n",
            &[],
        )
        .unwrap();
        let (b, node) = c.bridge().expect("on");
        assert_eq!((b.site.as_str(), b.lease), ("east", Duration::from_secs(2)));
        assert!(node.node_name.ends_with("-bridge"), "{}", node.node_name);
        let shown = c.to_toml();
        assert!(
            !shown.contains("secret") && shown.contains("nats://(set)@127.0.0.1:4222"),
            "{shown}"
        );
        assert!(load("", &[]).unwrap().bridge().is_none());
        let c = load(
            "",
            &[
                ("CACHECAST_NATS", "nats://127.0.0.1:1"),
                ("CACHECAST_SITE", "west"),
            ],
        )
        .unwrap();
        assert_eq!(c.bridge().unwrap().0.site, "west");
        for (text, field) in [
            ("[bridge]\nnats = \"nats://h:1\"\n", "bridge.site"),
            ("[bridge]\nnats = \"nats://h:1\"\nsite = \"a.b\"\n", "bridge.site"),
            ("[bridge]\nsite = \"a\"\n", "bridge.nats"),
            ("[bridge]\nnats = \"http://h:1\"\nsite = \"a\"\n", "bridge.nats"),
            ("[bridge]\nnats = \"nats://h:1\"\nsite = \"a\"\nlease = \"1h\"\n", "bridge.lease"),
            ("[node]\ncluster = \"a b\"\n[bridge]\nnats = \"nats://h:1\"\nsite = \"a\"\n", "node.cluster"),
            (
                "[node]\ntransport = \"unicast\"\npeers = [\"10.0.0.2:1\"]\n[bridge]\nnats = \"nats://h:1\"\nsite = \"a\"\n",
                "bridge.listen",
            ),
            ("[bridge]\nnats = \"nats://h:1\"\nsite = \"a\"\nlisten = \"127.0.0.1:1\"\n", "bridge.listen"),
        ] {
            let err = load(text, &[]).unwrap_err();
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let dir = std::env::temp_dir().join(format!("cc-agent-cfg-{}", rand::random::<u64>()));
        std::fs::write(&dir, text).unwrap();
        let r = Config::load(
            Some(&dir),
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
        );
        let _ = std::fs::remove_file(&dir);
        r
    }

    #[test]
    fn defaults_and_env_overrides() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:7468");
        assert_eq!(c.node.ttl, 1);
        let c = load(
            "[node]\nttl = 0\n",
            &[
                ("CACHECAST_TTL", "3"),
                ("CACHECAST_CLUSTER", "shop"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!((c.node.ttl, c.node.cluster.as_str()), (3, "shop"));
    }

    #[test]
    fn errors_name_the_field() {
        let err = load("[node]\ngrup = \"x\"\n", &[]).unwrap_err();
        assert!(err.contains("grup"), "{err}");
        let err = load("[node]\nttl = \"x\"\n", &[]).unwrap_err();
        assert!(err.contains("ttl") && err.contains("line 2"), "{err}");
        let err = load("[http]\nlisten = \"0.0.0.0:7468\"\n", &[]).unwrap_err();
        assert!(err.starts_with("http.token: required"), "{err}");
        let err = load("[[webhook]]\nurl = \"ftp://x\"\n", &[]).unwrap_err();
        assert!(err.starts_with("webhook[0].url"), "{err}");
        let err = load("[[webhook]]\nurl = \"https://x/\"\n", &[]).unwrap_err();
        assert!(
            err.starts_with("webhook[0].url") && err.contains("no TLS"),
            "{err}"
        );
        let err = load("[sse]\nkeepalive = \"soon\"\n", &[]).unwrap_err();
        assert!(err.contains("keepalive"), "{err}");
        let c = load(
            "",
            &[
                ("CACHECAST_CLUSTER", "2024"),
                ("CACHECAST_HTTP_TOKEN", "12345678901234567890"),
            ],
        )
        .unwrap();
        assert_eq!((c.node.cluster.as_str(), c.http.token.len()), ("2024", 20));
        let err = load("[node]\ngroup = \"10.0.0.1:7467\"\n", &[]).unwrap_err();
        assert!(err.starts_with("node.group"), "{err}");
        let err = load("[node]\nttl = 256\n", &[]).unwrap_err();
        assert!(err.starts_with("node.ttl"), "{err}");
        let err = load("[[apply.memcached]]\nurl = \"[::1]:11211\"\n", &[]).unwrap_err();
        assert!(err.starts_with("apply.memcached[0].url"), "{err}");
        let err = load("", &[("CACHECAST_TTL", "many")]).unwrap_err();
        assert!(
            err.contains("CACHECAST_TTL") && err.contains("ttl"),
            "{err}"
        );
        let err = load("[[apply.redis]]\nurl = \"nope\"\n", &[]).unwrap_err();
        assert!(err.starts_with("apply.redis[0].url"), "{err}");
        let err = load("[[apply.memcached]]\nurl = \"host\"\n", &[]).unwrap_err();
        assert!(err.starts_with("apply.memcached[0].url"), "{err}");
    }

    #[test]
    fn the_transport_and_peers_are_checked_and_reach_the_node() {
        let c = load(
            "[node]\ntransport = \"unicast\"\npeers = [\"10.0.0.2:7467\", \"cachecast.shop.svc:7467\"]\nlisten = \"0.0.0.0:7500\"\n",
            &[],
        )
        .unwrap();
        let n = c.node_config();
        assert_eq!(n.transport, Transport::Unicast);
        assert_eq!(n.peers.len(), 2);
        assert_eq!(n.listen, Some("0.0.0.0:7500".parse().unwrap()));
        // The environment: a comma-separated list.
        let c = load(
            "",
            &[
                ("CACHECAST_TRANSPORT", "both"),
                ("CACHECAST_PEERS", "10.0.0.2:7467, 10.0.0.3:7467"),
            ],
        )
        .unwrap();
        let n = c.node_config();
        assert_eq!((n.transport, n.peers.len()), (Transport::Both, 2));
        // Direct repairs: on by default, off by the file or the environment.
        assert!(load("", &[]).unwrap().node_config().direct_repairs);
        let off = load(
            "[node]
direct_repairs = false
",
            &[],
        )
        .unwrap();
        assert!(!off.node_config().direct_repairs);
        let off = load("", &[("CACHECAST_DIRECT_REPAIRS", "false")]).unwrap();
        assert!(!off.node_config().direct_repairs);
        // Empty: unset (the default stays), as on the command line.
        let empty = load("", &[("CACHECAST_DIRECT_REPAIRS", "")]).unwrap();
        assert!(empty.node_config().direct_repairs);
        let err = load("", &[("CACHECAST_DIRECT_REPAIRS", "maybe")]).unwrap_err();
        assert!(err.contains("CACHECAST_DIRECT_REPAIRS"), "{err}");
        for (text, field) in [
            ("[node]\ntransport = \"udp\"\n", "node.transport"),
            ("[node]\ntransport = \"unicast\"\n", "node.peers"),
            ("[node]\npeers = [\"10.0.0.2:7467\"]\n", "node.peers"),
            (
                "[node]\ntransport = \"unicast\"\npeers = [\"10.0.0.2\"]\n",
                "node.peers[0]",
            ),
            (
                "[node]\ntransport = \"both\"\npeers = [\"10.0.0.2:1\"]\nlisten = \"0.0.0.0:1\"\n",
                "node.listen",
            ),
            (
                "[node]\ntransport = \"unicast\"\npeers = [\"10.0.0.2:1\"]\nlisten = \"x\"\n",
                "node.listen",
            ),
        ] {
            let err = load(text, &[]).unwrap_err();
            assert!(err.starts_with(field), "{text}: {err}");
        }
    }

    #[test]
    fn the_example_file_is_the_defaults_and_valid() {
        let text = include_str!("../../../contrib/agent.toml");
        let c: Config = toml::from_str(text).unwrap();
        c.check().unwrap();
        let d = Config::default();
        assert_eq!(c.node.group, d.node.group);
        assert_eq!(c.http.listen, d.http.listen);
        assert_eq!(c.sse.buffer, d.sse.buffer);
        assert_eq!(
            (&c.node.transport, &c.node.peers, &c.node.listen),
            (&d.node.transport, &d.node.peers, &d.node.listen)
        );
        assert_eq!(c.node.direct_repairs, d.node.direct_repairs);
    }

    #[test]
    fn the_auth_section_names_its_problems_and_reaches_the_node() {
        use std::os::unix::fs::PermissionsExt;
        let key = std::env::temp_dir().join(format!("cc-agent-key-{}", rand::random::<u64>()));
        cachecast::keys::write_new(&key).unwrap();
        let k = key.display().to_string();
        let c = load(&format!("[auth]\nkey_file = \"{k}\"\n"), &[]).unwrap();
        let n = c.node_config();
        assert_eq!(n.key_file.as_deref(), Some(key.as_path()));
        assert_eq!((n.auth, n.encrypt), (None, false));
        let c = load(
            "",
            &[
                ("CACHECAST_KEY_FILE", k.as_str()),
                ("CACHECAST_AUTH", "accept"),
                ("CACHECAST_ENCRYPT", "1"),
            ],
        )
        .unwrap();
        let n = c.node_config();
        assert_eq!((n.auth, n.encrypt), (Some(AuthMode::Accept), true));
        assert!(c.to_toml().contains("[auth]"), "{}", c.to_toml());
        // Without keys: off.
        let n = load("", &[]).unwrap().node_config();
        assert_eq!((n.key_file, n.auth, n.encrypt), (None, None, false));
        for (text, want) in [
            (
                "[auth]\nmode = \"require\"\n".to_string(),
                "auth.mode: \"require\" needs auth.key_file",
            ),
            (
                "[auth]\nencrypt = true\n".into(),
                "auth.encrypt: needs auth.key_file",
            ),
            ("[auth]\nmode = \"encrypt\"\n".into(), "set encrypt = true"),
            (
                "[auth]\nmode = \"maybe\"\n".into(),
                "off, accept or require",
            ),
            ("[auth]\nkey = \"00\"\n".into(), "unknown field `key`"),
            (
                format!("[auth]\nkey_file = \"{k}\"\nmode = \"off\"\nencrypt = true\n"),
                "auth.encrypt",
            ),
            (
                "[auth]\nkey_file = \"/nonexistent/k\"\n".into(),
                "auth.key_file: key file /nonexistent/k",
            ),
        ] {
            let err = load(&text, &[]).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let err = load("", &[("CACHECAST_ENCRYPT", "perhaps")]).unwrap_err();
        assert!(err.contains("CACHECAST_ENCRYPT"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&format!("[auth]\nkey_file = \"{k}\"\n"), &[]).unwrap_err();
        assert!(
            err.starts_with("auth.key_file") && err.contains(&format!("chmod 600 {k}")),
            "{err}"
        );
        let _ = std::fs::remove_file(&key);
    }
}
