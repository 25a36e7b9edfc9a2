//! Remove the new key: once no pod can hold it, its record deleted (and deleted again after the
//! re-check delay if a request in flight rewrote it), then its raw value dropped.

use crate::pods::PodSummary;
use crate::rotation::action::{Action, EventNote, Plan};
use crate::rotation::pod_gate::pod_gate;
use crate::rotation::reason::Reason;
use crate::rotation::rotating::Rotating;
use crate::rotation::time::{at_least, parse_ts, ts_precise, until};

/// Always plans: the last rollback step ends with the new raw key dropped, after which the
/// rollback's guard finishes it.
pub(crate) fn remove_new_key(x: &mut Rotating) -> Option<Plan> {
    let (o, now) = (x.o, x.o.now);
    let new = x.new_key()?;
    match parse_ts(&x.r.revoked_at) {
        Some(at) if now < at_least(at, o.spec.revoke_recheck_seconds) => {
            let recheck = at_least(at, o.spec.revoke_recheck_seconds);
            return x.wait(Some(until(now, recheck)), None);
        }
        Some(_) if !o.records.pending => return x.plan(Action::DropPending, None),
        Some(_) => {}
        None => {
            // No pod that may have started on the new key is left (terminating ones included).
            if let Some(plan) = pods_left_the_new_key(x) {
                return Some(plan);
            }
        }
    }
    x.r.revoked_at = Some(ts_precise(now));
    x.r.revoke_attempts += 1;
    let message = format!(
        "Deleted the Valkey record of the abandoned new key {}.",
        new.short()
    );
    x.plan(
        Action::Revoke { key_id: new },
        EventNote::new(Reason::NewKeyRemoved, message),
    )
}

/// The pod gate of a rollback: a pod counts as on the old key when its template was stamped
/// by this rollback (and restore count), or it was created after the switch back. A pod created
/// before the rotation is no proof: a container that restarted since, or started late, read the
/// new key.
fn pods_left_the_new_key(x: &mut Rotating) -> Option<Plan> {
    let old = x.vault.current.clone();
    let back = parse_ts(&x.r.switched_back_at);
    let marker = Some(x.r.revision.to_string());
    let restores = x.restores_marker();
    let on_old = |p: &PodSummary| {
        let stamped = p.target.is_some()
            && p.key_id.as_deref() == Some(old.as_str())
            && p.rolled_back_in == marker
            && p.secret_restores == restores;
        stamped || p.created_after(back)
    };
    pod_gate(x, &on_old, "new")
}
