//! The `services` section: which processes to start, how to tell they are ready, and how to keep
//! them running. Field errors name their JSON path; cross-field rules (unique names, known
//! dependencies, no dependency cycle) are checked after parsing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use regex::Regex;
use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer};
use serde_json::Value;

use crate::config::{parse_section, Int};
use crate::error::{SidecarError, SidecarResult};

/// Milliseconds, up to one day.
pub type Millis = Int<0, 86_400_000>;
/// Megabytes.
pub type Megabytes = Int<0, { u64::MAX }>;
/// A TCP port.
pub type Port = Int<1, 65_535>;

/// The validated `services` section.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicesConfig {
    /// How many services may be loading (between spawn and ready) at once.
    pub max_concurrent_starts: Int<1, 64>,
    /// Free VRAM (MB) a GPU service must leave on its GPU on top of its own need.
    pub vram_headroom_mb: Megabytes,
    /// How long a GPU service waits for enough free VRAM before it fails with `VRAM_TIMEOUT`.
    pub vram_timeout_ms: Millis,
    /// JSON file that keeps each service's learned time-to-ready and peak VRAM between runs.
    pub state_file: Option<PathBuf>,
    /// Take a startup lease (see [`super::StartupLease`]) around each GPU service's model load.
    pub gpu_startup_lease: bool,
    /// After an eviction, how long the freed memory may take to show up in telemetry before the
    /// gate goes on waiting as usual.
    pub vram_recovery_ms: Millis,
    /// Host memory (MB) kept available on top of a starting service's `hostMemMb` (or its
    /// learned peak RSS) and the loads already on their way.
    pub host_mem_headroom_mb: Megabytes,
    /// How long a start waits for enough host memory (or for swap to stop growing) before it
    /// fails with `HOST_MEMORY_LOW`.
    pub host_mem_timeout_ms: Millis,
    /// Folders of the node's service manifests (`<folder>/<service>/service.json`), relative to
    /// the config file (`loadConfig`) or to the working directory (`new ServiceSupervisor`).
    /// Each manifest becomes a service named by its `id`; a `services` entry with that name
    /// overrides its fields. See the README, "The node's service manifests".
    pub manifests: Option<Vec<PathBuf>>,
    /// Manifest `type` to arbiter task type, over the defaults (asr: ASR, nmt: NMT, tts: TTS,
    /// semantic: SEMANTIC_REPAIR, phonetic: PHONETIC_CORRECTION, punctuation:
    /// PUNCTUATION_RESTORE; any other: OTHER).
    pub manifest_task_types: BTreeMap<String, String>,
    /// The managed services, in config order (the tie-break of the start order). With
    /// `manifests`, an entry named by a manifest's `id` holds only the fields it overrides.
    #[schemars(with = "Vec<ServiceEntry>")]
    pub services: Vec<ServiceSpec>,
    /// The JSON each service was read from (`from_json`), so an update can tell what changed.
    #[serde(skip)]
    #[schemars(skip)]
    pub sources: Vec<Value>,
}

/// A `services[]` entry: a whole service, or (with `manifests`) the fields that override a
/// manifest service's.
// Schema only: the validator takes whole specs, once `manifest::resolve_services_section` has
// merged the overrides.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)] // only its schema is used: never built
enum ServiceEntry {
    Service(ServiceSpec),
    ManifestOverride(ServiceOverride),
}

/// Schema only: a service entry's fields, all optional but `name`, and no `command`.
struct ServiceOverride;

impl JsonSchema for ServiceOverride {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ServiceOverride".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = ServiceSpec::json_schema(generator);
        schema.insert("required".into(), serde_json::json!(["name"]));
        // `gpu` merges field by field (`{ "vramMb": 3000 }` keeps the manifest's key): none required.
        let mut gpu = GpuNeed::json_schema(generator);
        gpu.remove("required");
        gpu.insert(
            "description".into(),
            "Merged onto the manifest service's `gpu` (`'auto'` for `device: gpu`); `null` removes it.".into(),
        );
        if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            properties.insert("gpu".into(), serde_json::json!({ "anyOf": [gpu, { "type": "null" }] }));
        }
        // An entry with `command` is a service of its own, checked as one.
        schema.insert("not".into(), serde_json::json!({ "required": ["command"] }));
        schema.insert(
            "description".into(),
            "Fields that override a manifest service's (`services.manifests`), named by the manifest's `id`: `gpu` (`vramMb`, `key`, `taskTypes`), `onDemand`, `readinessTimeoutMs`, `priority`, `restart`, ... as in a service entry. `null` removes a field.".into(),
        );
        schema
    }
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            max_concurrent_starts: Int(1),
            vram_headroom_mb: Int(512),
            vram_timeout_ms: Int(120_000),
            state_file: None,
            gpu_startup_lease: false,
            vram_recovery_ms: Int(5_000),
            host_mem_headroom_mb: Int(1_024),
            host_mem_timeout_ms: Int(120_000),
            manifests: None,
            manifest_task_types: BTreeMap::new(),
            services: Vec::new(),
            sources: Vec::new(),
        }
    }
}

