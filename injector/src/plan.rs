//! A session's decisions about its target, made from what the kernel says of it (through
//! [`crate::kernel::Kernel`], so unit tests decide against a fake one): whether a pinned
//! PID is still the container it was resolved as ([`in_cgroup_of`]), which power the
//! command gets ([`decide_power`]), whether the container could rename `/dev` under the
//! session ([`dev_redirectable`]), and the environment, root and working directory the
//! session starts from ([`target_environment`], [`target_dirs`]).

use std::path::PathBuf;

use crate::child::EXIT_FAILURE;
use crate::confine::{ConfineError, Status};
use crate::exeseal::Tracers;
use crate::kernel::{Kernel, Procfs};
use crate::procfs::{self, ProcError};
use crate::profile::{Power, ProfileName, Request, Risk};
use crate::session::ExitWith;

/// Whether a `/proc/PID/cgroup` text names the container `id` in one of its paths (every
/// runtime puts the full ID there: `docker-ID.scope`, `/docker/ID`, `libpod-ID`,
/// `cri-containerd-ID`, ...). IDs that are not 64 hex digits (containerd's free-form task
/// IDs) are matched as a whole path component.
pub fn in_cgroup_of(cgroup: &[u8], id: &str) -> bool {
    let text = String::from_utf8_lossy(cgroup);
    let hex = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .any(|path| {
            if hex {
                path.contains(id)
            } else {
                path.split('/').any(|c| c == id)
            }
        })
}

/// Whether the container could rename the `/dev` under the target's root while a session
/// runs (and so make `/dev/crashcart/...` in the session lead to its own files, since mounts
/// hang on dentries, which a rename in another mount namespace moves): that `/dev` is no
/// mount point in the target's mount namespace (`/proc/PID/mountinfo` shows mount points
/// relative to the target's root: a chroot into a plain directory), or the target may hold
/// `CAP_SYS_ADMIN` (it could unmount it in a namespace of its own). A process that cannot
/// rename a mount point of its own namespace (EBUSY) leaves the session's paths alone. An
/// unreadable mountinfo counts as no mount point.
pub fn dev_redirectable(kernel: &impl Kernel, pid: i32, status: &Status) -> bool {
    let sys_admin = status.bounding & crate::sys::caps::bit(crate::sys::caps::SYS_ADMIN) != 0;
    let mounted = kernel
        .mountinfo(pid)
        .is_ok_and(|mounts| !crate::mountinfo::at(&mounts, "/dev").is_empty());
    sys_admin || !mounted
}

