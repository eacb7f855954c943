//! `setLogger`: the addon's `tracing` events ([`crate::link::log_routing`]) to a JS logger, from
//! any thread, through a weak threadsafe function.

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;

use super::{args, js, Code, IntoJsResult};
use crate::link::log_routing::{self, LogRecord};

#[napi_derive::module_init]
fn init_logging() {
    log_routing::install();
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
    let logger: Option<Function<FnArgs<(String, String, Unknown<'static>)>, ()>> =
        args::optional_function(env, logger, "logger")?;
    let min_level = match min_level {
        Some(level) if level.get_type().js()? != ValueType::Undefined => {
            Some(args::string(env, Some(level), "minLevel")?)
        }
        _ => None,
    };
    let max_level = log_routing::parse_level(min_level.as_deref())?;
    let route = match logger {
        Some(f) => {
            let log = f
                .build_threadsafe_function::<LogRecord>()
                .weak::<true>()
                .callee_handled::<false>()
                .build_callback(|ctx| {
                    let fields = js::to_js(&ctx.env, &ctx.value.fields).map_err(|e| Error::from_reason(e.reason))?;
                    // SAFETY: a value of this env, passed straight to the call.
                    let fields = unsafe { Unknown::from_raw_unchecked(ctx.env.raw(), fields.raw()) };
                    Ok(FnArgs::from((ctx.value.level.to_string(), ctx.value.message, fields)))
                })
                .js()?;
            let sink: log_routing::LogSink = Box::new(move |record| {
                log.call(record, ThreadsafeFunctionCallMode::NonBlocking);
            });
            Some((sink, max_level))
        }
        None => None,
    };
    log_routing::set_route(route);
    Ok(())
}