/// One managed service.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Unique among the services; events and statuses carry it.
    pub name: String,
    /// The program to run (looked up on `PATH` when it has no slash).
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Working directory; the host's when absent.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Added to (and overriding) the host's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Checked free before each start; a taken port fails the start with `PORT_IN_USE`.
    #[serde(default)]
    pub port: Option<Port>,
    /// Services that must be ready before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// How to tell the service is ready.
    pub readiness: Readiness,
    /// From spawn; a service not ready by then is stopped and fails with `READINESS_TIMEOUT`.
    #[serde(default = "default_readiness_timeout")]
    pub readiness_timeout_ms: Millis,
    /// Pause between HTTP/TCP probes (and between VRAM readings while gated).
    #[serde(default = "default_probe_interval")]
    pub probe_interval_ms: Int<10, 60_000>,
    /// HTTP and TCP probes start this long after spawn (a log line counts at any time).
    #[serde(default)]
    pub start_period_ms: Millis,
    /// Set for a service that loads onto a GPU: it is then VRAM-gated (and leased).
    #[serde(default)]
    pub gpu: Option<GpuNeed>,
    /// Host memory (MB) the service's whole process tree takes at its peak: its start waits
    /// until the host has this much available (plus `hostMemHeadroomMb`, less the loads on their
    /// way). Without it the gate uses the peak RSS learned on earlier runs.
    #[serde(default)]
    pub host_mem_mb: Option<Megabytes>,
    #[serde(default)]
    pub restart: RestartConfig,
    /// Sent to the process group first on stop.
    #[serde(default)]
    pub stop_signal: StopSignal,
    /// How long a stop waits after `stopSignal` before it SIGKILLs the group.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: Millis,
    /// Output lines (stdout and stderr) are appended here.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// `logFile` is rotated (to `<logFile>.1`, `.2`, ...) before a line would take it past this size.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: Int<1024, { u64::MAX }>,
    /// How many rotated log files are kept besides `logFile`.
    #[serde(default = "default_log_keep")]
    pub log_keep: Int<0, 100>,
    /// When set, a load with no progress (an output line or a notify message) for this long fails
    /// with `READINESS_STALLED`; `readinessTimeoutMs` stays the cap on the whole load.
    #[serde(default)]
    pub readiness_stall_timeout_ms: Option<Int<1, 86_400_000>>,
    /// The furthest `EXTEND_TIMEOUT_MS` can push the readiness deadline, from spawn. Default: four
    /// times `readinessTimeoutMs` (at most one day).
    #[serde(default)]
    pub max_readiness_timeout_ms: Option<Millis>,
    /// How to tell the service is still alive once it is ready.
    #[serde(default)]
    pub liveness: Option<LivenessConfig>,
    /// This many of the service's leases revoked by the arbiter's watchdog within `hangWindowMs`
    /// declare it hung (`gpu.taskTypes` and `attachArbiter` attribute leases to it).
    #[serde(default = "default_hang_after_revokes")]
    pub hang_after_revokes: Int<1, 1000>,
    #[serde(default = "default_hang_window")]
    pub hang_window_ms: Int<1, 86_400_000>,
    /// When the port is held by a leftover of this same service (same command line), stop that
    /// process and start; any other holder still fails the start with `PORT_IN_USE`.
    #[serde(default)]
    pub reclaim_stale_port: bool,
    /// How long `stop()` waits for the service's `port` to be free again before it resolves
    /// anyway (with a `port-still-held` event).
    #[serde(default = "default_port_release_timeout")]
    pub port_release_timeout_ms: Millis,
    /// Not started by `startAll()`: a lease request for one of its `gpu.taskTypes` (with
    /// `attachArbiter`), or `ensure(name)`, starts it. Evictable.
    #[serde(default)]
    pub on_demand: bool,
    /// An on-demand service that has held no lease (and had no `ensure`) for this long is
    /// stopped, with an `idle-stopped` event. Unset: it stays until evicted or stopped.
    #[serde(default)]
    pub keep_alive_ms: Option<Int<1, 86_400_000>>,
    /// May be stopped, while it holds no lease, to make room for another GPU service's load
    /// (on-demand services always may).
    #[serde(default)]
    pub evictable: bool,
    /// Never evicted, whatever `onDemand` and `evictable` say.
    #[serde(default)]
    pub pinned: bool,
    /// Eviction order: the lowest goes first. Default: the highest arbiter policy priority of its
    /// `gpu.taskTypes` (50 without an arbiter or task types).
    #[serde(default)]
    pub priority: Option<Int<0, 100>>,
    /// An exit during startup with an output line matching this is a GPU out-of-memory error:
    /// every evictable service on its GPU is stopped and the start retried once. Default: CUDA,
    /// PyTorch and cuBLAS out-of-memory messages (see `DEFAULT_OOM_PATTERN`).
    #[serde(default = "default_oom_pattern")]
    pub oom_pattern: Pattern,
}

/// What CUDA, PyTorch and cuBLAS print when a load runs out of GPU memory.
pub const DEFAULT_OOM_PATTERN: &str =
    r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation";

fn default_oom_pattern() -> Pattern {
    Pattern(Regex::new(DEFAULT_OOM_PATTERN).expect("the default OOM pattern compiles"))
}

impl ServiceSpec {
    /// The hard cap on the readiness deadline, from spawn (see `maxReadinessTimeoutMs`).
    pub fn readiness_cap_ms(&self) -> u64 {
        let base = self.readiness_timeout_ms.get();
        self.max_readiness_timeout_ms.map_or(base.saturating_mul(4).min(86_400_000), |m| m.get()).max(base)
    }

