//! `cartinject -m IMAGE TARGET`: leave the image mounted at `/dev/crashcart` in the
//! target's own mount namespace, for `docker exec` and `nsenter`.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::child::{self, Child, EXIT_FAILURE};
use crate::display;
use crate::features::KernelApi;
use crate::image::Image;
use crate::join::Joiner;
use crate::loopdev;
use crate::mount::ImageMount;
use crate::mountinfo::{self, MountEntry};
use crate::place::{self, HostRoot, MOUNT_POINT, MountPlacement};
use crate::session::{ExitWith, pin_target};
use crate::sys::ns::Namespace;
use crate::sys::process;
use crate::sys::signal::{self, SignalSet};
use crate::userns::UserNs;

/// The note the child sends when it covered a read-only `/dev`.
const COVERED: &str = "covered /dev";
/// The start of a note from the child that is a warning for the user.
const WARNING: &str = "warning: ";

/// The mounts of process `pid`'s mount namespace (`/proc/PID/mountinfo`).
pub fn mounts_of(pid: i32) -> anyhow::Result<Vec<MountEntry>> {
    let path = format!("/proc/{pid}/mountinfo");
    mountinfo::read(Path::new(&path)).with_context(|| format!("failed to read {path}"))
}

/// An image mount of cartinject's: (device, image file, filesystem type).
pub type Mounted = (String, Option<PathBuf>, String);

/// What is mounted on top at `/dev/crashcart` among `mounts` (by the path mountinfo prints):
/// an image mount of cartinject's as (device, image file, filesystem type), or an error that
/// describes a mount cartinject did not make (its type and source escaped).
pub fn at_mount_point(mounts: &[MountEntry]) -> Result<Option<Mounted>, String> {
    let Some(&top) = mountinfo::at(mounts, MOUNT_POINT).last() else {
        return Ok(None);
    };
    let sys = Path::new("/sys");
    if !place::is_image_mount(top, sys) {
        return Err(format!(
            "a {} mount of {}",
            display::escape(&top.fstype),
            display::escape(&top.source)
        ));
    }
    let (device, image) = loopdev::device_of(sys, top);
    Ok(Some((device, image, top.fstype.clone())))
}

/// What is mounted at `/dev/crashcart` in process `pid`'s namespace (see [`at_mount_point`]).
pub fn current(pid: i32) -> anyhow::Result<Result<Option<Mounted>, String>> {
    Ok(at_mount_point(&mounts_of(pid)?))
}

/// What is at [`MOUNT_POINT`] in `target` already: `Some(0)` when it is this image (nothing
/// to do), `None` when nothing is; an error names anything else.
fn already_mounted(
    image: &Image,
    target: &crate::target::Target,
    target_arg: &str,
) -> anyhow::Result<Option<i32>> {
    let mounted = current(target.pid)?.map_err(|what| {
        anyhow::anyhow!(
            "{MOUNT_POINT} in {target} is {what} that cartinject did not make: left in place; unmount it in the container, or start a session instead of -m (a session does not use the container's /dev/crashcart)"
        )
    })?;
    if let Some((device, backing, fstype)) = mounted {
        let same = backing
            .as_ref()
            .and_then(|b| std::fs::metadata(b).ok())
            .is_some_and(|m| {
                image
                    .file()
                    .metadata()
                    .is_ok_and(|ours| (ours.dev(), ours.ino()) == (m.dev(), m.ino()))
            });
        if same {
            println!(
                "{} is already mounted at {MOUNT_POINT} in {target} ({device}): nothing to do",
                image.path().display()
            );
            return Ok(Some(0));
        }
        let what = backing.map_or_else(
            || format!("a {fstype} filesystem from {device}"),
            |b| b.display().to_string(),
        );
        anyhow::bail!(
            "{what} is already mounted at {MOUNT_POINT} in {target}: remove it first with `cartinject -u {target_arg}`"
        );
    }
    Ok(None)
}

