//! Which of the kernel's interfaces cartinject uses, decided once (from `--legacy-mount`) and
//! passed down as a value.

/// The kernel interfaces a run of cartinject uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelApi {
    /// The new mount API (fsopen/fsmount/move_mount, Linux 5.2) and pidfds (Linux 5.3). Where
    /// the kernel lacks one of them, the step that needs it falls back by itself.
    #[default]
    Modern,
    /// `mount(2)` from inside the namespace and `/proc/PID/ns`, as on a kernel before 5.2
    /// (`--legacy-mount`, `CARTINJECT_LEGACY_MOUNT=1`).
    Legacy,
}

impl KernelApi {
    /// [`KernelApi::Legacy`] when `legacy` (the flag) is set.
    pub fn from_legacy_flag(legacy: bool) -> KernelApi {
        if legacy {
            KernelApi::Legacy
        } else {
            KernelApi::Modern
        }
    }

    /// Whether to mount with the new mount API (else `mount(2)` inside the namespace).
    pub fn mount_api(self) -> bool {
        self == KernelApi::Modern
    }

    /// Whether to pin and join the target through a pidfd (else `/proc/PID/ns` files).
    pub fn pidfds(self) -> bool {
        self == KernelApi::Modern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_chooses_the_interfaces() {
        assert_eq!(KernelApi::default(), KernelApi::Modern);
        let modern = KernelApi::from_legacy_flag(false);
        assert!(modern.mount_api() && modern.pidfds());
        let legacy = KernelApi::from_legacy_flag(true);
        assert_eq!(legacy, KernelApi::Legacy);
        assert!(!legacy.mount_api() && !legacy.pidfds());
    }
}
