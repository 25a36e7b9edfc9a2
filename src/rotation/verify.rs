//! How a verification probe's answer reads.

use super::observation::ProbeOutcome;
use crate::crd::Verification;

/// Whether the answer shows the new key accepted: the status code, or what was wrong.
pub(crate) fn accepted(v: &Verification, outcome: &ProbeOutcome) -> Result<u16, String> {
    match outcome {
        Ok(code) if v.accepted_status_codes.contains(code) => Ok(*code),
        Ok(code) => Err(format!(
            "{} answered HTTP {code} (accepted: {:?})",
            crate::redact::url(&v.url),
            v.accepted_status_codes
        )),
        Err(why) => Err(why.clone()),
    }
}