    /// Every `logLine` pattern the service's readiness and liveness watch for.
    pub fn line_patterns(&self) -> Vec<Regex> {
        let mut found = Vec::new();
        self.readiness.line_patterns(&mut found);
        if let Some(LivenessCheck::LogLine(p)) = self.liveness.as_ref().and_then(LivenessConfig::check) {
            found.push(p.pattern.0.clone());
        }
        found
    }

    /// Whether an eviction may stop it (when it holds no lease).
    pub fn is_evictable(&self) -> bool {
        (self.on_demand || self.evictable) && !self.pinned && self.gpu.is_some()
    }

    /// Whether the service gets a notify pipe (`GPU_SIDECAR_NOTIFY_FD`).
    pub fn uses_notify(&self) -> bool {
        self.readiness.uses_notify()
            || matches!(self.liveness.as_ref().and_then(LivenessConfig::check), Some(LivenessCheck::Notify))
    }
}

impl Readiness {
    fn line_patterns(&self, found: &mut Vec<Regex>) {
        match self {
            Readiness::LogLine(p) => found.push(p.pattern.0.clone()),
            Readiness::AnyOf(all) => all.iter().for_each(|r| r.line_patterns(found)),
            Readiness::Http(_) | Readiness::Tcp(_) | Readiness::Immediate(_) | Readiness::Notify(_) => {}
        }
    }

    fn uses_notify(&self) -> bool {
        match self {
            Readiness::Notify(_) => true,
            Readiness::AnyOf(all) => all.iter().any(Readiness::uses_notify),
            Readiness::Http(_) | Readiness::Tcp(_) | Readiness::LogLine(_) | Readiness::Immediate(_) => false,
        }
    }
}

fn default_readiness_timeout() -> Millis {
    Int(60_000)
}
fn default_probe_interval() -> Int<10, 60_000> {
    Int(250)
}
fn default_stop_timeout() -> Millis {
    Int(5_000)
}
fn default_log_max_bytes() -> Int<1024, { u64::MAX }> {
    Int(10 << 20)
}
fn default_log_keep() -> Int<0, 100> {
    Int(3)
}
fn default_hang_after_revokes() -> Int<1, 1000> {
    Int(2)
}
fn default_hang_window() -> Int<1, 86_400_000> {
    Int(60_000)
}
fn default_port_release_timeout() -> Millis {
    Int(5_000)
}

/// `liveness`: exactly one check kind, and how often and how strictly it is applied.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LivenessConfig {
    /// A GET answers like the readiness `http` probe.
    #[serde(default)]
    pub http: Option<HttpProbe>,
    /// A TCP connection is accepted.
    #[serde(default)]
    pub tcp: Option<TcpProbe>,
    /// A line matching the pattern at least every `intervalMs`.
    #[serde(default)]
    pub log_line: Option<LogLineProbe>,
    /// A `WATCHDOG=1` notify message at least every `intervalMs`.
    #[serde(default)]
    pub notify: Option<NoProbe>,
    /// Between probes; for `logLine` and `notify`, the longest silence that is not a failure.
    #[serde(default = "default_liveness_interval")]
    pub interval_ms: Int<10, 86_400_000>,
    /// The longest one HTTP or TCP probe may take.
    #[serde(default = "default_liveness_timeout")]
    pub timeout_ms: Int<1, 86_400_000>,
    /// Consecutive failures that make the service unhealthy.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: Int<1, 1000>,
}

/// The check a [`LivenessConfig`] makes.
#[derive(Debug, Clone, Copy)]
pub enum LivenessCheck<'a> {
    Http(&'a HttpProbe),
    Tcp(&'a TcpProbe),
    LogLine(&'a LogLineProbe),
    Notify,
}

impl LivenessConfig {
    /// The one check set; `None` unless exactly one is (validation refuses that, so a validated
    /// config always has one). Never guesses: an empty `liveness` is not a notify check.
    pub fn check(&self) -> Option<LivenessCheck<'_>> {
        match (&self.http, &self.tcp, &self.log_line, &self.notify) {
            (Some(h), None, None, None) => Some(LivenessCheck::Http(h)),
            (None, Some(t), None, None) => Some(LivenessCheck::Tcp(t)),
            (None, None, Some(l), None) => Some(LivenessCheck::LogLine(l)),
            (None, None, None, Some(_)) => Some(LivenessCheck::Notify),
            _ => None,
        }
    }
}

fn default_liveness_interval() -> Int<10, 86_400_000> {
    Int(5_000)
}
fn default_liveness_timeout() -> Int<1, 86_400_000> {
    Int(2_000)
}
fn default_failure_threshold() -> Int<1, 1000> {
    Int(3)
}

/// How a service tells that it is ready.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Readiness {
    /// A GET on a local URL answers `expectStatus` (and, if set, a JSON field has a value).
    Http(HttpProbe),
    /// A TCP connection is accepted.
    Tcp(TcpProbe),
    /// A stdout or stderr line matches a regex.
    LogLine(LogLineProbe),
    /// Ready as soon as the process is spawned.
    #[serde(rename = "none")]
    Immediate(NoProbe),
    /// A `READY=1` message on the notify pipe (`GPU_SIDECAR_NOTIFY_FD`).
    Notify(NoProbe),
    /// Whichever of these passes first.
    AnyOf(Vec<Readiness>),
}

