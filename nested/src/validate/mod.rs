//! Validation: a guest's STEs, CDs and commands, each read as a copy and typed as an
//! allegation ([`GuestSte`](ste::GuestSte), [`GuestCd`](cd::GuestCd),
//! [`GuestCommand`](command::GuestCommand)), turned into a `Validated*` value by an allowlist
//! or refused with an error enum whose every variant maps to one architected outcome:
//!
//! | module | refused as | outcome |
//! |---|---|---|
//! | [`ste`] | [`InvalidSte`](ste::InvalidSte) | physical STE V=0, C_BAD_STE to the guest on traffic |
//! | [`cd`] | [`InvalidCd`](cd::InvalidCd) | shadow CD V=0, C_BAD_CD to the guest on traffic |
//! | [`command`] | [`IllegalCommand`](command::IllegalCommand) | CMDQ_CONS.ERR = CERROR_ILL, GERROR.CMDQ_ERR |
//!
//! Validators are pure functions of the copy and of what the vSMMU advertises (plus, for
//! table pointers, whether a range is the VM's RAM). They build nothing for the hardware: that
//! is [`crate::shadow`]'s job, and it accepts only `Validated*` values.

pub mod cd;
pub mod command;
pub mod ste;
