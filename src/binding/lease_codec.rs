//! Reads lease requests and writes lease results on the arbiter's hot path.
//!
//! Every Node-API call costs about as much as the arbiter's own work for a request, so the request
//! arrives as positional arguments (the package entry reads the object's fields in JS, where that
//! is nearly free; see `acquireFields` in gpu-sidecar.js), and results are built with property
//! names created once per arbiter instead of interned again on every call.

use std::ptr;

use napi::{check_status, sys, Env, Result, ValueType};

use super::js::{self, JsRef};
use super::{IntoJsResult, JsResult};
use crate::arbiter::{AcquireRequest, BusyPolicy, Reason, Status, Trace};
use crate::error::SidecarError;

macro_rules! property_keys {
    ($($key:ident = $name:literal),* $(,)?) => {
        /// Index of each property name in the cached array.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        enum Key { $($key),* }

        const KEY_NAMES: &[&str] = &[$($name),*];
    };
}

property_keys! {
    aborted = "aborted",
    status = "status",
    lease_id = "leaseId",
    gpu_key = "gpuKey",
    acquired_at = "acquiredAt",
    queue_wait_ms = "queueWaitMs",
    reason = "reason",
}

/// The positions of `acquireFields(...)`'s arguments.
#[derive(Clone, Copy)]
enum Arg {
    TaskType,
    GpuKey,
    Priority,
    MaxWaitMs,
    HoldMaxMs,
    QueueLimit,
    BusyPolicy,
    VramMb,
    Signal,
    Trace,
    JobId,
    SessionId,
    UtteranceIndex,
    Stage,
}

pub struct LeaseCodec {
    /// An array of the property names (Node-API 9 cannot reference a string by itself).
    keys: JsRef,
}

impl LeaseCodec {
    pub fn new(env: &Env) -> Result<Self> {
        let mut array = ptr::null_mut();
        check_status!(unsafe { sys::napi_create_array_with_length(env.raw(), KEY_NAMES.len(), &mut array) })?;
        for (i, name) in KEY_NAMES.iter().enumerate() {
            check_status!(unsafe { sys::napi_set_element(env.raw(), array, i as u32, js::string(env, name)?) })?;
        }
        Ok(Self { keys: JsRef::new(env, array)? })
    }

    /// Converts `acquireFields`' arguments; also returns the AbortSignal, if any.
    pub fn read_request(
        &self,
        env: &Env,
        args: &[sys::napi_value],
    ) -> JsResult<(AcquireRequest, Option<sys::napi_value>)> {
        Fields { env, args }.read_request()
    }

    /// Whether an AbortSignal has already fired.
    pub fn is_aborted(&self, env: &Env, signal: sys::napi_value) -> JsResult<bool> {
        let aborted = Keys::fetch(env, &self.keys).js()?.get(signal, Key::aborted).js()?;
        js::is_truthy(env, aborted).js()
    }

    /// `{ status: 'ACQUIRED', leaseId, gpuKey, acquiredAt, queueWaitMs }`
    pub fn acquired(
        &self,
        env: &Env,
        lease_id: &str,
        gpu_key: &str,
        acquired_at: f64,
        queue_wait_ms: f64,
    ) -> Result<sys::napi_value> {
        Keys::fetch(env, &self.keys)?.object(&[
            (Key::status, js::string(env, Status::Acquired.as_str())?),
            (Key::lease_id, js::string(env, lease_id)?),
            (Key::gpu_key, js::string(env, gpu_key)?),
            (Key::acquired_at, js::number(env, acquired_at)?),
            (Key::queue_wait_ms, js::number(env, queue_wait_ms)?),
        ])
    }

    /// `{ status, reason }`
    pub fn not_acquired(&self, env: &Env, status: Status, reason: Reason) -> Result<sys::napi_value> {
        Keys::fetch(env, &self.keys)?.object(&[
            (Key::status, js::string(env, status.as_str())?),
            (Key::reason, js::string(env, reason.as_str())?),
        ])
    }
}

/// An argument, by type.
enum Field {
    Absent,
    String(String),
    Number(f64),
    Object(sys::napi_value),
    Other,
}

/// The property-name array, fetched once per call.
struct Keys<'a> {
    env: &'a Env,
    array: sys::napi_value,
}

impl<'a> Keys<'a> {
    fn fetch(env: &'a Env, keys: &JsRef) -> Result<Self> {
        Ok(Self { env, array: keys.get()? })
    }

    fn key(&self, key: Key) -> Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        check_status!(unsafe { sys::napi_get_element(self.env.raw(), self.array, key as u32, &mut value) })?;
        Ok(value)
    }

    fn get(&self, object: sys::napi_value, key: Key) -> Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        check_status!(unsafe { sys::napi_get_property(self.env.raw(), object, self.key(key)?, &mut value) })?;
        Ok(value)
    }

    /// A plain object with these properties, defined in one call.
    fn object(&self, properties: &[(Key, sys::napi_value)]) -> Result<sys::napi_value> {
        let mut object = ptr::null_mut();
        check_status!(unsafe { sys::napi_create_object(self.env.raw(), &mut object) })?;
        let mut descriptors = Vec::with_capacity(properties.len());
        for (key, value) in properties {
            descriptors.push(sys::napi_property_descriptor {
                utf8name: ptr::null(),
                name: self.key(*key)?,
                method: None,
                getter: None,
                setter: None,
                value: *value,
                attributes: sys::PropertyAttributes::writable
                    | sys::PropertyAttributes::enumerable
                    | sys::PropertyAttributes::configurable,
                data: ptr::null_mut(),
            });
        }
        check_status!(unsafe {
            sys::napi_define_properties(self.env.raw(), object, descriptors.len(), descriptors.as_ptr())
        })?;
        Ok(object)
    }
}

