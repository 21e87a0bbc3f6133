//! The machines crashcart images are built for, and the three names each goes by: the
//! kernel's (`uname -m`, what manifests, file names and `--arch` use), the ELF header's
//! `e_machine`, and the OCI platform's `architecture`.

use std::fmt;
use std::str::FromStr;

/// A machine an image can be built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// 64-bit x86 (`amd64`).
    X86_64,
    /// 64-bit Arm (`arm64`).
    Aarch64,
}

/// `e_machine` of x86_64 ELF files (`EM_X86_64`).
pub const EM_X86_64: u16 = 62;
/// `e_machine` of aarch64 ELF files (`EM_AARCH64`).
pub const EM_AARCH64: u16 = 183;

impl Arch {
    /// Every arch, in a fixed order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The kernel's name (`uname -m`): `x86_64`, `aarch64`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The OCI platform's `architecture` (Go's `GOARCH`): `amd64`, `arm64`.
    pub fn oci(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The ELF header's `e_machine` of its executables.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => EM_X86_64,
            Arch::Aarch64 => EM_AARCH64,
        }
    }

    /// The arch whose ELF `e_machine` is `machine`.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.elf_machine() == machine)
    }

    /// The kernel's names of every arch, for messages: `x86_64, aarch64`.
    pub fn known() -> String {
        Arch::ALL.map(Arch::name).join(", ")
    }

    /// The arch the kernel calls `name` (`uname -m`).
    pub fn from_kernel_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The arch whose OCI `architecture` is `oci`.
    pub fn from_oci(oci: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.oci() == oci)
    }

    /// The machine this program was built for, if it is one of ours.
    pub fn host() -> Option<Arch> {
        std::env::consts::ARCH.parse().ok()
    }
}

/// `<name>-<version>`, and `-<arch>` when `arch` is not this machine's: the stem of an
/// image's default file name (`net-1.0.0.img`, `net-1.0.0-aarch64.img` on x86_64).
pub fn image_stem(name: &str, version: &str, arch: Arch) -> String {
    if Arch::host() == Some(arch) {
        format!("{name}-{version}")
    } else {
        format!("{name}-{version}-{arch}")
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no arch of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown arch `{0}` (known: x86_64 or amd64, aarch64 or arm64)")]
pub struct UnknownArch(pub String);

impl FromStr for Arch {
    type Err = UnknownArch;

    /// The kernel's name or the OCI one: `x86_64`/`amd64`, `aarch64`/`arm64`.
    fn from_str(s: &str) -> Result<Arch, UnknownArch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s || a.oci() == s)
            .ok_or_else(|| UnknownArch(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>(), Ok(a));
            assert_eq!(a.oci().parse::<Arch>(), Ok(a));
            assert_eq!(Arch::from_oci(a.oci()), Some(a));
            assert_eq!(Arch::from_elf_machine(a.elf_machine()), Some(a));
        }
        assert_eq!(Arch::X86_64.elf_machine(), 0x3e);
        assert_eq!(Arch::Aarch64.elf_machine(), 0xb7);
        assert!("arm".parse::<Arch>().is_err());
        assert_eq!(Arch::from_kernel_name("amd64"), None);
        assert_eq!(Arch::from_kernel_name("aarch64"), Some(Arch::Aarch64));
        assert_eq!(Arch::from_oci("x86_64"), None);
        assert_eq!(Arch::X86_64.oci(), "amd64");
        assert_eq!(Arch::Aarch64.oci(), "arm64");
        assert_eq!(Arch::known(), "x86_64, aarch64");
        assert_eq!(Arch::Aarch64.to_string(), "aarch64");
        assert!("X86_64".parse::<Arch>().is_err());
        assert_eq!(Arch::from_elf_machine(40), None);
        assert_eq!(Arch::host().map(Arch::name), Some(std::env::consts::ARCH));
        let host = Arch::host().unwrap();
        let other = Arch::ALL.into_iter().find(|&a| a != host).unwrap();
        assert_eq!(image_stem("net", "1.0.0", host), "net-1.0.0");
        assert_eq!(
            image_stem("net", "1.0.0", other),
            format!("net-1.0.0-{other}")
        );
    }
}
