//! The cases, by group. Each is a function from the suite to a [`CaseResult`](crate::CaseResult);
//! the list and its order are in the crate root.

pub(crate) mod pasid;
pub(crate) mod ported;
pub(crate) mod spec;
