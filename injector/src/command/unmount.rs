//! `cartinject -u [IMAGE] TARGET`: take away what `-m` left.

use std::path::Path;

use anyhow::Context;

use crate::child::{self, Child, EXIT_FAILURE};
use crate::command::mount::{at_mount_point, mounts_of};
use crate::join::Joiner;
use crate::place::{self, MOUNT_POINT};
use crate::session::{ExitWith, pin_target};
use crate::sys::ns::Namespace;
use crate::sys::process;

/// Runs `-u`.
pub fn run(target_arg: &str, legacy: bool) -> anyhow::Result<i32> {
    let (target, pin) = pin_target(target_arg, legacy)?;
    let mounts = mounts_of(target.pid)?;
    let mounted = at_mount_point(&mounts);
    let leftover_dir = Path::new(&format!("/proc/{}/root{MOUNT_POINT}", target.pid)).is_dir();
    if let Some((device, _, fstype)) = &mounted {
        if !device.starts_with("/dev/loop") {
            anyhow::bail!(
                "{MOUNT_POINT} in {target} is a {fstype} mount of {device} that cartinject did not make: left in place"
            );
        }
    } else if !leftover_dir {
        println!("nothing is mounted at {MOUNT_POINT} in {target}: nothing to do");
        return Ok(0);
    }
    // A read-only /dev that -m covered: the cover goes, and everything with it.
    let covered = place::has_cover(&mounts);
    let mut joiner = Joiner::plan(&pin, &[Namespace::Mnt])?;
    let child = Child::spawn(move |reporter| {
        let result = (|| -> Result<(usize, bool), String> {
            process::set_non_dumpable().map_err(|e| format!("prctl: {e}"))?;
            joiner.prepare().map_err(|e| e.to_string())?;
            joiner.join_non_user().map_err(|e| e.to_string())?;
            if covered {
                return place::remove_cover()
                    .map(|()| (1, true))
                    .map_err(|e| format!("cannot remove the image from the target: {e}"));
            }
            place::remove().map_err(|e| format!("cannot remove the image from the target: {e}"))
        })();
        match result {
            Ok((detached, removed)) => {
                reporter.note(format!("{detached} {removed}"));
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
    match mounted {
        Some((device, image, _)) => {
            let image = image.map_or_else(|| "the image".into(), |i| i.display().to_string());
            let cover = if covered {
                " and the read-only cover of /dev that held it"
            } else {
                ""
            };
            println!("unmounted {image} ({device}) from {MOUNT_POINT} in {target}{cover}");
        }
        None => println!(
            "nothing is mounted at {MOUNT_POINT} in {target}: removed the empty directory left there"
        ),
    }
    Ok(0)
}
