//! The memory the arbiter shares with its JS half (`src/js/arbiter.js`): a `Float64Array` the hot
//! calls write their outcomes into ([`crate::link::arbiter_mailbox`] defines the layout and writes
//! it), and the layout's enums as JS reads them from the native module.

use std::ptr;

use napi::{check_status, sys, Env, Result};
use napi_derive::napi;

use super::super::js::JsRef;
use crate::arbiter::{Reason, Status, LEASE_PREFIX};
use crate::link::arbiter_mailbox::{Slots, SLOTS};

// The layout's enums, exported from the one definition the writer uses.
crate::arbiter_mailbox_layout!(#[napi]);

/// The names behind the numbers in records: status and reason codes, and the prefix of the
/// lease ids JS shows (`lease-42` for record id 42).
#[napi(object)]
pub struct ArbiterCodeNames {
    pub statuses: Vec<String>,
    pub reasons: Vec<String>,
    pub lease_id_prefix: String,
}

/// The names of the status and reason codes that arbiter records carry, by code, and the lease
/// id prefix.
#[napi]
pub fn arbiter_code_names() -> ArbiterCodeNames {
    ArbiterCodeNames {
        statuses: Status::ALL.iter().map(|s| s.as_str().to_string()).collect(),
        reasons: Reason::ALL.iter().map(|r| r.as_str().to_string()).collect(),
        lease_id_prefix: LEASE_PREFIX.to_string(),
    }
}

/// The shared `Float64Array`.
pub struct Mailbox {
    data: *mut Slots,
    /// Keeps the buffer alive while the arbiter lives.
    array: JsRef,
}

impl Mailbox {
    pub fn new(env: &Env) -> Result<Self> {
        let mut data: *mut std::ffi::c_void = ptr::null_mut();
        let mut buffer = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_create_arraybuffer(env.raw(), std::mem::size_of::<Slots>(), &mut data, &mut buffer)
        })?;
        let mut array = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_create_typedarray(env.raw(), sys::TypedarrayType::float64_array, SLOTS, buffer, 0, &mut array)
        })?;
        Ok(Self { data: data.cast(), array: JsRef::new(env, array)? })
    }

    pub fn array(&self) -> Result<sys::napi_value> {
        self.array.get()
    }

    /// Writes into the shared numbers ([`crate::link::arbiter_mailbox`] says where).
    pub fn write<R>(&self, f: impl FnOnce(&mut Slots) -> R) -> R {
        // SAFETY: the buffer holds `Slots`, lives as long as `array`, is never detached (JS never
        // sees it outside the arbiter module), and is only touched on the JS thread, by one
        // `write` at a time.
        f(unsafe { &mut *self.data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_follow_the_numeric_codes() {
        let names = arbiter_code_names();
        for s in Status::ALL {
            assert_eq!(names.statuses[s as u8 as usize], s.as_str());
        }
        for r in Reason::ALL {
            assert_eq!(names.reasons[r as u8 as usize], r.as_str());
        }
    }
}