impl Readiness {
    /// Checks what serde cannot: a TCP probe has a port, `anyOf` is not empty. Errors are
    /// `(field path under the service, message)`.
    fn validate(&self, has_port: bool, path: &str) -> Result<(), (String, String)> {
        match self {
            Readiness::Tcp(TcpProbe { port: None, .. }) if !has_port => {
                Err((format!("{path}.tcp.port"), "expected a port here or in the service's \"port\"".into()))
            }
            Readiness::AnyOf(all) if all.is_empty() => {
                Err((format!("{path}.anyOf"), "expected at least one readiness check".into()))
            }
            Readiness::AnyOf(all) => {
                for (k, r) in all.iter().enumerate() {
                    r.validate(has_port, &format!("{path}.anyOf[{k}]"))?;
                }
                Ok(())
            }
            Readiness::Http(probe) => probe.validate(&format!("{path}.http")),
            Readiness::Tcp(_) | Readiness::LogLine(_) | Readiness::Immediate(_) | Readiness::Notify(_) => Ok(()),
        }
    }

    /// What the service is waited for, in words, for the `READINESS_TIMEOUT` message.
    pub fn describe(&self, port: Option<u16>) -> String {
        match self {
            Readiness::Http(h) => {
                let mut words = format!("GET {} answering {}", h.url, h.expect_status);
                if let Some(field) = &h.json_field {
                    let list = |values: &[Value]| values.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
                    match (&h.json_value, h.ready_values.is_empty(), h.not_ready_values.is_empty()) {
                        (Some(v), _, _) => words += &format!(" with {field} {v}"),
                        (None, false, _) => words += &format!(" with {field} one of {}", list(&h.ready_values)),
                        (None, true, false) => words += &format!(" with {field} none of {}", list(&h.not_ready_values)),
                        (None, true, true) => words += &format!(" with {field} set"),
                    }
                }
                words
            }
            Readiness::Tcp(t) => {
                let port = t.port.map(|p| p.get() as u16).or(port).unwrap_or(0);
                format!("a TCP connection to {}:{port}", t.host)
            }
            Readiness::LogLine(l) => format!("an output line matching /{}/", l.pattern.0.as_str()),
            Readiness::Immediate(_) => "nothing".into(),
            Readiness::Notify(_) => "READY=1 on the notify pipe".into(),
            Readiness::AnyOf(all) => all.iter().map(|r| r.describe(port)).collect::<Vec<_>>().join(" or "),
        }
    }
}

/// `readiness.http`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    pub url: HttpUrl,
    /// The status a ready service answers (`200`), or a class of them (`"2xx"`); 200 by default.
    #[serde(default)]
    pub expect_status: ExpectStatus,
    /// Dotted path into a JSON body (`status` or `health.state`); when set the body must be JSON
    /// (unless `jsonFieldOptional`).
    #[serde(default)]
    pub json_field: Option<String>,
    /// The value `jsonField` must have; without it (and without `readyValues` and
    /// `notReadyValues`) the field must exist and be neither false nor null.
    #[serde(default)]
    pub json_value: Option<Value>,
    /// `jsonField` must have one of these values (strings compare ignoring case).
    #[serde(default)]
    pub ready_values: Vec<Value>,
    /// `jsonField` must not have any of these values (strings compare ignoring case): with no
    /// `jsonValue` or `readyValues`, any other value is ready.
    #[serde(default)]
    pub not_ready_values: Vec<Value>,
    /// A body that is not JSON, or has no `jsonField`, is ready on its status alone.
    #[serde(default)]
    pub json_field_optional: bool,
}

impl HttpProbe {
    /// What serde cannot check: the value lists need a field, and one way to name ready values.
    fn validate(&self, path: &str) -> Result<(), (String, String)> {
        let uses_field = self.json_value.is_some()
            || !self.ready_values.is_empty()
            || !self.not_ready_values.is_empty()
            || self.json_field_optional;
        if uses_field && self.json_field.is_none() {
            return Err((
                format!("{path}.jsonField"),
                "expected a field name: jsonValue, readyValues, notReadyValues and jsonFieldOptional apply to it"
                    .into(),
            ));
        }
        if self.json_value.is_some() && !self.ready_values.is_empty() {
            return Err((format!("{path}.readyValues"), "set either jsonValue or readyValues, not both".into()));
        }
        Ok(())
    }

    /// Whether the `jsonField` value `got` says ready, by `jsonValue`, `readyValues` and
    /// `notReadyValues`.
    pub fn field_is_ready(&self, got: &Value) -> bool {
        if self.not_ready_values.iter().any(|v| same_value(v, got)) {
            return false;
        }
        if let Some(want) = &self.json_value {
            return got == want;
        }
        if !self.ready_values.is_empty() {
            return self.ready_values.iter().any(|v| same_value(v, got));
        }
        !self.not_ready_values.is_empty() || !matches!(got, Value::Null | Value::Bool(false))
    }
}

/// JSON equality, strings ignoring ASCII case (`"OK"` is `"ok"`).
fn same_value(listed: &Value, got: &Value) -> bool {
    match (listed, got) {
        (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
        (a, b) => a == b,
    }
}

/// `expectStatus`: one HTTP status, or a class of them (`"2xx"`: 200-299).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectStatus {
    Code(u16),
    /// The hundreds digit, 1-5.
    Class(u16),
}

