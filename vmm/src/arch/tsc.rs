//! The guest's time stamp counter, as the host's KVM keeps it: checked for
//! each vCPU before it first runs, and repaired when KVM lost track of it.
//!
//! KVM keeps its own view of each guest's TSC (the host's TSC times a
//! multiplier, plus an offset). It arms the guest's TSC-deadline timer and
//! writes the guest's kvm-clock from that view. On a host without a
//! constant TSC (QEMU TCG's CPUs, so every nested test and `cargo kvmos
//! run`; some old servers), KVM records the host's TSC rate when it loads
//! and gives every new vCPU that rate. If the host kernel refines its TSC
//! calibration later, by more than KVM's tolerance (250 ppm), Linux 6.1's
//! KVM refuses the rate without ever writing the multiplier: it stays zero.
//! KVM's view of the guest's TSC then stands still while the guest's own
//! TSC runs, so KVM arms the guest's timer as far ahead as the host's
//! uptime, and the guest sleeps until some other interrupt comes (a Debian
//! guest logs "rcu_preempt kthread timer wakeup didn't happen").
//!
//! From user space this shows as a vCPU's TSC (MSR 0x10) that does not
//! advance. Setting the rate again repairs it: KVM writes the identity
//! multiplier for the first rate within its tolerance of the host's
//! current rate. That rate is not known here, but a refined calibration
//! stays within 1 % of the first one (the kernel rejects more), and KVM
//! refuses every rate below its window, so [`ensure_tsc_runs`] walks up
//! from 1.2 % below KVM's rate in steps narrower than the window and keeps
//! the first rate KVM takes.

use kvm_ioctls::VcpuFd;

/// MSR_IA32_TSC.
const MSR_TSC: u32 = 0x10;
/// KVM's tolerance on either side of the host's rate is 250 ppm: steps of
/// 300 ppm cannot jump over its 500 ppm window.
const STEP_PPM: u64 = 300;
/// How far from KVM's recorded rate the host's current one can be: the
/// kernel keeps a refined calibration within 1 % of the first.
const SEARCH_PPM: u64 = 12_000;

/// What a vCPU's TSC needs from KVM, so that the search can be tested
/// against a model of KVM's rule.
pub trait TscControl {
    /// The guest's TSC as KVM sees it (MSR 0x10, read by the host).
    fn guest_tsc(&self) -> Result<u64, kvm_ioctls::Error>;
    /// The guest's TSC rate KVM took (KVM_GET_TSC_KHZ).
    fn tsc_khz(&self) -> Result<u32, kvm_ioctls::Error>;
    /// KVM_SET_TSC_KHZ.
    fn set_tsc_khz(&self, khz: u32) -> Result<(), kvm_ioctls::Error>;
}

impl TscControl for VcpuFd {
    fn guest_tsc(&self) -> Result<u64, kvm_ioctls::Error> {
        let entry = kvm_bindings::kvm_msr_entry { index: MSR_TSC, ..Default::default() };
        let mut msrs = kvm_bindings::Msrs::from_entries(&[entry]).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        match self.get_msrs(&mut msrs)? {
            1 => Ok(msrs.as_slice()[0].data),
            _ => Err(kvm_ioctls::Error::new(libc::EINVAL)),
        }
    }

    fn tsc_khz(&self) -> Result<u32, kvm_ioctls::Error> {
        self.get_tsc_khz()
    }

    fn set_tsc_khz(&self, khz: u32) -> Result<(), kvm_ioctls::Error> {
        VcpuFd::set_tsc_khz(self, khz)
    }
}

/// How a vCPU's TSC was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscCheck {
    /// KVM's view of it advances: nothing to do (every host with a
    /// constant TSC).
    Running,
    /// It stood still at KVM's rate `from_khz`; at `to_khz` it runs.
    Repaired { from_khz: u32, to_khz: u32 },
}

#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum TscError {
    /// cannot read the vCPU's TSC from KVM: {0}
    Kvm(kvm_ioctls::Error),
    /// the host's KVM keeps no TSC for this vCPU (it stands still at {0} kHz, and no rate within 1.2 % of it starts it): the host's TSC calibration changed after KVM loaded; reboot the host, or boot it with a constant TSC
    Stuck(u32),
}

/// Whether KVM's view of the guest's TSC advances between two reads.
fn advances(v: &impl TscControl) -> Result<bool, TscError> {
    let first = v.guest_tsc().map_err(TscError::Kvm)?;
    Ok(v.guest_tsc().map_err(TscError::Kvm)? != first)
}

