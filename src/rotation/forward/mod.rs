//! The rotation's steps, in order. Each is one function of one shape: the plan for its part of
//! the rotation, or None when the world already shows that part done; the first that plans is
//! the decision. The README's step table and the fault matrix's columns follow this table.

mod finish;
mod mint;
mod register;
mod revoke;
mod roll;
mod switch;
mod validate;

pub(crate) use finish::finished;

use super::rotating::StepFn;
use crate::crd::Step;

pub(crate) const FORWARD: [(Step, StepFn); 7] = [
    (Step::Mint, mint::mint),
    (Step::Register, register::register),
    (Step::Switch, switch::switch),
    (Step::Roll, roll::roll),
    (Step::Validate, validate::validate),
    (Step::Revoke, revoke::revoke),
    (Step::Finish, finish::promote),
];