impl Default for ExpectStatus {
    fn default() -> Self {
        ExpectStatus::Code(200)
    }
}

impl ExpectStatus {
    pub fn matches(self, status: u16) -> bool {
        match self {
            ExpectStatus::Code(code) => status == code,
            ExpectStatus::Class(class) => status / 100 == class,
        }
    }
}

impl fmt::Display for ExpectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectStatus::Code(code) => write!(f, "{code}"),
            ExpectStatus::Class(class) => write!(f, "{class}xx"),
        }
    }
}

impl serde::Serialize for ExpectStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectStatus::Code(code) => s.serialize_u16(*code),
            ExpectStatus::Class(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ExpectStatus;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer 100-599 or a class \"1xx\"-\"5xx\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ExpectStatus, E> {
                match u16::try_from(v) {
                    Ok(code @ 100..=599) => Ok(ExpectStatus::Code(code)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ExpectStatus, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                    .and_then(|u| self.visit_u64(u))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ExpectStatus, E> {
                if v.fract() == 0.0 && (100.0..=599.0).contains(&v) {
                    self.visit_u64(v as u64)
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ExpectStatus, E> {
                match v.as_bytes() {
                    [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Ok(ExpectStatus::Class(u16::from(d - b'0'))),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for ExpectStatus {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ExpectStatus".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "oneOf": [
                { "type": "integer", "minimum": 100, "maximum": 599 },
                { "type": "string", "pattern": "^[1-5][xX][xX]$" }
            ]
        })
    }
}

/// `readiness.tcp`; the port defaults to the service's `port`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpProbe {
    /// `127.0.0.1` by default.
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default)]
    pub port: Option<Port>,
}

fn default_host() -> String {
    "127.0.0.1".to_string()
}

/// `readiness.logLine`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct LogLineProbe {
    /// Matched against each output line as it is read.
    pub pattern: Pattern,
}

/// `readiness.none` takes no settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct NoProbe {}

/// A regex compiled while the config is read, so a bad one is reported with its JSON path.
#[derive(Debug, Clone)]
pub struct Pattern(pub Regex);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Regex::new(&text).map(Pattern).map_err(|e| de::Error::custom(format!("invalid regex {text:?}: {e}")))
    }
}

impl JsonSchema for Pattern {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Pattern".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "regex" })
    }
}

/// A plain-HTTP URL (`http://host:port/path`). Probes target local services, so TLS is not
/// supported and the URL is split once, here, rather than at every probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    /// 80 when the URL names none.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("expected an http://host:port/path URL, got {text:?}");
        let rest = text.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse::<u16>().map_err(|_| bad())?),
            // `a]:80`: a closing bracket with no opening one is no host, not a host with port 80.
            Some(_) => return Err(bad()),
            None => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Self { host: host.to_string(), port, path: path.to_string() })
    }
}

impl JsonSchema for HttpUrl {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HttpUrl".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "pattern": "^http://[^/]+" })
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HttpUrl::parse(&text).map_err(de::Error::custom)
    }
}

/// The `gpu.key` that places the service at each start on the GPU with the most free memory.
pub const AUTO_GPU_KEY: &str = "auto";

/// `gpu`: which GPU the service loads onto, and how much memory it needs there.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuNeed {
    /// The GPU, as the VRAM source and the arbiter name it (`gpu:0`), or `auto`: at each start,
    /// the GPU of the attached telemetry with the most free memory, less the loads already on
    /// their way there.
    pub key: String,
    /// Without it the gate uses the peak learned on earlier runs, or is off.
    #[serde(default)]
    pub vram_mb: Option<Megabytes>,
    /// Arbiter task types this service serves: with `attachArbiter`, leases of these types are
    /// attributed to it (its status shows them, and their watchdog revokes can declare it hung).
    #[serde(default)]
    pub task_types: Vec<String>,
}

/// When an exited service is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// After a non-zero exit or a signal.
    OnFailure,
    /// After any exit.
    Always,
}

/// `restart`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RestartConfig {
    /// `no` by default.
    pub policy: RestartPolicy,
    /// Restarts allowed after one `start`; the next exit beyond them is `failed`.
    pub max_restarts: Int<0, 1_000_000>,
    /// The first restart waits this long; each later one twice as long as the one before.
    pub backoff_ms: Millis,
    /// The longest wait between restarts.
    pub max_backoff_ms: Millis,
    /// A run that lasts this long without failing resets the attempt count and the backoff.
    pub reset_after_ms: Millis,
    /// When set, `maxRestarts` counts the restarts within this window, not since the start.
    pub window_ms: Option<Int<1, 86_400_000>>,
    /// Each delay is spread at random by up to this fraction either way (0-1).
    pub jitter: f64,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::No,
            max_restarts: Int(3),
            backoff_ms: Int(1_000),
            max_backoff_ms: Int(30_000),
            reset_after_ms: Int(60_000),
            window_ms: None,
            jitter: 0.1,
        }
    }
}

impl RestartConfig {
    /// The wait before restart number `attempt` (1-based).
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let doubled = self.backoff_ms.get().saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
        doubled.min(self.max_backoff_ms.get())
    }
}

