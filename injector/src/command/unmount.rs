//! `cartinject -u [IMAGE] TARGET`: take away what `-m` left.
//!
//! Which mounts are cartinject's is decided in the host, from the target's mountinfo (the
//! kernel's text) and the host's sysfs: an image mount is the whole filesystem of a loop
//! device backed by an image file, `-m`'s cover of a read-only `/dev` a tmpfs named
//! `cartinject-dev` that holds one. A child then joins the target's mount namespace and
//! detaches the one at `/dev/crashcart` (or `/dev`) only if its mount ID is one of those,
//! never through a symlink (see [`place::remove`]). Nothing is resolved from the host through
//! `/proc/PID/root`, where the container's symlinks would lead anywhere.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

use crate::child::{self, Child, EXIT_FAILURE};
use crate::command::mount::mounts_of;
use crate::features::KernelApi;
use crate::join::Joiner;
use crate::loopdev;
use crate::place::{self, HostRoot, MOUNT_POINT, OwnMounts, Removed};
use crate::session::{ExitWith, pin_target};
use crate::sys::ns::Namespace;
use crate::sys::process;

/// Runs `-u`.
pub fn run(target_arg: &str, api: KernelApi) -> anyhow::Result<i32> {
    let (target, pin) = pin_target(target_arg, api)?;
    let sys = Path::new("/sys");
    let ours = OwnMounts::find(mounts_of(target.pid)?, sys);
    // The device and image file of each of our image mounts, read before the loop device
    // clears itself.
    let described: HashMap<u64, (String, String)> = ours
        .images
        .iter()
        .filter_map(|&id| {
            let (device, image) = loopdev::device_of(sys, ours.entry(id)?);
            let image = image.map_or_else(|| "the image".into(), |i| i.display().to_string());
            Some((id, (device, image)))
        })
        .collect();
    let host = HostRoot::for_mount_ids(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut joiner = Joiner::plan(&pin, &[Namespace::Mnt])?;
    let child_ours = ours.clone();
    let child = Child::spawn(move |reporter| {
        let result = (|| -> Result<Removed, String> {
            process::set_non_dumpable().map_err(|e| format!("prctl: {e}"))?;
            joiner.prepare().map_err(|e| e.to_string())?;
            joiner.join_non_user().map_err(|e| e.to_string())?;
            place::remove(&child_ours, host.as_ref())
                .map_err(|e| format!("cannot remove the image from the target: {e}"))
        })();
        match result {
            Ok(removed) => {
                reporter.note(removed.encode());
                0
            }
            Err(message) => {
                reporter.fail(EXIT_FAILURE, message);
                EXIT_FAILURE
            }
        }
    })
    .context("failed to fork")?;
    let (reports, _ended) = child
        .finish()
        .context("failed to wait for the unmount child")?;
    if let Some((code, message)) = child::failure(&reports) {
        anyhow::bail!(ExitWith {
            code,
            message: message.to_string(),
        });
    }
    let removed = reports
        .iter()
        .find_map(|r| match r {
            child::Report::Note(n) => Removed::decode(n),
            _ => None,
        })
        .context("the unmount child ended without saying what it did")?;
    // The image mount detached, and the device and file behind it, for the message.
    let describe = |id: u64| {
        described
            .get(&id)
            .cloned()
            .unwrap_or_else(|| ("?".into(), "the image".into()))
    };
    match removed {
        Removed::Image(id, _) => {
            let (device, image) = describe(id);
            println!("unmounted {image} ({device}) from {MOUNT_POINT} in {target}");
        }
        Removed::Cover(id) => {
            let held = ours
                .mounts
                .iter()
                .find(|m| u64::from(m.parent_id) == id && ours.images.contains(&m.mount_id.into()))
                .map_or(0, |m| u64::from(m.mount_id));
            let (device, image) = describe(held);
            println!(
                "unmounted {image} ({device}) from {MOUNT_POINT} in {target} and the read-only cover of /dev that held it"
            );
        }
        Removed::EmptyDir => println!(
            "nothing is mounted at {MOUNT_POINT} in {target}: removed the empty directory left there"
        ),
        Removed::Nothing => {
            println!("nothing is mounted at {MOUNT_POINT} in {target}: nothing to do");
        }
    }
    Ok(0)
}
