//! Routes the addon's `tracing` events to a JS logger (`setLogger`), from any thread, through a
//! weak threadsafe function; without one, warnings and errors go to stderr.

use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tracing::field::{Field, Visit};
use tracing::Level;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use super::{args, Code, IntoJsResult};
use crate::error::SidecarError;

struct LogRecord {
    level: &'static str,
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

type LogFn = ThreadsafeFunction<LogRecord, (), FnArgs<(String, String, serde_json::Value)>, Status, false, true>;

struct Sink {
    log: LogFn,
    max_level: Level,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

struct JsLogLayer;

#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: serde_json::Map<String, serde_json::Value>,
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

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S: tracing::Subscriber> Layer<S> for JsLogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = match &*sink {
            Some(s) => level <= s.max_level,
            None => level <= Level::WARN,
        };
        if !wanted {
            return;
        }
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        match &*sink {
            Some(s) => {
                let record = LogRecord { level: level_name(&level), message: fields.message, fields: fields.fields };
                s.log.call(record, ThreadsafeFunctionCallMode::NonBlocking);
            }
            None => {
                let extra = if fields.fields.is_empty() {
                    String::new()
                } else {
                    format!(" {}", serde_json::Value::Object(fields.fields))
                };
                eprintln!("[gpu-sidecar] {}: {}{extra}", level_name(&level), fields.message);
            }
        }
    }
}

/// Installs the addon's subscriber once per process (our own copy of `tracing`, so this does not
/// touch other native modules).
pub fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(JsLogLayer));
    });
}

#[napi_derive::module_init]
fn init_logging() {
    install();
}

/// Sends the addon's log events to `logger(level, message, fields)` (e.g. an app's pino logger),
/// from whatever thread they happen on, at `minLevel` (default `info`) and above. `null` restores
/// the default: warnings and errors to stderr. The logger never keeps Node alive.
#[napi(
    catch_unwind,
    ts_args_type = "logger: ((level: 'error' | 'warn' | 'info' | 'debug' | 'trace', message: string, fields: Record<string, unknown>) => void) | null, minLevel?: 'error' | 'warn' | 'info' | 'debug' | 'trace'"
)]
#[allow(clippy::type_complexity)] // the napi macro needs the signature spelled out
pub fn set_logger(env: &Env, logger: Option<Unknown>, min_level: Option<Unknown>) -> Result<(), Code> {
    let logger: Option<Function<FnArgs<(String, String, serde_json::Value)>, ()>> = match logger {
        Some(l) if l.get_type().js()? == ValueType::Function => {
            Some(unsafe { Function::from_napi_value(env.raw(), l.raw()) }.js()?)
        }
        Some(l) if matches!(l.get_type().js()?, ValueType::Undefined | ValueType::Null) => None,
        None => None,
        other => {
            return Err(SidecarError::invalid_argument(format!(
                "logger: expected a function or null, got {}",
                args::describe(env, other)
            ))
            .into())
        }
    };
    let min_level = match min_level {
        Some(level) if level.get_type().js()? != ValueType::Undefined => {
            Some(args::string(env, Some(level), "minLevel")?)
        }
        _ => None,
    };
    let max_level = match min_level.as_deref().unwrap_or("info") {
        "error" => Level::ERROR,
        "warn" => Level::WARN,
        "info" => Level::INFO,
        "debug" => Level::DEBUG,
        "trace" => Level::TRACE,
        other => {
            return Err(SidecarError::invalid_argument(format!(
                "minLevel: expected one of \"error\", \"warn\", \"info\", \"debug\", \"trace\", got \"{other}\""
            ))
            .into())
        }
    };
    let sink = match logger {
        Some(f) => Some(Sink {
            log: f
                .build_threadsafe_function::<LogRecord>()
                .weak::<true>()
                .callee_handled::<false>()
                .build_callback(|ctx| {
                    Ok(FnArgs::from((
                        ctx.value.level.to_string(),
                        ctx.value.message,
                        serde_json::Value::Object(ctx.value.fields),
                    )))
                })
                .js()?,
            max_level,
        }),
        None => None,
    };
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    Ok(())
}