/// What the mount child's reports and end say: whether it covered a read-only /dev; its
/// warnings are shown, its failure is the error.
fn judge(reports: &[child::Report], ended: crate::sys::process::Ended) -> anyhow::Result<bool> {
    let covered = reports
        .iter()
        .any(|r| matches!(r, child::Report::Note(n) if n == COVERED));
    for report in reports {
        if let child::Report::Note(n) = report
            && let Some(warning) = n.strip_prefix(WARNING)
        {
            eprintln!("cartinject: warning: {warning}");
        }
    }
    if let Some((code, message)) = child::failure(reports) {
        anyhow::bail!(ExitWith {
            code,
            message: message.to_string(),
        });
    }
    if ended.code() != 0 {
        anyhow::bail!("the mount child ended with status {}", ended.code());
    }
    Ok(covered)
}

/// Runs `-m`.
pub fn run(
    image_path: &Path,
    target_arg: &str,
    api: KernelApi,
    policy: &crate::verify::Policy,
    verbose: bool,
) -> anyhow::Result<i32> {
    let image = Image::open(image_path, policy)?;
    let (target, pin) = pin_target(target_arg, api)?;
    crate::session::check_arch(&image, target.pid, &|text: &str| {
        if verbose {
            eprintln!("cartinject: {}", crate::display::escape(text));
        }
    })?;
    // While cartinject waits for the lock, a stop signal ends the wait (blocked, it stays
    // pending for `lock` to see) with 128+N and nothing attached; the mask is restored before
    // anything is attached, so the mount's own steps stay interruptible as before.
    let saved_mask =
        signal::block(&SignalSet::of(&signal::STOPPING)).context("failed to block signals")?;
    let stopped = |e: crate::image::ImageError| ExitWith {
        code: e.exit_code(),
        message: e.to_string(),
    };
    let _lock = image
        .lock(&|| signal::pending_of(&signal::STOPPING))
        .map_err(stopped)?;
    if let Some(code) = already_mounted(&image, &target, target_arg)? {
        return Ok(code);
    }
    let userns = UserNs::of(&pin)?;
    let owner = userns.as_ref().map_or((0, 0), UserNs::root_ids);
    if let Some(signal) = signal::pending_of(&signal::STOPPING) {
        return Err(stopped(crate::image::ImageError::Interrupted {
            path: image.path().to_path_buf(),
            signal,
        })
        .into());
    }
    signal::set_mask(&saved_mask).context("failed to restore the signal mask")?;
    let (image_mount, notes) = image.mount(api, userns.as_ref())?;
    notes.show(verbose);
    let device = match &image_mount {
        ImageMount::Detached(_) => None,
        ImageMount::Legacy { device, .. } => Some(device.path().display().to_string()),
    };
    let host_root =
        HostRoot::for_mount_ids(Some(&image_mount)).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The container's own mount namespace, to come back to from a private copy (read-only
    // /dev: see place::mount_in_place).
    let own_ns = pin.namespace_file(Namespace::Mnt)?;
    let mut joiner = Joiner::plan(&pin, &[Namespace::Mnt])?;
    let child = Child::spawn(move |reporter| {
        let result = (|| -> Result<MountPlacement, String> {
            process::set_non_dumpable().map_err(|e| format!("prctl: {e}"))?;
            joiner.prepare().map_err(|e| e.to_string())?;
            joiner.join_non_user().map_err(|e| e.to_string())?;
            let mut note = |warning: String| reporter.note(format!("{WARNING}{warning}"));
            place::mount_in_place(
                &image_mount,
                host_root.as_ref(),
                owner,
                own_ns.as_fd(),
                &mut note,
            )
            .map_err(|e| format!("cannot mount the image in the target: {e}"))
        })();
        match result {
            Ok(placement) => {
                if placement == MountPlacement::Cover {
                    reporter.note(COVERED);
                }
                0
            }
            Err(message) => {
                reporter.fail(EXIT_FAILURE, message);
                EXIT_FAILURE
            }
        }
    })
    .context("failed to fork")?;
    let (reports, ended) = child
        .finish()
        .context("failed to wait for the mount child")?;
    let covered = judge(&reports, ended)?;
    let device = match device {
        Some(d) => d,
        None => current(target.pid)?
            .ok()
            .flatten()
            .map_or_else(|| "?".into(), |(d, _, _)| d),
    };
    let how = if covered {
        " (its /dev is read-only: /dev is covered by a read-only copy of itself that adds crashcart)"
    } else {
        ""
    };
    println!(
        "mounted {} at {MOUNT_POINT} in {target} ({device}){how}; remove it with `cartinject -u {target_arg}`",
        image.path().display()
    );
    Ok(0)
}