/// `acquireFields`' arguments; a missing argument reads as `undefined`.
struct Fields<'a> {
    env: &'a Env,
    args: &'a [sys::napi_value],
}

impl Fields<'_> {
    fn read_request(&self) -> JsResult<(AcquireRequest, Option<sys::napi_value>)> {
        let task_type = match self.field(Arg::TaskType)? {
            Field::String(s) => s,
            _ => return Err(SidecarError::invalid_argument("request.taskType: expected a string").into()),
        };
        let busy_policy = match self.opt_string(Arg::BusyPolicy, "busyPolicy")?.as_deref() {
            None => None,
            Some("WAIT") => Some(BusyPolicy::Wait),
            Some("SKIP") => Some(BusyPolicy::Skip),
            Some("FALLBACK_CPU") => Some(BusyPolicy::FallbackCpu),
            Some(other) => {
                return Err(SidecarError::invalid_argument(format!(
                    "request.busyPolicy: expected one of \"WAIT\", \"SKIP\", \"FALLBACK_CPU\", got \"{other}\""
                ))
                .into())
            }
        };
        let priority = match self.opt_number(Arg::Priority, "priority")? {
            Some(p) if p.fract() != 0.0 || !(0.0..=100.0).contains(&p) => {
                return Err(SidecarError::invalid_argument(format!(
                    "request.priority: expected an integer 0-100, got {p}"
                ))
                .into())
            }
            p => p.map(|p| p as u64),
        };
        let trace = match self.field(Arg::Trace)? {
            Field::Absent => Trace::default(),
            Field::Object(_) => Trace {
                job_id: self.opt_string(Arg::JobId, "trace.jobId")?,
                session_id: self.opt_string(Arg::SessionId, "trace.sessionId")?,
                utterance_index: self.opt_number(Arg::UtteranceIndex, "trace.utteranceIndex")?.map(|n| n as i64),
                stage: self.opt_string(Arg::Stage, "trace.stage")?,
            },
            _ => return Err(SidecarError::invalid_argument("request.trace: expected an object").into()),
        };
        let signal = match self.field(Arg::Signal)? {
            Field::Absent => None,
            Field::Object(s) => Some(s),
            _ => return Err(SidecarError::invalid_argument("request.signal: expected an AbortSignal").into()),
        };
        let request = AcquireRequest {
            task_type,
            gpu_key: self.opt_string(Arg::GpuKey, "gpuKey")?,
            priority,
            max_wait_ms: self.opt_whole(Arg::MaxWaitMs, "maxWaitMs")?,
            hold_max_ms: self.opt_whole(Arg::HoldMaxMs, "holdMaxMs")?,
            queue_limit: self.opt_whole(Arg::QueueLimit, "queueLimit")?,
            busy_policy,
            vram_mb: self.opt_whole(Arg::VramMb, "vramMb")?,
            trace,
        };
        Ok((request, signal))
    }

    fn field(&self, arg: Arg) -> JsResult<Field> {
        let env = self.env;
        let Some(&value) = self.args.get(arg as usize) else { return Ok(Field::Absent) };
        Ok(match value_type(env, value).js()? {
            ValueType::Undefined | ValueType::Null => Field::Absent,
            ValueType::String => Field::String(js::string_value(env, value).js()?),
            ValueType::Number => {
                let mut n = 0.0;
                check_status!(unsafe { sys::napi_get_value_double(env.raw(), value, &mut n) }).js()?;
                Field::Number(n)
            }
            ValueType::Object => Field::Object(value),
            _ => Field::Other,
        })
    }

    fn opt_string(&self, arg: Arg, name: &str) -> JsResult<Option<String>> {
        match self.field(arg)? {
            Field::Absent => Ok(None),
            Field::String(s) => Ok(Some(s)),
            _ => Err(SidecarError::invalid_argument(format!("request.{name}: expected a string")).into()),
        }
    }

    fn opt_number(&self, arg: Arg, name: &str) -> JsResult<Option<f64>> {
        match self.field(arg)? {
            Field::Absent => Ok(None),
            Field::Number(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(SidecarError::invalid_argument(format!("request.{name}: expected a number")).into()),
        }
    }

    /// A duration or size: a number >= 0, rounded to an integer.
    fn opt_whole(&self, arg: Arg, name: &str) -> JsResult<Option<u64>> {
        match self.opt_number(arg, name)? {
            Some(x) if x < 0.0 => {
                Err(SidecarError::invalid_argument(format!("request.{name}: expected a number >= 0, got {x}")).into())
            }
            other => Ok(other.map(|x| x.round() as u64)),
        }
    }
}

fn value_type(env: &Env, value: sys::napi_value) -> Result<ValueType> {
    let mut t = 0;
    check_status!(unsafe { sys::napi_typeof(env.raw(), value, &mut t) })?;
    Ok(ValueType::from(t))
}
