//! The memory the arbiter shares with its JS half (`src/js/arbiter.js`): a `Float64Array` the hot
//! calls write their outcomes into ([`crate::link::arbiter_mailbox`] defines the layout and writes
//! it), and the layout's enums as JS reads them from the native module.

use napi_derive::napi;

use crate::arbiter::{Reason, Status, LEASE_PREFIX};
use crate::link::arbiter_mailbox::SLOTS;
use crate::node_api::shared::SharedFloats;

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

/// The shared `Float64Array` ([`crate::link::arbiter_mailbox`] defines the layout and writes it).
pub type Mailbox = SharedFloats<SLOTS>;

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