/// Why [`decide_power`] gave no power.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The target's credentials could not be read.
    #[error(transparent)]
    Status(#[from] ConfineError),
    /// The request cannot be granted: the session does not start (exit code inside).
    #[error(transparent)]
    Refused(#[from] ExitWith),
}

/// Chooses the session's power from `--profile` and whether the target's processes can
/// ptrace ours (`tracers`) or rename its `/dev`, and reads the workload's for `match`
/// (failing closed on what cannot be copied, unless `--allow-unmatched`). Every line for
/// stderr (without the `cartinject: ` prefix; the `-v` ones only when `verbose`) is pushed
/// onto `said`, in order, also when the answer is an error.
pub fn decide_power(
    kernel: &impl Kernel,
    request: &Request,
    tracers: &Tracers,
    pid: i32,
    verbose: bool,
    said: &mut Vec<String>,
) -> Result<Power, PowerError> {
    let status = kernel.status(pid)?;
    let risk = if tracers.can_seize_session() {
        Some(Risk::Ptrace)
    } else if dev_redirectable(kernel, pid, &status) {
        Some(Risk::Redirect)
    } else {
        None
    };
    let chosen =
        crate::profile::choose(request, risk, status.bounding).map_err(|message| ExitWith {
            code: EXIT_FAILURE,
            message,
        })?;
    said.extend(chosen.lines);
    let power = match chosen.name {
        ProfileName::Debug => Power::Debug,
        ProfileName::Sysadmin => Power::Sysadmin,
        ProfileName::Match => {
            let reading = crate::confine::read_with(kernel, pid, status);
            if !reading.unmatched.is_empty() && !request.allow_unmatched {
                return Err(ExitWith {
                    code: EXIT_FAILURE,
                    message: format!(
                        "--profile match cannot give the session exactly the target's power: {}; the session would run with more than the workload, so it does not start (--allow-unmatched starts it anyway)",
                        reading.unmatched.join("; ")
                    ),
                }
                .into());
            }
            for line in &reading.unmatched {
                said.push(format!("warning: --allow-unmatched: {line}"));
            }
            if verbose {
                for line in &reading.notes {
                    said.push(format!("--profile match: {line}"));
                }
            }
            Power::Match(reading.profile)
        }
    };
    if verbose {
        said.push(power.describe());
    }
    Ok(power)
}

/// [`decide_power`] against the real kernel, its lines printed on stderr.
pub fn choose_power(
    request: &Request,
    tracers: &Tracers,
    pid: i32,
    verbose: bool,
) -> anyhow::Result<Power> {
    let mut said = Vec::new();
    let decided = decide_power(&Procfs, request, tracers, pid, verbose, &mut said);
    for line in &said {
        eprintln!("cartinject: {line}");
    }
    match decided {
        Ok(power) => Ok(power),
        // The exit code travels as an ExitWith, which main looks for.
        Err(PowerError::Refused(exit)) => Err(exit.into()),
        Err(PowerError::Status(e)) => Err(e.into()),
    }
}

/// The target's environment as `/proc/PID/environ` gives it. Some processes' environment
/// is unreadable even to root (another user namespace's init, for one): the session then
/// starts from an empty one, and `note` is told why. A target that is gone is an error.
pub fn target_environment(
    kernel: &impl Kernel,
    pid: i32,
    note: &mut dyn FnMut(String),
) -> Result<Vec<u8>, ProcError> {
    match kernel.environ(pid) {
        Ok(raw) => Ok(raw),
        Err(ProcError::Read { path, source }) => {
            note(format!(
                "cannot read {} ({source}): using an empty environment",
                path.display()
            ));
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// The target's root (as a path in its mount namespace) and its working directory inside
/// that root. A link the kernel marks unreachable or deleted, or one that cannot be read,
/// is `/` (and `note` is told why it could not be read); a working directory outside the
/// root is `/`. A target that is gone is an error.
pub fn target_dirs(
    kernel: &impl Kernel,
    pid: i32,
    note: &mut dyn FnMut(String),
) -> Result<(PathBuf, PathBuf), ProcError> {
    let mut dir = |name: &str| match kernel.link(pid, name) {
        Ok(link) => Ok(procfs::usable_dir(&link)),
        Err(ProcError::Read { path, source }) => {
            note(format!(
                "cannot read {} ({source}): using /",
                path.display()
            ));
            Ok(PathBuf::from("/"))
        }
        Err(e) => Err(e),
    };
    let root = dir("root")?;
    let cwd = procfs::inside_root(&dir("cwd")?, &root);
    Ok((root, cwd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{FakeKernel, FakeProcess, ROOT_STATUS};
    use crate::sys::Errno;

    const PID: i32 = 42;

    fn decide(
        kernel: &FakeKernel,
        request: Request,
        tracers: Tracers,
        verbose: bool,
    ) -> (Result<Power, PowerError>, Vec<String>) {
        let mut said = Vec::new();
        let power = decide_power(kernel, &request, &tracers, PID, verbose, &mut said);
        (power, said)
    }

    fn ask(profile: Option<ProfileName>) -> Request {
        Request {
            profile,
            ..Request::default()
        }
    }

    const PTRACER: Tracers = Tracers {
        shares_our_pid_ns: false,
        capable: true,
        unknown: false,
    };

    fn refused(result: Result<Power, PowerError>) -> ExitWith {
        match result {
            Err(PowerError::Refused(exit)) => exit,
            Err(other) => panic!("expected a refusal, got {other}"),
            Ok(power) => panic!("expected a refusal, got {}", power.describe()),
        }
    }

    #[test]
    fn a_pinned_pid_is_recognised_by_its_container_id() {
        let id = "21bc7fa514958aaf1f7c57fdd0b34253eb0075eef878b247f7523f47f4da7db8";
        let docker_v1 = format!("12:pids:/docker/{id}\n0::/docker/{id}\n");
        assert!(in_cgroup_of(docker_v1.as_bytes(), id));
        let systemd = format!("0::/system.slice/docker-{id}.scope\n");
        assert!(in_cgroup_of(systemd.as_bytes(), id));
        let other = "0::/system.slice/docker-0000.scope\n12:pids:/\n";
        assert!(!in_cgroup_of(other.as_bytes(), id));
        // A reused PID in the host: no container path at all.
        assert!(!in_cgroup_of(b"0::/user.slice/session-1.scope\n", id));
        // containerd task IDs are free-form: a whole path component, not a substring.
        assert!(in_cgroup_of(b"0::/default/web\n", "web"));
        assert!(!in_cgroup_of(b"0::/default/webserver\n", "web"));
    }

    #[test]
    fn a_container_id_in_the_controller_field_does_not_count() {
        // Only the path (third field) names cgroups; a line without one names nothing.
        assert!(!in_cgroup_of(b"web::/\n", "web"));
        assert!(!in_cgroup_of(b"garbage without colons\n", "web"));
        assert!(!in_cgroup_of(b"", "web"));
        // A path with colons keeps them (splitn 3).
        assert!(in_cgroup_of(b"0::/a:b/web\n", "web"));
    }

    #[test]
    fn a_cgroup_read_through_the_kernel_names_its_container() {
        let mut process = FakeProcess::container();
        process.cgroup =
            Some(b"0::/kubepods/pod1/cri-containerd-web.scope\n0::/default/web\n".to_vec());
        let k = FakeKernel::with(PID, process);
        let cgroup = k.cgroup(PID).expect("cgroup");
        assert!(in_cgroup_of(&cgroup, "web"));
        assert!(!in_cgroup_of(&cgroup, "db"));
    }

    #[test]
    fn a_dev_mount_of_its_own_cannot_be_renamed() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let status = k.status(PID).expect("status");
        assert!(!dev_redirectable(&k, PID, &status));
    }

    #[test]
    fn a_chroot_into_a_plain_directory_can_rename_dev() {
        let k = FakeKernel::with(
            PID,
            FakeProcess::container().with_mountinfo("1 0 0:1 / / rw - overlay overlay rw\n"),
        );
        let status = k.status(PID).expect("status");
        assert!(dev_redirectable(&k, PID, &status));
    }

    #[test]
    fn a_dev_mount_elsewhere_is_not_the_targets_dev() {
        let k = FakeKernel::with(
            PID,
            FakeProcess::container().with_mountinfo(
                "1 0 0:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:2 / /jail/dev rw - tmpfs tmpfs rw\n",
            ),
        );
        let status = k.status(PID).expect("status");
        assert!(dev_redirectable(&k, PID, &status));
    }

    #[test]
    fn cap_sys_admin_can_rename_any_dev() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let status = Status {
            bounding: crate::sys::caps::bit(crate::sys::caps::SYS_ADMIN),
            ..k.status(PID).expect("status")
        };
        assert!(dev_redirectable(&k, PID, &status));
    }

    #[test]
    fn an_unreadable_mountinfo_is_assumed_redirectable() {
        let mut process = FakeProcess::container();
        process.mountinfo = None;
        let k = FakeKernel::with(PID, process);
        let status = k.status(PID).expect("status");
        assert!(dev_redirectable(&k, PID, &status));
    }

    #[test]
    fn an_ordinary_container_gets_the_debug_profile() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let (power, said) = decide(&k, ask(None), Tracers::default(), false);
        assert!(matches!(power, Ok(Power::Debug)));
        assert!(said.is_empty(), "{said:?}");
    }

    #[test]
    fn verbose_describes_the_power() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let (power, said) = decide(&k, ask(None), Tracers::default(), true);
        assert!(matches!(power, Ok(Power::Debug)));
        assert_eq!(said.len(), 1);
        assert!(said[0].starts_with("profile debug: "), "{said:?}");
        assert!(said[0].contains("CAP_SYS_PTRACE"), "{said:?}");
    }

    #[test]
    fn ptrace_capable_containers_get_the_workloads_power() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let (power, said) = decide(&k, ask(None), PTRACER, false);
        assert!(matches!(power, Ok(Power::Match(_))));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("CAP_SYS_PTRACE"), "{said:?}");
    }

    #[test]
    fn unknown_tracers_count_as_capable() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let unknown = Tracers {
            unknown: true,
            ..Tracers::default()
        };
        let (power, _) = decide(&k, ask(None), unknown, false);
        assert!(matches!(power, Ok(Power::Match(_))));
    }

    #[test]
    fn a_redirectable_dev_gets_the_workloads_power() {
        let k = FakeKernel::with(
            PID,
            FakeProcess::container().with_mountinfo("1 0 0:1 / / rw - overlay overlay rw\n"),
        );
        let (power, said) = decide(&k, ask(None), Tracers::default(), false);
        assert!(matches!(power, Ok(Power::Match(_))));
        assert!(said[0].contains("rename"), "{said:?}");
    }

    #[test]
    fn debug_against_a_ptracer_is_refused_with_125() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let exit = refused(decide(&k, ask(Some(ProfileName::Debug)), PTRACER, false).0);
        assert_eq!(exit.code, EXIT_FAILURE);
        assert!(
            exit.message.contains("--allow-ptrace-escalation"),
            "{}",
            exit.message
        );
    }

    #[test]
    fn sysadmin_warns_even_without_risk() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let (power, said) = decide(
            &k,
            ask(Some(ProfileName::Sysadmin)),
            Tracers::default(),
            false,
        );
        assert!(matches!(power, Ok(Power::Sysadmin)));
        assert_eq!(said.len(), 1);
        assert!(said[0].contains("reach past the container"), "{said:?}");
    }

    #[test]
    fn a_seccomp_filter_that_cannot_be_copied_stops_match() {
        let mut process = FakeProcess::container()
            .with_status(&ROOT_STATUS.replace("Seccomp:\t0", "Seccomp:\t2"));
        process.filters = Err(Errno::EMEDIUMTYPE);
        let k = FakeKernel::with(PID, process);
        let exit = refused(decide(&k, ask(Some(ProfileName::Match)), Tracers::default(), false).0);
        assert_eq!(exit.code, EXIT_FAILURE);
        assert!(exit.message.contains("eBPF"), "{}", exit.message);
        assert!(
            exit.message.contains("--allow-unmatched"),
            "{}",
            exit.message
        );
    }

    #[test]
    fn allow_unmatched_starts_with_a_warning() {
        let mut process = FakeProcess::container()
            .with_status(&ROOT_STATUS.replace("Seccomp:\t0", "Seccomp:\t1"));
        process.label = crate::confine::Label::AppArmor("docker-default".into());
        let k = FakeKernel::with(PID, process);
        let request = Request {
            profile: Some(ProfileName::Match),
            allow_unmatched: true,
            ..Request::default()
        };
        let (power, said) = decide(&k, request, Tracers::default(), false);
        assert!(matches!(power, Ok(Power::Match(_))));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("warning: --allow-unmatched: "),
            "{said:?}"
        );
        assert!(said[0].contains("strict mode"), "{said:?}");
    }

    #[test]
    fn match_notes_only_with_verbose() {
        // No LSM: a note, not a refusal.
        let k = FakeKernel::with(PID, FakeProcess::container());
        let (power, quiet) = decide(&k, ask(Some(ProfileName::Match)), Tracers::default(), false);
        assert!(matches!(power, Ok(Power::Match(_))));
        assert!(quiet.is_empty(), "{quiet:?}");
        let (_, loud) = decide(&k, ask(Some(ProfileName::Match)), Tracers::default(), true);
        assert!(
            loud.iter()
                .any(|l| l.starts_with("--profile match: no LSM")),
            "{loud:?}"
        );
        assert!(
            loud.last()
                .is_some_and(|l| l.starts_with("profile match: uid 0")),
            "{loud:?}"
        );
    }

    #[test]
    fn an_unreadable_status_is_an_error_naming_the_file() {
        let mut process = FakeProcess::container();
        process.status = None;
        let k = FakeKernel::with(PID, process);
        match decide(&k, ask(None), Tracers::default(), false).0 {
            Err(PowerError::Status(e)) => assert!(e.to_string().contains("/proc/42/status"), "{e}"),
            other => panic!(
                "expected a status error, got {:?}",
                other.map(|p| p.describe())
            ),
        }
    }

    #[test]
    fn the_environment_is_read_raw() {
        let mut process = FakeProcess::container();
        process.environ = Some(b"PATH=/bin\0HOME=/root\0".to_vec());
        let k = FakeKernel::with(PID, process);
        let mut notes = Vec::new();
        let raw = target_environment(&k, PID, &mut |n| notes.push(n)).expect("environ");
        assert_eq!(raw, b"PATH=/bin\0HOME=/root\0");
        assert!(notes.is_empty());
    }

    #[test]
    fn an_unreadable_environment_is_empty_with_a_note() {
        let mut process = FakeProcess::container();
        process.environ = None;
        let k = FakeKernel::with(PID, process);
        let mut notes = Vec::new();
        let raw = target_environment(&k, PID, &mut |n| notes.push(n)).expect("environ");
        assert!(raw.is_empty());
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("/proc/42/environ"), "{notes:?}");
    }

    #[test]
    fn the_environment_of_a_gone_target_is_an_error() {
        let k = FakeKernel::default();
        let result = target_environment(&k, PID, &mut |_| {});
        assert!(matches!(result, Err(ProcError::NoSuchProcess(PID))));
    }

    #[test]
    fn root_and_working_directory_of_a_plain_container() {
        let k = FakeKernel::with(PID, FakeProcess::container());
        let (root, cwd) = target_dirs(&k, PID, &mut |_| {}).expect("dirs");
        assert_eq!(root, PathBuf::from("/"));
        assert_eq!(cwd, PathBuf::from("/app"));
    }

    #[test]
    fn a_chrooted_target_starts_in_its_root() {
        let mut process = FakeProcess::container();
        process.links.insert("root", "/jail".into());
        process.links.insert("cwd", "/jail/srv".into());
        let k = FakeKernel::with(PID, process);
        let (root, cwd) = target_dirs(&k, PID, &mut |_| {}).expect("dirs");
        assert_eq!(root, PathBuf::from("/jail"));
        assert_eq!(cwd, PathBuf::from("/srv"));
    }

    #[test]
    fn deleted_or_unreadable_directories_are_root() {
        let mut process = FakeProcess::container();
        process.links.insert("cwd", "/tmp/x (deleted)".into());
        let k = FakeKernel::with(PID, process.clone());
        let (_, cwd) = target_dirs(&k, PID, &mut |_| {}).expect("dirs");
        assert_eq!(cwd, PathBuf::from("/"));
        process.links.remove("root");
        let k = FakeKernel::with(PID, process);
        let mut notes = Vec::new();
        let (root, _) = target_dirs(&k, PID, &mut |n| notes.push(n)).expect("dirs");
        assert_eq!(root, PathBuf::from("/"));
        assert!(
            notes.iter().any(|n| n.contains("/proc/42/root")),
            "{notes:?}"
        );
    }

    #[test]
    fn a_working_directory_outside_the_root_is_root() {
        let mut process = FakeProcess::container();
        process.links.insert("root", "/jail".into());
        process.links.insert("cwd", "/elsewhere".into());
        let k = FakeKernel::with(PID, process);
        let (_, cwd) = target_dirs(&k, PID, &mut |_| {}).expect("dirs");
        assert_eq!(cwd, PathBuf::from("/"));
    }

    #[test]
    fn the_dirs_of_a_gone_target_are_an_error() {
        let k = FakeKernel::default();
        assert!(matches!(
            target_dirs(&k, PID, &mut |_| {}),
            Err(ProcError::NoSuchProcess(PID))
        ));
    }

    #[test]
    fn a_hostile_target_environment_reaches_the_session_only_as_allowed() {
        let mut process = FakeProcess::container();
        process.environ = Some(
            b"PATH=/app/bin:./x:/usr/bin\0BASH_ENV=/pwn\0LD_PRELOAD=/pwn.so\0LANG=C.UTF-8\0\
              LC_ALL=/evil\0HOME=/root\0"
                .to_vec(),
        );
        let k = FakeKernel::with(PID, process);
        let raw = target_environment(&k, PID, &mut |_| {}).expect("environ");
        let env = crate::environ::session_env(&procfs::parse_environ(&raw), "web", None);
        let get = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_str().expect("UTF-8").to_string())
        };
        assert_eq!(
            get("PATH").as_deref(),
            Some("/dev/crashcart/bin:/dev/crashcart/sbin:/app/bin:/usr/bin")
        );
        assert_eq!(get("LANG").as_deref(), Some("C.UTF-8"));
        assert_eq!(get("HOME").as_deref(), Some("/dev/crashcart"));
        for name in ["BASH_ENV", "LD_PRELOAD", "LC_ALL"] {
            assert_eq!(get(name), None, "{name}");
        }
        assert_eq!(
            crate::exec::path_of(&env).first(),
            Some(&PathBuf::from("/dev/crashcart/bin"))
        );
    }
}