/// Checks that KVM keeps this vCPU's TSC, and repairs it if not (see the
/// module's text). Before the vCPU first runs.
pub fn ensure_tsc_runs(v: &impl TscControl) -> Result<TscCheck, TscError> {
    if advances(v)? {
        return Ok(TscCheck::Running);
    }
    let from_khz = v.tsc_khz().map_err(TscError::Kvm)?;
    let recorded = u64::from(from_khz);
    let mut khz = recorded * (1_000_000 - SEARCH_PPM) / 1_000_000;
    let last = recorded * (1_000_000 + SEARCH_PPM) / 1_000_000;
    while khz <= last {
        let rate = u32::try_from(khz).unwrap_or(u32::MAX);
        // Below KVM's window it refuses the rate; the first one it takes
        // is inside the window, where it writes the identity multiplier.
        if v.set_tsc_khz(rate).is_ok() {
            if advances(v)? {
                return Ok(TscCheck::Repaired { from_khz, to_khz: rate });
            }
            return Err(TscError::Stuck(from_khz));
        }
        khz += (khz * STEP_PPM / 1_000_000).max(1);
    }
    Err(TscError::Stuck(from_khz))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Linux 6.1's rule (`kvm_set_tsc_khz` and `set_tsc_khz`, without TSC
    /// scaling in hardware): within 250 ppm of the host's rate, the
    /// identity multiplier; below, refused and the multiplier unchanged;
    /// above, accepted as "catch-up" and the multiplier unchanged. The TSC
    /// reads advance only with a multiplier.
    struct ModelKvm {
        host_khz: u32,
        khz: Cell<u32>,
        multiplier: Cell<bool>,
        now: Cell<u64>,
        refused: Cell<u32>,
    }

    impl ModelKvm {
        /// A vCPU created at `recorded_khz` on a host now at `host_khz`.
        fn new(recorded_khz: u32, host_khz: u32) -> Self {
            let m = ModelKvm {
                host_khz,
                khz: Cell::new(0),
                multiplier: Cell::new(false),
                now: Cell::new(1),
                refused: Cell::new(0),
            };
            let _ = m.set_tsc_khz(recorded_khz);
            m.refused.set(0);
            m
        }
    }

    impl TscControl for ModelKvm {
        fn guest_tsc(&self) -> Result<u64, kvm_ioctls::Error> {
            self.now.set(self.now.get() + 1000);
            Ok(if self.multiplier.get() { self.now.get() } else { 0 })
        }
        fn tsc_khz(&self) -> Result<u32, kvm_ioctls::Error> {
            Ok(self.khz.get())
        }
        fn set_tsc_khz(&self, khz: u32) -> Result<(), kvm_ioctls::Error> {
            self.khz.set(khz);
            let host = u64::from(self.host_khz);
            let (lo, hi) = (host * (1_000_000 - 250) / 1_000_000, host * (1_000_000 + 250) / 1_000_000);
            match u64::from(khz) {
                k if k < lo => {
                    self.refused.set(self.refused.get() + 1);
                    Err(kvm_ioctls::Error::new(libc::EINVAL))
                }
                k if k > hi => Ok(()),
                _ => {
                    self.multiplier.set(true);
                    Ok(())
                }
            }
        }
    }

    #[test]
    fn a_tsc_that_runs_is_left_alone() {
        let kvm = ModelKvm::new(2_596_133, 2_596_100);
        assert_eq!(ensure_tsc_runs(&kvm).unwrap(), TscCheck::Running);
        assert_eq!(kvm.khz.get(), 2_596_133, "no rate was set");
    }

    #[test]
    fn a_stuck_tsc_is_restarted_at_a_rate_kvm_takes_on_either_side() {
        // The rate KVM recorded at load, against the refined one, as in a
        // caught hang (2594.700 against about 2596.1 MHz), the other way
        // round, and at the 1 % the kernel allows a refinement.
        for (recorded, host) in
            [(2_594_700, 2_596_133), (2_596_133, 2_594_700), (2_600_000, 2_574_000), (2_574_000, 2_600_000)]
        {
            let kvm = ModelKvm::new(recorded, host);
            assert!(!kvm.multiplier.get(), "the model starts stuck for {recorded}/{host}");
            match ensure_tsc_runs(&kvm).unwrap() {
                TscCheck::Repaired { from_khz, to_khz } => {
                    assert_eq!(from_khz, recorded);
                    let off_ppm = (i64::from(to_khz) - i64::from(host)).abs() * 1_000_000 / i64::from(host);
                    assert!(off_ppm <= 250, "{to_khz} kHz is within KVM's window around {host} ({off_ppm} ppm)");
                }
                other => panic!("{other:?} for {recorded}/{host}"),
            }
            assert!(advances(&kvm).unwrap());
        }
    }

    #[test]
    fn a_host_further_off_than_a_refinement_can_be_is_an_error_that_says_so() {
        let kvm = ModelKvm::new(2_500_000, 2_600_000);
        let err = ensure_tsc_runs(&kvm).unwrap_err();
        assert!(matches!(err, TscError::Stuck(2_500_000)), "{err:?}");
        assert!(err.to_string().contains("stands still at 2500000 kHz"), "{err}");
    }

    #[test]
    fn this_hosts_kvm_keeps_a_running_tsc() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else { panic!("/dev/kvm is needed for the VMM's tests") };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        assert_eq!(ensure_tsc_runs(&vcpu).unwrap(), TscCheck::Running);
    }
}
