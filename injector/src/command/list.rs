//! `cartinject --list [--json]`.

use std::path::Path;

use anyhow::Context;

use crate::list;
use crate::target;

/// Prints where images are mounted now.
pub fn run(json: bool) -> anyhow::Result<i32> {
    let mut placements = list::scan(Path::new("/proc"), Path::new("/sys"));
    // Names, from the runtimes that know them; IDs are enough otherwise.
    if placements.iter().any(|p| p.container_id.is_some()) {
        let names = target::names(&target::resolvers());
        for p in &mut placements {
            p.container_name = p
                .container_id
                .as_ref()
                .and_then(|id| names.get(id).cloned());
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&placements).context("failed to encode JSON")?;
        println!("{text}");
        return Ok(0);
    }
    if placements.is_empty() {
        println!("no image is mounted at /dev/crashcart anywhere");
        return Ok(0);
    }
    println!(
        "{:<8} {:<24} {:>8} {:<12} IMAGE",
        "KIND", "TARGET", "PID", "DEVICE"
    );
    for p in &placements {
        let target = p
            .container_name
            .clone()
            .or_else(|| {
                p.container_id
                    .as_ref()
                    .map(|id| id.chars().take(12).collect())
            })
            .unwrap_or_else(|| "-".into());
        // Names come from runtimes (and so from whoever named the container), device and
        // image paths from mount tables: printed escaped (JSON escapes them itself).
        let target = crate::display::escape(&target);
        let image = p
            .image
            .as_ref()
            .map_or_else(|| "?".into(), |i| crate::display::path(i));
        let device = crate::display::escape(&p.device);
        let pid = match p.session_pid {
            Some(s) => format!("{}/{s}", p.target_pid),
            None => p.target_pid.to_string(),
        };
        println!(
            "{:<8} {:<24} {:>8} {:<12} {image}",
            p.kind, target, pid, device
        );
    }
    Ok(0)
}
