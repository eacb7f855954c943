//! Where the addon's `tracing` events go, from any thread: to the sink a JS logger set
//! (`setLogger`), at its level and above; without one, warnings and errors to stderr.

use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::Level;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::error::{SidecarError, SidecarResult};

/// One event as a logger gets it: `logger(level, message, fields)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub level: &'static str,
    pub message: String,
    pub fields: Map<String, Value>,
}

/// Takes records on whatever thread they happen (a JS logger's threadsafe function).
pub type LogSink = Box<dyn Fn(LogRecord) + Send + Sync>;

struct Route {
    sink: LogSink,
    max_level: Level,
}

static ROUTE: Mutex<Option<Route>> = Mutex::new(None);

/// Sends events at `max_level` and above to `sink`; `None` restores the stderr default.
pub fn set_route(route: Option<(LogSink, Level)>) {
    *ROUTE.lock().unwrap_or_else(|p| p.into_inner()) = route.map(|(sink, max_level)| Route { sink, max_level });
}

/// `minLevel`'s names (default `info`).
pub fn parse_level(name: Option<&str>) -> SidecarResult<Level> {
    match name.unwrap_or("info") {
        "error" => Ok(Level::ERROR),
        "warn" => Ok(Level::WARN),
        "info" => Ok(Level::INFO),
        "debug" => Ok(Level::DEBUG),
        "trace" => Ok(Level::TRACE),
        other => Err(SidecarError::invalid_argument(format!(
            "minLevel: expected one of \"error\", \"warn\", \"info\", \"debug\", \"trace\", got \"{other}\""
        ))),
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: Map<String, Value>,
}

impl Visit for FieldCollector {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.insert(field.name().to_string(), format!("{value:?}").into());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.insert(field.name().to_string(), value.into());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_string(), value.into());
    }
}

struct RoutingLayer;

impl<S: tracing::Subscriber> Layer<S> for RoutingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let route = ROUTE.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = match &*route {
            Some(r) => level <= r.max_level,
            None => level <= Level::WARN,
        };
        if !wanted {
            return;
        }
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        let record = LogRecord { level: level_name(&level), message: fields.message, fields: fields.fields };
        match &*route {
            Some(r) => (r.sink)(record),
            None => {
                let extra =
                    if record.fields.is_empty() { String::new() } else { format!(" {}", Value::Object(record.fields)) };
                eprintln!("[gpu-sidecar] {}: {}{extra}", record.level, record.message);
            }
        }
    }
}

/// Installs the addon's subscriber once per process (our own copy of `tracing`, so this does not
/// touch other native modules).
pub fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(RoutingLayer));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn levels_parse_by_name_and_a_bad_one_is_named() {
        assert_eq!(parse_level(None).unwrap(), Level::INFO);
        assert_eq!(parse_level(Some("trace")).unwrap(), Level::TRACE);
        let e = parse_level(Some("loud")).unwrap_err();
        assert!(e.message.starts_with("minLevel: expected one of"), "{}", e.message);
    }

    #[test]
    fn events_at_the_level_and_above_reach_the_sink_with_their_fields() {
        let seen: Arc<Mutex<Vec<LogRecord>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let subscriber = tracing_subscriber::registry().with(RoutingLayer);
        tracing::subscriber::with_default(subscriber, || {
            set_route(Some((Box::new(move |r| sink.lock().unwrap().push(r)), Level::WARN)));
            tracing::info!(marker = "log-routing-test", "below the level");
            tracing::warn!(marker = "log-routing-test", held_ms = 51u64, "held past holdMaxMs");
            set_route(None);
        });
        let seen = seen.lock().unwrap();
        let ours: Vec<&LogRecord> =
            seen.iter().filter(|r| r.fields.get("marker") == Some(&"log-routing-test".into())).collect();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].level, "warn");
        assert_eq!(ours[0].message, "held past holdMaxMs");
        assert_eq!(ours[0].fields["held_ms"], 51);
    }
}