/// The signal a stop sends to the service's process group first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
pub enum StopSignal {
    /// The default.
    #[default]
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGQUIT")]
    Quit,
    #[serde(rename = "SIGKILL")]
    Kill,
}

impl ServicesConfig {
    /// Validates a `services` object; paths in errors and warnings start with `services`.
    pub fn from_json(value: &Value, warnings: &mut Vec<String>) -> SidecarResult<Self> {
        Self::from_json_allowing(value, &[], warnings)
    }

    /// [`ServicesConfig::from_json`], but a dependency may name a service in `removed`.
    pub fn from_json_allowing(value: &Value, removed: &[&str], warnings: &mut Vec<String>) -> SidecarResult<Self> {
        let mut config: ServicesConfig = parse_section(value, "services", warnings)?;
        config.validate(removed)?;
        config.sources = value.get("services").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(config)
    }

    /// Reads the service list of a run-time update (`setServices`): every rule of `from_json`
    /// holds, but a dependency may name a service in `removed` (one the update drops, or an
    /// earlier one dropped). Paths in errors start with `services[`.
    pub fn update_from_json(services: &Value, removed: &[&str], warnings: &mut Vec<String>) -> SidecarResult<Self> {
        let rename = |text: String| match text.strip_prefix("services.services") {
            Some(rest) => format!("services{rest}"),
            None => text,
        };
        let section = serde_json::json!({ "services": services });
        let mut found = Vec::new();
        let parsed: SidecarResult<ServicesConfig> = parse_section(&section, "services", &mut found);
        warnings.extend(found.into_iter().map(rename));
        let mut config = parsed.map_err(|e| SidecarError::new(e.code, rename(e.message)))?;
        config.validate(removed).map_err(|e| SidecarError::new(e.code, rename(e.message)))?;
        config.sources = services.as_array().cloned().unwrap_or_default();
        Ok(config)
    }

    /// Service indices, dependencies before their dependents, otherwise in config order.
    pub fn start_order(&self) -> Vec<usize> {
        let mut placed = vec![false; self.services.len()];
        let mut order = Vec::with_capacity(self.services.len());
        while order.len() < self.services.len() {
            // Validation rules out cycles, so each round places at least one service.
            let next = (0..self.services.len())
                .find(|&i| !placed[i] && self.dependency_indices(i).all(|d| placed[d]))
                .expect("dependency graph is acyclic");
            placed[next] = true;
            order.push(next);
        }
        order
    }

