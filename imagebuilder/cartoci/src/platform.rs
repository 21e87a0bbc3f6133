//! The machines crashcart images are built for, in every vocabulary that names them: the
//! kernel's (`uname -m`, what cartbuild's manifests say), OCI's (an index's
//! `platform.architecture`, Go's `GOARCH`) and ELF's (`e_machine`). This is the one table
//! of them; `cartbuild push` and `cartinject` both read it.

/// A machine a crashcart image can be built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// x86-64: `x86_64`, OCI `amd64`, `EM_X86_64`.
    X86_64,
    /// 64-bit Arm: `aarch64`, OCI `arm64`, `EM_AARCH64`.
    Aarch64,
}

/// The only `platform.os` crashcart images have.
pub const OS: &str = "linux";

impl Arch {
    /// Every arch, in the order an index lists them.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The kernel's word (`uname -m`), as image manifests write it.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// OCI's word (image-spec `platform.architecture`, Go's `GOARCH`).
    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// ELF's `e_machine` of the arch's 64-bit little-endian executables (`elf(5)`:
    /// `EM_X86_64` = 62, `EM_AARCH64` = 183).
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 0x3e,
            Arch::Aarch64 => 0xb7,
        }
    }

    /// The arch the kernel calls `name`.
    pub fn from_kernel_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.kernel_name() == name)
    }

    /// The arch OCI calls `name`.
    pub fn from_oci_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.oci_name() == name)
    }

    /// The arch of 64-bit executables with `e_machine` `machine`.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_machine() == machine)
    }

    /// The kernel's words for every arch, for messages: `x86_64, aarch64`.
    pub fn known() -> String {
        Arch::ALL.map(Arch::kernel_name).join(", ")
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kernel_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_maps_back() {
        for arch in Arch::ALL {
            assert_eq!(Arch::from_kernel_name(arch.kernel_name()), Some(arch));
            assert_eq!(Arch::from_oci_name(arch.oci_name()), Some(arch));
            assert_eq!(Arch::from_elf_machine(arch.elf_machine()), Some(arch));
        }
        assert_eq!(Arch::from_kernel_name("amd64"), None);
        assert_eq!(Arch::from_oci_name("x86_64"), None);
        assert_eq!(Arch::from_oci_name("arm"), None);
        assert_eq!(Arch::from_elf_machine(3), None);
        assert_eq!(Arch::X86_64.oci_name(), "amd64");
        assert_eq!(Arch::Aarch64.oci_name(), "arm64");
        assert_eq!(Arch::known(), "x86_64, aarch64");
        assert_eq!(Arch::Aarch64.to_string(), "aarch64");
    }
}
