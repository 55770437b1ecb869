//! A guest's SGI: a write to ICC_SGI1R_EL1 (or ICC_ASGI1R_EL1, ICC_SGI0R_EL1), which traps to
//! EL2 once HCR_EL2.IMO is set. It is decoded here and confined to the guest's own CPUs; the
//! hypervisor then sends the SGI to each target physically, and injects it there.

use crate::cpus::AFFINITY_MASK;

/// A decoded SGI request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(target_os = "none", derive(defmt::Format))]
pub struct SgiRequest {
    /// The SGI, 0..16.
    pub intid: u32,
    /// IRM: every CPU but the sender (otherwise the listed ones).
    pub all_but_self: bool,
    /// Aff3.Aff2.Aff1 of the targets (in MPIDR layout, Aff0 zero).
    pub cluster: u64,
    /// Aff0 values 16 * RS + n, for each bit n of TargetList.
    pub range_base: u64,
    /// TargetList.
    pub target_list: u16,
}

impl SgiRequest {
    /// Decodes the value written to ICC_SGI1R_EL1.
    #[must_use]
    #[allow(clippy::cast_possible_truncation, reason = "fields are masked")]
    pub fn decode(value: u64) -> Self {
        let aff1 = (value >> 16) & 0xff;
        let aff2 = (value >> 32) & 0xff;
        let aff3 = (value >> 48) & 0xff;
        Self {
            intid: ((value >> 24) & 0xf) as u32,
            all_but_self: value >> 40 & 1 == 1,
            cluster: aff3 << 32 | aff2 << 16 | aff1 << 8,
            range_base: ((value >> 44) & 0xf) * 16,
            target_list: (value & 0xffff) as u16,
        }
    }

    /// The targets among `guest_cpus` (MPIDR affinities), given the sender's: only the guest's
    /// CPUs can be reached, whatever the request names.
    pub fn targets<'a>(
        &'a self,
        sender: u64,
        guest_cpus: &'a [u64],
    ) -> impl Iterator<Item = u64> + 'a {
        let sender = sender & AFFINITY_MASK;
        guest_cpus
            .iter()
            .map(|cpu| cpu & AFFINITY_MASK)
            .filter(move |&cpu| {
                if self.all_but_self {
                    return cpu != sender;
                }
                let aff0 = cpu & 0xff;
                cpu & !0xff == self.cluster
                    && aff0 >= self.range_base
                    && aff0 < self.range_base + 16
                    && self.target_list >> (aff0 - self.range_base) & 1 == 1
            })
    }
}

/// The ICC_SGI1R_EL1 value that sends SGI `intid` to the one CPU `mpidr`.
#[must_use]
pub fn encode_for(intid: u32, mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    aff3 << 48
        | (aff0 / 16) << 44
        | aff2 << 32
        | u64::from(intid & 0xf) << 24
        | aff1 << 16
        | 1 << (aff0 % 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: [u64; 2] = [0x0, 0x1];

    #[test]
    fn a_target_list_reaches_only_the_guests_cpus() {
        // SGI 3 to CPUs 0, 1 and 2 of cluster 0: CPU 2 is not the guest's.
        let request = SgiRequest::decode(3 << 24 | 0b111);
        assert_eq!(request.intid, 3);
        let targets: Vec<_> = request.targets(0, &GUEST).collect();
        assert_eq!(targets, [0, 1]);
        // Another cluster: nobody.
        let elsewhere = SgiRequest::decode(1 << 16 | 0b11);
        assert_eq!(elsewhere.targets(0, &GUEST).count(), 0);
    }

    #[test]
    fn irm_means_every_guest_cpu_but_the_sender() {
        let request = SgiRequest::decode(1 << 40 | 5 << 24);
        let targets: Vec<_> = request.targets(1, &GUEST).collect();
        assert_eq!(targets, [0]);
    }

    #[test]
    fn an_encoded_sgi_decodes_to_its_one_target() {
        for mpidr in [0x0, 0x1, 0x103, 0x1_0002_0311] {
            let request = SgiRequest::decode(encode_for(7, mpidr));
            assert_eq!(request.intid, 7);
            let cpus = [mpidr, mpidr ^ 1];
            let targets: Vec<_> = request.targets(0xff, &cpus).collect();
            assert_eq!(targets, [mpidr], "{mpidr:#x}");
        }
    }
}