    /// The index of the service called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| s.name == name)
    }

    /// Indices of the services that service `i` depends on.
    pub fn dependency_indices(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.services[i].depends_on.iter().filter_map(|d| self.index_of(d))
    }

    /// Validates a whole config; a dependency on a name in `removed` (a service an update drops)
    /// is allowed: that dependent is blocked when it starts.
    fn validate(&self, removed: &[&str]) -> SidecarResult<()> {
        let err = |i: usize, field: &str, msg: String| {
            SidecarError::invalid_config(format!("services.services[{i}].{field}: {msg}"))
        };
        for (i, s) in self.services.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(err(i, "name", "expected a non-empty string".into()));
            }
            if self.services[..i].iter().any(|o| o.name == s.name) {
                return Err(err(i, "name", format!("duplicate service name {:?}", s.name)));
            }
            if s.command.trim().is_empty() {
                return Err(err(i, "command", "expected a non-empty string".into()));
            }
            for (j, dep) in s.depends_on.iter().enumerate() {
                if self.index_of(dep).is_none() && !removed.contains(&dep.as_str()) {
                    return Err(err(i, &format!("dependsOn[{j}]"), format!("unknown service {dep:?}")));
                }
            }
            s.readiness.validate(s.port.is_some(), "readiness").map_err(|(field, msg)| err(i, &field, msg))?;
            if let Some(liveness) = &s.liveness {
                if liveness.check().is_none() {
                    return Err(err(
                        i,
                        "liveness",
                        "expected exactly one of \"http\", \"tcp\", \"logLine\" or \"notify\"".into(),
                    ));
                }
                if let Some(http) = &liveness.http {
                    http.validate("liveness.http").map_err(|(field, msg)| err(i, &field, msg))?;
                }
                if let Some(TcpProbe { port: None, .. }) = &liveness.tcp {
                    if s.port.is_none() {
                        return Err(err(
                            i,
                            "liveness.tcp.port",
                            "expected a port here or in the service's \"port\"".into(),
                        ));
                    }
                }
            }
            if !(0.0..=1.0).contains(&s.restart.jitter) {
                return Err(err(i, "restart.jitter", format!("expected a number 0-1, got {}", s.restart.jitter)));
            }
            if let Some(gpu) = &s.gpu {
                if gpu.key.trim().is_empty() {
                    return Err(err(i, "gpu.key", "expected a non-empty string".into()));
                }
            }
            if s.keep_alive_ms.is_some() && !s.on_demand {
                return Err(err(
                    i,
                    "keepAliveMs",
                    "only an onDemand service is stopped when idle; set \"onDemand\": true".into(),
                ));
            }
            if s.on_demand && s.gpu.is_none() {
                return Err(err(i, "onDemand", "an on-demand service needs \"gpu\" (its task types start it)".into()));
            }
            if let Some(dependent) =
                self.services.iter().find(|o| s.on_demand && o.depends_on.contains(&s.name) && !o.on_demand)
            {
                return Err(err(
                    i,
                    "onDemand",
                    format!("{:?} depends on it and is started by startAll(); an on-demand service may only be a dependency of on-demand services", dependent.name),
                ));
            }
            if s.restart.max_backoff_ms < s.restart.backoff_ms {
                return Err(err(
                    i,
                    "restart.maxBackoffMs",
                    format!(
                        "expected at least backoffMs ({}), got {}",
                        s.restart.backoff_ms.get(),
                        s.restart.max_backoff_ms.get()
                    ),
                ));
            }
        }
        if let Some(cycle) = self.find_cycle() {
            return Err(SidecarError::invalid_config(format!("services: dependency cycle: {}", cycle.join(" -> "))));
        }
        Ok(())
    }

    /// A dependency cycle as names, first name repeated at the end (`a -> b -> a`).
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        fn visit(cfg: &ServicesConfig, i: usize, marks: &mut [Mark], path: &mut Vec<usize>) -> Option<Vec<String>> {
            marks[i] = Mark::OnPath;
            path.push(i);
            for d in cfg.dependency_indices(i).collect::<Vec<_>>() {
                match marks[d] {
                    Mark::OnPath => {
                        let start = path.iter().position(|&p| p == d).expect("on path");
                        let mut names: Vec<String> =
                            path[start..].iter().map(|&p| cfg.services[p].name.clone()).collect();
                        names.push(cfg.services[d].name.clone());
                        return Some(names);
                    }
                    Mark::New => {
                        if let Some(c) = visit(cfg, d, marks, path) {
                            return Some(c);
                        }
                    }
                    Mark::Done => {}
                }
            }
            path.pop();
            marks[i] = Mark::Done;
            None
        }
        let mut marks = vec![Mark::New; self.services.len()];
        (0..self.services.len()).find_map(|i| {
            if marks[i] == Mark::New {
                visit(self, i, &mut marks, &mut Vec::new())
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> SidecarResult<ServicesConfig> {
        ServicesConfig::from_json(&v, &mut Vec::new())
    }

    fn svc(name: &str, deps: &[&str]) -> Value {
        json!({"name": name, "command": "true", "dependsOn": deps, "readiness": {"none": {}}})
    }

    #[test]
    fn defaults_and_every_readiness_kind() {
        let mut warnings = vec![];
        let cfg = ServicesConfig::from_json(
            &json!({"services": [
                {"name": "a", "command": "x", "readiness": {"http": {"url": "http://127.0.0.1:8000/health", "jsonField": "status", "jsonValue": "ok"}}},
                {"name": "b", "command": "x", "port": 9000, "readiness": {"tcp": {}}},
                {"name": "c", "command": "x", "readiness": {"logLine": {"pattern": "\\[SERVICE_READY\\]"}}, "colour": 1},
                {"name": "d", "command": "x", "readiness": {"none": {}}, "restart": {"policy": "on-failure"}, "stopSignal": "SIGINT"}
            ]}),
            &mut warnings,
        )
        .unwrap();
        assert_eq!(cfg.max_concurrent_starts.get(), 1);
        // serde_ignored writes sequence indices as `.2` (the shared helper passes its paths through).
        assert_eq!(warnings, vec!["services.services.2.colour: unknown key, ignored".to_string()]);
        let a = &cfg.services[0];
        assert_eq!(a.readiness_timeout_ms.get(), 60_000);
        assert_eq!(a.probe_interval_ms.get(), 250);
        assert_eq!(a.stop_timeout_ms.get(), 5_000);
        assert_eq!(a.stop_signal, StopSignal::Term);
        match &a.readiness {
            Readiness::Http(h) => {
                assert_eq!(h.url, HttpUrl { host: "127.0.0.1".into(), port: 8000, path: "/health".into() });
                assert_eq!(h.expect_status, ExpectStatus::Code(200));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(cfg.services[1].readiness, Readiness::Tcp(_)));
        assert!(matches!(cfg.services[3].readiness, Readiness::Immediate(_)));
        assert_eq!(cfg.services[3].restart.policy, RestartPolicy::OnFailure);
        assert_eq!(cfg.services[3].stop_signal, StopSignal::Int);
    }

    #[test]
    fn a_bad_regex_names_its_json_path() {
        let e = parse(json!({"services": [
            svc("a", &[]),
            {"name": "b", "command": "x", "readiness": {"logLine": {"pattern": "(unclosed"}}}
        ]}))
        .unwrap_err();
        assert!(
            e.message.starts_with("services.services[1].readiness.logLine.pattern: invalid regex"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_urls_and_numbers_name_their_json_path() {
        let e = parse(json!({"services": [
            {"name": "a", "command": "x", "readiness": {"http": {"url": "https://x/health"}}}
        ]}))
        .unwrap_err();
        assert!(e.message.starts_with("services.services[0].readiness.http.url: expected an http://"), "{}", e.message);
        assert_eq!(HttpUrl::parse("http://h:81/x").unwrap().to_string(), "http://h:81/x");
        assert_eq!(HttpUrl::parse("http://[::1]:81").unwrap().to_string(), "http://::1:81/");
        assert_eq!(HttpUrl::parse("http://h").unwrap().port, 80);
        assert!(HttpUrl::parse("http://h]:81/x").is_err(), "a stray bracket is no host on port 80");
        let e = parse(json!({"maxConcurrentStarts": 0})).unwrap_err();
        assert!(e.message.starts_with("services.maxConcurrentStarts: expected an integer 1-64"), "{}", e.message);
        let e = parse(json!({"services": [
            {"name": "a", "command": "x", "readiness": {"none": {}}, "restart": {"policy": "sometimes"}}
        ]}))
        .unwrap_err();
        assert!(e.message.starts_with("services.services[0].restart.policy: expected one of"), "{}", e.message);
    }

    #[test]
    fn duplicate_names_unknown_dependencies_and_missing_tcp_port_are_rejected() {
        let e = parse(json!({"services": [svc("a", &[]), svc("a", &[])]})).unwrap_err();
        assert_eq!(e.message, "services.services[1].name: duplicate service name \"a\"");
        let e = parse(json!({"services": [svc("a", &[]), svc("b", &["a", "zz"])]})).unwrap_err();
        assert_eq!(e.message, "services.services[1].dependsOn[1]: unknown service \"zz\"");
        let e = parse(json!({"services": [{"name": "a", "command": "x", "readiness": {"tcp": {}}}]})).unwrap_err();
        assert!(e.message.starts_with("services.services[0].readiness.tcp.port:"), "{}", e.message);
    }

    #[test]
    fn http_value_lists_need_a_field_and_expect_status_takes_a_class() {
        let http =
            |probe: Value| parse(json!({"services": [{"name": "a", "command": "x", "readiness": {"http": probe}}]}));
        let url = "http://127.0.0.1:1/health";
        let e = http(json!({"url": url, "notReadyValues": ["loading"]})).unwrap_err();
        assert!(
            e.message.starts_with("services.services[0].readiness.http.jsonField: expected a field name"),
            "{}",
            e.message
        );
        let e = http(json!({"url": url, "jsonField": "s", "jsonValue": "ok", "readyValues": ["ok"]})).unwrap_err();
        assert_eq!(
            e.message,
            "services.services[0].readiness.http.readyValues: set either jsonValue or readyValues, not both"
        );
        let e = http(json!({"url": url, "expectStatus": "2xy"})).unwrap_err();
        assert_eq!(
            e.message,
            "services.services[0].readiness.http.expectStatus: expected an integer 100-599 or a class \"1xx\"-\"5xx\", got \"2xy\""
        );
        let e = http(json!({"url": url, "expectStatus": 600})).unwrap_err();
        assert!(e.message.ends_with("got 600"), "{}", e.message);
        let e = parse(json!({"services": [{"name": "a", "command": "x", "readiness": {"none": {}},
            "liveness": {"http": {"url": url, "readyValues": ["ok"]}}}]}))
        .unwrap_err();
        assert!(e.message.starts_with("services.services[0].liveness.http.jsonField:"), "{}", e.message);
        let cfg = http(json!({"url": url, "expectStatus": "2xx", "jsonField": "s", "notReadyValues": ["x"]})).unwrap();
        let Readiness::Http(h) = &cfg.services[0].readiness else { panic!() };
        assert_eq!(h.expect_status, ExpectStatus::Class(2));
        assert!(h.field_is_ready(&json!(null)), "with only notReadyValues, any other value is ready");
        assert!(!h.field_is_ready(&json!("X")));
    }

    #[test]
    fn a_liveness_with_no_check_or_two_is_refused_not_taken_for_notify() {
        for liveness in [json!({}), json!({"notify": {}, "logLine": {"pattern": "x"}})] {
            let e = parse(
                json!({"services": [{"name": "a", "command": "x", "readiness": {"none": {}}, "liveness": liveness}]}),
            )
            .unwrap_err();
            assert!(e.message.starts_with("services.services[0].liveness: expected exactly one of"), "{}", e.message);
        }
        let none: LivenessConfig = serde_json::from_value(json!({})).unwrap();
        assert!(none.check().is_none());
        let notify: LivenessConfig = serde_json::from_value(json!({"notify": {}})).unwrap();
        assert!(matches!(notify.check(), Some(LivenessCheck::Notify)));
    }

    #[test]
    fn a_dependency_cycle_is_named() {
        let e = parse(json!({"services": [svc("x", &[]), svc("a", &["b"]), svc("b", &["a"])]})).unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::InvalidConfig);
        assert_eq!(e.message, "services: dependency cycle: a -> b -> a");
        let e = parse(json!({"services": [svc("a", &["a"])]})).unwrap_err();
        assert_eq!(e.message, "services: dependency cycle: a -> a");
    }

    #[test]
    fn start_order_puts_dependencies_first_then_config_order() {
        let cfg = parse(json!({"services": [svc("web", &["db", "cache"]), svc("db", &[]), svc("cache", &["db"]), svc("solo", &[])]})).unwrap();
        let names: Vec<&str> = cfg.start_order().iter().map(|&i| cfg.services[i].name.as_str()).collect();
        assert_eq!(names, vec!["db", "cache", "web", "solo"]);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let r = RestartConfig {
            policy: RestartPolicy::Always,
            max_restarts: Int(9),
            backoff_ms: Int(100),
            max_backoff_ms: Int(350),
            ..RestartConfig::default()
        };
        assert_eq!([r.delay_ms(1), r.delay_ms(2), r.delay_ms(3), r.delay_ms(4)], [100, 200, 350, 350]);
    }
}
